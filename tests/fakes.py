"""Socket-free stand-ins for unit tests of the protocol and relay."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from txsocks5 import wire
from txsocks5.interfaces import IOutbound


class HalfCloseableStringTransport(StringTransport):
    """
    A L{StringTransport} that also records half-closes and aborts, as a TCP
    transport would take them.
    """

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


@implementer(IOutbound)
class FakeOutbound:
    """An L{IOutbound} whose connection attempts the test completes by hand."""

    def __init__(self) -> None:
        self.attempts: list[tuple[wire.Address, IProtocolFactory, Deferred[IProtocol]]] = []
        self.cancelled: list[wire.Address] = []

    def connect(self, address: wire.Address, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred(lambda d: self.cancelled.append(address))
        self.attempts.append((address, protocolFactory, d))
        return d

    def succeed(
        self, index: int = -1, local: IPv4Address | None = None
    ) -> tuple[IProtocol, HalfCloseableStringTransport]:
        """Complete an attempt with a connected target over a string transport."""
        _, factory, d = self.attempts[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 80))
        assert protocol is not None
        transport = HalfCloseableStringTransport(
            hostAddress=local or IPv4Address("TCP", "10.1.2.3", 40000),
            peerAddress=IPv4Address("TCP", "192.0.2.7", 80),
        )
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport
