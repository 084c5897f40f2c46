"""
Tests for L{txsocks5.accepting}: backing off accepting when the process
runs out of file descriptors.

L{AcceptGuard} is tested with a fake port and L{task.Clock}; L{guardPort}
on real loopback ports with a listening socket that fails on demand; and
the whole server in a C{twistd} child whose descriptor limit is 48.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import (
    LOOPBACK4,
    EchoProtocol,
    IntegrationTestCase,
    TwistdProtocol,
    childEnvironment,
    killTwistd,
    listenTCP,
    reactor,
    readReply,
    recvExactly,
    sleep,
    startTarget,
    twistdCommand,
    waitFor,
)
from txsocks5 import accepting
from txsocks5.accepting import (
    RESOURCE_ERRORS,
    AcceptGuard,
    descriptorLimit,
    descriptorsInUse,
    guardPort,
    raiseFileLimit,
)

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

SKIP_PROC = None if os.path.isdir("/proc/self/fd") else "needs /proc/self/fd (Linux)"


def warnings(events: Any) -> list[dict[str, Any]]:
    """The warnings L{txsocks5.accepting} logged among C{events}."""
    return [
        e for e in events if e.get("log_namespace") == "txsocks5.accepting" and e["log_level"].name == "warn"
    ]


def infos(events: Any) -> list[dict[str, Any]]:
    """The info lines L{txsocks5.accepting} logged among C{events}."""
    return [
        e for e in events if e.get("log_namespace") == "txsocks5.accepting" and e["log_level"].name == "info"
    ]


class FakePort:
    """Records whether it is reading, like a port's C{startReading}/C{stopReading}."""

    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def startReading(self) -> None:
        self.reading = True
        self.calls.append("start")

    def stopReading(self) -> None:
        self.reading = False
        self.calls.append("stop")

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1080)


