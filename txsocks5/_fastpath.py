"""
The speed-ups that rely on Twisted internals, kept in this one module.

- L{FastEPollReactor}: Twisted's poll loop wraps every I/O event in
  C{log.callWithLogger}, which looks up the selectable's log prefix and
  pushes a logging context, several microseconds per event, paid many
  times per connection.  This epoll reactor dispatches straight to
  C{_doReadOrWrite}, which already catches and logs what application code
  raises, or, for an event that is only readable (most of them), calls
  C{doRead} and handles its result as C{_doReadOrWrite} would, without
  its checks for the other events (with the main loop below: 20.6 -> 18.9
  us of CPU per ping-pong round trip).  C{twistd socks5} installs it
  unless a reactor was chosen
  (C{twistd --reactor=...}); C{--reactor=txsocks5} chooses it for any
  twistd or trial run.  The only visible difference: legacy C{log.msg}
  lines from Twisted's own transports show C{-} instead of the protocol's
  log prefix.  Its plain TCP connections (C{listenTCP}, C{adoptStreamPort}
  for C{--workers} and systemd sockets, and C{connectTCP} to an IP literal)
  use the lean transports of L{txsocks5._leantcp}: about 12% less CPU per
  short SOCKS5 session than Twisted's C{tcp.Server} and C{tcp.Client}.
  It can also poll busily (C{setBusyPolling}, L{txsocks5.busypoll}).  Its
  main loop runs Twisted's timed-call bookkeeping (C{runUntilCurrent},
  C{timeout}) only on turns that have a timed call due or new, a call from
  a thread or a stop: a turn that only relays data skips it (64-byte
  ping-pong, four alternating runs: 20.7 -> 19.5 us of CPU per round trip).
- L{writeDirectly}: a relay's write that sends straight to the socket when
  nothing is waiting in the transport's buffer, instead of buffering and
  waiting a trip through the poll loop for the socket to be writable.
- L{shutdownWriteDirectly}: a half-close (FIN) sent at once when nothing is
  waiting to be written, instead of asking to be told when the socket is
  writable (two C{epoll_ctl} calls and a trip through the poll loop).
- L{sendDatagramDirectly}: a UDP relay's datagram sent with C{sendto}
  straight away.  C{udp.Port.write} first checks that the address is an IP
  address of the port's family, with up to six calls of C{isIPAddress} and
  C{isIPv6Address} per datagram, about a sixth of the relay's Python time;
  a relay knows its addresses are IP addresses of the right family, and
  checks the family once per socket (L{canSendDatagramsDirectly}).

These are used only with the Twisted releases they were checked against
(L{TESTED_TWISTED}) and where the internals look as expected; otherwise
the public path (the stock reactor, C{transport.write}) is used.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import error, tcp, udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.python.log import err

from txsocks5._leantcp import LeanConnector, TunedLeanServer, tuneListeningSocket
from txsocks5.busypoll import BusyPolling
from txsocks5.deadlines import DeadlinesByLength

__all__ = [
    "FastEPollReactor",
    "TESTED_TWISTED",
    "canSendDatagramsDirectly",
    "canWriteDirectly",
    "sendDatagramDirectly",
    "shutdownWriteDirectly",
    "writeDirectly",
    "writePublicly",
    "fastReactorAvailable",
    "installFastReactor",
    "install",
]

#: Twisted releases (major.minor) whose epoll reactor internals were checked.
TESTED_TWISTED = ("26.10",)

try:
    from twisted.internet import epollreactor
except ImportError:  # Not Linux.
    epollreactor = None  # type: ignore[assignment]


def _twistedVersion() -> str:
    import twisted

    return ".".join(twisted.__version__.split(".")[:2])


def fastReactorAvailable() -> bool:
    """Whether L{FastEPollReactor} can be used with this Twisted."""
    if epollreactor is None or _twistedVersion() not in TESTED_TWISTED:
        return False
    base = epollreactor.EPollReactor
    return all(hasattr(base, name) for name in ("_doReadOrWrite", "doPoll"))


_directWritesAvailable = _twistedVersion() in TESTED_TWISTED and all(
    hasattr(tcp.Connection, name)
    for name in ("offset", "dataBuffer", "_writeDisconnecting", "_writeDisconnected", "_closeWriteConnection")
)

#: Whether C{udp.Port.write} still sends an unconnected datagram with the
#: socket's C{sendto} once the address passed its checks, as checked.
_directDatagramsAvailable = _twistedVersion() in TESTED_TWISTED and all(
    hasattr(udp.Port, name) for name in ("addressFamily", "write", "connect")
)


#: Whether C{tcp.Port} still builds its connections' transports from its
#: C{transport} attribute (with C{tcp.Server}'s arguments), as documented.
_leanPortAvailable = (
    _twistedVersion() in TESTED_TWISTED
    and getattr(tcp.Port, "transport", None) is tcp.Server
    and hasattr(tcp.Port, "_fromListeningDescriptor")
)


#: The reactor attributes L{FastEPollReactor.mainLoop} reads: where Twisted
#: keeps timed calls (new and pending), calls from threads and a stop.
_MAIN_LOOP_STATE = ("_pendingTimedCalls", "_newTimedCalls", "threadCallQueue", "_justStopped")

#: The longest wait Twisted's C{timeout()} allows (epoll_wait's limit, in seconds).
_LONGEST_WAIT = 2147483

#: Twisted's main loop logs as C{twisted.internet.base}; so does this one.
_reactorLog = Logger(namespace="twisted.internet.base")
_mainLoopFailures = _reactorLog.failureHandler("Unexpected error in main loop")


class _LeanPort(tcp.Port):
    """
    A TCP listening port whose accepted connections are lean transports,
    with TCP_NODELAY and SO_KEEPALIVE on from the start (as every tunnel
    wants them).
    """

    transport = TunedLeanServer  # type: ignore[assignment]

    def createInternetSocket(self) -> Any:
        """The listening socket, tuned to pass its options on."""
        skt = super().createInternetSocket()
        tuneListeningSocket(skt)
        return skt

    @classmethod
    def adopt(cls, reactor: Any, fileDescriptor: int, addressFamily: int, factory: Any) -> _LeanPort:
        """
        Listen on an inherited listening socket (C{--workers}, systemd), as
        C{IReactorSocket.adoptStreamPort} does, tuning it first.
        """
        port: _LeanPort = cls._fromListeningDescriptor(  # type: ignore[attr-defined]
            reactor, fileDescriptor, addressFamily, factory
        )
        tuneListeningSocket(port._preexistingSocket)  # type: ignore[arg-type]
        port.startListening()
        return port


if epollreactor is not None:

    class FastEPollReactor(epollreactor.EPollReactor):
        """L{epollreactor.EPollReactor} without the per-event logging context."""

        def __init__(self) -> None:
            super().__init__()
            # Timers lean connection attempts share, one per connect timeout.
            self._leanConnectTimers: DeadlinesByLength[LeanConnector] = DeadlinesByLength(
                self, LeanConnector._timedOut
            )
            self._busyPolling: BusyPolling | None = None
            # Whether this Twisted keeps the state mainLoop reads as checked.
            self._leanMainLoop = _twistedVersion() in TESTED_TWISTED and all(
                hasattr(self, name) for name in _MAIN_LOOP_STATE
            )

        def setBusyPolling(self, limit: float) -> None:
            """
            Poll without sleeping for up to C{limit} seconds before waiting
            for events (see L{txsocks5.busypoll}); 0 turns it off.
            """
            self._busyPolling = BusyPolling(limit) if limit > 0 else None

        def listenTCP(
            self,
            port: int,
            factory: Any,
            backlog: int = 50,
            interface: str = "",
        ) -> Any:
            """Listen as Twisted does; accepted connections get lean transports."""
            if not _leanPortAvailable:
                return super().listenTCP(port, factory, backlog, interface)
            listening = _LeanPort(port, factory, backlog, interface, self)
            listening.startListening()
            return listening

        def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
            """Adopt a listening socket as Twisted does; TCP ones get lean transports."""
            if not _leanPortAvailable or addressFamily not in (socket.AF_INET, socket.AF_INET6):
                return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
            return _LeanPort.adopt(self, fileDescriptor, addressFamily, factory)

        def connectTCP(
            self,
            host: str,
            port: int,
            factory: Any,
            timeout: float = 30.0,
            bindAddress: Any = None,
        ) -> Any:
            """Connect as Twisted does; to an IP literal, with a lean transport."""
            if not (isIPAddress(host) or isIPv6Address(host)):
                return super().connectTCP(host, port, factory, timeout, bindAddress)
            connector = LeanConnector(
                self, host, port, factory, timeout, bindAddress, self._leanConnectTimers.get(timeout)
            )
            connector.connect()
            return connector

        def _addReaderAndWriter(self, selectable: Any) -> None:
            """Watch C{selectable} for reading and writing with one C{epoll_ctl}."""
            fd = selectable.fileno()
            if fd in self._reads or fd in self._writes:
                self.addReader(selectable)
                self.addWriter(selectable)
                return
            self._poller.register(fd, epollreactor.EPOLLIN | epollreactor.EPOLLOUT)
            self._reads.add(fd)
            self._writes.add(fd)
            self._selectables[fd] = selectable

        def mainLoop(self) -> None:
            """
            Run Twisted's main loop, but call its timed-call bookkeeping
            (C{runUntilCurrent} and C{timeout}) only on the turns that have
            something for it: a timed call due or newly scheduled, a call
            from another thread, or a stop to carry out.  Other turns only
            work out how long to wait.  An error is logged and the loop goes
            on, as Twisted's does.
            """
            if not self._leanMainLoop:
                super().mainLoop()
                return
            while self._started:
                with _mainLoopFailures:
                    self._runTurns()
            _reactorLog.info("Main loop terminated.")

        def _runTurns(self) -> None:
            seconds = self.seconds
            doIteration = self.doIteration
            while self._started:
                pending = self._pendingTimedCalls
                wait = pending[0].time - seconds() if pending else None
                if (
                    self.threadCallQueue
                    or self._newTimedCalls
                    or self._justStopped
                    or (wait is not None and wait <= 0)
                ):
                    self.runUntilCurrent()
                    timeout = self.timeout()
                else:
                    timeout = None if wait is None else min(wait, _LONGEST_WAIT)
                doIteration(timeout if self.running else 0)

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and dispatch each to its selectable."""
            if timeout is None:
                timeout = -1  # Wait indefinitely.
            busy = self._busyPolling
            try:
                if busy is None:
                    events = self._poller.poll(timeout, len(self._selectables))
                else:
                    events = busy.poll(self._poller, timeout, len(self._selectables))
            except OSError as e:
                if e.errno == errno.EINTR:
                    return
                raise
            dispatch = self._doReadOrWrite
            selectables = self._selectables
            readable = epollreactor.EPOLLIN
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    if event == readable:
                        # Only readable, the common case: what _doReadOrWrite
                        # would do, without its checks for other events.
                        try:
                            why = selectable.doRead()
                        except BaseException as e:
                            why = e
                            err(None, "Unhandled error in doRead")
                        if why:
                            self._disconnectSelectable(selectable, why, True)
                    else:
                        dispatch(selectable, fd, event)
                except Exception:
                    err(None, "Unhandled error dispatching an I/O event")

        doIteration = doPoll

