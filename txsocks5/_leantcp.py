"""
Lean TCP transports: Twisted TCP connections with less Python per event.

A short SOCKS5 session is a handful of small reads and writes on two
sockets, and with Twisted's own C{tcp.Server} and C{tcp.Client} most of its
CPU time goes to the transports' set-up, bookkeeping and teardown rather
than to the system calls (a bare Python epoll loop does the same session in
less than half the time).  L{LeanConnection} is a complete TCP transport
(L{ITCPTransport}, a streaming consumer and producer, half-close) that does
the same work more directly:

  - C{write} sends at once when nothing is waiting to be written, and only
    what the socket does not take is buffered (the producer is paused past
    C{bufferSize}, as Twisted does);
  - C{loseConnection} and C{loseWriteConnection} act at once when nothing is
    buffered, instead of a trip through the poll loop;
  - a closed socket is just closed (no C{shutdown()} first), and the end of
    a connection reuses prebuilt L{Failure}s;
  - an outgoing connection (L{LeanConnector}) is made non-blocking by
    C{socket()} itself, calls C{connect()} once and is watched for reading
    and writing with one registration;
  - a connection accepted by a listening socket that had TCP_NODELAY and
    SO_KEEPALIVE on (L{tuneListeningSocket}) has them already (Linux
    passes them on), so a relay setting them again costs no system call;
  - a relay that passes what one lean connection reads to another can have
    it lend its reads (L{lendReadsTo}): each read goes into one buffer that
    all lending connections share and reaches the protocol as a
    C{memoryview}, so bulk relaying allocates nothing per read and can read
    more at once.

They use only the reactor's public L{IReactorFDSet} and L{IReactorTime}
interfaces.  L{txsocks5._fastpath.FastEPollReactor} uses them for plain TCP
(C{listenTCP}, and C{connectTCP} to IP literals); TLS, UNIX sockets and
every other reactor keep Twisted's transports.
"""

from __future__ import annotations

import errno
import socket
import struct
from contextlib import suppress
from os import strerror
from typing import Any

from twisted.internet import address, error, main
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReadWriteDescriptor,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocks5.deadlines import Deadlines

__all__ = [
    "LeanConnection",
    "LeanServer",
    "TunedLeanServer",
    "LeanClient",
    "LeanConnector",
    "LENT_READ_SIZE",
    "lendReadsTo",
    "tuneListeningSocket",
]

_log = Logger()

#: What a connection closed in order reports (shared, as Twisted's reactor does).
_DONE = Failure(main.CONNECTION_DONE)
#: What an aborted connection reports.
_ABORTED = Failure(error.ConnectionAborted())

#: SO_LINGER on with a zero timeout: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR)

#: C{socket()} flag for a socket that is non-blocking from the start (Linux).
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

#: Bytes a connection that lends its reads reads at once.  One tunnel's bulk
#: relaying went from 1,430 MB/s down and 1,462 up (128 KiB read into a new
#: C{bytes} each time) to 1,588 and 1,579 (256 KiB into the shared buffer);
#: 512 KiB was no faster.  Without the allocation, bigger reads no longer
#: pay for glibc's mmap threshold.
LENT_READ_SIZE = 256 * 1024

#: The buffer every lending connection reads into, made on first use.  A
#: reactor runs in one thread and a read is passed on before the next one,
#: so one buffer serves them all.
_lentBuffer: memoryview | None = None


def _sharedReadBuffer() -> memoryview:
    """The buffer that lending connections read into."""
    global _lentBuffer
    if _lentBuffer is None:
        _lentBuffer = memoryview(bytearray(LENT_READ_SIZE))
    return _lentBuffer


def lendReadsTo(reader: object, writer: object) -> bool:
    """
    Have C{reader} lend its reads (L{LeanConnection.lendReads}) if it and
    C{writer} are both lean, so that what C{writer.write} keeps of them is
    copied; return whether it does.  For a relay whose protocol passes each
    of C{reader}'s reads straight to C{writer}.
    """
    if isinstance(reader, LeanConnection) and isinstance(writer, LeanConnection):
        reader.lendReads()
        return True
    return False


