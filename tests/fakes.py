"""Socket-free stand-ins for unit tests of the protocol and relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHostnameResolver, IProtocol, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
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

    def connect(
        self,
        address: wire.Address,
        protocolFactory: IProtocolFactory,
        allowAddress: Callable[[str], bool] | None = None,
    ) -> Deferred[IProtocol]:
        self.allowAddress = allowAddress
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


class FakeDatagramPort:
    """A bound UDP socket that records what is written to it."""

    def __init__(self, reactor: FakeUDPReactor, port: int, protocol: Any, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.listening = True

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.written.append((datagram, addr))

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self.protocol.doStop()

    def getHost(self) -> IPv4Address | IPv6Address:
        if ":" in self.interface:
            return IPv6Address("UDP", self.interface, self.port)
        return IPv4Address("UDP", self.interface, self.port)


@implementer(IHostnameResolver)
class FakeResolver:
    """Resolves names only when the test says, to addresses the test gives."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Any]] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.pending.append((hostName, resolutionReceiver))
        resolutionReceiver.resolutionBegan(None)
        return resolutionReceiver

    def resolve(self, name: str, *hosts: str) -> None:
        """Complete every pending resolution of C{name} with C{hosts}."""
        for pendingName, receiver in list(self.pending):
            if pendingName == name:
                self.pending.remove((pendingName, receiver))
                for host in hosts:
                    kind = IPv6Address if ":" in host else IPv4Address
                    receiver.addressResolved(kind("UDP", host, 0))
                receiver.resolutionComplete()


class FakeUDPReactor(MemoryReactorClock):
    """A memory reactor that binds fake UDP ports and resolves with L{FakeResolver}."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[FakeDatagramPort] = []
        self.busyPorts: set[int] = set()
        self.nameResolver = FakeResolver()  # type: ignore[assignment]
        self._nextPort = 40000

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        if port in self.busyPorts:
            raise CannotListenError(interface, port, OSError("in use"))
        if port == 0:
            self._nextPort += 1
            port = self._nextPort
        bound = FakeDatagramPort(self, port, protocol, interface)
        self.udpPorts.append(bound)
        protocol.makeConnection(bound)
        return bound
