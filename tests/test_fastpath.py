"""
Tests for L{txsocks5._fastpath}: when the speed-ups are used, and that
both they and the public paths they replace carry data right.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import error, tcp, udp
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import test_integration as integration
from tests.support import IntegrationTestCase, needsIPv6, socksConnect, startTwistd
from tests.test_integration import echoRoundTrip, startEcho
from txsocks5 import _fastpath
from txsocks5.busypoll import BusyPolling


class AvailabilityTests(SynchronousTestCase):
    """The fast reactor is used only where its Twisted internals were checked."""

    def test_testedVersion(self) -> None:
        if _fastpath.epollreactor is None:
            raise SkipTest("no epoll on this platform")
        self.patch(_fastpath, "_twistedVersion", lambda: _fastpath.TESTED_TWISTED[0])
        self.assertTrue(_fastpath.fastReactorAvailable())

    def test_untestedVersion(self) -> None:
        """Another Twisted release gets the stock reactor."""
        self.patch(_fastpath, "_twistedVersion", lambda: "99.1")
        self.assertFalse(_fastpath.fastReactorAvailable())

    def test_alreadyInstalled(self) -> None:
        """A reactor chosen before (here: trial's) is never replaced."""
        self.assertFalse(_fastpath.installFastReactor())


class TwistdReactorTests(IntegrationTestCase):
    """CONNECT through twistd on the fast reactor and on the stock one."""

    async def serveThrough(self, *twistdArgs: str, socks5Args: tuple[str, ...] = ()) -> bytes:
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", *socks5Args, twistdArgs=twistdArgs
        )
        port = await child.listening
        _, targetPort = await startEcho(self)

        def client() -> bytes:
            sock, _ = socksConnect(("127.0.0.1", port), "127.0.0.1", targetPort)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), b"ping through the tunnel")
        return bytes(child.output)

    async def test_fastByDefault(self) -> None:
        if not _fastpath.fastReactorAvailable():
            raise SkipTest("the fast reactor is not used with this Twisted")
        output = await self.serveThrough()
        self.assertIn(b"reactor class: txsocks5._fastpath.FastEPollReactor", output)

    async def test_stockWhenChosen(self) -> None:
        """twistd --reactor=epoll keeps Twisted's own reactor, and it works as well."""
        output = await self.serveThrough("--reactor=epoll")
        self.assertIn(b"reactor class: twisted.internet.epollreactor.EPollReactor", output)

    async def test_busyPoll(self) -> None:
        """With --busy-poll, the fast reactor says it polls busily, and serves."""
        if not _fastpath.fastReactorAvailable():
            raise SkipTest("the fast reactor is not used with this Twisted")
        output = await self.serveThrough(socks5Args=("--busy-poll", "100"))
        self.assertIn("Polling for up to 100 µs before each wait for events".encode(), output)

    async def test_busyPollNeedsFastReactor(self) -> None:
        """On another reactor, --busy-poll is ignored with a warning."""
        output = await self.serveThrough("--reactor=epoll", socks5Args=("--busy-poll", "100"))
        self.assertIn(b"--busy-poll needs txsocks5's reactor, not EPollReactor: not polling busily", output)


def privateFastReactor(case: SynchronousTestCase) -> Any:
    """
    A L{_fastpath.FastEPollReactor} of C{case}'s own (not the global
    reactor), closed when it ends; C{case} is skipped where the fast reactor
    is not used.
    """
    if not _fastpath.fastReactorAvailable():
        raise SkipTest("the fast reactor is not used with this Twisted")
    reactor = _fastpath.FastEPollReactor()
    case.addCleanup(reactor._poller.close)
    case.addCleanup(reactor.waker.connectionLost, None)
    return reactor


