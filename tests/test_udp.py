"""
Unit tests of UDP ASSOCIATE: L{txsocks5.udp.UDPRelay} and the server's
handling of the command, on a fake UDP reactor and clock.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeUDPReactor, HalfCloseableStringTransport
from txsocks5 import wire
from txsocks5.server import SOCKS5Factory, SOCKS5ServerProtocol
from txsocks5.udp import _MAX_PARSED_HEADERS, MAX_QUEUED, NAME_CACHE_SECONDS, UDPRelay, listenUDPRelay

CLIENT = ("127.0.0.1", 5555)


def datagram(host: str, port: int, payload: bytes, fragment: int = 0) -> bytes:
    """A client's datagram for C{host}:C{port}."""
    return wire.UDPHeader(fragment, wire.Address.fromHost(host, port)).encode() + payload


class RelayTests(SynchronousTestCase):
    """L{UDPRelay} alone."""

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.idle: list[bool] = []

    def relay(self, clientPort: int | None = None, idleTimeout: float | None = None) -> UDPRelay:
        relay = UDPRelay(
            self.reactor,
            "127.0.0.1",
            clientPort,
            idleTimeout=idleTimeout,
            onIdle=lambda: self.idle.append(True),
        )
        self.clientSide = listenUDPRelay(self.reactor, relay, "127.0.0.1")
        return relay

    def sides(self) -> list[Any]:
        return self.reactor.udpPorts[1:]

    def test_toIPv4(self) -> None:
        """A datagram for an IPv4 address leaves, without its header, from an IPv4 socket."""
        relay = self.relay()
        relay.datagramReceived(datagram("192.0.2.1", 53, b"query"), CLIENT)
        [side] = self.sides()
        self.assertEqual(side.interface, "0.0.0.0")
        self.assertEqual(side.written, [(b"query", ("192.0.2.1", 53))])
        self.assertEqual((relay.counters.datagramsUp, relay.counters.bytesUp), (1, 5))

    def test_toIPv6(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("2001:db8::1", 53, b"q6"), CLIENT)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"q4"), CLIENT)
        relay.datagramReceived(datagram("2001:db8::2", 53, b"q6b"), CLIENT)
        v6, v4 = self.sides()
        self.assertEqual(v6.interface, "::")
        self.assertEqual(v6.written, [(b"q6", ("2001:db8::1", 53)), (b"q6b", ("2001:db8::2", 53))])
        self.assertEqual(v4.written, [(b"q4", ("192.0.2.1", 53))])

    def test_reply(self) -> None:
        """A destination's answer goes to the client with the destination in the header."""
        relay = self.relay()
        relay.datagramReceived(datagram("192.0.2.1", 53, b"query"), CLIENT)
        [side] = self.sides()
        side.protocol.datagramReceived(b"answer", ("192.0.2.1", 53))
        self.assertEqual(self.clientSide.written, [(datagram("192.0.2.1", 53, b"answer"), CLIENT)])
        self.assertEqual((relay.counters.datagramsDown, relay.counters.bytesDown), (1, 6))

    def test_toMappedIPv4(self) -> None:
        """An IPv4-mapped IPv6 destination is sent to, and answered as, IPv4."""
        relay = self.relay()
        data = wire.UDPHeader(0, wire.Address(wire.AddressType.IPV6, "::ffff:c000:201", 53)).encode()
        relay.datagramReceived(data + b"q", CLIENT)
        [side] = self.sides()
        self.assertEqual(side.written, [(b"q", ("192.0.2.1", 53))])
        side.protocol.datagramReceived(b"a", ("192.0.2.1", 53))
        self.assertEqual(self.clientSide.written[0][0], datagram("192.0.2.1", 53, b"a"))

    def test_replyIPv6(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("2001:db8::1", 53, b"q"), CLIENT)
        [side] = self.sides()
        side.protocol.datagramReceived(b"a", ("2001:db8::1", 53))
        self.assertEqual(self.clientSide.written[0][0], datagram("2001:db8::1", 53, b"a"))

    def test_foreignSource(self) -> None:
        """Datagrams from another address or port than the client's are dropped."""
        relay = self.relay()
        relay.datagramReceived(datagram("192.0.2.1", 53, b"a"), CLIENT)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"b"), ("127.0.0.2", 5555))
        relay.datagramReceived(datagram("192.0.2.1", 53, b"c"), ("127.0.0.1", 5556))
        [side] = self.sides()
        self.assertEqual([d for d, _ in side.written], [b"a"])
        self.assertEqual(relay.counters.dropped, {"not from the client": 2})

    def test_announcedPort(self) -> None:
        """With the port given in the request, other ports never get in."""
        relay = self.relay(clientPort=6000)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x"), CLIENT)
        self.assertEqual(self.sides(), [])
        relay.datagramReceived(datagram("192.0.2.1", 53, b"y"), ("127.0.0.1", 6000))
        self.assertEqual(len(self.sides()), 1)

    def test_fragmentsDropped(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x", fragment=1), CLIENT)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x", fragment=0x81), CLIENT)
        self.assertEqual(self.sides(), [])
        self.assertEqual(relay.counters.dropped, {"fragment": 2})

    def test_sameHeadersAgain(self) -> None:
        """
        Datagrams with a header seen before go where their header says, as
        the first did; a fragment for the same destination is still dropped.
        """
        relay = self.relay()
        for n in range(3):
            relay.datagramReceived(datagram("192.0.2.1", 53, b"a%d" % n), CLIENT)
            relay.datagramReceived(datagram("192.0.2.2", 53, b"b%d" % n), CLIENT)
            relay.datagramReceived(datagram("192.0.2.1", 54, b"c%d" % n), CLIENT)
            relay.datagramReceived(datagram("2001:db8::1", 53, b"d%d" % n), CLIENT)
            relay.datagramReceived(datagram("192.0.2.1", 53, b"f", fragment=1), CLIENT)
        v4, v6 = self.sides()
        self.assertEqual(
            v4.written,
            [
                (payload % n, address)
                for n in range(3)
                for payload, address in (
                    (b"a%d", ("192.0.2.1", 53)),
                    (b"b%d", ("192.0.2.2", 53)),
                    (b"c%d", ("192.0.2.1", 54)),
                )
            ],
        )
        self.assertEqual(v6.written, [(b"d%d" % n, ("2001:db8::1", 53)) for n in range(3)])
        self.assertEqual(relay.counters.dropped, {"fragment": 3})
        self.assertEqual((relay.counters.datagramsUp, relay.counters.bytesUp), (12, 24))

    def test_sameHeadersAgainDenied(self) -> None:
        """A destination the rules deny stays denied for every datagram."""
        asked: list[tuple[str | None, str | None, int]] = []

        def allow(name: str | None, ip: str | None, port: int) -> bool:
            asked.append((name, ip, port))
            return port != 25

        relay = UDPRelay(self.reactor, "127.0.0.1", allowDestination=allow)
        listenUDPRelay(self.reactor, relay, "127.0.0.1")
        for _ in range(3):
            relay.datagramReceived(datagram("192.0.2.1", 25, b"spam"), CLIENT)
            relay.datagramReceived(datagram("192.0.2.1", 53, b"query"), CLIENT)
        [side] = self.sides()
        self.assertEqual(side.written, [(b"query", ("192.0.2.1", 53))] * 3)
        self.assertEqual(relay.counters.dropped, {"denied by the rules": 3})
        self.assertEqual(asked, [(None, "192.0.2.1", 25), (None, "192.0.2.1", 53)])

    def test_parsedHeadersBounded(self) -> None:
        """The headers remembered per association are bounded."""
        relay = self.relay()
        for port in range(1, _MAX_PARSED_HEADERS + 10):
            relay.datagramReceived(datagram("192.0.2.1", port, b"x"), CLIENT)
        self.assertLessEqual(len(relay._parsedHeaders), _MAX_PARSED_HEADERS)
        relay.datagramReceived(datagram("192.0.2.1", 1, b"again"), CLIENT)
        [side] = self.sides()
        self.assertEqual(side.written[-1], (b"again", ("192.0.2.1", 1)))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(
                    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:c000:201"]),
                    st.sampled_from([53, 54]),
                    st.sampled_from([0, 0, 1]),
                    st.binary(max_size=4),
                ).map(lambda d: datagram(d[0], d[1], d[3], fragment=d[2])),
                st.binary(max_size=24),
            ),
            max_size=30,
        )
    )
    def test_rememberedHeadersChangeNothing(self, datagrams: list[bytes]) -> None:
        """
        Whatever the client sends, remembering headers sends the same
        datagrams to the same places, and drops the same, as parsing each
        header afresh.
        """
        remembering = UDPRelay(FakeUDPReactor(), "127.0.0.1", CLIENT[1])
        parsing = UDPRelay(FakeUDPReactor(), "127.0.0.1", CLIENT[1])
        for relay in (remembering, parsing):
            listenUDPRelay(relay._reactor, relay, "127.0.0.1")  # type: ignore[arg-type]
        for data in datagrams:
            remembering.datagramReceived(data, CLIENT)
            parsing._parsedHeaders.clear()
            parsing.datagramReceived(data, CLIENT)

        def sent(relay: UDPRelay) -> list[Any]:
            return [port.written for port in relay._reactor.udpPorts[1:]]  # type: ignore[attr-defined]

        self.assertEqual(sent(remembering), sent(parsing))
        self.assertEqual(remembering.counters, parsing.counters)

    def test_malformedDropped(self) -> None:
        relay = self.relay()
        for junk in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x09abcdef", b"\x00\x00\x00\x01\x7f"):
            relay.datagramReceived(junk, CLIENT)
        self.assertEqual(relay.counters.dropped, {"malformed header": 4})

    def test_onlyFromDestinations(self) -> None:
        """Only addresses the client has sent to may send it datagrams."""
        relay = self.relay()
        relay.datagramReceived(datagram("192.0.2.1", 53, b"query"), CLIENT)
        [side] = self.sides()
        side.protocol.datagramReceived(b"stranger", ("192.0.2.66", 53))
        side.protocol.datagramReceived(b"other port", ("192.0.2.1", 5353))
        self.assertEqual(
            [d for d, _ in self.clientSide.written], [datagram("192.0.2.1", 5353, b"other port")]
        )
        self.assertEqual(relay.counters.dropped, {"not from a destination of the client": 1})

    def test_malformedDoesNotLockPort(self) -> None:
        """The client's port is learned from its first well-formed datagram."""
        relay = self.relay()
        relay.datagramReceived(b"\x00\x00", ("127.0.0.1", 7000))
        relay.datagramReceived(datagram("192.0.2.1", 53, b"ok"), CLIENT)
        self.assertEqual(relay.clientPort, CLIENT[1])

    def test_replyBeforeClientKnown(self) -> None:
        """Nothing can go to a client whose port is not known yet."""
        relay = self.relay(clientPort=6000)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x"), ("127.0.0.1", 6000))
        relay.clientPort = None
        relay.fromDestination(b"early", ("192.0.2.1", 53))
        self.assertEqual(self.clientSide.written, [])
        self.assertEqual(relay.counters.dropped, {"client port not known yet": 1})

    def test_name(self) -> None:
        """Datagrams for a name wait for it to resolve, then go to its first address."""
        relay = self.relay()
        relay.datagramReceived(datagram("dns.test", 53, b"one"), CLIENT)
        relay.datagramReceived(datagram("dns.test", 53, b"two"), CLIENT)
        self.assertEqual(self.sides(), [])
        resolver = self.reactor.nameResolver
        self.assertEqual([name for name, _ in resolver.pending], ["dns.test"])
        resolver.resolve("dns.test", "192.0.2.9", "2001:db8::9")
        [side] = self.sides()
        self.assertEqual(side.written, [(b"one", ("192.0.2.9", 53)), (b"two", ("192.0.2.9", 53))])

    def test_nameCached(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("dns.test", 53, b"one"), CLIENT)
        resolver = self.reactor.nameResolver
        resolver.resolve("dns.test", "192.0.2.9")
        relay.datagramReceived(datagram("dns.test", 5353, b"two"), CLIENT)
        self.assertEqual(resolver.pending, [])
        self.assertEqual(self.sides()[0].written[-1], (b"two", ("192.0.2.9", 5353)))
        self.reactor.advance(NAME_CACHE_SECONDS)
        relay.datagramReceived(datagram("dns.test", 53, b"three"), CLIENT)
        self.assertEqual(len(resolver.pending), 1)

    def test_nameUnresolved(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("nowhere.test", 53, b"x"), CLIENT)
        self.reactor.nameResolver.resolve("nowhere.test")
        relay.datagramReceived(datagram("nowhere.test", 53, b"y"), CLIENT)
        self.assertEqual(self.sides(), [])
        self.assertEqual(relay.counters.dropped, {"name did not resolve": 2})

    def test_queueBounded(self) -> None:
        """While names resolve, at most L{MAX_QUEUED} datagrams wait."""
        relay = self.relay()
        for i in range(MAX_QUEUED + 10):
            relay.datagramReceived(datagram(f"n{i % 3}.test", 53, b"x"), CLIENT)
        self.assertEqual(relay.counters.dropped, {"queue full while resolving": 10})
        self.reactor.nameResolver.resolve("n0.test", "192.0.2.1")
        relay.datagramReceived(datagram("n1.test", 53, b"x"), CLIENT)
        self.assertEqual(relay.counters.dropped, {"queue full while resolving": 10})

    def test_resolvedAfterClose(self) -> None:
        relay = self.relay()
        relay.datagramReceived(datagram("dns.test", 53, b"x"), CLIENT)
        relay.close()
        self.reactor.nameResolver.resolve("dns.test", "192.0.2.9")
        self.assertEqual(self.sides(), [])

    def test_idle(self) -> None:
        relay = self.relay(idleTimeout=10)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x"), CLIENT)
        self.reactor.advance(10)
        self.assertEqual(self.idle, [])
        self.reactor.advance(10)
        self.assertEqual(self.idle, [True])

    def test_close(self) -> None:
        """Closing stops every socket and timer at once."""
        relay = self.relay(idleTimeout=10)
        relay.datagramReceived(datagram("192.0.2.1", 53, b"x"), CLIENT)
        relay.datagramReceived(datagram("2001:db8::1", 53, b"x"), CLIENT)
        relay.close()
        self.assertFalse([p for p in self.reactor.udpPorts if p.listening])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class PortRangeTests(SynchronousTestCase):
    def test_range(self) -> None:
        reactor = FakeUDPReactor()
        reactor.busyPorts = {50000, 50001}
        port = listenUDPRelay(reactor, UDPRelay(reactor, "127.0.0.1"), "127.0.0.1", (50000, 50002))
        self.assertEqual(port.getHost().port, 50002)

    def test_rangeFull(self) -> None:
        reactor = FakeUDPReactor()
        reactor.busyPorts = {50000, 50001}
        self.assertRaises(
            error.CannotListenError,
            listenUDPRelay,
            reactor,
            UDPRelay(reactor, "127.0.0.1"),
            "127.0.0.1",
            (50000, 50001),
        )


