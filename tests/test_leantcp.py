"""
Tests for L{txsocks5._leantcp}: the lean TCP transports.

They use only a reactor's public L{IReactorFDSet} and C{callLater}, so they
are tested here on trial's global reactor (whichever it is: Twisted's epoll
reactor, or C{--reactor=txsocks5}) over real loopback sockets: accepted
connections through L{_fastpath._LeanPort}, outgoing ones through
L{LeanConnector}, and blocking clients and servers in threads, every socket
operation with a timeout.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IPushProducer,
    IReadWriteDescriptor,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import (
    LOOPBACK4,
    LOOPBACK6,
    SOCKET_TIMEOUT,
    IntegrationTestCase,
    SourceProtocol,
    TrackedProtocol,
    TrackingFactory,
    connectTo,
    freePort,
    needsIPv6,
    pattern,
    reactor,
    recvExactly,
    recvUntilClosed,
    sleep,
    waitFor,
)
from tests.test_integration import assertLogClean, startEcho, watchLog
from txsocks5 import _fastpath, _leantcp
from txsocks5._leantcp import LeanClient, LeanConnector, LeanServer
from txsocks5.deadlines import Deadlines, DeadlinesByLength

MiB = 1024 * 1024

#: Every interface a lean transport declares.
TRANSPORT_INTERFACES = (
    ITCPTransport,
    IConsumer,
    IPushProducer,
    IHalfCloseableDescriptor,
    IReadWriteDescriptor,
    ISystemHandle,
)


def tcpAddress(sockaddr: Any) -> IPv4Address | IPv6Address:
    """The Twisted address of a socket address tuple (flow info and scope ignored)."""
    if ":" in sockaddr[0]:
        return IPv6Address("TCP", sockaddr[0], sockaddr[1])
    return IPv4Address("TCP", sockaddr[0], sockaddr[1])


def waitEvent(event: threading.Event, what: str) -> None:
    """In a client thread: wait for C{event}, failing after L{SOCKET_TIMEOUT}."""
    if not event.wait(SOCKET_TIMEOUT):
        raise AssertionError(f"the test never signalled {what}")


def sha(data: bytes) -> str:
    """The SHA-256 of C{data}, in hex (shorter failure messages than the bytes)."""
    return hashlib.sha256(data).hexdigest()


def fireOnce(d: Deferred[None]) -> None:
    """Fire C{d} unless it has fired already."""
    if not d.called:
        d.callback(None)


def readableFds() -> set[Any]:
    """The reactor's readers."""
    return set(reactor.getReaders())


def writableFds() -> set[Any]:
    """The reactor's writers."""
    return set(reactor.getWriters())


# -- protocols and factories -----------------------------------------------


