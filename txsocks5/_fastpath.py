"""
The speed-ups that rely on Twisted internals, kept in this one module.

- L{FastEPollReactor}: Twisted's poll loop wraps every I/O event in
  C{log.callWithLogger}, which looks up the selectable's log prefix and
  pushes a logging context, several microseconds per event, paid many
  times per connection.  This epoll reactor dispatches straight to
  C{_doReadOrWrite}, which already catches and logs what application code
  raises.  C{twistd socks5} installs it unless a reactor was chosen
  (C{twistd --reactor=...}).  The only visible difference: legacy
  C{log.msg} lines from Twisted's own transports show C{-} instead of the
  protocol's log prefix.  Its C{connectTCP} to an IP literal connects at
  once (no Deferred standing in for a resolution), calls C{connect()} once,
  and registers the socket with epoll once while connecting and once after:
  three system calls and two C{epoll_ctl} fewer per connection.
- L{writeDirectly}: a relay's write that sends straight to the socket when
  nothing is waiting in the transport's buffer, instead of buffering and
  waiting a trip through the poll loop for the socket to be writable.
- L{shutdownWriteDirectly}: a half-close (FIN) sent at once when nothing is
  waiting to be written, instead of asking to be told when the socket is
  writable (two C{epoll_ctl} calls and a trip through the poll loop).

Both are used only with the Twisted releases they were checked against
(L{TESTED_TWISTED}) and where the internals look as expected; otherwise
the public path (the stock reactor, C{transport.write}) is used.
"""

from __future__ import annotations

import errno
import socket
import sys
from os import strerror
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.interfaces import ITransport
from twisted.python.log import err

__all__ = [
    "FastEPollReactor",
    "TESTED_TWISTED",
    "canWriteDirectly",
    "shutdownWriteDirectly",
    "writeDirectly",
    "writePublicly",
    "fastReactorAvailable",
    "installFastReactor",
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


_fastConnectAvailable = (
    _twistedVersion() in TESTED_TWISTED
    and hasattr(tcp.Connector, "_makeTransport")
    and all(
        hasattr(tcp.Client, name)
        for name in ("resolveAddress", "_setRealAddress", "_connectDone", "failIfNotConnected")
    )
)


class _FastClient(tcp.Client):
    """
    A C{tcp.Client} that connects to an IP literal without a Deferred, with
    one C{connect()} call, and with one epoll registration for reading and
    writing while connecting (see L{FastEPollReactor.connectTCP}).
    """

    _connectStarted = False

    def _finishInit(self, whenDone: Any, skt: Any, err: Any, reactor: Any) -> None:
        if whenDone is None or self._requiresResolution or len(self.addr) != 2:
            super()._finishInit(whenDone, skt, err, reactor)  # type: ignore[no-untyped-call]
            return
        # An IPv4 literal: start the attempt now rather than from a
        # callLater(0).  Only an attempt still under way is begun here; one
        # that ends at once (rare) is reported from the reactor, as Twisted
        # does, once the connector has finished setting up.
        self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[arg-type]
        self.realAddress = self.addr
        self.doWrite = self.doConnect  # type: ignore[method-assign]
        self.doRead = self.doConnect  # type: ignore[method-assign]
        result = self._startConnecting()
        if result is not None:
            reactor.callLater(0, self._finishConnecting, result)

    def resolveAddress(self) -> None:
        if self._requiresResolution:
            super().resolveAddress()  # type: ignore[no-untyped-call]
            return
        try:
            self._setRealAddress(self.addr)  # type: ignore[no-untyped-call]
        except Exception as e:
            self.failIfNotConnected(e)  # type: ignore[no-untyped-call]

    def doConnect(self) -> None:
        self.doWrite = self.doConnect  # type: ignore[method-assign]
        self.doRead = self.doConnect  # type: ignore[method-assign]
        if not hasattr(self, "connector"):
            return
        if self._connectStarted:
            # Writable (or readable with an error): the attempt is over.
            self._finishConnecting(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            return
        result = self._startConnecting()
        if result is not None:
            self._finishConnecting(result)

    def _startConnecting(self) -> int | None:
        """Call C{connect()}: C{None} while under way (then watched), else its result."""
        self._connectStarted = True
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            # Reading too: a refused attempt reports EPOLLIN with its error.
            self.reactor._addReaderAndWriter(self)  # type: ignore[attr-defined]
            return None
        return 0 if result == errno.EISCONN else int(result)

    def _finishConnecting(self, result: int) -> None:
        """The attempt ended with errno C{result} (0: connected)."""
        if not hasattr(self, "connector"):
            return  # Stopped meanwhile.
        if result:
            self.failIfNotConnected(error.getConnectError((result, strerror(result))))  # type: ignore[no-untyped-call]
            return
        del self.doWrite
        del self.doRead
        self.stopWriting()  # Reading stays registered for the connection.
        self._connectDone()  # type: ignore[no-untyped-call]


class _FastConnector(tcp.Connector):
    """A C{tcp.Connector} whose attempts are L{_FastClient}s."""

    def _makeTransport(self) -> tcp.Client:
        return _FastClient(self.host, self.port, self.bindAddress, self, self.reactor)


if epollreactor is not None:

    class FastEPollReactor(epollreactor.EPollReactor):
        """L{epollreactor.EPollReactor} without the per-event logging context."""

        def connectTCP(
            self,
            host: str,
            port: int,
            factory: Any,
            timeout: float = 30.0,
            bindAddress: Any = None,
        ) -> Any:
            """Connect as Twisted does, through L{_FastClient} attempts."""
            if not _fastConnectAvailable:
                return super().connectTCP(host, port, factory, timeout, bindAddress)
            connector = _FastConnector(host, port, factory, timeout, bindAddress, self)
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

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and dispatch each to its selectable."""
            if timeout is None:
                timeout = -1  # Wait indefinitely.
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as e:
                if e.errno == errno.EINTR:
                    return
                raise
            dispatch = self._doReadOrWrite
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
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


def writePublicly(transport: ITransport, data: bytes) -> None:
    """Write C{data} to C{transport} with its own C{write}."""
    transport.write(data)