class AssociateTests(SynchronousTestCase):
    """The server's side of UDP ASSOCIATE."""

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def associate(
        self,
        factory: SOCKS5Factory | None = None,
        request: wire.Address | None = None,
        peer: Any = None,
        local: Any = None,
    ) -> tuple[SOCKS5ServerProtocol, HalfCloseableStringTransport]:
        factory = factory or SOCKS5Factory(reactor=self.reactor)
        peer = peer or IPv4Address("TCP", "127.0.0.1", 5555)
        protocol = factory.buildProtocol(peer)
        assert protocol is not None
        transport = HalfCloseableStringTransport(
            hostAddress=local or IPv4Address("TCP", "127.0.0.1", 1080), peerAddress=peer
        )
        protocol.makeConnection(transport)
        request = request or wire.Address.fromHost("0.0.0.0", 0)
        protocol.dataReceived(b"\x05\x01\x00" + wire.Request(wire.Command.UDP_ASSOCIATE, request).encode())
        return protocol, transport

    def reply(self, transport: HalfCloseableStringTransport) -> wire.Response:
        parsed = wire.parseResponse(transport.value()[2:])
        assert parsed is not None
        return parsed.message

    def test_reply(self) -> None:
        """The reply names the relay socket, bound where the client reached us."""
        protocol, transport = self.associate()
        [port] = self.reactor.udpPorts
        self.assertEqual(port.interface, "127.0.0.1")
        self.assertEqual(
            self.reply(transport), wire.Response(0, wire.Address.fromHost("127.0.0.1", port.port))
        )
        self.assertFalse(transport.disconnecting)

    def test_dualStackListener(self) -> None:
        """A client that reached a dual-stack listener over IPv4 gets an IPv4 relay."""
        protocol, transport = self.associate(
            peer=IPv6Address("TCP", "::ffff:10.0.0.5", 5555),
            local=IPv6Address("TCP", "::ffff:10.0.0.1", 1080),
        )
        [port] = self.reactor.udpPorts
        self.assertEqual(port.interface, "10.0.0.1")
        self.assertEqual(port.protocol.clientHost, "10.0.0.5")
        self.assertEqual(self.reply(transport).address.type, wire.AddressType.IPV4)

    def test_ipv6(self) -> None:
        protocol, transport = self.associate(
            peer=IPv6Address("TCP", "::1", 5555), local=IPv6Address("TCP", "::1", 1080)
        )
        [port] = self.reactor.udpPorts
        self.assertEqual(port.interface, "::1")
        self.assertEqual(self.reply(transport).address, wire.Address.fromHost("::1", port.port))

    def test_advertise(self) -> None:
        factory = SOCKS5Factory(reactor=self.reactor, udpAdvertise="203.0.113.5")
        protocol, transport = self.associate(factory)
        self.assertEqual(self.reply(transport).address.host, "203.0.113.5")

    def test_expectedPort(self) -> None:
        """DST.PORT is trusted when DST.ADDR is zeros or the client's own address."""
        cases = [
            (wire.Address.fromHost("0.0.0.0", 0), None),
            (wire.Address.fromHost("0.0.0.0", 7000), 7000),
            (wire.Address.fromHost("127.0.0.1", 7001), 7001),
            (wire.Address.fromHost("192.168.1.10", 7002), None),  # behind NAT
            (wire.Address.fromHost("host.test", 7003), None),
        ]
        for request, expected in cases:
            protocol, transport = self.associate(request=request)
            self.assertEqual(self.reactor.udpPorts[-1].protocol.clientPort, expected, request)

    def test_closeEndsAssociation(self) -> None:
        """When the control connection closes, the relay's sockets close at once."""
        protocol, transport = self.associate()
        relay = self.reactor.udpPorts[0].protocol
        relay.datagramReceived(datagram("192.0.2.1", 53, b"hello"), CLIENT)
        self.reactor.udpPorts[1].protocol.datagramReceived(b"hi", ("192.0.2.1", 53))
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertFalse([p for p in self.reactor.udpPorts if p.listening])
        [event] = [e for e in self.events if e.get("log_namespace") == "txsocks5.session"]
        self.assertEqual(
            {
                k: event[k]
                for k in ("outcome", "command", "datagramsUp", "datagramsDown", "bytesUp", "bytesDown")
            },
            {
                "outcome": "succeeded",
                "command": "udp_associate",
                "datagramsUp": 1,
                "datagramsDown": 1,
                "bytesUp": 5,
                "bytesDown": 2,
            },
        )

    def test_clientFin(self) -> None:
        protocol, transport = self.associate()
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_tcpDataIgnored(self) -> None:
        protocol, transport = self.associate()
        transport.clear()
        protocol.dataReceived(b"x" * 1000)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_idleClosesControl(self) -> None:
        factory = SOCKS5Factory(reactor=self.reactor, udpIdleTimeout=60)
        protocol, transport = self.associate(factory)
        self.reactor.advance(60)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(60)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        [event] = [e for e in self.events if e.get("log_namespace") == "txsocks5.session"]
        self.assertEqual(event["outcome"], "idle timeout")

    def test_limits(self) -> None:
        """Past the per-client limit the request fails (0x01); closing frees a slot."""
        factory = SOCKS5Factory(reactor=self.reactor, maxUDPAssociationsPerClient=2)
        first, _ = self.associate(factory)
        self.associate(factory)
        _, transport = self.associate(factory)
        self.assertEqual(self.reply(transport).reply, wire.Reply.GENERAL_FAILURE)
        self.associate(factory, peer=IPv4Address("TCP", "127.0.0.2", 1))
        first.connectionLost(Failure(error.ConnectionDone()))
        _, transport = self.associate(factory)
        self.assertEqual(self.reply(transport).reply, wire.Reply.SUCCEEDED)

    def test_totalLimit(self) -> None:
        factory = SOCKS5Factory(reactor=self.reactor, maxUDPAssociations=1)
        self.associate(factory)
        _, transport = self.associate(factory, peer=IPv4Address("TCP", "127.0.0.2", 1))
        self.assertEqual(self.reply(transport).reply, wire.Reply.GENERAL_FAILURE)

    def test_bindFails(self) -> None:
        factory = SOCKS5Factory(reactor=self.reactor, udpPortRange=(50000, 50000))
        self.reactor.busyPorts = {50000}
        _, transport = self.associate(factory)
        self.assertEqual(self.reply(transport).reply, wire.Reply.GENERAL_FAILURE)
        self.assertEqual(factory._associations, {})