else:  # pragma: no cover - only without epoll
    FastEPollReactor = None  # type: ignore[assignment,misc]


def installFastReactor() -> bool:
    """
    Install L{FastEPollReactor} as the global reactor, unless a reactor is
    installed already or it is not available; return whether it was.
    """
    if "twisted.internet.reactor" in sys.modules or not fastReactorAvailable():
        return False
    from twisted.internet.main import installReactor

    installReactor(FastEPollReactor())
    return True


def install() -> None:
    """
    Install L{FastEPollReactor} (or, where it cannot be used, Twisted's own
    epoll reactor) as the global reactor: what C{--reactor=txsocks5} does
    for C{twistd} and C{trial}.
    """
    if fastReactorAvailable():
        from twisted.internet.main import installReactor

        installReactor(FastEPollReactor())
    else:
        epollreactor.install()


def canWriteDirectly(transport: object) -> bool:
    """
    Whether L{writeDirectly} may be used with C{transport}: a plain
    (non-TLS) Twisted TCP connection, with a Twisted release it was
    checked against.
    """
    return _directWritesAvailable and isinstance(transport, tcp.Connection) and not transport.TLS


def writeDirectly(transport: tcp.Connection, data: bytes) -> None:
    """
    Write C{data} to C{transport} as its C{write} would, but send it to the
    socket at once when nothing is waiting to be written: that saves a trip
    through the poll loop per chunk.  What the socket does not take is left
    to C{transport.write} (and so to its producer pausing).
    """
    conn = transport
    if (
        not conn._tempDataLen
        and conn.offset == len(conn.dataBuffer)
        and conn.connected
        and not conn.disconnecting
        and not conn._writeDisconnecting
        and not conn._writeDisconnected
    ):
        try:
            sent = conn.socket.send(data)
        except OSError:
            sent = 0  # Full (EAGAIN), or an error Twisted's own write will meet.
        if sent == len(data):
            return
        data = data[sent:]
    conn.write(data)


