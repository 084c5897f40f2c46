"""
UDP ASSOCIATE (RFC 1928 section 7): L{UDPRelay} relays datagrams between one
client and any number of destinations for as long as the client's TCP
control connection lives.

Each association has its own client-facing socket, bound on the address the
client reached the TCP port on, and (made when first needed) one socket per
address family towards destinations.  Only datagrams from the client's own
address reach destinations; datagrams from addresses the client has sent to
go back to the client with the RFC header naming their real address, and
datagrams from anywhere else are dropped.  Each destination is checked
against the access rules (verdicts are remembered per association).  Fragments
(FRAG != 0) and malformed headers are dropped and counted, never raised.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from twisted.internet import error
from twisted.internet.interfaces import (
    IDelayedCall,
    IHostnameResolver,
    IListeningPort,
    IReactorTime,
    IReactorUDP,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from txsocks5 import wire
from txsocks5._fastpath import canSendDatagramsDirectly, sendDatagramDirectly
from txsocks5.ports import listenInRange, resolveName

__all__ = ["UDPRelay", "UDPCounters", "listenUDPRelay", "MAX_DATAGRAM"]

log = Logger()

#: The largest datagram a relay reads: a 65,507-byte IPv4 payload with room
#: for the SOCKS header (RFC 1928 allows up to a 255-byte name in it).
MAX_DATAGRAM = 65535 + 262

#: Seconds a resolved name is reused within one association.
NAME_CACHE_SECONDS = 30.0

#: Seconds a name may take to resolve before its datagrams are dropped.
RESOLVE_TIMEOUT = 10.0

#: Datagrams held per association while names resolve; more are dropped.
MAX_QUEUED = 64

#: Destination addresses remembered per association: only they may send
#: datagrams back to the client (the memory starts over when full).
MAX_CONTACTED = 4096


@dataclass
class UDPCounters:
    """What one association carried and dropped."""

    datagramsUp: int = 0
    datagramsDown: int = 0
    bytesUp: int = 0
    bytesDown: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        """Count a dropped datagram; the first of each kind is logged at debug."""
        count = self.dropped.get(reason, 0)
        self.dropped[reason] = count + 1
        if not count:
            log.debug("UDP relay dropped a datagram: {reason}", reason=reason)


#: Client headers remembered per association, with the destination each
#: names, so that a header sent again is not parsed again (the memory starts
#: over when full; at most about 50 KiB).
_MAX_PARSED_HEADERS = 256

#: Sends a datagram to an C{(ip, port)} address.
_Send = Callable[[bytes, tuple[str, int]], object]


class _DestinationSide(DatagramProtocol):
    """The socket of one address family that talks to destinations."""

    noisy = False

    def __init__(self, relay: UDPRelay) -> None:
        self.relay = relay

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.relay.fromDestination(datagram, addr)


class UDPRelay(DatagramProtocol):
    """
    The client-facing socket of one association, and the relay behind it.

    @param reactor: used for the destination sockets, name resolution and
        the idle timer.
    @param clientHost: the client's IP address (from its TCP connection).
    @param clientPort: the port the client said it will send from, or
        C{None} to learn it from the first datagram.
    @param idleTimeout: seconds without a datagram either way after which
        C{onIdle} is called; C{None} for never.
    @param onIdle: called once when the idle timeout passes.
    @param resolver: resolves destination names; the reactor's by default.
    @param allowDestination: called as C{(name, ip, port)} to ask whether
        datagrams may go to a destination: with the name and C{ip=None}
        before a name is resolved, then with each address considered.
        Everything is allowed if C{None}.

    @ivar counters: datagrams and bytes each way, and drops by reason.
    """

    noisy = False

    def __init__(
        self,
        reactor: IReactorUDP,
        clientHost: str,
        clientPort: int | None = None,
        idleTimeout: float | None = None,
        onIdle: Callable[[], None] | None = None,
        resolver: IHostnameResolver | None = None,
        allowDestination: Callable[[str | None, str | None, int], bool] | None = None,
    ) -> None:
        self._reactor = reactor
        self._allowDestination = allowDestination
        self._verdicts: dict[tuple[str | None, str | None, int], bool] = {}
        self.clientHost = clientHost
        self.clientPort = clientPort
        self.counters = UDPCounters()
        self._resolver = resolver or reactor.nameResolver  # type: ignore[attr-defined]
        self._idleTimeout = idleTimeout
        self._onIdle = onIdle
        self._idleCall: IDelayedCall | None = None
        self._lastTotal = -1
        # The destination-facing socket of each address family, and how to
        # send through it (see _sender); and how to send to the client.
        self._sides: dict[int, tuple[IListeningPort, _Send]] = {}
        self._sendToClient: _Send | None = None
        self._names: dict[str, tuple[float, list[str]]] = {}
        self._waiting: dict[str, list[tuple[bytes, int]]] = {}
        self._queued = 0
        self._contacted: set[str] = set()
        self._headers: dict[tuple[str, int], bytes] = {}  # For answers, by source.
        self._parsedHeaders: dict[bytes, tuple[str, int]] = {}  # The client's, by their bytes.
        self._closed = False

    # -- life cycle ---------------------------------------------------------

    def startProtocol(self) -> None:
        family = socket.AF_INET6 if ":" in self.clientHost else socket.AF_INET
        self._sendToClient = _sender(self.transport, family)
        if self._idleTimeout:
            self._idleCall = self._clock.callLater(self._idleTimeout, self._checkIdle)

    @property
    def _clock(self) -> IReactorTime:
        return self._reactor  # type: ignore[return-value]

    def close(self) -> None:
        """End the association: close every socket at once."""
        if self._closed:
            return
        self._closed = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        sides, self._sides = self._sides, {}
        for port, _ in sides.values():
            port.stopListening()
        if self.transport is not None:
            self.transport.stopListening()  # type: ignore[attr-defined]
        self._waiting.clear()

    def _checkIdle(self) -> None:
        counters = self.counters
        total = counters.datagramsUp + counters.datagramsDown
        if total == self._lastTotal:
            self._idleCall = None
            log.debug("UDP association for {client} idle", client=self.clientHost)
            if self._onIdle is not None:
                self._onIdle()
            return
        self._lastTotal = total
        assert self._idleTimeout is not None
        self._idleCall = self._clock.callLater(self._idleTimeout, self._checkIdle)

    # -- client to destination ----------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A datagram arrived on the client-facing socket."""
        host, port = addr
        if host != self.clientHost or (self.clientPort is not None and port != self.clientPort):
            self.counters.drop("not from the client")
            return
        # A header sent before (an IP literal, FRAG 0): its destination, as
        # parsed then.  A client mostly sends to a few destinations.
        size = wire.UDP_IP_HEADER_SIZES.get(datagram[3]) if len(datagram) > 3 else None
        if size is not None:
            known = self._parsedHeaders.get(datagram[:size])
            if known is not None:
                self._sendTo(known[0], known[1], datagram[size:])
                return
        try:
            header, payload = wire.parseUDPDatagram(datagram)
        except wire.ProtocolError:
            self.counters.drop("malformed header")
            return
        if self.clientPort is None:
            # Learned from the first well-formed datagram.
            self.clientPort = port
        if header.fragment:
            self.counters.drop("fragment")
            return
        destination = header.address
        if destination.type == wire.AddressType.DOMAIN:
            self._sendToName(destination.host, destination.port, payload)
            return
        parsedHeaders = self._parsedHeaders
        if len(parsedHeaders) >= _MAX_PARSED_HEADERS:
            parsedHeaders.clear()
        # The header is what the payload follows: the bytes looked up above.
        parsedHeaders[datagram[: len(datagram) - len(payload)]] = (destination.host, destination.port)
        self._sendTo(destination.host, destination.port, payload)

    def _allowed(self, name: str | None, ip: str | None, port: int) -> bool:
        """Whether the rules let datagrams go to this destination (remembered)."""
        if self._allowDestination is None:
            return True
        key = (name, ip, port)
        verdict = self._verdicts.get(key)
        if verdict is None:
            if len(self._verdicts) >= MAX_CONTACTED:
                self._verdicts.clear()
            verdict = self._verdicts[key] = self._allowDestination(name, ip, port)
        return verdict

    def _sendTo(self, ip: str, port: int, payload: bytes, name: str | None = None) -> None:
        if ip.startswith("::ffff:"):
            # IPv4-mapped: send (and so match answers) as the IPv4 address it is.
            ip = wire.Address.fromHost(ip, port).host
        if not self._allowed(name, ip, port):
            self.counters.drop("denied by the rules")
            return
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        side = self._sides.get(family) or self._openSide(family)
        if side is None:
            self.counters.drop("no socket for the address family")
            return
        try:
            side[1](payload, (ip, port))
        except (OSError, error.MessageLengthError, error.InvalidAddressError):
            self.counters.drop("send failed")
            return
        contacted = self._contacted
        if ip not in contacted:
            if len(contacted) >= MAX_CONTACTED:
                contacted.clear()
            contacted.add(ip)
        self.counters.datagramsUp += 1
        self.counters.bytesUp += len(payload)

    def _openSide(self, family: int) -> tuple[IListeningPort, _Send] | None:
        interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
        try:
            port = self._reactor.listenUDP(
                0, _DestinationSide(self), interface=interface, maxPacketSize=MAX_DATAGRAM
            )
        except error.CannotListenError:
            return None
        side = self._sides[family] = (port, _sender(port, family))
        return side

    def _sendToName(self, name: str, port: int, payload: bytes) -> None:
        if not self._allowed(name, None, port):
            self.counters.drop("denied by the rules")
            return
        cached = self._names.get(name)
        if cached is not None:
            expires, addresses = cached
            if expires > self._clock.seconds():
                self._sendToAny(name, addresses, port, payload)
                return
        if self._queued >= MAX_QUEUED:
            self.counters.drop("queue full while resolving")
            return
        self._queued += 1
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.append((payload, port))
            return
        self._waiting[name] = [(payload, port)]
        resolveName(self._resolver, name, "UDP", self._clock, RESOLVE_TIMEOUT).addCallbacks(
            lambda addresses: self._resolved(name, addresses),
            lambda failure: self._resolved(name, []),
        )

    def _resolved(self, name: str, addresses: list[str]) -> None:
        waiting = self._waiting.pop(name, [])
        self._queued -= len(waiting)
        if self._closed:
            return
        self._names[name] = (self._clock.seconds() + NAME_CACHE_SECONDS, addresses)
        for payload, port in waiting:
            self._sendToAny(name, addresses, port, payload)

    def _sendToAny(self, name: str, addresses: list[str], port: int, payload: bytes) -> None:
        """Send to the first of a name's C{addresses} the rules allow."""
        if not addresses:
            self.counters.drop("name did not resolve")
            return
        first = next((ip for ip in addresses if self._allowed(name, ip, port)), None)
        if first is None:
            self.counters.drop("denied by the rules")
            return
        self._sendTo(first, port, payload, name)

    # -- destination to client ----------------------------------------------

    def fromDestination(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        A datagram arrived from a destination: pass it to the client with
        a header, if it comes from an address the client has sent to.
        """
        if addr[0] not in self._contacted:
            self.counters.drop("not from a destination of the client")
            return
        if self.clientPort is None or self._sendToClient is None:
            self.counters.drop("client port not known yet")
            return
        header = self._headers.get(addr)
        if header is None:
            if len(self._headers) >= MAX_CONTACTED:
                self._headers.clear()
            header = wire.UDPHeader(0, wire.Address.fromHost(addr[0], addr[1])).encode()
            self._headers[addr] = header
        try:
            self._sendToClient(header + datagram, (self.clientHost, self.clientPort))
        except (OSError, error.MessageLengthError):
            self.counters.drop("send to client failed")
            return
        self.counters.datagramsDown += 1
        self.counters.bytesDown += len(datagram)


def _sender(port: object, family: int) -> _Send:
    """
    The fastest way to send datagrams through C{port} to IP addresses of
    C{family}: straight to its socket where L{canSendDatagramsDirectly}
    allows, else its own C{write}.
    """
    if canSendDatagramsDirectly(port, family):
        return partial(sendDatagramDirectly, port)  # type: ignore[arg-type]
    return port.write  # type: ignore[attr-defined,no-any-return]


def listenUDPRelay(
    reactor: IReactorUDP,
    relay: UDPRelay,
    interface: str,
    portRange: tuple[int, int] | None = None,
) -> IListeningPort:
    """
    Bind C{relay}'s client-facing socket on C{interface}: on a port the OS
    picks, or on a free one in C{portRange} (inclusive).

    @raise error.CannotListenError: if no port could be bound.
    """
    return listenInRange(
        lambda port: reactor.listenUDP(port, relay, interface=interface, maxPacketSize=MAX_DATAGRAM),
        portRange,
    )