class ServerProtocol(TrackedProtocol):
    """
    An accepted connection's protocol that records what it receives, its
    addresses (taken at C{connectionMade}), what happens to it, and how
    often C{connectionLost} is called.  C{onMade} runs at the start of
    C{connectionMade}.
    """

    def __init__(self, onMade: Callable[[Any], None] | None = None) -> None:
        self.onMade = onMade
        self.received = bytearray()
        self.events: list[str] = []
        self.lostCount = 0

    def connectionMade(self) -> None:
        self.hostAddress = self.transport.getHost()  # type: ignore[union-attr]
        self.peerAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.events.append("connectionMade")
        if self.onMade is not None:
            self.onMade(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append("connectionLost")
        self.lostCount += 1
        super().connectionLost(reason)


class EchoServerProtocol(ServerProtocol):
    """Writes back what it reads."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


@implementer(IHalfCloseableProtocol)
class HalfCloseServerProtocol(ServerProtocol):
    """A L{ServerProtocol} told of each half-close (C{readLost}, C{writeLost} fire)."""

    def __init__(self, onMade: Callable[[Any], None] | None = None) -> None:
        super().__init__(onMade)
        self.readLost: Deferred[None] = Deferred()
        self.writeLost: Deferred[None] = Deferred()

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")
        self.readLost.callback(None)

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")
        self.writeLost.callback(None)


@implementer(IPushProducer)
class StubProducer:
    """A streaming producer that only counts what it is asked to do."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped += 1


class CountingSource(SourceProtocol):
    """A L{SourceProtocol} counting how often the transport asks it for more."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.resumes = 0

    def resumeProducing(self) -> None:
        self.resumes += 1
        super().resumeProducing()


class ClientProtocol(Protocol):
    """
    An outgoing connection's protocol: sends C{greeting} when connected,
    records what it receives, its addresses and its end.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = bytearray()
        self.made: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.lostReason: Failure | None = None
        self.lostCount = 0

    def connectionMade(self) -> None:
        self.hostAddress: Any = self.transport.getHost()  # type: ignore[union-attr]
        self.peerAddress: Any = self.transport.getPeer()  # type: ignore[union-attr]
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostReason = reason
        self.lostCount += 1
        self.done.callback(None)


class RecordingClientFactory(ClientFactory):
    """
    A client factory that records every call a connector makes to it, and
    counts C{startFactory}/C{stopFactory}.

    @ivar calls: C{(name, argument)} in order: C{startedConnecting},
        C{buildProtocol} (the address), C{failed} and C{lost} (the reason).
    @ivar failed: fires a reactor turn after the first
        C{clientConnectionFailed} (so that a test waiting for it resumes
        after the connector is done, C{doStop} included).
    @ivar lost: the same for C{clientConnectionLost}.
    """

    noisy = False

    def __init__(self, greeting: bytes = b"", makeProtocol: bool = True) -> None:
        self.greeting = greeting
        self.makeProtocol = makeProtocol
        self.calls: list[tuple[str, Any]] = []
        self.protocols: list[ClientProtocol] = []
        self.failed: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.starts = 0
        self.stops = 0

    def names(self) -> list[str]:
        """The names of the calls so far."""
        return [name for name, _ in self.calls]

    def reason(self, name: str) -> Failure:
        """The reason given with the (only) call C{name}."""
        reasons = [arg for n, arg in self.calls if n == name]
        assert len(reasons) == 1, f"{name} was called {len(reasons)} times: {self.calls!r}"
        return reasons[0]  # type: ignore[no-any-return]

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1

    def startedConnecting(self, connector: Any) -> None:
        self.calls.append(("startedConnecting", None))

    def buildProtocol(self, addr: Any) -> ClientProtocol | None:  # type: ignore[override]
        self.calls.append(("buildProtocol", addr))
        if not self.makeProtocol:
            return None
        p = ClientProtocol(self.greeting)
        p.factory = self
        self.protocols.append(p)
        return p

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.calls.append(("failed", reason))
        reactor.callLater(0, fireOnce, self.failed)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.calls.append(("lost", reason))
        reactor.callLater(0, fireOnce, self.lost)


class ClockedReactor:
    """The real reactor for file descriptors, with a L{Clock} for time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class PublicOnlyReactor:
    """The real reactor without its private attributes (C{_addReaderAndWriter} among them)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(reactor, name)


def sendThenHalfClose(address: tuple[str, int], data: bytes) -> bytes:
    """Connect, send C{data}, send a FIN, and return what comes back before EOF."""
    with connectTo(address) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recvUntilClosed(sock)


# -- the base test case ------------------------------------------------------


class LeanTestCase(IntegrationTestCase):
    """Lean listening ports and connectors, closed when the test ends."""

    async def serve(
        self, protocolFactory: Callable[[], Protocol], host: str = LOOPBACK4
    ) -> tuple[TrackingFactory, int]:
        """Listen on C{host} with a L{_fastpath._LeanPort}; return its factory and port number."""
        factory = TrackingFactory(protocolFactory)
        port = _fastpath._LeanPort(0, factory, 50, host, reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    async def accepted(self, factory: TrackingFactory, index: int = 0) -> Any:
        """The C{index}-th connection accepted by C{factory}, once connected."""
        proto = await factory.whenConnected(index).addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertIsInstance(proto.transport, LeanServer)
        return proto

    def connect(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = SOCKET_TIMEOUT,
        bindAddress: tuple[str, int] | None = None,
        onReactor: Any = None,
        deadlines: Deadlines[LeanConnector] | None = None,
    ) -> LeanConnector:
        """Start a L{LeanConnector}; whatever is left of it is closed when the test ends."""
        connector = LeanConnector(
            reactor if onReactor is None else onReactor, host, port, factory, timeout, bindAddress, deadlines
        )
        connector.connect()

        def cleanup() -> None:
            if connector.state == "connecting":
                connector.stopConnecting()
            elif connector.transport is not None:
                connector.transport.abortConnection()

        self.addCleanup(cleanup)
        return connector

    def unansweredPort(self) -> int:
        """
        A port on 127.0.0.1 whose accept queue is full (backlog 0, one
        connection never accepted): SYNs to it are dropped, so a connection
        attempt hangs until it times out or is stopped.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind((LOOPBACK4, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        filler = connectTo((LOOPBACK4, port), timeout=5.0)
        self.addCleanup(filler.close)
        return port

    def assertUnwatched(self, transport: Any) -> None:
        """C{transport} is closed and no longer watched by the reactor."""
        self.assertIsNone(transport.socket)
        self.assertNotIn(transport, readableFds())
        self.assertNotIn(transport, writableFds())


# -- the tests ---------------------------------------------------------------


class InterfaceTests(LeanTestCase):
    """Both lean transports provide everything they declare."""

    def assertProvidesAll(self, transport: Any) -> None:
        for interface in TRANSPORT_INTERFACES:
            self.assertTrue(verifyObject(interface, transport), interface)

    async def test_server(self) -> None:
        factory, port = await self.serve(ServerProtocol)
        closeNow = threading.Event()

        def client() -> None:
            with connectTo((LOOPBACK4, port)):
                waitEvent(closeNow, "closing")

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            self.assertProvidesAll(proto.transport)
        finally:
            closeNow.set()
            await d
        await proto.done

    async def test_client(self) -> None:
        _, port = await startEcho(self)
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, port, factory)
        await waitFor(lambda: bool(factory.protocols), what="the connection")
        proto = factory.protocols[0]
        await proto.made
        self.assertIsInstance(proto.transport, LeanClient)
        self.assertIs(proto.transport, connector.transport)
        self.assertProvidesAll(proto.transport)
        proto.transport.loseConnection()  # type: ignore[union-attr]
        await proto.done


class ServerTests(LeanTestCase):
    """Connections accepted by a lean port (L{LeanServer})."""

    async def echoRoundTrip(self, host: str) -> None:
        """Echo through a L{LeanServer} on C{host}; check its addresses."""
        factory, port = await self.serve(EchoServerProtocol, host)

        def client() -> tuple[bytes, Any, Any]:
            with connectTo((host, port)) as sock:
                sock.sendall(b"ping through a lean server")
                answer = recvExactly(sock, len(b"ping through a lean server"))
                names = sock.getsockname(), sock.getpeername()
                sock.shutdown(socket.SHUT_WR)
                rest = recvUntilClosed(sock)
            return answer + rest, *names

        answer, sockname, peername = await deferToThread(client)
        self.assertEqual(answer, b"ping through a lean server")
        proto = await self.accepted(factory)
        await proto.done
        self.assertEqual(proto.peerAddress, tcpAddress(sockname))
        self.assertEqual(proto.hostAddress, tcpAddress(peername))
        self.assertEqual(proto.peer, proto.peerAddress)  # what buildProtocol was given
        self.assertEqual(bytes(proto.received), b"ping through a lean server")
        # The client's FIN ends a protocol that is not half-closeable.
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(proto.transport)

    async def test_echoIPv4(self) -> None:
        """Data round-trips; getPeer() and getHost() are IPv4Addresses of the two ends."""
        await self.echoRoundTrip(LOOPBACK4)

    @needsIPv6
    async def test_echoIPv6(self) -> None:
        """The same on ::1, with IPv6Addresses."""
        await self.echoRoundTrip(LOOPBACK6)

    async def test_socketOptions(self) -> None:
        """
        TCP_NODELAY and SO_KEEPALIVE are on from the start (the lean port's
        listening socket passes them on) and round-trip; getHandle() is the
        socket, then None once closed.
        """
        factory, port = await self.serve(ServerProtocol)
        closeNow = threading.Event()

        def client() -> None:
            with connectTo((LOOPBACK4, port)):
                waitEvent(closeNow, "closing")

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            transport = proto.transport
            handle = transport.getHandle()
            self.assertIsInstance(handle, socket.socket)
            self.assertIs(handle, transport.socket)
            self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
            for enabled in (True, False, True):
                transport.setTcpNoDelay(enabled)
                self.assertEqual(transport.getTcpNoDelay(), enabled)
                self.assertEqual(bool(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)), enabled)
                transport.setTcpKeepAlive(enabled)
                self.assertEqual(transport.getTcpKeepAlive(), enabled)
                self.assertEqual(bool(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)), enabled)
            transport.loseConnection()
            await proto.done
            self.assertIsNone(transport.getHandle())
        finally:
            closeNow.set()
            await d

    async def test_adoptedPort(self) -> None:
        """
        A listening socket adopted (C{--workers}, systemd) serves with lean,
        tuned transports too; on the fast reactor, C{adoptStreamPort} does so.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind((LOOPBACK4, 0))
        listener.listen(5)
        listener.setblocking(False)
        factory = TrackingFactory(EchoServerProtocol)
        if isinstance(reactor, _fastpath.FastEPollReactor):
            port = reactor.adoptStreamPort(listener.fileno(), socket.AF_INET, factory)
        else:
            port = _fastpath._LeanPort.adopt(reactor, listener.fileno(), socket.AF_INET, factory)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, _fastpath._LeanPort)
        address = listener.getsockname()

        answer = await deferToThread(sendThenHalfClose, address, b"ping through an adopted port")
        self.assertEqual(answer, b"ping through an adopted port")
        proto = await self.accepted(factory)
        await proto.done
        self.assertIsInstance(proto.transport, _leantcp.TunedLeanServer)

    async def test_writes(self) -> None:
        """
        writeSequence() sends the concatenation; write(b"") does nothing;
        write() and writeSequence() after the connection is closed are
        ignored, without an error.
        """
        factory, port = await self.serve(ServerProtocol)

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                return recvUntilClosed(sock)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        transport = proto.transport
        transport.writeSequence([b"one ", b"", b"two ", b"three"])
        transport.write(b"")
        self.assertEqual(transport._pendingSize, 0)
        self.assertNotIn(transport, writableFds())
        transport.write(b" four")
        transport.loseConnection()
        await proto.done
        transport.write(b"too late")
        transport.writeSequence([b"far ", b"too late"])
        self.assertEqual(transport._pendingSize, 0)
        self.assertEqual(await d, b"one two three four")
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(transport)

    async def test_pauseAndResumeReading(self) -> None:
        """
        pauseProducing() stops dataReceived until resumeProducing(); after
        the peer's FIN, resumeProducing() does not watch the socket again.
        """
        factory, port = await self.serve(HalfCloseServerProtocol)
        sendMore = threading.Event()
        finNow = threading.Event()

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                waitEvent(sendMore, "sending")
                sock.sendall(b"sent while paused")
                waitEvent(finNow, "the FIN")
                sock.shutdown(socket.SHUT_WR)
                return recvUntilClosed(sock)

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            transport = proto.transport
            self.assertIn(transport, readableFds())
            transport.pauseProducing()
            self.assertNotIn(transport, readableFds())
            sendMore.set()
            await sleep(0.3)
            self.assertEqual(bytes(proto.received), b"")
            transport.resumeProducing()
            self.assertIn(transport, readableFds())
            await waitFor(lambda: proto.received == b"sent while paused", what="the data")
            finNow.set()
            await proto.readLost.addTimeout(SOCKET_TIMEOUT, reactor)
            self.assertNotIn(transport, readableFds())
            transport.pauseProducing()
            transport.resumeProducing()
            self.assertNotIn(transport, readableFds())
            self.assertTrue(transport.connected)
            transport.write(b"bye")
            transport.loseConnection()
        finally:
            finNow.set()
            sendMore.set()
        self.assertEqual(await d, b"bye")
        await proto.done
        self.assertEqual(proto.events, ["connectionMade", "readConnectionLost", "connectionLost"])


class HalfCloseTests(LeanTestCase):
    """Half-closes of a L{LeanServer}, each way."""

    async def test_peerHalfCloses(self) -> None:
        """
        The client's FIN reaches a half-closeable protocol as
        readConnectionLost() (the connection stays open, and it can still
        write); its loseWriteConnection() sends a FIN at once (the client
        reads EOF) and calls writeConnectionLost(); loseConnection() after
        that ends the connection at once.
        """
        factory, port = await self.serve(HalfCloseServerProtocol)

        def client() -> tuple[bytes, bytes]:
            with connectTo((LOOPBACK4, port)) as sock:
                sock.sendall(b"request")
                sock.shutdown(socket.SHUT_WR)
                answer = recvUntilClosed(sock)
                # Our FIN went out and theirs came in: the socket can still be read (EOF again).
                return answer, sock.recv(10)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        transport = proto.transport
        await proto.readLost.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertEqual(bytes(proto.received), b"request")
        self.assertEqual(proto.events, ["connectionMade", "readConnectionLost"])
        self.assertTrue(transport.connected)
        self.assertNotIn(transport, readableFds())
        transport.write(b"answer after the client's FIN")
        transport.loseWriteConnection()
        self.assertEqual(proto.events, ["connectionMade", "readConnectionLost", "writeConnectionLost"])
        transport.write(b"never sent: the write side is closed")
        self.assertEqual(await d, (b"answer after the client's FIN", b""))
        self.assertTrue(transport.connected)
        transport.loseConnection()
        self.assertEqual(
            proto.events,
            ["connectionMade", "readConnectionLost", "writeConnectionLost", "connectionLost"],
        )
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertUnwatched(transport)

    async def test_serverHalfClosesFirst(self) -> None:
        """
        loseWriteConnection() with much buffered sends all of it, then the
        FIN (writeConnectionLost() only then); the server still reads what
        the client sends afterwards.
        """
        data = pattern(8 * MiB, seed=1)
        factory, port = await self.serve(HalfCloseServerProtocol)
        startReading = threading.Event()

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                waitEvent(startReading, "reading")
                got = recvUntilClosed(sock, limit=len(data))
                sock.sendall(b"after your FIN")
                sock.shutdown(socket.SHUT_WR)
                return got

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            transport = proto.transport
            transport.write(data)
            self.assertGreater(transport._pendingSize, 0)  # the client does not read yet
            transport.loseWriteConnection()
            self.assertEqual(proto.events, ["connectionMade"])
        finally:
            startReading.set()
        self.assertEqual(sha(await d), sha(data))
        await proto.writeLost
        await proto.readLost.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertEqual(bytes(proto.received), b"after your FIN")
        self.assertEqual(proto.events, ["connectionMade", "writeConnectionLost", "readConnectionLost"])
        transport.loseConnection()
        await proto.done
        self.assertUnwatched(transport)

    async def test_notHalfCloseable(self) -> None:
        """A protocol that is not half-closeable gets connectionLost() at the client's FIN."""
        factory, port = await self.serve(ServerProtocol)

        self.assertEqual(await deferToThread(sendThenHalfClose, (LOOPBACK4, port), b"last words"), b"")
        proto = await self.accepted(factory)
        await proto.done
        self.assertEqual(bytes(proto.received), b"last words")
        self.assertEqual(proto.events, ["connectionMade", "connectionLost"])
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertUnwatched(proto.transport)


class CloseTests(LeanTestCase):
    """loseConnection(), abortConnection(), and the peer's reset."""

    async def closeAfterWrite(self, close: Callable[[Any], None], seed: int) -> None:
        """
        8 MiB written then C{close(transport)} at once: a client that starts
        reading late gets all of it, then EOF; the reason is ConnectionDone,
        and connectionLost waited for the data.
        """
        data = pattern(8 * MiB, seed=seed)
        pending: list[int] = []

        def sendAndClose(proto: Any) -> None:
            proto.transport.write(data)
            pending.append(proto.transport._pendingSize)
            close(proto.transport)
            pending.append(proto.lostCount)

        factory, port = await self.serve(lambda: ServerProtocol(sendAndClose))

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                time.sleep(0.3)
                return recvUntilClosed(sock, limit=len(data))

        received = await deferToThread(client)
        self.assertEqual((len(received), sha(received)), (len(data), sha(data)))
        proto = await self.accepted(factory)
        await proto.done
        self.assertGreater(pending[0], 0)  # there was something to flush
        self.assertEqual(pending[1], 0)  # and connectionLost waited for it
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(proto.transport)

    async def wroteSmall(self, protocolFactory: Callable[[], Protocol]) -> tuple[Any, Deferred[bytes]]:
        """
        Accept a client with C{protocolFactory} and write it C{b"small"};
        return the protocol and what the client reads until the connection
        closes.
        """
        factory, port = await self.serve(protocolFactory)

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                return recvUntilClosed(sock)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        proto.transport.write(b"small")
        return proto, d

    async def test_loseConnectionFlushes(self) -> None:
        """loseConnection() sends what is buffered before it closes."""
        await self.closeAfterWrite(lambda transport: transport.loseConnection(), seed=2)

    async def test_loseConnectionLater(self) -> None:
        """With nothing buffered, loseConnection() ends the connection a reactor turn later, not inside."""
        proto, d = await self.wroteSmall(ServerProtocol)
        transport = proto.transport
        self.assertEqual(transport._pendingSize, 0)
        transport.loseConnection()
        self.assertEqual(proto.events, ["connectionMade"])
        self.assertTrue(transport.disconnecting)
        transport.loseConnection()  # twice is harmless
        await proto.done
        self.assertEqual(await d, b"small")
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(transport)

    async def test_loseConnectionAfterHalfClose(self) -> None:
        """After loseWriteConnection() (the FIN is sent), loseConnection() ends the connection at once."""
        proto, d = await self.wroteSmall(HalfCloseServerProtocol)
        transport = proto.transport
        transport.loseWriteConnection()
        self.assertEqual(proto.events, ["connectionMade", "writeConnectionLost"])
        transport.loseConnection()
        self.assertEqual(proto.events, ["connectionMade", "writeConnectionLost", "connectionLost"])
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertUnwatched(transport)
        self.assertEqual(await d, b"small")

    async def test_loseConnectionNow(self) -> None:
        """
        With nothing buffered, loseConnectionNow() ends the connection
        within the call; the peer reads what was sent, then EOF.
        """
        proto, d = await self.wroteSmall(ServerProtocol)
        transport = proto.transport
        self.assertEqual(transport._pendingSize, 0)
        transport.loseConnectionNow()
        self.assertEqual(proto.events, ["connectionMade", "connectionLost"])
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertUnwatched(transport)
        transport.loseConnectionNow()  # twice is harmless
        self.assertEqual(proto.lostCount, 1)
        self.assertEqual(await d, b"small")

    async def test_loseConnectionNowFlushes(self) -> None:
        """
        With data buffered, loseConnectionNow() waits for it, as
        loseConnection() does, also after a loseConnection() already waiting.
        """

        def close(transport: Any) -> None:
            transport.loseConnection()
            transport.loseConnectionNow()

        await self.closeAfterWrite(close, seed=4)

    async def test_abortConnection(self) -> None:
        """
        abortConnection() drops what is buffered; connectionLost() comes
        later, with ConnectionAborted, once; abortConnection() and
        loseConnection() again are harmless.
        """
        data = pattern(32 * MiB, seed=3)
        factory, port = await self.serve(ServerProtocol)
        startReading = threading.Event()
        sock = connectTo((LOOPBACK4, port))  # Before the abort: see test_writeAfterAbort.

        def client() -> bytes:
            with sock:
                waitEvent(startReading, "reading")
                return recvUntilClosed(sock, limit=len(data))

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            transport = proto.transport
            transport.write(data)
            self.assertGreater(transport._pendingSize, 0)
            transport.abortConnection()
            self.assertEqual(proto.events, ["connectionMade"])
            self.assertNotIn(transport, readableFds())
            self.assertNotIn(transport, writableFds())
            transport.abortConnection()
            transport.loseConnection()
            await proto.done
        finally:
            startReading.set()
        self.assertEqual(proto.events, ["connectionMade", "connectionLost"])
        self.assertTrue(proto.lostReason.check(error.ConnectionAborted), proto.lostReason)
        self.assertEqual(transport._pendingSize, 0)
        transport.abortConnection()
        transport.loseConnection()
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(transport)
        received = await d
        self.assertLess(len(received), len(data))
        self.assertEqual(received, data[: len(received)])

    async def test_writeAfterAbort(self) -> None:
        """
        After abortConnection(), write(), writeSequence() and
        loseWriteConnection() do nothing: the peer gets none of it, and the
        protocol hears only of the abort.
        """
        factory, port = await self.serve(HalfCloseServerProtocol)
        # Connected before the server can abort (loopback: connect() returns
        # once the kernel has queued the connection), so the reset cannot
        # race the client's connect().
        sock = connectTo((LOOPBACK4, port))

        def client() -> bytes:
            with sock:
                return recvUntilClosed(sock)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        transport = proto.transport
        transport.abortConnection()
        transport.write(b"written after abortConnection")
        transport.writeSequence([b"and ", b"this"])
        transport.loseWriteConnection()
        transport.loseConnection()
        self.assertEqual(proto.events, ["connectionMade"])
        await proto.done
        self.assertEqual(await d, b"")
        self.assertEqual(proto.events, ["connectionMade", "connectionLost"])
        self.assertTrue(proto.lostReason.check(error.ConnectionAborted), proto.lostReason)
        self.assertUnwatched(transport)

    async def test_abortResetsPeer(self) -> None:
        """
        As ITCPTransport.abortConnection() asks ("if possible, notifies the
        other end of the unclean closure") and Twisted's tcp transports do
        (SO_LINGER 0 before close), the peer sees a reset, not an orderly
        EOF.
        """
        factory, port = await self.serve(ServerProtocol)
        readNow = threading.Event()
        sock = connectTo((LOOPBACK4, port))  # Before the abort: see test_writeAfterAbort.

        def client() -> str:
            with sock:
                waitEvent(readNow, "reading")
                data = b""
                try:
                    for _ in range(100):  # Bounded; each read by the socket's timeout.
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except ConnectionResetError:
                    return "reset"
                return f"orderly EOF after {data!r}"

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            proto.transport.write(b"partial answer")
            proto.transport.abortConnection()
            await proto.done
        finally:
            readNow.set()
        self.assertEqual(await d, "reset")

    async def test_peerReset(self) -> None:
        """
        A client that resets the connection (SO_LINGER 0, close) while the
        server is writing: connectionLost() with ConnectionLost (or
        ConnectionDone), nothing logged as an error, the transport unwatched.
        """
        events = watchLog(self)
        data = pattern(8 * MiB, seed=4)
        factory, port = await self.serve(lambda: ServerProtocol(lambda p: p.transport.write(data)))

        def client() -> int:
            with connectTo((LOOPBACK4, port)) as sock:
                got = len(recvExactly(sock, 65536))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return got

        self.assertEqual(await deferToThread(client), 65536)
        proto = await self.accepted(factory)
        await proto.done.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertTrue(proto.lostReason.check(error.ConnectionLost, error.ConnectionDone), proto.lostReason)
        self.assertEqual(proto.lostCount, 1)
        self.assertUnwatched(proto.transport)
        self.assertEqual(proto.transport._pendingSize, 0)
        assertLogClean(self, events)


class ProducerTests(LeanTestCase):
    """A LeanServer as the consumer of streaming and pull producers."""

    async def test_streamingProducer(self) -> None:
        """
        Written past bufferSize while the client does not read, a streaming
        producer is paused once, and what waits stays bounded; it is
        resumed once the client has drained it.
        """
        factory, port = await self.serve(ServerProtocol)
        drain = threading.Event()

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                waitEvent(drain, "draining")
                return recvUntilClosed(sock, limit=64 * MiB)

        d = deferToThread(client)
        try:
            proto = await self.accepted(factory)
            transport = proto.transport
            producer = StubProducer()
            transport.registerProducer(producer, True)
            chunk = pattern(16 * 1024, seed=5)
            written = 0
            for _ in range(4096):  # 64 MiB at most
                transport.write(chunk)
                written += len(chunk)
                if producer.paused:
                    break
            self.assertEqual((producer.paused, producer.resumed), (1, 0))
            self.assertGreater(transport._pendingSize, transport.bufferSize)
            self.assertLessEqual(transport._pendingSize, transport.bufferSize + len(chunk))
            self.assertIn(transport, writableFds())
        finally:
            drain.set()
        await waitFor(lambda: producer.resumed == 1, what="resumeProducing")
        self.assertEqual((producer.paused, producer.resumed, producer.stopped), (1, 1, 0))
        self.assertEqual(transport._pendingSize, 0)
        self.assertNotIn(transport, writableFds())
        transport.unregisterProducer()
        transport.loseConnection()
        received = await d
        self.assertEqual(len(received), written)
        self.assertEqual(sha(received), sha(chunk * (written // len(chunk))))
        await proto.done
        self.assertEqual(producer.stopped, 0)  # it was unregistered first

    async def test_streamingProducerStoppedAtClose(self) -> None:
        """A streaming producer still registered when the connection ends is stopped."""
        factory, port = await self.serve(ServerProtocol)

        def client() -> None:
            with connectTo((LOOPBACK4, port)) as sock:
                recvUntilClosed(sock)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        producer = StubProducer()
        proto.transport.registerProducer(producer, True)
        proto.transport.loseConnection()
        await proto.done
        await d
        self.assertEqual((producer.paused, producer.resumed, producer.stopped), (0, 0, 1))
        self.assertIsNone(proto.transport.producer)

    async def test_pullProducer(self) -> None:
        """
        A pull producer (5 MiB from L{SourceProtocol}, 64 KiB a time) is
        asked for more each time what it wrote is sent, until it
        unregisters; the client gets it all, then EOF.
        """
        size = 5 * MiB
        factory, port = await self.serve(lambda: CountingSource(size))

        def client() -> bytes:
            with connectTo((LOOPBACK4, port)) as sock:
                time.sleep(0.1)
                return recvUntilClosed(sock, limit=size)

        received = await deferToThread(client)
        proto = await self.accepted(factory)
        await proto.done
        expected = pattern(CountingSource.chunk, seed=7) * (size // CountingSource.chunk)
        self.assertEqual((len(received), sha(received)), (size, sha(expected)))
        self.assertEqual(proto.resumes, size // CountingSource.chunk)
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)
        self.assertIsNone(proto.transport.producer)
        self.assertUnwatched(proto.transport)

    async def test_registerTwice(self) -> None:
        """A second producer without unregistering the first is refused."""
        factory, port = await self.serve(ServerProtocol)

        def client() -> None:
            with connectTo((LOOPBACK4, port)) as sock:
                recvUntilClosed(sock)

        d = deferToThread(client)
        proto = await self.accepted(factory)
        proto.transport.registerProducer(StubProducer(), True)
        self.assertRaises(RuntimeError, proto.transport.registerProducer, StubProducer(), True)
        proto.transport.unregisterProducer()
        proto.transport.loseConnection()
        await proto.done
        await d
        late = StubProducer()
        proto.transport.registerProducer(late, True)
        self.assertEqual(late.stopped, 1)  # registered on a closed connection: stopped at once
        self.assertIsNone(proto.transport.producer)


class ConnectorTests(LeanTestCase):
    """Outgoing connections: L{LeanConnector} and L{LeanClient}."""

    async def connectAndEcho(
        self,
        host: str,
        bindAddress: tuple[str, int] | None = None,
        onReactor: Any = None,
    ) -> tuple[LeanConnector, ClientProtocol, Any]:
        """
        Connect to an echo server on C{host}, send a greeting and read it
        back; return the connector, the protocol and the echo server's
        protocol (the connection still open).
        """
        echoes, port = await startEcho(self, host)
        factory = RecordingClientFactory(greeting=b"hello, lean client")
        connector = self.connect(host, port, factory, bindAddress=bindAddress, onReactor=onReactor)
        self.assertEqual(factory.names(), ["startedConnecting"])  # nothing more before the reactor runs
        self.assertEqual(connector.state, "connecting")
        self.assertEqual(factory.numPorts, 1)
        await waitFor(lambda: bool(factory.protocols), what="the connection")
        proto = factory.protocols[0]
        await proto.made
        await waitFor(lambda: proto.received == b"hello, lean client", what="the echo")
        destination = tcpAddress((host, port))
        self.assertEqual(connector.getDestination(), destination)
        self.assertEqual(factory.calls, [("startedConnecting", None), ("buildProtocol", destination)])
        self.assertEqual(connector.state, "connected")
        transport = proto.transport
        self.assertIsInstance(transport, LeanClient)
        self.assertEqual(transport.getPeer(), destination)  # type: ignore[union-attr]
        self.assertEqual(proto.peerAddress, destination)
        self.assertEqual(proto.hostAddress, tcpAddress(transport.getHandle().getsockname()))  # type: ignore[union-attr]
        echo = await echoes.whenConnected(0)
        self.assertEqual(echo.peer, proto.hostAddress)
        return connector, proto, echo

    async def closeAndCheck(self, connector: LeanConnector, proto: ClientProtocol) -> None:
        """Close the connection; check the factory hears of it (ConnectionDone) and is stopped."""
        factory: Any = connector.factory
        transport: Any = proto.transport
        transport.loseConnection()
        await proto.done
        await factory.lost
        self.assertTrue(factory.reason("lost").check(error.ConnectionDone), factory.calls)
        self.assertEqual(proto.lostCount, 1)
        self.assertEqual(connector.state, "disconnected")
        self.assertIsNone(connector.transport)
        self.assertEqual((factory.numPorts, factory.starts, factory.stops), (0, 1, 1))
        self.assertUnwatched(transport)

    async def test_connectIPv4(self) -> None:
        """
        The factory builds a protocol for the destination address, it is
        connected and data round-trips; getPeer() is the destination and
        getHost() the socket's own address.
        """
        connector, proto, _ = await self.connectAndEcho(LOOPBACK4)
        await self.closeAndCheck(connector, proto)

    @needsIPv6
    async def test_connectIPv6(self) -> None:
        """The same to ::1, with IPv6Addresses."""
        connector, proto, _ = await self.connectAndEcho(LOOPBACK6)
        self.assertIsInstance(connector.getDestination(), IPv6Address)
        await self.closeAndCheck(connector, proto)

    async def test_bindAddress(self) -> None:
        """The connection is made from bindAddress."""
        connector, proto, echo = await self.connectAndEcho(LOOPBACK4, bindAddress=(LOOPBACK4, 0))
        self.assertEqual(proto.hostAddress.host, LOOPBACK4)
        self.assertEqual(echo.peer, proto.hostAddress)
        await self.closeAndCheck(connector, proto)

    async def test_bindAddressInUse(self) -> None:
        """A bindAddress that cannot be bound fails the attempt (ConnectBindError), not synchronously."""
        _, port = await startEcho(self)
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, port, factory, bindAddress=(LOOPBACK4, port))
        self.assertEqual(factory.names(), ["startedConnecting"])
        await factory.failed.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertTrue(factory.reason("failed").check(error.ConnectBindError), factory.calls)
        self.assertEqual((factory.numPorts, factory.starts, factory.stops), (0, 1, 1))
        self.assertEqual(connector.state, "disconnected")

    async def test_publicReactorInterfaceOnly(self) -> None:
        """On a reactor without C{_addReaderAndWriter}, addReader and addWriter are used."""
        connector, proto, _ = await self.connectAndEcho(LOOPBACK4, onReactor=PublicOnlyReactor())
        await self.closeAndCheck(connector, proto)

    async def test_serverCloses(self) -> None:
        """The server's close reaches the protocol and then clientConnectionLost (ConnectionDone)."""
        connector, proto, echo = await self.connectAndEcho(LOOPBACK4)
        factory: Any = connector.factory
        echo.transport.loseConnection()
        await proto.done
        await factory.lost
        self.assertTrue(proto.lostReason.check(error.ConnectionDone), proto.lostReason)  # type: ignore[union-attr]
        self.assertEqual(factory.names(), ["startedConnecting", "buildProtocol", "lost"])
        self.assertEqual((factory.numPorts, factory.stops), (0, 1))

    async def test_disconnect(self) -> None:
        """connector.disconnect() closes an established connection."""
        connector, proto, _ = await self.connectAndEcho(LOOPBACK4)
        connector.disconnect()
        await proto.done
        await connector.factory.lost  # type: ignore[attr-defined]
        self.assertEqual(connector.state, "disconnected")

    async def test_refused(self) -> None:
        """
        A refused connection: clientConnectionFailed() with
        ConnectionRefusedError, not from inside connect(); the factory is
        stopped as often as started.
        """
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, freePort(), factory)
        self.assertEqual(factory.names(), ["startedConnecting"])
        self.assertEqual((factory.numPorts, factory.starts), (1, 1))
        transport = connector.transport
        await factory.failed.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])
        self.assertTrue(factory.reason("failed").check(error.ConnectionRefusedError), factory.calls)
        self.assertEqual((factory.numPorts, factory.starts, factory.stops), (0, 1, 1))
        self.assertEqual(connector.state, "disconnected")
        self.assertIsNone(connector.transport)
        self.assertUnwatched(transport)

    async def test_reconnectFromConnectionFailed(self) -> None:
        """
        A factory that calls connector.connect() again from
        clientConnectionFailed() (Twisted's documented reconnecting idiom)
        is started once and stopped once, as with reactor.connectTCP.
        """

        class Retrying(RecordingClientFactory):
            retries = 1

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                super().clientConnectionFailed(connector, reason)
                if self.retries:
                    self.retries -= 1
                    connector.connect()

        factory = Retrying()
        self.connect(LOOPBACK4, freePort(), factory)
        await waitFor(lambda: factory.names().count("failed") == 2, what="two failures")
        self.assertEqual((factory.numPorts, factory.starts, factory.stops), (0, 1, 1))

    async def test_timeout(self) -> None:
        """
        A connection attempt nobody answers fails with TimeoutError after
        C{timeout} seconds (of a L{Clock}: the file descriptors are the real
        reactor's), its socket closed and no longer watched.
        """
        port = self.unansweredPort()
        clock = Clock()
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, port, factory, timeout=30.0, onReactor=ClockedReactor(clock))
        transport = connector.transport
        self.assertIn(transport, readableFds())
        self.assertIn(transport, writableFds())
        await sleep(0.3)  # the real reactor runs: nothing answers
        clock.advance(29.9)
        self.assertEqual(factory.names(), ["startedConnecting"])
        self.assertEqual(connector.state, "connecting")
        clock.advance(0.2)
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])
        self.assertTrue(factory.reason("failed").check(error.TimeoutError), factory.calls)
        self.assertEqual((factory.numPorts, factory.stops), (0, 1))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(connector.transport)
        self.assertUnwatched(transport)
        await factory.failed

    async def test_sharedTimeout(self) -> None:
        """
        With a shared timer (L{Deadlines} of the same length, as the fast
        reactor's connectTCP gives), attempts time out on it: no DelayedCall
        of their own, and one that connects leaves it.
        """
        clock = Clock()
        deadlines: Deadlines[LeanConnector] = Deadlines(clock, 30.0, LeanConnector._timedOut)
        onReactor = ClockedReactor(clock)
        _, port = await startEcho(self)
        connected = RecordingClientFactory()
        self.connect(LOOPBACK4, port, connected, timeout=30.0, onReactor=onReactor, deadlines=deadlines)
        unanswered = RecordingClientFactory()
        connector = self.connect(
            LOOPBACK4,
            self.unansweredPort(),
            unanswered,
            timeout=30.0,
            onReactor=onReactor,
            deadlines=deadlines,
        )
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(len(deadlines), 2)
        await waitFor(lambda: bool(connected.protocols), what="the connection")
        self.assertEqual(len(deadlines), 1)
        clock.advance(30)
        self.assertTrue(unanswered.reason("failed").check(error.TimeoutError), unanswered.calls)
        self.assertEqual(connector.state, "disconnected")
        self.assertEqual(clock.getDelayedCalls(), [])
        await unanswered.failed
        proto = connected.protocols[0]
        proto.transport.loseConnection()  # type: ignore[union-attr]
        clock.advance(0)
        await proto.done

    async def test_sharedTimeoutOtherLength(self) -> None:
        """A shared timer of another length is not used: the attempt's own timeout holds."""
        clock = Clock()
        deadlines: Deadlines[LeanConnector] = Deadlines(clock, 99.0, LeanConnector._timedOut)
        factory = RecordingClientFactory()
        self.connect(
            LOOPBACK4,
            self.unansweredPort(),
            factory,
            timeout=30.0,
            onReactor=ClockedReactor(clock),
            deadlines=deadlines,
        )
        self.assertEqual(len(deadlines), 0)
        clock.advance(30)
        self.assertTrue(factory.reason("failed").check(error.TimeoutError), factory.calls)
        await factory.failed

    async def test_fastReactorSharesTimers(self) -> None:
        """
        The fast reactor's connectTCP gives attempts with the same timeout
        one shared timer, for a few distinct timeouts (then a DelayedCall
        each).
        """
        if not isinstance(reactor, _fastpath.FastEPollReactor):
            raise SkipTest("runs on the fast reactor (trial --reactor=txsocks5)")
        # Other tests' timeouts aside:
        saved, reactor._leanConnectTimers = (
            reactor._leanConnectTimers,
            DeadlinesByLength(reactor, LeanConnector._timedOut),
        )
        self.addCleanup(setattr, reactor, "_leanConnectTimers", saved)
        port = self.unansweredPort()
        connectors = []
        for timeout in (17.0, 17.0, *(100.0 + i for i in range(8))):  # 9 lengths: one too many
            connector = reactor.connectTCP(LOOPBACK4, port, RecordingClientFactory(), timeout=timeout)
            self.addCleanup(connector.stopConnecting)
            connectors.append(connector)
        shared = reactor._leanConnectTimers.get(17.0)
        self.assertIs(connectors[0]._deadlines, shared)
        self.assertIs(connectors[1]._deadlines, shared)
        self.assertEqual(len(shared), 2)
        self.assertIsNone(connectors[-1]._deadlines)  # One timeout too many.

    async def test_connectedCancelsTimeout(self) -> None:
        """Once connected, the timeout is cancelled."""
        _, port = await startEcho(self)
        clock = Clock()
        factory = RecordingClientFactory()
        self.connect(LOOPBACK4, port, factory, timeout=30.0, onReactor=ClockedReactor(clock))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        await waitFor(lambda: bool(factory.protocols), what="the connection")
        self.assertEqual(clock.getDelayedCalls(), [])
        proto = factory.protocols[0]
        proto.transport.loseConnection()  # type: ignore[union-attr]
        clock.advance(0)  # loseConnection's next reactor turn
        await proto.done
        self.assertEqual(factory.names(), ["startedConnecting", "buildProtocol", "lost"])

    async def test_stopConnecting(self) -> None:
        """
        stopConnecting() while connecting: clientConnectionFailed() with
        UserError, the socket closed; then (not connecting)
        NotConnectingError.
        """
        port = self.unansweredPort()
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, port, factory)
        transport = connector.transport
        self.assertEqual(connector.getDestination(), IPv4Address("TCP", LOOPBACK4, port))
        await sleep(0.2)
        self.assertEqual(connector.state, "connecting")
        connector.stopConnecting()
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])
        self.assertTrue(factory.reason("failed").check(error.UserError), factory.calls)
        self.assertEqual((factory.numPorts, factory.stops), (0, 1))
        self.assertUnwatched(transport)
        self.assertRaises(error.NotConnectingError, connector.stopConnecting)
        self.assertEqual(connector.getDestination(), IPv4Address("TCP", LOOPBACK4, port))
        await factory.failed
        await sleep(0.1)
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])

    async def test_disconnectWhileConnecting(self) -> None:
        """connector.disconnect() while connecting stops the attempt (UserError)."""
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, self.unansweredPort(), factory)
        connector.disconnect()
        self.assertTrue(factory.reason("failed").check(error.UserError), factory.calls)
        self.assertEqual(connector.state, "disconnected")
        await factory.failed

    async def test_brokenWhileConnecting(self) -> None:
        """
        A connecting socket that the reactor reports broken without a
        readable event (its connectionLost, as the reactor calls it) fails
        the attempt at once, its socket closed and no longer watched.
        """
        factory = RecordingClientFactory()
        connector = self.connect(LOOPBACK4, self.unansweredPort(), factory)
        transport = connector.transport
        assert transport is not None
        transport.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])
        self.assertTrue(factory.reason("failed").check(error.ConnectError), factory.calls)
        self.assertEqual(connector.state, "disconnected")
        self.assertUnwatched(transport)
        await factory.failed

    async def test_stopFromStartedConnecting(self) -> None:
        """stopConnecting() from startedConnecting(): no socket is made; the factory is stopped."""

        class Stopping(RecordingClientFactory):
            def startedConnecting(self, connector: Any) -> None:
                super().startedConnecting(connector)
                connector.stopConnecting()

        factory = Stopping()
        connector = self.connect(LOOPBACK4, freePort(), factory)
        self.assertEqual(factory.names(), ["startedConnecting", "failed"])
        self.assertTrue(factory.reason("failed").check(error.UserError), factory.calls)
        self.assertIsNone(connector.transport)
        self.assertEqual((factory.numPorts, factory.stops), (0, 1))
        await factory.failed

    @needsIPv6
    async def test_destinationIPv6(self) -> None:
        """getDestination() of an IPv6 literal is an IPv6Address."""
        factory = RecordingClientFactory()
        connector = LeanConnector(reactor, LOOPBACK6, 4321, factory, 30.0, None)
        self.assertEqual(connector.getDestination(), IPv6Address("TCP", LOOPBACK6, 4321))
        self.assertRaises(error.NotConnectingError, connector.stopConnecting)

    async def test_noProtocol(self) -> None:
        """A factory that builds no protocol: clientConnectionFailed() (ConnectError), socket closed."""
        _, port = await startEcho(self)
        factory = RecordingClientFactory(makeProtocol=False)
        connector = self.connect(LOOPBACK4, port, factory)
        transport = connector.transport
        await waitFor(lambda: "buildProtocol" in factory.names(), what="buildProtocol")
        self.assertUnwatched(transport)
        await waitFor(lambda: "failed" in factory.names(), limit=2.0, what="clientConnectionFailed")
        self.assertTrue(factory.reason("failed").check(error.ConnectError), factory.calls)
        self.assertEqual(connector.state, "disconnected")
        self.assertEqual((factory.numPorts, factory.stops), (0, 1))

    async def test_connectedAtOnce(self) -> None:
        """
        Where a non-blocking connect() succeeds at once (forced here: the
        socket connects before connect_ex returns 0), the connection is
        made a reactor turn later and is read from like any other.
        """

        class ImmediateSocket(socket.socket):
            def connect_ex(self, address: Any) -> int:
                self.settimeout(SOCKET_TIMEOUT)
                try:
                    return super().connect_ex(address)
                finally:
                    self.setblocking(False)

        class SocketModule:
            socket = ImmediateSocket

            def __getattr__(self, name: str) -> Any:
                return getattr(socket, name)

        _, port = await startEcho(self)
        self.patch(_leantcp, "socket", SocketModule())
        factory = RecordingClientFactory(greeting=b"hello at once")
        connector = self.connect(LOOPBACK4, port, factory)
        self.assertIsInstance(connector.transport.socket, ImmediateSocket)  # type: ignore[union-attr]
        self.assertEqual(factory.names(), ["startedConnecting"])
        await waitFor(lambda: bool(factory.protocols), what="the connection")
        proto = factory.protocols[0]
        await waitFor(lambda: proto.received == b"hello at once", limit=2.0, what="the echo")
        await self.closeAndCheck(connector, proto)