def shutdownWriteDirectly(transport: tcp.Connection) -> bool:
    """
    Half-close C{transport} (as its C{loseWriteConnection} would) at once,
    if nothing is waiting to be written and no producer is registered;
    return whether it did.  Only for transports L{canWriteDirectly} accepts.
    """
    conn = transport
    if (
        conn.connected
        and not conn.disconnecting
        and not conn._writeDisconnecting
        and not conn._writeDisconnected
        and conn.producer is None
        and not conn._tempDataLen
        and conn.offset == len(conn.dataBuffer)
    ):
        # What FileDescriptor.doWrite does once the buffer is empty.
        conn._writeDisconnected = True
        conn._closeWriteConnection()
        return True
    return False


def canSendDatagramsDirectly(port: object, family: int) -> bool:
    """
    Whether L{sendDatagramDirectly} may be used with C{port} for addresses
    of C{family} (C{socket.AF_INET} or C{socket.AF_INET6}): a Twisted UDP
    port of that family, not connected, with a Twisted release it was
    checked against.
    """
    return (
        _directDatagramsAvailable
        and type(port) is udp.Port
        and port.addressFamily == family
        and getattr(port, "_connectedAddr", True) is None
        and getattr(port, "socket", None) is not None
    )


def sendDatagramDirectly(port: udp.Port, datagram: bytes, addr: tuple[str, int]) -> None:
    """
    Send C{datagram} to C{addr} as C{port.write} would, but without its
    checks of the address: only for a port L{canSendDatagramsDirectly}
    accepts, and an C{addr} whose host is an IP address (never a name,
    which C{sendto} would resolve, blocking) of the family it was accepted
    for.

    @raise error.MessageLengthError: if the datagram is too long.
    @raise OSError: if it could not be sent (a full socket buffer, say).
    """
    try:
        port.socket.sendto(datagram, addr)  # Python retries after EINTR itself (PEP 475).
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            raise error.MessageLengthError("message too long") from None
        if e.errno != errno.ECONNREFUSED:  # An earlier datagram's ICMP error: ignored, as Twisted does.
            raise


def writePublicly(transport: ITransport, data: bytes) -> None:
    """Write C{data} to C{transport} with its own C{write}."""
    transport.write(data)