class AcceptGuardTests(SynchronousTestCase):
    """The backoff policy, on a fake port and a fake clock."""

    def setUp(self) -> None:
        self.port = FakePort()
        self.clock = Clock()
        self.shed: list[int] = []

    def guard(self, **options: Any) -> AcceptGuard:
        def shed(error: int) -> int:
            self.shed.append(error)
            return 3

        return AcceptGuard(self.port, self.clock, shed=shed, **options)

    def failAndWait(self, guard: AcceptGuard, error: int = errno.EMFILE) -> float:
        """Fail an accept; return how long the port stays paused."""
        guard.acceptFailed(error)
        self.assertFalse(self.port.reading)
        [call] = [c for c in self.clock.getDelayedCalls() if getattr(c, "func", None) == guard._resume]
        delay = call.getTime() - self.clock.seconds()
        self.clock.advance(delay)
        self.assertTrue(self.port.reading)
        return delay

    def test_pausesThenResumes(self) -> None:
        """A failed accept stops reading; reading starts again after the first delay."""
        guard = self.guard(initialDelay=0.05)
        with capturedLogs():
            guard.acceptFailed(errno.EMFILE)
        self.assertEqual(self.port.calls, ["stop"])
        self.assertTrue(guard.paused)
        self.clock.advance(0.049)
        self.assertFalse(self.port.reading)
        self.clock.advance(0.001)
        self.assertEqual(self.port.calls, ["stop", "start"])
        self.assertFalse(guard.paused)

    def test_backoffDoublesUpToMax(self) -> None:
        """Failures in a row double the pause, up to C{maxDelay}."""
        guard = self.guard(initialDelay=0.05, maxDelay=1.0, shedAfter=None)
        with capturedLogs():
            delays = [self.failAndWait(guard) for _ in range(7)]
        expected = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        for got, want in zip(delays, expected, strict=True):
            self.assertAlmostEqual(got, want)

    def test_successResetsBackoff(self) -> None:
        """A successful accept brings the next pause back to C{initialDelay}."""
        guard = self.guard(initialDelay=0.05, maxDelay=1.0)
        with capturedLogs():
            for _ in range(4):
                self.failAndWait(guard)
            guard.acceptSucceeded()
            self.assertAlmostEqual(self.failAndWait(guard), 0.05)
            self.assertAlmostEqual(self.failAndWait(guard), 0.1)

    def test_oneWarningPerEpisode(self) -> None:
        """
        However often accepting fails (and succeeds in between), one warning
        is logged, with the errno's name and the descriptor counts, and one
        line once C{quietPeriod} passes without a failure; a later failure
        starts a new episode with a new warning.
        """
        guard = self.guard(quietPeriod=30.0, shedAfter=None)
        with capturedLogs() as events:
            for _ in range(50):
                self.failAndWait(guard)
                guard.acceptSucceeded()
                self.clock.advance(1)
            self.assertEqual(len(warnings(events)), 1)
            self.assertEqual(infos(events), [])
            self.assertTrue(guard.failing)
            self.clock.advance(30)
            self.assertFalse(guard.failing)
            self.assertEqual(len(warnings(events)), 1)
            [ended] = infos(events)
            self.assertEqual(ended["failures"], 50)
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.failAndWait(guard, errno.ENFILE)
            self.assertEqual(len(warnings(events)), 2)
        first = warnings(events)[0]
        self.assertEqual(first["errno"], "EMFILE")
        self.assertEqual(first["listener"], "127.0.0.1:1080")
        self.assertIn("limit", first)
        self.assertIn("inUse", first)
        self.assertEqual(warnings(events)[1]["errno"], "ENFILE")

    def test_episodeEndsOnlyAfterQuiet(self) -> None:
        """A failure within C{quietPeriod} of a success keeps the episode going."""
        guard = self.guard(quietPeriod=10.0)
        with capturedLogs() as events:
            self.failAndWait(guard)
            guard.acceptSucceeded()
            self.clock.advance(9)
            self.failAndWait(guard)
            guard.acceptSucceeded()
            self.clock.advance(2)  # The first check finds the failure 2 s ago.
            self.assertTrue(guard.failing)
            self.clock.advance(8)
            self.assertFalse(guard.failing)
        self.assertEqual((len(warnings(events)), len(infos(events))), (1, 1))

    def test_shedsOnlyAfterFailingFor(self) -> None:
        """
        Waiting clients are closed only once accepting has failed without a
        success for C{shedAfter} seconds; a success starts the count again.
        """
        guard = self.guard(initialDelay=0.5, maxDelay=0.5, shedAfter=2.0)
        with capturedLogs() as events:
            for _ in range(4):  # failures at 0, 0.5, 1.0, 1.5
                self.failAndWait(guard)
            self.assertEqual(self.shed, [])
            self.failAndWait(guard)  # at 2.0
            self.assertEqual(self.shed, [errno.EMFILE])
            guard.acceptSucceeded()
            self.failAndWait(guard)
            self.assertEqual(self.shed, [errno.EMFILE])
            guard.acceptSucceeded()
            self.clock.advance(60)
        self.assertEqual(infos(events)[0]["closed"], 3)

    def test_noShedding(self) -> None:
        """C{shedAfter=None}: clients are never closed."""
        guard = self.guard(shedAfter=None)
        with capturedLogs():
            for _ in range(20):
                self.failAndWait(guard)
        self.assertEqual(self.shed, [])

    def test_stopCancels(self) -> None:
        """L{AcceptGuard.stop} cancels the resumption and the episode's end."""
        guard = self.guard()
        with capturedLogs():
            guard.acceptFailed(errno.EMFILE)
            guard.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.port.calls, ["stop"])
        guard = self.guard()
        with capturedLogs():
            self.failAndWait(guard)
            guard.acceptSucceeded()
            guard.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureWhilePaused(self) -> None:
        """A failure reported while paused does not schedule a second resumption."""
        guard = self.guard()
        with capturedLogs():
            guard.acceptFailed(errno.EMFILE)
            guard.acceptFailed(errno.EMFILE)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.port.calls, ["stop"])

    def test_resourceErrors(self) -> None:
        """Only running out of resources counts; a client's own trouble does not."""
        self.assertEqual(RESOURCE_ERRORS, {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class DescriptorTests(SynchronousTestCase):
    """L{descriptorsInUse} and L{descriptorLimit}."""

    def test_inUse(self) -> None:
        """Opening a descriptor counts one more."""
        if SKIP_PROC:
            raise SkipTest(SKIP_PROC)
        before = descriptorsInUse()
        assert before is not None
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self.assertEqual(descriptorsInUse(), before + 1)
        finally:
            os.close(fd)
        self.assertEqual(descriptorsInUse(), before)

    def test_inUseUnknown(self) -> None:
        """Where /proc/self/fd cannot be listed: L{None}."""

        def listdir(path: str) -> list[str]:
            raise OSError(errno.ENOENT, path)

        self.patch(accepting.os, "listdir", listdir)
        self.assertIsNone(descriptorsInUse())

    def test_limit(self) -> None:
        """The soft limit."""
        if resource is None:
            raise SkipTest("no resource module")
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.assertEqual(descriptorLimit(), None if soft == resource.RLIM_INFINITY else soft)


class FakeResource:
    """Stands in for the C{resource} module: limits that are only recorded."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.set.append(limits)
        self.limits = limits


class RaiseFileLimitTests(SynchronousTestCase):
    """L{raiseFileLimit}, with a fake C{resource} module (the real limit is never touched)."""

    def setUp(self) -> None:
        self.pollBased = True
        self.patch(accepting, "_isPollBased", lambda r: self.pollBased)

    def fake(self, soft: int, hard: int, refuse: bool = False) -> FakeResource:
        fake = FakeResource(soft, hard, refuse)
        self.patch(accepting, "resource", fake)
        return fake

    def test_toHard(self) -> None:
        """The soft limit goes up to the hard limit."""
        fake = self.fake(1024, 65536)
        with capturedLogs() as events:
            self.assertEqual(raiseFileLimit(object()), 65536)
        self.assertEqual(fake.set, [(65536, 65536)])
        self.assertEqual([(e["old"], e["new"]) for e in events if "old" in e], [(1024, 65536)])

    def test_capped(self) -> None:
        """At most C{cap}; an unlimited hard limit is capped too."""
        fake = self.fake(1024, 1 << 30)
        with capturedLogs():
            self.assertEqual(raiseFileLimit(object()), 1 << 20)
            self.assertEqual(fake.set, [(1 << 20, 1 << 30)])
            fake = self.fake(1024, FakeResource.RLIM_INFINITY)
            self.assertEqual(raiseFileLimit(object(), cap=4096), 4096)
        self.assertEqual(fake.set, [(4096, FakeResource.RLIM_INFINITY)])

    def test_neverLowered(self) -> None:
        """A soft limit already at (or above) the target is left alone."""
        fake = self.fake(65536, 65536)
        self.assertEqual(raiseFileLimit(object()), 65536)
        fake = self.fake(1 << 21, 1 << 22)
        self.assertEqual(raiseFileLimit(object()), 1 << 21)
        self.assertEqual(fake.set, [])

    def test_selectReactor(self) -> None:
        """A reactor that is not epoll- or poll-based keeps the limit as it is."""
        self.pollBased = False
        fake = self.fake(1024, 65536)
        self.assertEqual(raiseFileLimit(object()), 1024)
        self.assertEqual(fake.set, [])

    def test_refused(self) -> None:
        """If the system refuses, the old limit stays and that is logged."""
        self.fake(1024, 65536, refuse=True)
        with capturedLogs() as events:
            self.assertEqual(raiseFileLimit(object()), 1024)
        self.assertTrue([e for e in events if e.get("target") == 65536])

    def test_noResource(self) -> None:
        """No C{resource} module (not POSIX): L{None}."""
        self.patch(accepting, "resource", None)
        self.assertIsNone(raiseFileLimit(object()))

    def test_defaultReactor(self) -> None:
        """Without a reactor, the global one is asked about."""
        seen: list[object] = []

        def isPollBased(r: object) -> bool:
            seen.append(r)
            return False

        self.patch(accepting, "_isPollBased", isPollBased)
        self.fake(1024, 65536)
        raiseFileLimit()
        self.assertEqual(seen, [reactor])


class IsPollBasedTests(SynchronousTestCase):
    """Which reactors L{raiseFileLimit} raises the limit for."""

    def test_kinds(self) -> None:
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            raise SkipTest("no epoll") from None
        from twisted.internet.selectreactor import SelectReactor

        self.assertTrue(accepting._isPollBased(EPollReactor.__new__(EPollReactor)))
        self.assertFalse(accepting._isPollBased(SelectReactor.__new__(SelectReactor)))
        self.assertFalse(accepting._isPollBased(object()))


# -- guardPort on real ports ------------------------------------------------


class FlakyListener:
    """
    A listening socket whose C{accept} fails with C{error} while C{full},
    unless the guard's spare descriptor is released (as a full descriptor
    table would behave).
    """

    def __init__(self, real: Any, error: int = errno.EMFILE) -> None:
        self.real = real
        self.error = error
        self.full = False
        self.failures = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self.full and (accepting._spare.available or self.error not in (errno.EMFILE, errno.ENFILE)):
            self.failures += 1
            raise OSError(self.error, os.strerror(self.error))
        return self.real.accept()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Recorder(Protocol):
    """Counts connections on its factory and greets."""

    factory: RecordingFactory

    def connectionMade(self) -> None:
        self.factory.made += 1
        self.transport.write(b"hi")  # type: ignore[union-attr]


class RecordingFactory(Factory):
    """Makes L{Recorder}s; C{made} counts them."""

    protocol = Recorder  # type: ignore[assignment]

    def __init__(self) -> None:
        self.made = 0


def pendingClient(port: int) -> socket.socket:
    """A non-blocking client, connected (by the kernel) but maybe not accepted."""
    sock = socket.socket()
    sock.settimeout(5)
    sock.connect((LOOPBACK4, port))
    sock.setblocking(False)
    return sock


def readNow(sock: socket.socket) -> bytes | None:
    """What C{sock} has to read: bytes, C{b""} at EOF or reset, L{None} if nothing yet."""
    try:
        return sock.recv(100)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


class GuardPortTests(IntegrationTestCase):
    """L{guardPort} on real loopback TCP ports."""

    async def listen(self, **options: Any) -> tuple[tcp.Port, RecordingFactory, AcceptGuard]:
        factory = RecordingFactory()
        port = await listenTCP(self, factory)
        guard = guardPort(port, **options)
        assert guard is not None
        return port, factory, guard  # type: ignore[return-value]

    def makeFlaky(self, port: tcp.Port, error: int = errno.EMFILE) -> FlakyListener:
        wrapper: Any = port.socket
        flaky = FlakyListener(wrapper._listener, error)
        wrapper._listener = flaky
        return flaky

    async def test_servesNormally(self) -> None:
        """A guarded port accepts, reports its address, and closes as usual."""
        port, factory, guard = await self.listen()
        self.assertIsInstance(guard, AcceptGuard)
        self.assertNotIsInstance(port.socket, socket.socket)
        number = port.getHost().port
        sock = pendingClient(number)
        self.addCleanup(sock.close)
        await waitFor(lambda: factory.made == 1, what="the client to be accepted")
        await waitFor(lambda: readNow(sock) == b"hi", what="the greeting")

    async def test_backsOffThenServes(self) -> None:
        """
        While accept fails with EMFILE the port stops reading (no spinning,
        no Twisted log lines per attempt), the client waits in the listen
        queue, and is served once accept works; one warning is logged.
        """
        port, factory, guard = await self.listen(initialDelay=0.01, maxDelay=0.05, shedAfter=None)
        flaky = self.makeFlaky(port)
        flaky.full = True
        with capturedLogs() as events:
            sock = pendingClient(port.getHost().port)
            self.addCleanup(sock.close)
            await waitFor(lambda: flaky.failures >= 3, what="a few failed accepts")
            await sleep(0.3)
            # About one attempt per 0.05 s, not thousands.
            self.assertLess(flaky.failures, 30)
            self.assertEqual(factory.made, 0)
            self.assertIsNone(readNow(sock))
            flaky.full = False
            await waitFor(lambda: factory.made == 1, what="the waiting client to be served")
            await waitFor(lambda: readNow(sock) == b"hi", what="the greeting")
        self.assertEqual(len(warnings(events)), 1)
        self.assertEqual(warnings(events)[0]["errno"], "EMFILE")
        self.assertEqual(
            [e for e in events if e.get("log_namespace", "").startswith("twisted.internet.tcp")], []
        )
        self.assertTrue(guard.failing)  # until the quiet period passes
        self.assertIn(port, reactor.getReaders())

    async def test_enfile(self) -> None:
        """ENFILE (Twisted has no recovery for it at all) backs off the same way."""
        port, factory, guard = await self.listen(initialDelay=0.01, maxDelay=0.05, shedAfter=None)
        flaky = self.makeFlaky(port, errno.ENFILE)
        flaky.full = True
        with capturedLogs() as events:
            sock = pendingClient(port.getHost().port)
            self.addCleanup(sock.close)
            await sleep(0.3)
            self.assertLess(flaky.failures, 30)
            flaky.full = False
            await waitFor(lambda: factory.made == 1, what="the waiting client to be served")
        self.assertEqual([w["errno"] for w in warnings(events)], ["ENFILE"])

    async def test_shedsLongWaiters(self) -> None:
        """
        When accept keeps failing past C{shedAfter}, waiting clients are
        closed (with the spare descriptor) rather than left waiting.
        """
        port, factory, guard = await self.listen(initialDelay=0.01, maxDelay=0.05, shedAfter=0.1)
        flaky = self.makeFlaky(port)
        flaky.full = True
        with capturedLogs():
            sock = pendingClient(port.getHost().port)
            self.addCleanup(sock.close)
            await waitFor(lambda: readNow(sock) == b"", what="the waiting client to be closed")
            self.assertTrue(accepting._spare.available)
            self.assertEqual(factory.made, 0)
            flaky.full = False
            late = pendingClient(port.getHost().port)
            self.addCleanup(late.close)
            await waitFor(lambda: factory.made == 1, what="a later client to be served")

    async def test_stopListeningWhilePaused(self) -> None:
        """Closing a paused port cancels its resumption (nothing left scheduled)."""
        port, factory, guard = await self.listen(initialDelay=5.0)
        flaky = self.makeFlaky(port)
        flaky.full = True
        with capturedLogs():
            sock = pendingClient(port.getHost().port)
            self.addCleanup(sock.close)
            await waitFor(lambda: guard.paused, what="the port to pause")
            await port.stopListening()
        self.assertFalse(guard.paused)
        self.assertNotIn(port, reactor.getReaders())

    async def test_unixPort(self) -> None:
        """A UNIX port (the same accept loop) is guarded too, and still serves."""
        directory = tempfile.mkdtemp(prefix="txsocks5-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s")
        factory = RecordingFactory()
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        guard = guardPort(port)
        assert guard is not None
        self.assertEqual(guard.name, path)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.connect(path)
        await waitFor(lambda: factory.made == 1, what="the client to be accepted")

    async def test_otherErrorsPassThrough(self) -> None:
        """An error that is not about resources is Twisted's to handle, as before."""
        port, factory, guard = await self.listen()
        flaky = self.makeFlaky(port, errno.EPERM)
        flaky.full = True
        self.assertRaises(PermissionError, port.socket.accept)
        self.assertFalse(guard.failing)


class GuardPortFallbackTests(IntegrationTestCase):
    """Where L{guardPort} leaves a port with Twisted's default behaviour."""

    async def test_untestedTwisted(self) -> None:
        """A Twisted release not in C{TESTED_TWISTED}: the port is left alone, and still serves."""
        self.patch(accepting, "TESTED_TWISTED", ("0.0",))
        factory = RecordingFactory()
        port = await listenTCP(self, factory)
        self.assertIsNone(guardPort(port))
        self.assertIsInstance(port.socket, socket.socket)  # type: ignore[attr-defined]
        sock = pendingClient(port.getHost().port)  # type: ignore[attr-defined]
        self.addCleanup(sock.close)
        await waitFor(lambda: factory.made == 1, what="the client to be accepted")

    async def test_changedInternals(self) -> None:
        """A Twisted whose tcp module lacks C{_accept}: left alone."""
        self.patch(accepting.tcp, "_accept", None)
        del accepting.tcp._accept
        port = await listenTCP(self, RecordingFactory())
        self.assertIsNone(guardPort(port))
        self.assertIsInstance(port.socket, socket.socket)  # type: ignore[attr-defined]

    async def test_ownDoRead(self) -> None:
        """A port class with its own C{doRead}: left alone."""

        class OwnPort(tcp.Port):
            def doRead(self) -> None:
                tcp.Port.doRead(self)

        port = OwnPort(0, RecordingFactory(), interface=LOOPBACK4, reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        self.assertIsNone(guardPort(port))

    def test_notAPort(self) -> None:
        """Something that is not a Twisted TCP port: left alone."""
        self.assertIsNone(guardPort(object()))  # type: ignore[arg-type]

    def test_notListening(self) -> None:
        """A port that is not listening (yet, or any more): left alone."""
        port = tcp.Port(0, RecordingFactory(), interface=LOOPBACK4, reactor=reactor)
        self.assertIsNone(guardPort(port))


# -- the whole server, out of descriptors ------------------------------------

#: The descriptor limit of the twistd child.
CHILD_LIMIT = 48

_SET_LIMIT_THEN_EXEC = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


def cpuSeconds(pid: int) -> float:
    """User plus system CPU time of process C{pid}, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openTunnel(proxy: tuple[str, int], targetPort: int, timeout: float) -> socket.socket | None:
    """
    A CONNECT tunnel to 127.0.0.1:C{targetPort} through C{proxy} that echoes,
    or L{None} if the server does not serve it within C{timeout} (or
    refuses it).
    """
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect(proxy)
        sock.sendall(b"\x05\x01\x00")
        if recvExactly(sock, 2) != b"\x05\x00":
            raise EOFError("no-authentication refused")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK4) + struct.pack("!H", targetPort))
        if readReply(sock)[0] != 0:
            raise EOFError("CONNECT refused")
        sock.sendall(b"ping")
        if recvExactly(sock, 4) != b"ping":
            raise EOFError("no echo")
    except (OSError, EOFError, ValueError):
        sock.close()
        return None
    return sock


def openIdle(proxy: tuple[str, int], timeout: float) -> socket.socket | None:
    """A client that only greets (one descriptor on the server), or L{None} if not answered."""
    sock = socket.socket()
    sock.settimeout(timeout)
    with contextlib.suppress(OSError, EOFError):
        sock.connect(proxy)
        sock.sendall(b"\x05\x01\x00")
        if recvExactly(sock, 2) == b"\x05\x00":
            return sock
    sock.close()
    return None


class OutOfDescriptorsTests(IntegrationTestCase):
    """A twistd child limited to L{CHILD_LIMIT} descriptors, filled up and then freed."""

    skip = SKIP_PROC

    async def startLimitedTwistd(self) -> TwistdProtocol:
        proto = TwistdProtocol()
        workdir = self.mktemp()
        os.makedirs(workdir)
        argv = [
            sys.executable,
            "-c",
            _SET_LIMIT_THEN_EXEC,
            str(CHILD_LIMIT),
            *twistdCommand("--pidfile=", "-n", "socks5", "--port", "tcp:0:interface=127.0.0.1"),
        ]
        reactor.spawnProcess(proto, argv[0], argv, env=childEnvironment(), path=workdir)

        self.addCleanup(killTwistd, proto)
        await proto.listening.addTimeout(20, reactor)
        return proto

    async def test_fullThenFreed(self) -> None:
        """
        With every descriptor in use, new clients are not served, are not
        left waiting for ever (closed within seconds), the server stays
        nearly idle and logs one warning; once the tunnels close, a new
        client is served again.
        """
        child = await self.startLimitedTwistd()
        proxy = (LOOPBACK4, await child.listening)
        assert child.pid is not None
        _, targetPort = await startTarget(self, EchoProtocol)
        held: list[socket.socket] = []

        def closeAll() -> None:
            for sock in held:
                sock.close()
            held.clear()

        self.addCleanup(closeAll)

        # Fill the table: tunnels (two descriptors each), then greeting-only clients.
        for _ in range(CHILD_LIMIT):
            tunnel = await deferToThread(openTunnel, proxy, targetPort, 2.0)
            if tunnel is None:
                break
            held.append(tunnel)
        tunnels = len(held)
        self.assertGreater(tunnels, 5)
        for _ in range(CHILD_LIMIT):
            idle = await deferToThread(openIdle, proxy, 0.5)
            if idle is None:
                break
            held.append(idle)
        self.assertLess(len(held), CHILD_LIMIT, "the table never filled up")

        # Pressure: clients keep arriving for 2 s.
        before = cpuSeconds(child.pid)
        started = time.monotonic()
        waiting: list[socket.socket] = []
        for _ in range(20):
            sock = pendingClient(proxy[1])
            self.addCleanup(sock.close)
            with contextlib.suppress(OSError):
                sock.send(b"\x05\x01\x00")
            waiting.append(sock)
            await sleep(0.1)
        cpu = cpuSeconds(child.pid) - before
        self.assertLess(cpu, 1.0, f"the server used {cpu:.2f}s of CPU in {time.monotonic() - started:.1f}s")

        # Not served, and not left waiting for ever.
        answers: dict[int, bytes] = {}

        def allClosed() -> bool:
            for i, sock in enumerate(waiting):
                if i not in answers:
                    data = readNow(sock)
                    if data is not None:
                        answers[i] = data
            return len(answers) == len(waiting)

        await waitFor(allClosed, limit=15, what="the waiting clients to be closed")
        self.assertEqual(set(answers.values()), {b""}, "a waiting client was served")
        output = bytes(child.output)
        self.assertEqual(output.count(b"Out of resources accepting on"), 1, output.decode())
        self.assertIn(b"(EMFILE)", output)
        self.assertNotIn(b"EMFILE recovery", output)
        self.assertNotIn(b"Traceback", output)

        # Freed: a new client is served again within seconds.
        closeAll()
        served: socket.socket | None = None
        deadline = time.monotonic() + 10
        for _ in range(20):
            served = await deferToThread(openTunnel, proxy, targetPort, 3.0)
            if served is not None or time.monotonic() > deadline:
                break
            await sleep(0.2)
        self.assertIsNotNone(served, "no client was served after the tunnels closed")
        assert served is not None
        served.close()
        self.assertNotIn(b"Traceback", bytes(child.output))


class ServiceGuardsTests(IntegrationTestCase):
    """L{txsocks5.service.SOCKS5Service} guards the TCP ports it listens on."""

    async def test_guarded(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        from txsocks5.server import SOCKS5Factory
        from txsocks5.service import SOCKS5Service

        service = SOCKS5Service(
            SOCKS5Factory(reactor=reactor), [TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK4)]
        )
        service.startService()
        self.addCleanup(service.stopService)
        [port] = await service.whenListening()
        self.assertIsInstance(port.socket._guard, AcceptGuard)  # type: ignore[attr-defined]
        self.assertIsInstance(port.socket._listener, socket.socket)  # type: ignore[attr-defined]