class PairReader:
    """
    A reader, for a private reactor, of one end of a socket pair: each read
    event runs C{onRead} (its result is C{doRead}'s), and how the reader
    ended is kept in C{lost}.
    """

    def __init__(self, sock: socket.socket, onRead: Callable[[], object]) -> None:
        self.sock = sock
        self.onRead = onRead
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "PairReader"

    def doRead(self) -> object:
        return self.onRead()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class BusyPollingReactorTests(SynchronousTestCase):
    """FastEPollReactor.setBusyPolling: the reactor's polls go through a BusyPolling."""

    def setUp(self) -> None:
        self.reactor = privateFastReactor(self)

    def test_setAndUnset(self) -> None:
        self.assertIsNone(self.reactor._busyPolling)
        self.reactor.setBusyPolling(100e-6)
        busy = self.reactor._busyPolling
        assert busy is not None
        self.assertEqual(busy.limit, 100_000)
        self.reactor.setBusyPolling(0)
        self.assertIsNone(self.reactor._busyPolling)

    def test_pollsThroughIt(self) -> None:
        """doPoll asks the BusyPolling, with the reactor's epoll object and timeout."""
        calls = []

        class Recording(BusyPolling):
            def poll(self, poller: Any, timeout: float, maxevents: int) -> list[tuple[int, int]]:
                calls.append((poller, timeout))
                return super().poll(poller, timeout, maxevents)

        self.reactor._busyPolling = Recording(100e-6)
        self.reactor.doPoll(0.001)
        self.reactor.wakeUp()  # Something to find: else a wait without a timeout never ends.
        self.reactor.doPoll(None)
        self.assertEqual(calls, [(self.reactor._poller, 0.001), (self.reactor._poller, -1)])


