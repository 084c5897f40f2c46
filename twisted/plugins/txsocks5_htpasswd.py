"""
strcred plugin declaration for C{--auth htpasswd:PATH} (an htpasswd file of
bcrypt hashes).  No logic lives here: see L{txsocks5.htpasswd}.
"""

from txsocks5.htpasswd import HtpasswdCheckerFactory

htpasswdCheckerFactory = HtpasswdCheckerFactory()
