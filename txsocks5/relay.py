"""
The TCP relay: joins a client connection and a target connection once a
request has succeeded.

Data moves with streaming producers in both directions, so a slow reader on
one side pauses reading on the other and memory stays bounded.  A FIN from
either side is passed on as a half-close, and the other direction keeps
flowing until it ends too (or the fin-wait timeout fires).  The per-chunk
path is a write to the peer and an integer add, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocks5._fastpath import canWriteDirectly, shutdownWriteDirectly, writeDirectly, writePublicly
from txsocks5._leantcp import LeanConnection, lendReadsTo
from txsocks5.deadlines import Deadlines
from txsocks5.interfaces import IConnectingFactory

__all__ = ["TCPRelay", "TargetProtocol", "TargetFactory", "READ_SIZE", "FIRST_READ_SIZE"]

#: Bytes a bulk tunnel reads from a socket at once.  Once the relay's
#: per-chunk Python work is gone, syscalls are the cost, so bigger reads mean
#: fewer of them: 96-192 KiB measured 20-40% faster bulk than Twisted's
#: 64 KiB; 256 KiB and more were slower (glibc hands such buffers out with
#: mmap).  Every read allocates its full size first, which costs short
#: sessions about 15% of handshake rate, so a side reads this much only once
#: a read has filled Twisted's default (L{FIRST_READ_SIZE}).  A Twisted
#: transport also pauses its producer once this much waits to be written,
#: so it bounds what a slow reader holds up too.  (A lean connection
#: relaying to another instead reads L{txsocks5._leantcp.LENT_READ_SIZE}
#: at once into a buffer they all share.)
READ_SIZE = 128 * 1024

#: Twisted's own read size, which every tunnel starts with.
FIRST_READ_SIZE = 64 * 1024


def _readMore(transport: ITransport, peer: ITransport) -> None:
    """
    A side whose read filled the first read size is bulk: read more at
    once, into the shared buffer if it can lend its reads to C{peer}.
    """
    if getattr(transport, "bufferSize", None) == FIRST_READ_SIZE:
        transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]
        lendReadsTo(transport, peer)


def _tuneSocket(transport: ITransport) -> None:
    """
    Set a tunnel's TCP options on C{transport}, as Dante does:

      - TCP_NODELAY (Nagle's algorithm off): a relay passes on what it reads
        at once.  With Nagle on, a small write that follows another not yet
        acknowledged waits for the acknowledgement, which a peer waiting for
        more data delays by up to 40 ms (delayed ACK): a stall per request
        that the endpoints themselves had avoided.
      - SO_KEEPALIVE: a peer that vanished (power loss, a NAT that forgot
        the flow) is noticed by the kernel (after about two hours with
        Linux's defaults) instead of holding the tunnel open for ever.
    """
    try:
        transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        transport.setTcpKeepAlive(True)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pass  # Not TCP after all (a UNIX socket, or TLS over one).


def _shutdownWrite(transport: ITransport) -> None:
    """Send a FIN on C{transport}, or close it if it cannot half-close."""
    if canWriteDirectly(transport) and shutdownWriteDirectly(transport):  # type: ignore[arg-type]
        return
    loseWrite = getattr(transport, "loseWriteConnection", None)
    if loseWrite is not None:
        loseWrite()
    else:
        transport.loseConnection()


def _writerFor(transport: ITransport) -> Callable[[Any, bytes], None]:
    """
    The function a relay writes to C{transport} with, called with the
    transport and the data: L{writeDirectly} for Twisted's TCP transports, a
    lean connection's own C{write} (its class's function, so that a tunnel
    keeps no bound method), else L{writePublicly}.
    """
    if canWriteDirectly(transport):
        return writeDirectly
    if isinstance(transport, LeanConnection):
        write: Callable[[Any, bytes], None] = type(transport).write
        return write
    return writePublicly


def _loseConnectionNow(transport: ITransport) -> None:
    """
    Close C{transport} once what it holds is sent; a lean connection with
    nothing left to send closes within this call (the relay is ready for
    its protocol to hear of it at once), which spares a trip through the
    reactor.
    """
    if isinstance(transport, LeanConnection):
        transport.loseConnectionNow()
    else:
        transport.loseConnection()


class TCPRelay:
    """
    Moves bytes between a client transport and a target transport until
    both directions have ended.

    The protocols that own the transports report their events here
    (C{clientData}, C{targetReadClosed}, C{clientLost}, ...).

    @param clock: the reactor's clock, for the timeouts.
    @param idleTimeout: seconds without data after which both connections
        are cut; C{None} for never.
    @param finWaitTimeout: seconds the tunnel may stay half-closed; C{None}
        for ever.
    @param finWaitDeadlines: a timer shared by many tunnels for their
        fin-wait timeouts (used if its timeout is C{finWaitTimeout}),
        instead of a C{DelayedCall} per tunnel.

    @ivar bytesUp: bytes relayed from the client to the target.
    @ivar bytesDown: bytes relayed from the target to the client.
    @ivar closeReason: why the relay cut the connections (C{"idle timeout"},
        C{"fin-wait timeout"}), or C{None} if the peers ended it.
    """

    def __init__(
        self,
        client: ITransport,
        target: ITransport,
        clock: IReactorTime,
        idleTimeout: float | None = None,
        finWaitTimeout: float | None = None,
        finWaitDeadlines: Deadlines[TCPRelay] | None = None,
    ) -> None:
        self.client = client
        self.target = target
        self.bytesUp = 0
        self.bytesDown = 0
        self.closeReason: str | None = None
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._finWaitTimeout = finWaitTimeout
        # A timer shared with other tunnels, if one with the same timeout is given.
        self._finWaitDeadlines = (
            finWaitDeadlines
            if finWaitDeadlines is not None and finWaitDeadlines.timeout == finWaitTimeout
            else None
        )
        self._finWaiting = False
        self._upEnded = False
        self._downEnded = False
        self._clientProduces = False  # registered as the target's producer
        self._targetProduces = False
        self._finished = False
        self._idleCall: IDelayedCall | None = None
        self._finWaitCall: IDelayedCall | None = None
        self._lastTotal = -1
        # Module functions, not closures: nothing more to keep per tunnel.
        self._writeTarget = _writerFor(target)
        self._writeClient = _writerFor(client)

    def start(self, pending: bytes = b"", clientEnded: bool = False) -> None:
        """
        Begin relaying.

        @param pending: bytes the client sent after its request, to be
            delivered to the target first.
        @param clientEnded: whether the client has already sent its FIN.
        """
        _tuneSocket(self.client)
        _tuneSocket(self.target)
        self.target.registerProducer(self.client, True)  # type: ignore[attr-defined]
        self.client.registerProducer(self.target, True)  # type: ignore[attr-defined]
        self._clientProduces = self._targetProduces = True
        if pending:
            self.clientData(pending)
        if self._idleTimeout:
            self._idleCall = self._clock.callLater(self._idleTimeout, self._checkIdle)
        if clientEnded:
            self.clientReadClosed()

    # Per-chunk paths: one write, one add.
    def clientData(self, data: bytes) -> None:
        """The client sent C{data}: pass it to the target."""
        size = len(data)
        self.bytesUp += size
        if size == FIRST_READ_SIZE:
            _readMore(self.client, self.target)
        self._writeTarget(self.target, data)

    def targetData(self, data: bytes) -> None:
        """The target sent C{data}: pass it to the client."""
        size = len(data)
        self.bytesDown += size
        if size == FIRST_READ_SIZE:
            _readMore(self.target, self.client)
        self._writeClient(self.client, data)

    def clientReadClosed(self) -> None:
        """The client sent a FIN: half-close towards the target."""
        if self._upEnded or self._finished:
            return
        self._upEnded = True
        # Nothing more will be read from the client: stop it being resumed.
        self._stopClientProducing()
        if self._downEnded:
            self._bothEnded()
        else:
            _shutdownWrite(self.target)
            self._startFinWait()

    def targetReadClosed(self) -> None:
        """The target sent a FIN: half-close towards the client."""
        if self._downEnded or self._finished:
            return
        self._downEnded = True
        self._stopTargetProducing()
        if self._upEnded:
            self._bothEnded()
        else:
            _shutdownWrite(self.client)
            self._startFinWait()

    def clientLost(self) -> None:
        """The client connection is gone: close the target once its data is sent."""
        if self._finished:
            return  # The target is being closed already.
        self._finish()
        self.target.loseConnection()

    def targetLost(self) -> None:
        """The target connection is gone: close the client once its data is sent."""
        if self._finished:
            return  # The client is being closed already.
        self._finish()
        self.client.loseConnection()

    def _bothEnded(self) -> None:
        """
        Both directions have ended: close both connections once their data
        is sent.  Closing sends the FIN that the second half-close would
        have, so that one is not made (a C{shutdown()} less per tunnel).
        """
        self._finish()
        _loseConnectionNow(self.target)
        _loseConnectionNow(self.client)

    def _startFinWait(self) -> None:
        """One direction has ended: give the other at most the fin-wait timeout."""
        if self._finWaitTimeout and not self._finWaiting and not self._finished:
            self._finWaiting = True
            if self._finWaitDeadlines is not None:
                self._finWaitDeadlines.start(self)
            else:
                self._finWaitCall = self._clock.callLater(self._finWaitTimeout, self._finWaitTimedOut)

    def _finish(self) -> None:
        """Stop timers and producers; the connections are closing."""
        if self._finished:
            return
        self._finished = True
        for call in (self._idleCall, self._finWaitCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._finWaitCall = None
        if self._finWaiting and self._finWaitDeadlines is not None:
            self._finWaitDeadlines.cancel(self)
        # loseConnection waits for a registered producer: let go of them.
        self._stopClientProducing()
        self._stopTargetProducing()

    def _stopClientProducing(self) -> None:
        if self._clientProduces:
            self._clientProduces = False
            self.target.unregisterProducer()  # type: ignore[attr-defined]

    def _stopTargetProducing(self) -> None:
        if self._targetProduces:
            self._targetProduces = False
            self.client.unregisterProducer()  # type: ignore[attr-defined]

    def _checkIdle(self) -> None:
        total = self.bytesUp + self.bytesDown
        if total == self._lastTotal:
            self._abort("idle timeout")
            return
        self._lastTotal = total
        assert self._idleTimeout is not None
        self._idleCall = self._clock.callLater(self._idleTimeout, self._checkIdle)

    def _finWaitTimedOut(self) -> None:
        self._finWaitCall = None
        self._abort("fin-wait timeout")

    def _abort(self, reason: str) -> None:
        self._idleCall = self._finWaitCall = None
        self.closeReason = reason
        self._finish()
        self.client.abortConnection()  # type: ignore[attr-defined]
        self.target.abortConnection()  # type: ignore[attr-defined]


@implementer(IHalfCloseableProtocol)
class TargetProtocol(Protocol):
    """
    The server's side of a connection to a destination: reports to a
    L{TCPRelay} once one is attached, and holds anything that arrives
    before then.
    """

    relay: TCPRelay | None = None
    _early: list[bytes] | None = None
    _earlyEnded = False
    _earlyLost = False

    def connectionMade(self) -> None:
        factory = getattr(self, "factory", None)
        if isinstance(factory, TargetFactory):
            factory._made(self)

    def attach(self, relay: TCPRelay) -> None:
        """Report to C{relay} from now on, after replaying what came early."""
        self.relay = relay
        early, self._early = self._early, None
        for data in early or ():
            relay.targetData(data)
        if self._earlyLost:
            relay.targetLost()
        elif self._earlyEnded:
            relay.targetReadClosed()

    def dataReceived(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.targetData(data)
        elif self._early is None:
            self._early = [data]
        else:
            self._early.append(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.targetReadClosed()
        else:
            self._earlyEnded = True

    def writeConnectionLost(self) -> None:
        """Our FIN to the target was sent; the relay already knows."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            self.relay.targetLost()
        else:
            self._earlyLost = True


@implementer(IConnectingFactory)
class TargetFactory(ClientFactory):
    """
    Builds the L{TargetProtocol} of one outbound connection, and tells when
    it is connected (L{IConnectingFactory}).
    """

    protocol = TargetProtocol
    noisy = False

    def __init__(self) -> None:
        self._connector: IConnector | None = None
        self._connected: Deferred[IProtocol] | None = Deferred(self._cancel)

    def whenConnected(self) -> Deferred[IProtocol]:
        """
        Fires with the connected L{TargetProtocol}; see
        L{IConnectingFactory}.  Ask before the attempt ends: the factory
        forgets the Deferred once it has fired.
        """
        if self._connected is None:
            raise RuntimeError("the connection attempt has already ended")
        return self._connected

    def _ended(self) -> Deferred[IProtocol] | None:
        """
        The Deferred to fire (if not fired yet) now that the attempt is over.
        The factory lets go of it and of the connector, so that the attempt
        leaves no reference cycle behind (which only the garbage collector
        could free).
        """
        self._connector = None
        connected, self._connected = self._connected, None
        return connected

    def startedConnecting(self, connector: IConnector) -> None:
        self._connector = connector

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        connected = self._ended()
        if connected is not None and not connected.called:
            connected.errback(reason)

    def _made(self, protocol: TargetProtocol) -> None:
        """C{protocol}'s connection is made."""
        connected = self._ended()
        if connected is not None and not connected.called:
            connected.callback(protocol)

    def _cancel(self, d: Deferred[IProtocol]) -> None:
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.stopConnecting()
