"""
Serving clients that reach txsocks5 through a load balancer which starts
each connection with HAProxy's PROXY protocol header (v1 or v2).

Twisted reads the header (L{twisted.protocols.haproxy}); what this adds is
what a SOCKS5 server needs on top: each client is admitted by the address
its header names rather than by the balancer's (see
L{SOCKS5Factory.buildProtocol}), and a client's half-close is passed on to
the tunnel, which Twisted's wrapper on its own turns into a full close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IListeningPort,
    ILoggingContext,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

if TYPE_CHECKING:
    from txsocks5.server import SOCKS5Factory

try:
    # Twisted's wrapper classes are not public API: used to add half-close
    # when they are there, else the public proxyEndpoint serves without it.
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
except ImportError:  # pragma: no cover - a Twisted that moved them
    HAProxyProtocolWrapper = HAProxyWrappingFactory = None  # type: ignore[assignment, misc]

__all__ = ["ProxyProtocolEndpoint", "halfCloseAvailable"]


def halfCloseAvailable() -> bool:
    """Whether a client's half-close is passed on behind a PROXY header here."""
    return HAProxyWrappingFactory is not None


class _CloseAtOnce(Protocol):
    """A refused connection, closed as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(ILoggingContext)
class _AdmittedByProxyHeader:
    """
    A L{SOCKS5Factory} as a PROXY wrapper sees it: the protocols it builds
    admit their client by the address the header names.
    """

    def __init__(self, factory: SOCKS5Factory) -> None:
        self._factory = factory

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = self._factory.buildProtocol(addr, admitByProxyHeader=True)
        # A wrapper cannot refuse a connection by building nothing: close it instead.
        return _CloseAtOnce() if protocol is None else protocol

    def logPrefix(self) -> str:
        return self._factory.__class__.__name__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)  # doStart, doStop, noisy, ...


if HAProxyProtocolWrapper is not None:

    @implementer(IHalfCloseableProtocol)
    class _HalfClosingHeaderReader(HAProxyProtocolWrapper):  # type: ignore[misc, valid-type]
        """Twisted's PROXY wrapper, passing a half-close on to a protocol that takes one."""

        def readConnectionLost(self) -> None:
            halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if halfCloseable is None:
                self.transport.loseConnection()
            else:
                halfCloseable.readConnectionLost()

        def writeConnectionLost(self) -> None:
            halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if halfCloseable is not None:
                halfCloseable.writeConnectionLost()

    class _HalfClosingWrappingFactory(HAProxyWrappingFactory):  # type: ignore[misc, valid-type]
        protocol = _HalfClosingHeaderReader  # type: ignore[assignment]


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    Listen for a L{SOCKS5Factory} on C{endpoint}, every connection of which
    starts with a PROXY protocol header: each client is then admitted (client
    rules, per-client limit, login lockout, loopback protection, the session
    log) by the address its header names, and its half-close is passed on.
    C{twistd socks5 --port haproxy:DESCRIPTION} listens on
    C{ProxyProtocolEndpoint(serverFromString(reactor, DESCRIPTION))}.

    @param endpoint: the plain endpoint the balancer connects to (such as a
        L{TCP4ServerEndpoint}), not one that reads the header itself.
    """

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint

    def listen(self, factory: SOCKS5Factory) -> Deferred[IListeningPort]:  # type: ignore[override]
        """Listen with C{factory}, its clients admitted by their PROXY headers."""
        admitting = _AdmittedByProxyHeader(factory)
        if HAProxyWrappingFactory is None:  # Twisted's wrapper, without half-close.
            return proxyEndpoint(self._endpoint).listen(admitting)  # type: ignore[arg-type]
        return self._endpoint.listen(_HalfClosingWrappingFactory(admitting))
