"""Unit tests of L{txsocks5.relay}: half-close, timeouts and producers."""

from __future__ import annotations

import socket

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import HalfCloseableStringTransport
from txsocks5._fastpath import writePublicly
from txsocks5._leantcp import LeanConnection
from txsocks5.deadlines import Deadlines
from txsocks5.relay import FIRST_READ_SIZE, READ_SIZE, TargetProtocol, TCPRelay, _writerFor


class RelayTests(SynchronousTestCase):
    """L{TCPRelay} between two string transports."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = HalfCloseableStringTransport()
        self.target = HalfCloseableStringTransport()

    def start(self, **kwargs: float) -> TCPRelay:
        relay = TCPRelay(self.client, self.target, self.clock, **kwargs)
        relay.start()
        return relay

    def test_producers(self) -> None:
        """Each side is the streaming producer of the other."""
        self.start()
        self.assertIs(self.target.producer, self.client)
        self.assertTrue(self.target.streaming)
        self.assertIs(self.client.producer, self.target)
        self.assertTrue(self.client.streaming)

    def test_socketOptions(self) -> None:
        """Nagle off and keepalive on, on both sides (where the transport can)."""
        options: list[object] = []
        for name, transport in (("client", self.client), ("target", self.target)):
            for option in ("setTcpNoDelay", "setTcpKeepAlive"):
                setattr(transport, option, lambda on, n=name, o=option: options.append((n, o, on)))
        self.start()
        self.assertEqual(
            options,
            [
                ("client", "setTcpNoDelay", True),
                ("client", "setTcpKeepAlive", True),
                ("target", "setTcpNoDelay", True),
                ("target", "setTcpKeepAlive", True),
            ],
        )

    def test_socketOptionsRefused(self) -> None:
        """A transport that is not TCP after all (setting options fails) still relays."""

        def refuse(on: bool) -> None:
            raise OSError(95, "Operation not supported")

        self.client.setTcpNoDelay = refuse  # type: ignore[attr-defined]
        relay = self.start()
        relay.clientData(b"abc")
        self.assertEqual(self.target.value(), b"abc")

    def test_readSize(self) -> None:
        """
        A side whose read fills Twisted's default read size reads
        L{READ_SIZE} at once from then on; a side with small reads does not.
        """
        self.client.bufferSize = self.target.bufferSize = FIRST_READ_SIZE  # type: ignore[attr-defined]
        relay = self.start()
        relay.clientData(b"x" * 100)
        relay.targetData(b"x" * 100)
        self.assertEqual(self.client.bufferSize, FIRST_READ_SIZE)  # type: ignore[attr-defined]
        relay.clientData(b"x" * FIRST_READ_SIZE)
        self.assertEqual(self.client.bufferSize, READ_SIZE)  # type: ignore[attr-defined]
        self.assertEqual(self.target.bufferSize, FIRST_READ_SIZE)  # type: ignore[attr-defined]
        relay.targetData(b"x" * FIRST_READ_SIZE)
        self.assertEqual(self.target.bufferSize, READ_SIZE)  # type: ignore[attr-defined]

    def test_counts(self) -> None:
        relay = self.start()
        relay.clientData(b"abc")
        relay.targetData(b"defgh")
        self.assertEqual((relay.bytesUp, relay.bytesDown), (3, 5))
        self.assertEqual(self.target.value(), b"abc")
        self.assertEqual(self.client.value(), b"defgh")

    def test_clientHalfClose(self) -> None:
        """
        A client FIN half-closes the target; data still flows down until the
        target ends too, and then both close.
        """
        relay = self.start()
        relay.clientReadClosed()
        self.assertTrue(self.target.writeClosed)
        self.assertFalse(self.client.disconnecting)
        relay.targetData(b"still coming")
        self.assertEqual(self.client.value(), b"still coming")
        relay.targetReadClosed()
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.target.disconnecting)
        self.assertIsNone(self.client.producer)
        self.assertIsNone(self.target.producer)

    def test_secondFinCloses(self) -> None:
        """
        When the second direction ends, both connections are closed; the
        one still open for writing is not half-closed first (closing sends
        its FIN).
        """
        for first, second in (("client", "target"), ("target", "client")):
            self.setUp()
            relay = self.start()
            getattr(relay, f"{first}ReadClosed")()
            getattr(relay, f"{second}ReadClosed")()
            halfClosed = getattr(self, second)  # by the first FIN
            closedOnly = getattr(self, first)
            self.assertTrue(halfClosed.writeClosed)
            self.assertFalse(closedOnly.writeClosed)
            self.assertTrue(halfClosed.disconnecting)
            self.assertTrue(closedOnly.disconnecting)

    def test_lostAfterBothEnded(self) -> None:
        """
        A connection lost once both directions ended (as closing them
        reports) does not close the other again.
        """
        relay = self.start()
        relay.clientReadClosed()
        relay.targetReadClosed()
        closes = []
        self.target.loseConnection = lambda: closes.append("target")  # type: ignore[method-assign]
        self.client.loseConnection = lambda: closes.append("client")  # type: ignore[method-assign]
        relay.clientLost()
        relay.targetLost()
        self.assertEqual(closes, [])

    def test_targetHalfClose(self) -> None:
        relay = self.start()
        relay.targetReadClosed()
        self.assertTrue(self.client.writeClosed)
        relay.clientData(b"more")
        self.assertEqual(self.target.value(), b"more")
        self.assertFalse(self.target.disconnecting)

    def test_halfCloseTwice(self) -> None:
        """A repeated FIN report does nothing more."""
        relay = self.start(finWaitTimeout=10)
        relay.clientReadClosed()
        relay.clientReadClosed()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_finWaitTimeout(self) -> None:
        relay = self.start(finWaitTimeout=10)
        relay.clientReadClosed()
        self.clock.advance(10)
        self.assertTrue(self.client.aborted)
        self.assertTrue(self.target.aborted)
        self.assertEqual(relay.closeReason, "fin-wait timeout")

    def test_finWaitCancelled(self) -> None:
        relay = self.start(finWaitTimeout=10)
        relay.clientReadClosed()
        relay.targetReadClosed()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finWaitShared(self) -> None:
        """
        Tunnels given a shared fin-wait timer (L{Deadlines} of the same
        length) use it instead of a DelayedCall each: cut when it passes,
        forgotten when they finish first.
        """
        timers: Deadlines[TCPRelay] = Deadlines(self.clock, 10, lambda relay: relay._finWaitTimedOut())
        relays = []
        for _ in range(2):
            client, target = HalfCloseableStringTransport(), HalfCloseableStringTransport()
            relay = TCPRelay(client, target, self.clock, finWaitTimeout=10, finWaitDeadlines=timers)
            relay.start()
            relay.clientReadClosed()
            relays.append((relay, client, target))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        relays[1][0].targetReadClosed()  # Both ways ended: no longer waiting.
        self.assertEqual(len(timers), 1)
        self.clock.advance(10)
        relay, client, target = relays[0]
        self.assertEqual(relay.closeReason, "fin-wait timeout")
        self.assertTrue(client.aborted and target.aborted)
        self.assertFalse(relays[1][1].aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finWaitSharedOtherLength(self) -> None:
        """A shared timer of another length is not used: the tunnel's own timeout holds."""
        timers: Deadlines[TCPRelay] = Deadlines(self.clock, 99, lambda relay: relay._finWaitTimedOut())
        relay = TCPRelay(self.client, self.target, self.clock, finWaitTimeout=10, finWaitDeadlines=timers)
        relay.start()
        relay.clientReadClosed()
        self.assertEqual(len(timers), 0)
        self.clock.advance(10)
        self.assertEqual(relay.closeReason, "fin-wait timeout")

    def test_idleTimeout(self) -> None:
        """A tunnel with no traffic for the idle timeout is cut."""
        relay = self.start(idleTimeout=5)
        self.clock.advance(5)
        self.assertFalse(self.client.aborted)
        self.clock.advance(5)
        self.assertTrue(self.client.aborted)
        self.assertEqual(relay.closeReason, "idle timeout")

    def test_idleTimeoutTraffic(self) -> None:
        """Traffic between checks keeps the tunnel open."""
        relay = self.start(idleTimeout=5)
        for _ in range(10):
            relay.clientData(b"x")
            self.clock.advance(5)
        self.assertFalse(self.client.aborted)

    def test_clientLost(self) -> None:
        """When the client goes, the target is closed after its pending data."""
        relay = self.start(idleTimeout=5)
        relay.clientLost()
        self.assertTrue(self.target.disconnecting)
        self.assertIsNone(self.target.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_targetLost(self) -> None:
        relay = self.start()
        relay.targetLost()
        self.assertTrue(self.client.disconnecting)
        self.assertIsNone(self.client.producer)

    def test_pendingAndEnded(self) -> None:
        """Bytes the client sent early go first; an early FIN follows them."""
        relay = TCPRelay(self.client, self.target, self.clock)
        relay.start(b"early", clientEnded=True)
        self.assertEqual(self.target.value(), b"early")
        self.assertTrue(self.target.writeClosed)


class WriterTests(SynchronousTestCase):
    """How a relay writes to each kind of transport."""

    def test_lean(self) -> None:
        """A lean connection is written with its class's own write (no bound method kept)."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class OwnWrite(LeanConnection):
            def write(self, data: bytes) -> None:
                super().write(data.upper())

        for cls in (LeanConnection, OwnWrite):
            connection = cls(a, None, MemoryReactor())
            self.assertIs(_writerFor(connection), cls.write)
        relay = TCPRelay(HalfCloseableStringTransport(), connection, Clock())
        relay.clientData(b"through")
        self.assertEqual(b.recv(16), b"THROUGH")

    def test_other(self) -> None:
        """Any other transport is written with its write."""
        self.assertIs(_writerFor(HalfCloseableStringTransport()), writePublicly)


class TargetProtocolTests(SynchronousTestCase):
    """L{TargetProtocol} keeps what arrives before its relay."""

    def test_early(self) -> None:
        protocol = TargetProtocol()
        target = HalfCloseableStringTransport()
        protocol.makeConnection(target)
        protocol.dataReceived(b"banner ")
        protocol.dataReceived(b"line")
        protocol.readConnectionLost()
        client = HalfCloseableStringTransport()
        relay = TCPRelay(client, target, Clock())
        relay.start()
        protocol.attach(relay)
        self.assertEqual(client.value(), b"banner line")
        self.assertEqual(relay.bytesDown, 11)
        self.assertTrue(client.writeClosed)

    def test_earlyLost(self) -> None:
        protocol = TargetProtocol()
        target = HalfCloseableStringTransport()
        protocol.makeConnection(target)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        client = HalfCloseableStringTransport()
        relay = TCPRelay(client, target, Clock())
        protocol.attach(relay)
        self.assertTrue(client.disconnecting)