class MainLoopTests(SynchronousTestCase):
    """
    FastEPollReactor.mainLoop: Twisted's loop, with the timed-call
    bookkeeping only on the turns that need it.  Each test runs a reactor of
    its own (not the global one), stopped by a guard timer at the latest.
    """

    def setUp(self) -> None:
        self.reactor = privateFastReactor(self)
        self.bookkeeping = 0
        runUntilCurrent = self.reactor.runUntilCurrent

        def counting() -> None:
            self.bookkeeping += 1
            runUntilCurrent()

        self.reactor.runUntilCurrent = counting  # type: ignore[method-assign]
        self.guard = self.reactor.callLater(10, self.reactor.stop)

    def runReactor(self) -> None:
        """Run the reactor until it stops; fail if the guard had to stop it."""
        self.reactor.run(installSignalHandlers=False)
        self.assertFalse(self.guard.called, "the guard timer stopped the reactor")

    def pingPong(self, turns: int) -> list[int]:
        """
        Have the reactor read C{turns} bytes from a socket pair, one per
        turn, each read sending the next byte; then stop.  Returns the
        list the size of each read is appended to.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        reads: list[int] = []
        reactor = self.reactor

        def onRead() -> None:
            reads.append(len(a.recv(16)))
            if len(reads) < turns:
                b.send(b"x")
            else:
                reactor.removeReader(reader)  # type: ignore[arg-type]
                reactor.stop()

        reader = PairReader(a, onRead)
        reactor.addReader(reader)  # type: ignore[arg-type]
        reactor.callWhenRunning(b.send, b"x")
        return reads

    def test_ioTurnsSkipBookkeeping(self) -> None:
        """Turns with only I/O to handle do not run the timed calls' bookkeeping."""
        reads = self.pingPong(200)
        self.runReactor()
        self.assertEqual(reads, [1] * 200)
        self.assertLess(self.bookkeeping, 20)

    def test_stockLoop(self) -> None:
        """With Twisted's internals not as checked, Twisted's own loop runs (bookkeeping every turn)."""
        self.reactor._leanMainLoop = False
        reads = self.pingPong(200)
        self.runReactor()
        self.assertEqual(reads, [1] * 200)
        self.assertGreaterEqual(self.bookkeeping, 200)

    def test_timedCallsAndThreads(self) -> None:
        """
        Timed calls run in order and on time (never waited past), cancelled
        ones do not, and calls from other threads run: the reactor then
        stops (its shutdown triggers fire).
        """
        reactor = self.reactor
        ran: list[str] = []
        started = reactor.seconds()
        reactor.callLater(0.05, ran.append, "second")
        reactor.callLater(0.01, ran.append, "first")
        reactor.callLater(0.03, ran.append, "cancelled").cancel()
        fromThread = threading.Thread(target=reactor.callFromThread, args=(ran.append, "thread"))
        reactor.callLater(0.1, fromThread.start)
        reactor.callLater(0.3, reactor.stop)
        reactor.addSystemEventTrigger("after", "shutdown", ran.append, "shutdown")
        self.runReactor()
        fromThread.join(5)
        self.assertEqual(ran, ["first", "second", "thread", "shutdown"])
        self.assertLess(reactor.seconds() - started, 5)

    def test_errorLogged(self) -> None:
        """An error escaping a turn is logged, and the loop goes on."""
        doIteration = self.reactor.doIteration
        failures = []

        def failOnce(timeout: float | None) -> None:
            if not failures:
                failures.append(timeout)
                raise RuntimeError("a broken turn")
            doIteration(timeout)

        self.reactor.doIteration = failOnce  # type: ignore[method-assign]
        reads = self.pingPong(5)
        self.runReactor()
        self.assertEqual(reads, [1] * 5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ReadDispatchTests(SynchronousTestCase):
    """
    FastEPollReactor.doPoll calls doRead itself for an event that is only
    readable, with what Twisted's _doReadOrWrite does with its result.
    """

    def setUp(self) -> None:
        self.reactor = privateFastReactor(self)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def reader(self, onRead: Callable[[], object]) -> PairReader:
        """A reader of the socket pair's first end, watched by the reactor."""
        reader = PairReader(self.a, onRead)
        self.reactor.addReader(reader)  # type: ignore[arg-type]
        return reader

    def test_raises(self) -> None:
        """A doRead that raises is logged, and its descriptor is disconnected with that error."""

        def onRead() -> None:
            raise RuntimeError("broken reader")

        reader = self.reader(onRead)
        self.b.send(b"x")
        self.reactor.doPoll(1)
        [reason] = reader.lost
        self.assertTrue(reason.check(RuntimeError))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_connectionLost(self) -> None:
        """A doRead that returns ConnectionLost disconnects with it, unlogged."""
        reader = self.reader(error.ConnectionLost)
        self.b.send(b"x")
        self.reactor.doPoll(1)
        [reason] = reader.lost
        self.assertTrue(reason.check(error.ConnectionLost))
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_keepsReading(self) -> None:
        """A doRead that returns nothing stays a reader."""
        reads: list[bytes] = []
        a = self.a
        reader = self.reader(lambda: reads.append(a.recv(16)))
        self.b.send(b"x")
        self.reactor.doPoll(1)
        self.assertEqual((reads, reader.lost), ([b"x"], []))
        self.assertIn(reader, self.reactor.getReaders())


class FastConnectTests(IntegrationTestCase):
    """CONNECT outcomes through twistd on the fast reactor (its own connect path)."""

    async def startProxy(self) -> tuple[str, int]:
        if not (_fastpath.fastReactorAvailable() and _fastpath._leanPortAvailable):
            raise SkipTest("the fast connect path is not used with this Twisted")
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1")
        return ("127.0.0.1", await child.listening)

    async def test_refused(self) -> None:
        """A refused connection is answered 0x05, as on the public path."""
        proxy = await self.startProxy()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closedPort = unused.getsockname()[1]

        def client() -> int:
            sock, reply = socksConnect(proxy, "127.0.0.1", closedPort)
            sock.close()
            return reply[0]

        self.assertEqual(await deferToThread(client), 0x05)

    async def test_manyAtOnce(self) -> None:
        """Connections made while others connect each relay their own data."""
        proxy = await self.startProxy()
        _, targetPort = await startEcho(self)

        def clients() -> list[bytes]:
            socks = [socksConnect(proxy, "127.0.0.1", targetPort)[0] for _ in range(20)]
            try:
                return [echoRoundTrip(sock, f"tunnel {i}".encode()) for i, sock in enumerate(socks)]
            finally:
                for sock in socks:
                    sock.close()

        self.assertEqual(await deferToThread(clients), [f"tunnel {i}".encode() for i in range(20)])

    @needsIPv6
    async def test_ipv6(self) -> None:
        proxy = await self.startProxy()
        _, targetPort = await startEcho(self, "::1")

        def client() -> bytes:
            sock, reply = socksConnect(proxy, "::1", targetPort)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), b"ping through the tunnel")