def tuneListeningSocket(skt: socket.socket) -> None:
    """
    Turn TCP_NODELAY and SO_KEEPALIVE on for a listening socket, so that
    the connections it accepts start with them on (Linux copies a listening
    socket's options to the connections it accepts); see L{TunedLeanServer}.
    """
    skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    skt.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _toAddress(sockaddr: Any) -> address.IPv4Address | address.IPv6Address:
    """A Twisted address for a TCP socket address tuple."""
    if len(sockaddr) == 4:
        host = socket.getnameinfo(sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        return address.IPv6Address("TCP", host, *sockaddr[1:])
    return address.IPv4Address("TCP", sockaddr[0], sockaddr[1])


@implementer(
    ITCPTransport,
    ISystemHandle,
    IConsumer,
    IPushProducer,
    IHalfCloseableDescriptor,
    IReadWriteDescriptor,
)
class LeanConnection:
    """
    A connected TCP socket's transport, driven by a reactor's
    L{IReactorFDSet}.

    @ivar bufferSize: bytes read at once (unless the reads are lent: see
        L{lendReads}), and how much may wait to be written before a
        streaming producer is paused.
    @ivar connected: whether the connection is still open.
    @ivar disconnecting: whether C{loseConnection} was called.
    """

    TLS = False
    bufferSize = 65536
    connected = True
    disconnecting = False
    disconnected = False
    producer: IProducer | None = None
    streamingProducer = False
    producerPaused = False
    _reading = False
    _writing = False
    _readEnded = False
    _writeEnding = False
    _writeEnded = False
    _aborting = False
    _pendingSize = 0
    _lentInto: memoryview | None = None
    _host: address.IPv4Address | address.IPv6Address | None = None
    # TCP_NODELAY and SO_KEEPALIVE as last set here (or passed on by the
    # listening socket), or None if not known: setting them again is free.
    _noDelay: bool | None = None
    _keepAlive: bool | None = None

    def __init__(self, skt: socket.socket, protocol: IProtocol | None, reactor: Any) -> None:
        if skt.gettimeout() != 0.0:
            skt.setblocking(False)
        self.socket: socket.socket | None = skt
        self.fileno = skt.fileno
        self.protocol: Any = protocol
        self.reactor = reactor
        self._pending: list[bytes | memoryview] = []

    # IReadWriteDescriptor
    def logPrefix(self) -> str:
        """The protocol's class name, for log lines about this connection."""
        return type(self.protocol).__name__

    def doRead(self) -> Any:
        """
        Read what the socket has and hand it to the protocol; return an
        exception (which the reactor reports as the connection's end) if
        the connection is over.
        """
        lentInto = self._lentInto
        try:
            if lentInto is None:
                data = self.socket.recv(self.bufferSize)  # type: ignore[union-attr]
            else:
                data = lentInto[: self.socket.recv_into(lentInto)]  # type: ignore[union-attr]
        except OSError as e:
            if e.errno in _WOULD_BLOCK:
                return None
            return main.CONNECTION_LOST
        if data:
            self.protocol.dataReceived(data)
            return None
        return main.CONNECTION_DONE

    def lendReads(self) -> None:
        """
        From now on, read up to L{LENT_READ_SIZE} at once into a buffer
        shared by every lending connection, and hand the protocol a
        C{memoryview} of it that is valid only until C{dataReceived}
        returns: for a protocol that passes each read straight on, to a
        C{write} that copies what it keeps (as this class's does).
        """
        self._lentInto = _sharedReadBuffer()

    def doWrite(self) -> Any:
        """
        Send what is waiting; then resume the producer, or close as asked
        (returning the exception that ends the connection).
        """
        if self.socket is None:
            return None  # Closed by the read half of this same event.
        if self._pendingSize:
            pending = self._pending
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            try:
                sent = self.socket.send(data)  # type: ignore[union-attr]
            except OSError as e:
                if e.errno not in _WOULD_BLOCK:
                    return main.CONNECTION_LOST
                sent = 0
            if sent < len(data):
                self._pending = [memoryview(data)[sent:]]
                self._pendingSize = len(data) - sent
                return None
            self._pending = []
            self._pendingSize = 0
        self.stopWriting()
        producer = self.producer
        if producer is not None and (not self.streamingProducer or self.producerPaused):
            self.producerPaused = False
            producer.resumeProducing()  # type: ignore[attr-defined]
        elif self.disconnecting:
            return main.CONNECTION_DONE
        elif self._writeEnding and not self._writeEnded:
            self._shutdownWrite()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        """The peer sent a FIN: tell a half-closing protocol, else close."""
        self._reading = False
        self._readEnded = True
        halfCloseable = IHalfCloseableProtocol(self.protocol, None)
        if halfCloseable is None:
            self.connectionLost(reason)
            return
        try:
            halfCloseable.readConnectionLost()
        except BaseException:
            _log.failure("Unhandled error in readConnectionLost")
            self.connectionLost(Failure())

    def writeConnectionLost(self, reason: Failure) -> None:
        """Not used by the reactor for TCP; treated as the connection's end."""
        self.connectionLost(reason)

    def connectionLost(self, reason: Failure) -> None:
        """Close the socket and tell the producer and the protocol, once."""
        if not self.connected:
            return
        self.connected = False
        self.disconnected = True
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        skt, self.socket = self.socket, None
        self._pending = []
        self._pendingSize = 0
        if skt is not None:
            if self._aborting:
                # Reset the connection (RST) instead of ending it in order.
                with suppress(OSError):
                    skt.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            skt.close()
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)

    # Watching the socket
    def startReading(self) -> None:
        """Be told when the socket is readable."""
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        """Stop being told when the socket is readable."""
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def startWriting(self) -> None:
        """Be told when the socket is writable."""
        if not self._writing:
            self._writing = True
            self.reactor.addWriter(self)

    def stopWriting(self) -> None:
        """Stop being told when the socket is writable."""
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    # ITransport
    def write(self, data: bytes) -> None:
        """Send C{data}: at once if nothing waits, else after what does."""
        if not self.connected or self._writeEnded or self._aborting or not data:
            return
        if not self._pendingSize:
            try:
                sent = self.socket.send(data)  # type: ignore[union-attr]
            except OSError:
                sent = 0  # Full, or an error that doWrite will meet again.
            if sent == len(data):
                if self.producer is not None and not self.streamingProducer:
                    self.startWriting()  # doWrite asks a pull producer for more.
                return
            if sent:
                data = data[sent:]
        if type(data) is memoryview:
            data = data.tobytes()  # It may be a lent read, whose buffer is reused.
        self._pending.append(data)
        self._pendingSize += len(data)
        producer = self.producer
        if (
            producer is not None
            and self.streamingProducer
            and not self.producerPaused
            and self._pendingSize > self.bufferSize
        ):
            self.producerPaused = True
            producer.pauseProducing()  # type: ignore[attr-defined]
        self.startWriting()

    def writeSequence(self, data: Any) -> None:
        """Send the concatenation of C{data}."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close once what is buffered is sent (and a paused producer is done).
        As with Twisted's transports, the protocol hears of it later, not
        from inside this call, unless the FIN was already sent.
        """
        if not self.connected or self.disconnecting or self._aborting:
            return
        self.disconnecting = True
        self.stopReading()
        if self._mustFlushFirst():
            self.startWriting()  # doWrite closes once it may.
        elif self._writeEnded:
            self.connectionLost(_DONE)
        else:
            self.reactor.callLater(0, self._closeIfFlushed)

    def loseConnectionNow(self) -> None:
        """
        Close as L{loseConnection} does, except that with nothing left to
        send the connection closes within this call, and the protocol hears
        of it before this returns: for a caller that is ready for that.
        """
        if not self.connected or self._aborting:
            return
        if self._mustFlushFirst():
            self.loseConnection()  # doWrite closes once it may.
            return
        self.disconnecting = True
        self.connectionLost(_DONE)

    def _mustFlushFirst(self) -> bool:
        """Whether closing must wait: data is buffered, or a producer is yet to finish."""
        producer = self.producer
        return bool(self._pendingSize) or (
            producer is not None and (not self.streamingProducer or self.producerPaused)
        )

    def _closeIfFlushed(self) -> None:
        if self.connected and not self._writing:  # Else doWrite closes once the rest is sent.
            self.connectionLost(_DONE)

    def loseWriteConnection(self) -> None:
        """Send a FIN once what is buffered is sent."""
        if not self.connected or self._writeEnding or self._aborting:
            return
        self._writeEnding = True
        if self._pendingSize:
            self.startWriting()
        else:
            self._shutdownWrite()

    def _shutdownWrite(self) -> None:
        self._writeEnded = True
        with suppress(OSError):  # Already reset: connectionLost will follow.
            self.socket.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        halfCloseable = IHalfCloseableProtocol(self.protocol, None)
        if halfCloseable is not None:
            try:
                halfCloseable.writeConnectionLost()
            except BaseException:
                _log.failure("Unhandled error in writeConnectionLost")
                self.connectionLost(Failure())

    def abortConnection(self) -> None:
        """Close at once, dropping whatever is buffered."""
        if not self.connected or self._aborting:
            return
        self._aborting = True
        self.stopReading()
        self.stopWriting()
        self._pending = []
        self._pendingSize = 0
        self.reactor.callLater(0, self.connectionLost, _ABORTED)

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        """The address of the other end."""
        raise NotImplementedError()

    def getHost(self) -> address.IPv4Address | address.IPv6Address:
        """The address of this end."""
        if self._host is None:
            self._host = _toAddress(self.socket.getsockname())  # type: ignore[union-attr]
        return self._host

    # ITCPTransport options
    def getTcpNoDelay(self) -> bool:
        """Whether Nagle's algorithm is off."""
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))  # type: ignore[union-attr]

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Turn Nagle's algorithm off (C{True}) or on."""
        enabled = bool(enabled)
        if enabled is not self._noDelay:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)  # type: ignore[union-attr]
            self._noDelay = enabled

    def getTcpKeepAlive(self) -> bool:
        """Whether TCP keepalives are sent."""
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))  # type: ignore[union-attr]

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Send TCP keepalives (C{True}) or not."""
        enabled = bool(enabled)
        if enabled is not self._keepAlive:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)  # type: ignore[union-attr]
            self._keepAlive = enabled

    def getHandle(self) -> socket.socket | None:
        """The socket (C{None} once closed)."""
        return self.socket

    # IConsumer
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Pause and resume C{producer} as the write buffer fills and drains."""
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}: producer {self.producer} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        self.producerPaused = False
        if not streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        """Forget the producer; a pending C{loseConnection} may now finish."""
        self.producer = None
        if self.connected and self.disconnecting and not self._aborting:
            self.startWriting()

    # IPushProducer: the reading side.
    def pauseProducing(self) -> None:
        """Stop reading."""
        self.stopReading()

    def resumeProducing(self) -> None:
        """Read again (unless the connection is ending or the peer sent a FIN)."""
        if self.connected and not self.disconnecting and not self._readEnded and not self._aborting:
            self.startReading()

    def stopProducing(self) -> None:
        """Close the connection."""
        self.loseConnection()


