"""
Unit tests of the BIND command: L{txsocks5.bind.BindListener} and the
server's two replies, on a memory reactor.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeUDPReactor, HalfCloseableStringTransport
from txsocks5 import server, wire
from txsocks5.bind import BindListener, PeerCheck
from txsocks5.ports import describeAddress, resolveName
from txsocks5.server import SOCKS5Factory, SOCKS5ServerProtocol


def connectPeer(factory: Any, host: str, port: int = 20) -> tuple[Any, HalfCloseableStringTransport] | None:
    """Connect a peer from C{host}:C{port} to a listening factory, if it lets it in."""
    peer = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(peer)
    if protocol is None:
        return None
    transport = HalfCloseableStringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 40000), peerAddress=peer
    )
    protocol.makeConnection(transport)
    return protocol, transport


class BindListenerTests(SynchronousTestCase):
    """L{BindListener} alone."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def listen(self, **kwargs: Any) -> BindListener:
        listener = BindListener(self.reactor, **kwargs)
        listener.listen("127.0.0.1")
        return listener

    def factory(self) -> Any:
        return self.reactor.tcpServers[-1][1]

    def test_listens(self) -> None:
        """One listener with a backlog of one, on the interface asked for."""
        self.listen()
        [(port, _, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, backlog, interface), (0, 1, "127.0.0.1"))

    def acceptWhileClosingSlowly(
        self,
    ) -> tuple[BindListener, defer.Deferred[None], tuple[Any, HalfCloseableStringTransport]]:
        """
        A listener whose port closes only when the returned Deferred is
        fired, and the peer it has just accepted.
        """
        listener = self.listen()
        closing: defer.Deferred[None] = defer.Deferred()
        assert listener.port is not None
        self.patch(listener.port, "stopListening", lambda: closing)
        connected = connectPeer(self.factory(), "127.0.0.1")
        assert connected is not None
        return listener, closing, connected

    def test_peerAnnouncedOnceClosed(self) -> None:
        """The peer is announced only once the listening socket is closed."""
        listener, closing, connected = self.acceptWhileClosingSlowly()
        self.assertFalse(listener.peer.called)
        closing.callback(None)
        self.assertIs(self.successResultOf(listener.peer), connected[0])

    def test_clientGoneBeforeClosed(self) -> None:
        """A peer accepted while the client leaves is cut once the listener has closed."""
        listener, closing, connected = self.acceptWhileClosingSlowly()
        listener.peer.cancel()
        self.failureResultOf(listener.peer, defer.CancelledError)
        closing.callback(None)
        self.assertTrue(connected[1].aborted)

    def test_onePeer(self) -> None:
        """The first peer is accepted; listening stops and no second gets in."""
        listener = self.listen()
        factory = self.factory()
        accepted = connectPeer(factory, "192.0.2.1")
        assert accepted is not None
        self.assertIs(self.successResultOf(listener.peer), accepted[0])
        self.assertIsNone(listener.port)
        self.assertIsNone(connectPeer(factory, "192.0.2.1"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_expectedHost(self) -> None:
        """A peer from another address is turned away; the expected one gets in."""
        listener = self.listen(expectedHosts=["192.0.2.1"])
        with capturedLogs() as events:
            self.assertIsNone(connectPeer(self.factory(), "192.0.2.66"))
        self.assertEqual(
            [formatEvent(event) for event in events],
            ["BIND refused a connection from unexpected peer 192.0.2.66:20"],
        )
        self.assertNoResult(listener.peer)
        self.assertIsNotNone(connectPeer(self.factory(), "192.0.2.1"))
        self.assertEqual(listener.refused, 1)

    def test_expectedPort(self) -> None:
        listener = self.listen(expectedHosts=["192.0.2.1"], expectedPort=20)
        self.assertIsNone(connectPeer(self.factory(), "192.0.2.1", 2000))
        self.assertIsNotNone(connectPeer(self.factory(), "192.0.2.1", 20))
        self.successResultOf(listener.peer)

    def test_timeout(self) -> None:
        listener = self.listen(timeout=5)
        self.reactor.advance(5)
        self.failureResultOf(listener.peer, defer.TimeoutError)
        self.assertIsNone(listener.port)

    def test_cancel(self) -> None:
        """Cancelling the wait (the client left) stops listening at once."""
        listener = self.listen(timeout=5)
        listener.peer.cancel()
        self.failureResultOf(listener.peer, defer.CancelledError)
        self.assertIsNone(listener.port)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ServerBindTests(SynchronousTestCase):
    """BIND through L{SOCKS5ServerProtocol}."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def bind(
        self, expected: wire.Address, **kwargs: Any
    ) -> tuple[SOCKS5ServerProtocol, HalfCloseableStringTransport]:
        factory = SOCKS5Factory(reactor=self.reactor, **kwargs)
        peer = IPv4Address("TCP", "127.0.0.1", 5555)
        protocol = factory.buildProtocol(peer)
        assert protocol is not None
        transport = HalfCloseableStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 1080), peerAddress=peer
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\x05\x01\x00" + wire.Request(wire.Command.BIND, expected).encode())
        return protocol, transport

    def replies(self, transport: HalfCloseableStringTransport) -> list[wire.Response]:
        data = transport.value()[2:]
        found = []
        while data:
            parsed = wire.parseResponse(data)
            assert parsed is not None
            found.append(parsed.message)
            data = data[parsed.consumed :]
        return found

    def test_twoReplies(self) -> None:
        """The first reply names the listener; the second the peer; then data flows."""
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 21))
        [(_, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")
        [first] = self.replies(transport)
        self.assertEqual(first.reply, wire.Reply.SUCCEEDED)
        protocol.dataReceived(b"held until the peer comes")
        accepted = connectPeer(factory, "127.0.0.1", 20)
        assert accepted is not None
        peerProtocol, peerTransport = accepted
        second = self.replies(transport)[1]
        self.assertEqual(second, wire.Response(0, wire.Address.fromHost("127.0.0.1", 20)))
        self.assertEqual(peerTransport.value(), b"held until the peer comes")
        transport.clear()
        peerProtocol.dataReceived(b"from the peer")
        self.assertEqual(transport.value(), b"from the peer")
        self.assertEqual(protocol.session.command, "bind")

    def test_unexpectedPeer(self) -> None:
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 21))
        factory = self.reactor.tcpServers[0][1]
        self.assertIsNone(connectPeer(factory, "127.0.0.9"))
        self.assertEqual(len(self.replies(transport)), 1)

    def test_checkNone(self) -> None:
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 21), bindCheck=PeerCheck.NONE)
        self.assertIsNotNone(connectPeer(self.reactor.tcpServers[0][1], "127.0.0.9"))

    def test_anyPeer(self) -> None:
        """DST.ADDR 0.0.0.0: any peer, listening where the client reached us."""
        protocol, transport = self.bind(wire.Address.fromHost("0.0.0.0", 0))
        [(_, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")
        self.assertIsNotNone(connectPeer(factory, "198.51.100.1"))

    def test_domain(self) -> None:
        """A named peer is resolved (MemoryReactor resolves all to 127.0.0.1)."""
        protocol, transport = self.bind(wire.Address.fromHost("peer.test", 21))
        self.reactor.advance(0)
        [(_, factory, _, _)] = self.reactor.tcpServers
        self.assertIsNone(connectPeer(factory, "127.0.0.9"))
        self.assertIsNotNone(connectPeer(factory, "127.0.0.1"))

    def test_timeout(self) -> None:
        """No peer in time: a second reply with 0x06, then the connection closes."""
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 0), bindTimeout=10)
        self.reactor.advance(10)
        self.assertEqual([r.reply for r in self.replies(transport)], [0, wire.Reply.TTL_EXPIRED])
        self.assertTrue(transport.disconnecting)

    def test_clientLeaves(self) -> None:
        """A client that leaves before its peer takes the listener with it."""
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 0))
        factory = self.reactor.tcpServers[0][1]
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNone(connectPeer(factory, "127.0.0.1"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientFinBeforePeer(self) -> None:
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 0))
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_heldBytesBounded(self) -> None:
        """A client that floods while waiting is paused, not buffered without end."""
        protocol, transport = self.bind(wire.Address.fromHost("127.0.0.1", 0))
        for _ in range(10):
            protocol.dataReceived(b"x" * 16384)
        self.assertEqual(transport.producerState, "paused")

    def test_noRoute(self) -> None:
        """A peer address this host has no route to: 0x03."""

        def noRoute(ip: str) -> str:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

        self.patch(server, "localAddressFacing", noRoute)
        protocol, transport = self.bind(wire.Address.fromHost("2001:db8::1", 0))
        self.assertEqual(self.replies(transport)[0].reply, wire.Reply.NETWORK_UNREACHABLE)
        self.assertTrue(transport.disconnecting)

    def test_badName(self) -> None:
        """A name that cannot be a host name fails at once with 0x04."""
        name = b"\xff\xfe.test".decode("utf-8", "surrogateescape")
        protocol, transport = self.bind(wire.Address(wire.AddressType.DOMAIN, name, 21))
        self.assertEqual(self.replies(transport)[0].reply, wire.Reply.HOST_UNREACHABLE)
        self.assertEqual(self.reactor.tcpServers, [])


class DescribeAddressTests(SynchronousTestCase):
    """L{describeAddress}, which log lines about clients and peers use."""

    def test_addresses(self) -> None:
        """IPv4, IPv6 (brackets) and IPv4-mapped IPv6 (as IPv4), each with its port."""
        self.assertEqual(describeAddress(IPv4Address("TCP", "192.0.2.1", 20)), "192.0.2.1:20")
        self.assertEqual(describeAddress(IPv6Address("TCP", "2001:db8::1", 20)), "[2001:db8::1]:20")
        self.assertEqual(describeAddress(IPv6Address("TCP", "::ffff:192.0.2.1", 20)), "192.0.2.1:20")

    def test_noAddress(self) -> None:
        """No address at all is shown as C{?}."""
        self.assertEqual(describeAddress(None), "?")


class ResolveNameTests(SynchronousTestCase):
    """L{resolveName}."""

    def test_timeout(self) -> None:
        """A resolution that never completes fails after the timeout."""
        reactor = FakeUDPReactor()
        d = resolveName(reactor.nameResolver, "slow.test", clock=reactor, timeout=3)
        reactor.advance(3)
        self.failureResultOf(d, defer.TimeoutError)

    def test_none(self) -> None:
        reactor = FakeUDPReactor()
        d = resolveName(reactor.nameResolver, "none.test")
        reactor.nameResolver.resolve("none.test")
        self.failureResultOf(d, error.DNSLookupError)

    def test_addresses(self) -> None:
        reactor = FakeUDPReactor()
        d = resolveName(reactor.nameResolver, "two.test")
        reactor.nameResolver.resolve("two.test", "192.0.2.1", "2001:db8::1", "192.0.2.1")
        self.assertEqual(self.successResultOf(d), ["192.0.2.1", "2001:db8::1"])