@implementer(IHalfCloseableProtocol)
class ForwardingProtocol(ServerProtocol):
    """
    Passes each read straight to C{peer}'s transport, as a relay does, and
    closes it after the FIN; notes the types of what it was handed and the
    most the peer's transport held back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peer: Any = None
        self.types: set[type] = set()
        self.mostPending = 0

    def dataReceived(self, data: bytes) -> None:
        self.types.add(type(data))
        peerTransport = self.peer.transport
        peerTransport.write(data)
        self.mostPending = max(self.mostPending, peerTransport._pendingSize)

    def readConnectionLost(self) -> None:
        self.peer.transport.unregisterProducer()
        self.peer.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


class LendingTests(LeanTestCase):
    """Reads lent from the shared buffer (L{_leantcp.lendReadsTo})."""

    async def test_relayedToSlowReader(self) -> None:
        """
        16 MiB relayed from a lending connection to a reader that
        starts late and reads slowly arrive intact: the protocol is handed
        memoryviews, and what the slow side's transport keeps is its own
        copy, not the buffer the next read reuses.
        """
        size = 16 * MiB
        data = pattern(size, seed=8)
        factory, port = await self.serve(ForwardingProtocol)
        sink = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sink.close)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sink.bind((LOOPBACK4, 0))
        sink.listen(1)
        sink.settimeout(SOCKET_TIMEOUT)
        sendNow = threading.Event()

        def sender() -> None:
            with connectTo((LOOPBACK4, port)) as sock:
                waitEvent(sendNow, "sending")
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)

        def slowReader() -> bytes:
            conn, _ = sink.accept()
            with conn:
                conn.settimeout(SOCKET_TIMEOUT)
                waitEvent(sendNow, "sending")
                time.sleep(0.3)  # let the relay's writes fill the socket first
                received = bytearray()
                for _ in range(size // 4096 + 100):  # 4 KiB a read at least
                    chunk = conn.recv(16 * 1024)
                    if not chunk:
                        break
                    received += chunk
                return bytes(received)

        sent = deferToThread(sender)
        read = deferToThread(slowReader)
        try:
            inbound = await self.accepted(factory)
            outbound = RecordingClientFactory()
            self.connect(LOOPBACK4, sink.getsockname()[1], outbound)
            await waitFor(lambda: bool(outbound.protocols), what="the connection to the reader")
            peer = outbound.protocols[0]
            await peer.made
            inbound.peer = peer
            self.assertTrue(_leantcp.lendReadsTo(inbound.transport, peer.transport))
            peer.transport.registerProducer(inbound.transport, True)  # type: ignore[union-attr]
        finally:
            sendNow.set()
        received = await read
        await sent
        self.assertEqual((len(received), sha(received)), (size, sha(data)))
        self.assertEqual(inbound.types, {memoryview})
        self.assertGreater(inbound.mostPending, 0, "the reader was never slower than the relay")
        await peer.done
        inbound.transport.loseConnection()
        await inbound.done

    def test_onlyBetweenLeanConnections(self) -> None:
        """A lean connection lends its reads only to another lean connection."""
        lean = _leantcp.LeanConnection(socket.socket(), None, reactor)
        self.addCleanup(lean.socket.close)  # type: ignore[union-attr]
        self.assertFalse(_leantcp.lendReadsTo(lean, StringTransport()))
        self.assertFalse(_leantcp.lendReadsTo(StringTransport(), lean))
        self.assertIsNone(lean._lentInto)