class LeanServer(LeanConnection):
    """
    An accepted connection, made by a listening port whose C{transport} is
    this class (the arguments are those of C{tcp.Server}).
    """

    def __init__(
        self,
        skt: socket.socket,
        protocol: IProtocol,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        super().__init__(skt, protocol, reactor)
        self._peer = client
        self.server = server
        self.sessionno = sessionno
        self.startReading()

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        """The client's address."""
        peer = self._peer
        if not isinstance(peer, (address.IPv4Address, address.IPv6Address)):
            peer = self._peer = _toAddress(peer)
        return peer


class TunedLeanServer(LeanServer):
    """
    An accepted connection whose listening socket went through
    L{tuneListeningSocket}: TCP_NODELAY and SO_KEEPALIVE are on already.
    """

    _noDelay = True
    _keepAlive = True


class LeanClient(LeanConnection):
    """
    An outgoing connection made by a L{LeanConnector}: while connecting, its
    socket is watched for reading and writing, and the first event ends the
    attempt.
    """

    connected = False
    _connecting = True

    def __init__(self, skt: socket.socket, connector: LeanConnector, reactor: Any) -> None:
        super().__init__(skt, None, reactor)
        self.connector = connector

    def doRead(self) -> Any:
        """Read, or (while connecting) learn how the attempt ended."""
        if self._connecting:
            self._attemptEnded()
            return None
        return super().doRead()

    def doWrite(self) -> Any:
        """Write, or (while connecting) learn that the attempt succeeded."""
        if self._connecting:
            # Writable and not readable: connected.  A failed attempt is
            # readable too (epoll reports POLLIN with POLLERR and POLLHUP,
            # select both sets), and the reactor calls doRead first, which
            # asks the socket for the error.
            if self.socket is not None:
                self._connectionMade()
            return None
        return super().doWrite()

    def _attemptEnded(self) -> None:
        if self.socket is None:
            return  # Ended by the read half of this same event.
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
        if code:
            self.connector._failed(error.getConnectError((code, strerror(code))))
        else:
            self._connectionMade()

    def _connectionMade(self) -> None:
        connector = self.connector
        self._connecting = False
        self.stopWriting()  # Reading stays watched.
        protocol = connector._made()
        if protocol is None:
            connector._failed(error.ConnectError(string="the factory made no protocol"))
            return
        self.connected = True
        self.protocol = protocol
        protocol.makeConnection(self)

    def connectionLost(self, reason: Failure) -> None:
        """Close, then tell the factory the connection was lost."""
        if not self.connected:
            if self._connecting and self.socket is not None:
                # The reactor found the attempt's socket broken.
                self.connector._failed(error.ConnectError(string=reason.getErrorMessage()))
            return
        super().connectionLost(reason)
        self.connector._lost(reason)

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        """The address connected to."""
        return self.connector.getDestination()


@implementer(IConnector)
class LeanConnector:
    """
    Connects to an IP literal for a client factory, as C{reactor.connectTCP}
    does, with a L{LeanClient} as the transport.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float,
        bindAddress: tuple[str, int] | None,
        deadlines: Deadlines[LeanConnector] | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory: Any = factory
        self.timeout = timeout
        self.bindAddress = bindAddress
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.state = "disconnected"
        self.transport: LeanClient | None = None
        self._timeoutCall: Any = None
        # A timer shared with other attempts, if one of the same length is given.
        self._deadlines = deadlines if deadlines is not None and deadlines.timeout == timeout else None
        self._timing = False
        self._factoryStarted = False
        self._destination: address.IPv4Address | address.IPv6Address | None = None

    def connect(self) -> None:
        """Start a connection attempt."""
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        if not self._factoryStarted:
            self.factory.doStart()
            self._factoryStarted = True
        self.factory.startedConnecting(self)
        if self.state != "connecting":
            return  # Stopped from startedConnecting.
        try:
            skt = socket.socket(self.family, socket.SOCK_STREAM | _NONBLOCK)
        except OSError as e:
            self.reactor.callLater(0, self._failed, error.ConnectBindError(e.errno, e.strerror))
            return
        transport = self.transport = LeanClient(skt, self, self.reactor)
        try:
            if self.bindAddress is not None:
                skt.bind(self.bindAddress)
            result = skt.connect_ex((self.host, self.port))
        except OSError as e:
            self.reactor.callLater(0, self._failed, error.ConnectBindError(e.errno, e.strerror))
            return
        if result in _IN_PROGRESS:
            transport._reading = transport._writing = True
            addBoth = getattr(self.reactor, "_addReaderAndWriter", None)
            if addBoth is not None:
                addBoth(transport)
            else:
                self.reactor.addReader(transport)
                self.reactor.addWriter(transport)
            if self._deadlines is not None:
                self._timing = True
                self._deadlines.start(self)
            elif self.timeout:
                self._timeoutCall = self.reactor.callLater(self.timeout, self._timedOut)
        elif result in (0, errno.EISCONN):
            self.reactor.callLater(0, self._connectedAtOnce)
        else:
            self.reactor.callLater(0, self._failed, error.getConnectError((result, strerror(result))))

    def _connectedAtOnce(self) -> None:
        transport = self.transport
        if self.state == "connecting" and transport is not None:
            transport.startReading()
            transport._connectionMade()

    def _timedOut(self) -> None:
        self._timeoutCall = None
        self._timing = False
        self._failed(error.TimeoutError())

    def _stopTimer(self) -> None:
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None and call.active():
            call.cancel()
        if self._timing:
            self._timing = False
            self._deadlines.cancel(self)  # type: ignore[union-attr]

    def _stopAttempt(self) -> None:
        """Forget the attempt's socket and timer."""
        self._stopTimer()
        transport, self.transport = self.transport, None
        if transport is not None and transport.socket is not None:
            transport.stopReading()
            transport.stopWriting()
            transport.socket.close()
            transport.socket = None

    def _failed(self, reason: Exception) -> None:
        """The attempt failed with C{reason}."""
        if self.state != "connecting":
            return
        self._stopAttempt()
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(reason))
        self._stopFactory()

    def _made(self) -> IProtocol | None:
        """The attempt succeeded: the protocol for the connection, if the factory makes one."""
        protocol: IProtocol | None = self.factory.buildProtocol(self.getDestination())
        if protocol is None:
            return None  # Still "connecting": the caller fails the attempt.
        self._stopTimer()
        self.state = "connected"
        return protocol

    def _lost(self, reason: Failure) -> None:
        """The connection made was lost."""
        self.state = "disconnected"
        self.transport = None
        self.factory.clientConnectionLost(self, reason)
        self._stopFactory()

    def _stopFactory(self) -> None:
        """Balance C{doStart}, unless the factory connects again."""
        if self.state == "disconnected" and self._factoryStarted:
            self._factoryStarted = False
            self.factory.doStop()

    # IConnector
    def stopConnecting(self) -> None:
        """Give up an attempt under way."""
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        self._failed(error.UserError(string="Connection was cancelled"))

    def disconnect(self) -> None:
        """Give up the attempt, or close the connection."""
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected" and self.transport is not None:
            self.transport.loseConnection()

    def getDestination(self) -> address.IPv4Address | address.IPv6Address:
        """The address this connects to."""
        if self._destination is None:
            if self.family == socket.AF_INET6:
                self._destination = address.IPv6Address("TCP", self.host, self.port)
            else:
                self._destination = address.IPv4Address("TCP", self.host, self.port)
        return self._destination
