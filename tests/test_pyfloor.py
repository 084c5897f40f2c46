"""
Tests for C{bench/pyfloor.py} and C{bench/txfloor.py}: the probes relay
real CONNECT sessions over loopback, as the benchmarks that measure them
need.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    LOOPBACK4,
    LOOPBACK6,
    childEnvironment,
    connectTo,
    freePort,
    needsIPv6,
    recvExactly,
    recvUntilClosed,
    socksConnect,
)

BENCH = Path(__file__).resolve().parent.parent / "bench"


class EchoUntilEOF:
    """A loopback listener whose connections echo until EOF, then close."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.listener.settimeout(10)
        self.address = self.listener.getsockname()[:2]
        self.thread = threading.Thread(target=self._serveOne, daemon=True)
        self.thread.start()

    def _serveOne(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            for _ in range(1000):
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


class PyFloorTests(SynchronousTestCase):
    """The bare Python probe, started as the benchmarks start it."""

    probe = ["pyfloor.py"]

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(BENCH / self.probe[0]), *self.probe[1:], *args]

    def startFloor(self, host: str) -> tuple[str, int]:
        port = freePort(host)
        process = subprocess.Popen(
            self.command("--host", host, "--port", str(port)),
            env=childEnvironment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            process.terminate()
            process.communicate(timeout=10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                connectTo((host, port)).close()
                return host, port
            except OSError:
                time.sleep(0.05)
        self.fail("pyfloor did not start listening")

    def relayThrough(self, host: str) -> None:
        proxy = self.startFloor(host)
        echo = EchoUntilEOF(host)
        self.addCleanup(echo.close)
        sock, (rep, bndHost, bndPort) = socksConnect(proxy, *echo.address)
        with sock:
            self.assertEqual((rep, bndHost), (0, host))
            self.assertNotEqual(bndPort, 0)
            sock.sendall(b"sixteen bytes!!!")
            self.assertEqual(recvExactly(sock, 16), b"sixteen bytes!!!")
            sock.shutdown(socket.SHUT_WR)  # Half-close: the echo sees EOF and closes.
            self.assertEqual(recvUntilClosed(sock), b"")

    def test_connectIPv4(self) -> None:
        """A CONNECT to an IPv4 literal succeeds, relays both ways and carries the half-close."""
        self.relayThrough(LOOPBACK4)

    @needsIPv6
    def test_connectIPv6(self) -> None:
        """The same to an IPv6 literal, listening on ::1."""
        self.relayThrough(LOOPBACK6)

    def test_refused(self) -> None:
        """A CONNECT to a closed port gets a failure reply, not a hang."""
        proxy = self.startFloor(LOOPBACK4)
        sock, (rep, _, _) = socksConnect(proxy, LOOPBACK4, freePort())
        sock.close()
        self.assertNotEqual(rep, 0)

    def test_loopbackOnly(self) -> None:
        """It refuses to listen anywhere but on a loopback address."""
        result = subprocess.run(
            self.command("--host", "0.0.0.0", "--port", "0"),
            env=childEnvironment(),
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"loopback", result.stderr)


class TwistedFloorTests(PyFloorTests):
    """The Twisted-shaped probe, on txsocks5's reactor."""

    probe = ["txfloor.py"]


class StockReactorFloorTests(PyFloorTests):
    """The Twisted-shaped probe, on Twisted's own reactor."""

    probe = ["txfloor.py", "--stock-reactor"]
