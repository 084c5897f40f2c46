"""
Tests for C{--workers}: several processes serving the same ports, each
doing CONNECT, BIND and UDP ASSOCIATE, started and stopped together.
"""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
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
from txsocks5.tap import Options
from txsocks5.workers import WorkerLifetime, workerArguments

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
        _, targetPort = await startEcho(self)

        def client() -> bytes:
            sock, _ = socksConnect(("127.0.0.1", port), "127.0.0.1", targetPort)
            with sock:
                return echoRoundTrip(sock)

        for _ in range(4):
            self.assertEqual(await deferToThread(client), b"ping through the tunnel")

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