class DirectWriterTests(SynchronousTestCase):
    """Which transports get the direct write."""

    def test_publicPathForOtherTransports(self) -> None:
        self.assertFalse(_fastpath.canWriteDirectly(StringTransport()))

    def test_tcp(self) -> None:
        transport = tcp.Connection.__new__(tcp.Connection)
        self.assertEqual(_fastpath.canWriteDirectly(transport), _fastpath._directWritesAvailable)

    def test_publicPathForUntestedTwisted(self) -> None:
        """With the internals unchecked, even a TCP connection gets its own write."""
        self.patch(_fastpath, "_directWritesAvailable", False)
        self.assertFalse(_fastpath.canWriteDirectly(tcp.Connection.__new__(tcp.Connection)))


class DirectDatagramTests(SynchronousTestCase):
    """Which UDP ports get the direct send, and what it does."""

    def listen(self, host: str = "127.0.0.1") -> udp.Port:
        """A Twisted UDP port bound on C{host}, on a reactor that is never run."""
        port = udp.Port(0, DatagramProtocol(), interface=host, reactor=MemoryReactor())
        port.startListening()
        self.addCleanup(port.socket.close)
        return port

    def receiver(self, host: str = "127.0.0.1") -> socket.socket:
        """A blocking UDP socket on C{host} that waits at most 5 s."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        receiver = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind((host, 0))
        receiver.settimeout(5)
        return receiver

    def test_portOfTheFamily(self) -> None:
        port = self.listen()
        available = _fastpath._directDatagramsAvailable
        self.assertEqual(_fastpath.canSendDatagramsDirectly(port, socket.AF_INET), available)
        self.assertFalse(_fastpath.canSendDatagramsDirectly(port, socket.AF_INET6))

    def test_notConnected(self) -> None:
        """A connected port sends to its one address only: its own write is used."""
        port = self.listen()
        port.connect("127.0.0.1", 9)
        self.assertFalse(_fastpath.canSendDatagramsDirectly(port, socket.AF_INET))

    def test_otherPorts(self) -> None:
        """Anything but Twisted's own UDP port (a wrapper, a fake) keeps its write."""
        self.assertFalse(_fastpath.canSendDatagramsDirectly(object(), socket.AF_INET))
        self.assertFalse(_fastpath.canSendDatagramsDirectly(udp.Port(0, None), socket.AF_INET))

    def test_untestedTwisted(self) -> None:
        self.patch(_fastpath, "_directDatagramsAvailable", False)
        self.assertFalse(_fastpath.canSendDatagramsDirectly(self.listen(), socket.AF_INET))

    def test_sends(self) -> None:
        port = self.listen()
        receiver = self.receiver()
        _fastpath.sendDatagramDirectly(port, b"straight to the socket", receiver.getsockname())
        data, source = receiver.recvfrom(100)
        self.assertEqual((data, source[1]), (b"straight to the socket", port.getHost().port))

    @needsIPv6
    def test_sendsIPv6(self) -> None:
        port = self.listen("::1")
        self.assertEqual(
            _fastpath.canSendDatagramsDirectly(port, socket.AF_INET6), _fastpath._directDatagramsAvailable
        )
        receiver = self.receiver("::1")
        _fastpath.sendDatagramDirectly(port, b"over IPv6", receiver.getsockname()[:2])
        self.assertEqual(receiver.recvfrom(100)[0], b"over IPv6")

    def test_tooLong(self) -> None:
        """A datagram too long for UDP raises what C{udp.Port.write} raises."""
        port = self.listen()
        receiver = self.receiver()
        self.assertRaises(
            error.MessageLengthError,
            _fastpath.sendDatagramDirectly,
            port,
            b"x" * 70000,
            receiver.getsockname(),
        )


class PublicWritePathBulkTests(integration.BulkTransferTests):
    """The bulk transfer of L{integration.BulkTransferTests}, without direct writes."""

    size = 16 * 1024 * 1024

    def setUp(self) -> None:
        self.patch(_fastpath, "_directWritesAvailable", False)
        super().setUp()


class PublicWritePathHalfCloseTests(integration.HalfCloseTests):
    """The half-closes of L{integration.HalfCloseTests}, without direct writes."""

    def setUp(self) -> None:
        self.patch(_fastpath, "_directWritesAvailable", False)
        super().setUp()
