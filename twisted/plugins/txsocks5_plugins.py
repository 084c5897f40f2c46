"""
twistd and plugin declarations for txsocks5: the C{socks5} service maker and
the built-in L{IAuthenticator}s.  No logic lives here.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from txsocks5.auth import NoAuthentication, UsernamePasswordAuthentication

socks5 = ServiceMaker(
    "txsocks5",
    "txsocks5.tap",
    "A SOCKS5 proxy server (RFC 1928, RFC 1929)",
    "socks5",
)

fastReactor = Reactor(
    "txsocks5",
    "txsocks5._fastpath",
    "epoll(4)-based reactor with txsocks5's lean TCP transports (what twistd socks5 uses by default)",
)

noAuthentication = NoAuthentication()
usernamePasswordAuthentication = UsernamePasswordAuthentication()
