"""
Tests for C{--workers}: several processes serving the same ports, each
doing CONNECT, BIND and UDP ASSOCIATE, started and stopped together.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEventAsClassicLogText
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests import test_bind_integration as bind
from tests import test_udp_integration as udp
from tests.support import (
    IntegrationTestCase,
    reactor,
    readReply,
    recvExactly,
    socksConnect,
    startTwistd,
    waitFor,
)
from tests.test_integration import echoRoundTrip, startEcho
from txsocks5 import accounting
from txsocks5.accounting import Session, logSession
from txsocks5.tap import Options
from txsocks5.workers import MAX_LOG_LINE, WorkerLifetime, WorkerLogReader, workerArguments

WORKER_STARTED = re.compile(rb"txsocks5 worker (\d+) started \(pid (\d+)\)")


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie of ours)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class WorkerArgumentsTests(SynchronousTestCase):
    """What a worker is told."""

    def test_strip(self) -> None:
        """Ports and the worker count are left out; everything else is kept."""
        arguments = [
            "--port", "tcp:1080", "-p", "1081", "--port=tcp6:1080", "-p1082",
            "--workers", "4", "--workers=4", "--auth", "memory:a:b", "--idle-timeout=5",
        ]  # fmt: skip
        self.assertEqual(workerArguments(arguments), ["--auth", "memory:a:b", "--idle-timeout=5"])

    def test_usage(self) -> None:
        for args in (["--workers", "0"], ["--workers", "2", "--port", "unix:/tmp/txsocks5-test.sock"]):
            self.assertRaises(UsageError, Options().parseOptions, args)


def record(event: dict[str, object]) -> bytes:
    """An event as a worker writes it (L{txsocks5.workers.workerLogObserver})."""
    return b"\x1e" + eventAsJSON(event).encode("ascii") + b"\n"


class WorkerLogReaderTests(SynchronousTestCase):
    """The parent logs its workers' events as the events they were."""

    def setUp(self) -> None:
        self.events: list[dict[str, object]] = []
        self.reader = WorkerLogReader(3, self.events.append)

    def sessionEvent(self) -> dict[str, object]:
        emitted: list[dict[str, object]] = []
        logger = Logger(namespace="txsocks5.session", observer=emitted.append)
        session = Session(client="127.0.0.1:5555", started=10.0, command="connect", outcome="succeeded")
        session.bytesUp, session.destination = 16, "127.0.0.1:80"
        self.patch(accounting, "log", logger)
        logSession(session, 12.5)
        return emitted[0]

    def test_structuredEvent(self) -> None:
        """A session event keeps its fields and time, and says which worker logged it."""
        self.reader.dataReceived(record(self.sessionEvent()))
        [event] = self.events
        self.assertEqual((event["bytesUp"], event["outcome"], event["log_time"]), (16, "succeeded", 12.5))
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["worker"], 3)
        text = formatEventAsClassicLogText(event)
        self.assertIn("[txsocks5.session#info,worker 3] session succeeded: client=127.0.0.1:5555", text)

    def test_systemAsTextLogsShowIt(self) -> None:
        """An event without a system gets the one a text log would show, plus its worker."""
        emitted: list[dict[str, object]] = []
        Logger(namespace="txsocks5.server", observer=emitted.append).warn("refused {n}", n=1)
        self.reader.dataReceived(record(emitted[0]))
        self.assertEqual(self.events[0]["log_system"], "txsocks5.server#warn,worker 3")
        self.assertIn("refused 1", formatEventAsClassicLogText(self.events[0]))

    def test_splitRecords(self) -> None:
        """Records arrive in any pieces; each is logged once it is whole."""
        data = record(self.sessionEvent()) * 3
        for i in range(0, len(data), 7):
            self.reader.dataReceived(data[i : i + 7])
        self.assertEqual([e["bytesUp"] for e in self.events], [16, 16, 16])

    def test_failure(self) -> None:
        """An error a worker logs keeps its traceback."""
        emitted: list[dict[str, object]] = []
        try:
            raise ZeroDivisionError("in a worker")
        except ZeroDivisionError:
            Logger(observer=emitted.append).failure("broke")
        self.reader.dataReceived(record(emitted[0]))
        text = formatEventAsClassicLogText(self.events[0])
        self.assertIn("broke", text)
        self.assertIn("ZeroDivisionError", text)

    def test_text(self) -> None:
        """Lines that are not records (a usage error) are logged as text, even unfinished."""
        self.reader.dataReceived(b"twistd: Wrong number of arguments.\n\n\x1e{not json\nlast")
        self.reader.finish()
        texts = [formatEventAsClassicLogText(e) for e in self.events]
        self.assertEqual(len(texts), 3, texts)
        self.assertIn("[txsocks5.worker] twistd: Wrong number of arguments.", texts[0])
        self.assertIn("{not json", texts[1])
        self.assertIn("last", texts[2])
        self.assertEqual({e["worker"] for e in self.events}, {3})

    def test_oddRecords(self) -> None:
        """Records a worker would not write are logged as text, not dropped or raised."""
        odd = [b"[1, 2]", b'{"log_level": {"name": "loud"}, "log_format": "x"}', b"\xff"]
        self.reader.dataReceived(b"".join(b"\x1e" + text + b"\n" for text in odd))
        self.assertEqual(len(self.events), 3)
        self.assertEqual({e["log_namespace"] for e in self.events}, {"txsocks5.worker"})

    def test_endlessLine(self) -> None:
        """Output without line ends is logged in bounded pieces rather than kept."""
        for _ in range(3):
            self.reader.dataReceived(b"x" * (MAX_LOG_LINE // 2 + 1))
        self.assertEqual(len(self.events), 1)
        self.assertLessEqual(len(self.reader._buffer), MAX_LOG_LINE)


class WorkerLifetimeTests(SynchronousTestCase):
    """
    A worker stops once, however many stop requests arrive: a worker is
    often signalled both by its parent and by a process-group signal (a
    terminal's Ctrl-C, systemd's default KillMode), and Twisted's own
    handlers would try to stop a stopped reactor and log a traceback.
    """

    def test_stopOnce(self) -> None:
        reactor = MemoryReactorClock()
        reactor.running = True
        stops: list[bool] = []
        reactor.stop = lambda: stops.append(True)  # type: ignore[method-assign]
        lifetime = WorkerLifetime(reactor)
        lifetime.stop("signal SIGTERM")
        lifetime.stop("signal SIGTERM")
        lifetime.stop("parent gone")
        self.assertEqual(stops, [True])


class WorkerPoolTests(IntegrationTestCase):
    """C{twistd socks5 --workers 2} over real sockets."""

    async def startPool(self) -> tuple[object, int, list[int]]:
        child = await startTwistd(self, "--workers", "2", "--port", "tcp:0:interface=127.0.0.1")
        port = await child.listening
        await waitFor(lambda: len(WORKER_STARTED.findall(bytes(child.output))) >= 2, 20, "two workers")
        pids = [int(pid) for _, pid in WORKER_STARTED.findall(bytes(child.output))]
        return child, port, pids

    async def fourTunnels(self, port: int) -> None:
        """Echo through four tunnels of the pool on C{port}, one after another."""
        _, targetPort = await startEcho(self)

        def client() -> bytes:
            sock, _ = socksConnect(("127.0.0.1", port), "127.0.0.1", targetPort)
            with sock:
                return echoRoundTrip(sock)

        for _ in range(4):
            self.assertEqual(await deferToThread(client), b"ping through the tunnel")

    async def test_servesEveryCommand(self) -> None:
        """CONNECT, UDP ASSOCIATE and BIND all work through the pool."""
        child, port, pids = await self.startPool()
        self.assertEqual(len(set(pids)), 2)
        _, targetPort = await startEcho(self)
        echo, udpPort = udp.startUDPEcho(self, "127.0.0.1")
        proxy = ("127.0.0.1", port)

        def clients() -> None:
            for _ in range(10):
                sock, reply = socksConnect(proxy, "127.0.0.1", targetPort)
                with sock:
                    assert echoRoundTrip(sock) == b"ping through the tunnel"
            with udp.Association(proxy) as association:
                answer = association.roundTrip("127.0.0.1", udpPort, b"datagram")
                assert answer.payload == b"datagram", answer
            client, first = bind.bindRequest(proxy, "127.0.0.1", 0)
            with client:
                peer = bind.connectPeer((first[1], first[2]))
                with peer:
                    readReply(client)
                    peer.sendall(b"from peer")
                    assert recvExactly(client, 9) == b"from peer"

        await deferToThread(clients)
        await waitFor(lambda: bytes(child.output).count(b"session succeeded") >= 12, 10, "12 sessions logged")

    async def test_oneLog(self) -> None:
        """
        The workers' events go to the parent's log (here C{--logfile}), each
        marked with its worker, and nothing to the terminal.
        """
        logFile = os.path.abspath(self.mktemp())
        child = await startTwistd(
            self, "--workers", "2", "--port", "tcp:0:interface=127.0.0.1", logFile=logFile
        )
        port = await child.listening
        log = Path(logFile).read_bytes
        await waitFor(lambda: log().count(b"methods: none") >= 2, 20, "the workers serving")
        await self.fourTunnels(port)
        sessions = re.compile(
            rb"\[txsocks5\.session#info,worker [01]\] session succeeded: .* destination=127"
        )
        await waitFor(lambda: len(sessions.findall(log())) >= 4, 10, "4 sessions logged")
        self.assertEqual(len(re.findall(rb"serving SOCKS5 on .*; methods: none", log())), 2)
        self.assertEqual(bytes(child.output), b"")

    async def test_sigtermStopsAll(self) -> None:
        child, port, pids = await self.startPool()
        child.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        await child.ended.addTimeout(20, reactor)  # type: ignore[attr-defined]
        await waitFor(lambda: not any(alive(pid) for pid in pids), 15, "the workers to exit")

    async def test_workerRestarted(self) -> None:
        """A worker that dies is started again, and the pool keeps serving."""
        child, port, pids = await self.startPool()
        os.kill(pids[0], signal.SIGKILL)
        await waitFor(lambda: b"starting it again" in bytes(child.output), 15, "the restart")
        await waitFor(lambda: len(WORKER_STARTED.findall(bytes(child.output))) >= 3, 15, "a new worker")
        await self.fourTunnels(port)

    async def test_sighupPassedOn(self) -> None:
        """SIGHUP to the parent reaches every worker, and none dies of it."""
        child, port, pids = await self.startPool()
        # The workers handle SIGHUP once they serve (before that, it would end them).
        await waitFor(lambda: bytes(child.output).count(b"methods: none") >= 2, 20, "the workers serving")
        child.transport.signalProcess("HUP")  # type: ignore[attr-defined]
        await waitFor(lambda: bytes(child.output).count(b"SIGHUP: ") >= 3, 10, "SIGHUP in parent and workers")
        self.assertTrue(child.running)
        self.assertTrue(all(alive(pid) for pid in pids))
        self.assertNotIn(b"starting it again", bytes(child.output))

    async def test_orphanedWorkersStop(self) -> None:
        """Workers whose parent is killed outright stop by themselves."""
        child, port, pids = await self.startPool()
        child.transport.signalProcess("KILL")  # type: ignore[attr-defined]
        await waitFor(lambda: not any(alive(pid) for pid in pids), 15, "the orphaned workers to exit")
        with socket.socket() as probe:
            probe.settimeout(2)
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)
