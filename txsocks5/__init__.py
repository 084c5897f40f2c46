"""
txsocks5: a SOCKS5 proxy server (RFC 1928, RFC 1929) built on Twisted.

Run it with C{twistd -n socks5 --port 1080}, or embed
L{txsocks5.server.SOCKS5Factory} / L{txsocks5.service.SOCKS5Service} in
another Twisted program.
"""

__version__ = "0.1.0"
