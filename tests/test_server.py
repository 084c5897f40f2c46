"""
Unit tests of the SOCKS5 state machine in L{txsocks5.server}, without
sockets: string transports, a fake outbound and a fake clock.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.fakes import FakeOutbound, HalfCloseableStringTransport
from txsocks5 import wire
from txsocks5.auth import NoAuthentication, UsernamePasswordAuthentication
from txsocks5.interfaces import AddressNotAllowed
from txsocks5.limits import LoginThrottle
from txsocks5.rules import RuleSet, parseRulesFile
from txsocks5.server import ERROR_LINGER, HOLD_LIMIT, SOCKS5Factory, SOCKS5ServerProtocol

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)
GREETING = b"\x05\x01\x00"
CONNECT = wire.Request(wire.Command.CONNECT, wire.Address.fromHost("192.0.2.7", 80)).encode()


class ServerTestCase(SynchronousTestCase):
    """Builds a factory on a fake clock and connects protocols to string transports."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.outbound = FakeOutbound()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def makeFactory(self, **kwargs: Any) -> SOCKS5Factory:
        kwargs.setdefault("outbound", self.outbound)
        return SOCKS5Factory(reactor=self.clock, **kwargs)

    def connect(
        self, factory: SOCKS5Factory | None = None, peer: Any = CLIENT
    ) -> tuple[SOCKS5ServerProtocol, HalfCloseableStringTransport]:
        factory = factory or self.makeFactory()
        protocol = factory.buildProtocol(peer)
        assert protocol is not None
        transport = HalfCloseableStringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def sessionEvents(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "txsocks5.session"]


class NegotiationTests(ServerTestCase):
    """Greeting, method selection and request parsing."""

    def test_connectSucceeds(self) -> None:
        """
        A CONNECT gets a success reply carrying the outbound socket's local
        address, only once the outbound connection exists.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING)
        self.assertEqual(transport.value(), b"\x05\x00")
        transport.clear()
        protocol.dataReceived(CONNECT)
        [(address, _, _)] = self.outbound.attempts
        self.assertEqual(address, wire.Address.fromHost("192.0.2.7", 80))
        self.assertEqual(transport.value(), b"")
        self.outbound.succeed(local=IPv4Address("TCP", "10.1.2.3", 40000))
        self.assertEqual(transport.value(), b"\x05\x00\x00\x01\x0a\x01\x02\x03\x9c\x40")

    def test_bindAddressIPv6(self) -> None:
        """An IPv6 outbound socket gives an ATYP 4 reply."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        transport.clear()
        _, factory, d = self.outbound.attempts[0]
        target = factory.buildProtocol(None)
        targetTransport = HalfCloseableStringTransport(hostAddress=IPv6Address("TCP", "::1", 443))
        target.makeConnection(targetTransport)
        d.callback(target)
        self.assertEqual(transport.value(), b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb")

    def test_byteByByte(self) -> None:
        """The handshake works when it arrives one byte at a time."""
        protocol, transport = self.connect()
        for byte in GREETING + CONNECT:
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(len(self.outbound.attempts), 1)
        _, target = self.outbound.succeed()
        protocol.dataReceived(b"hello")
        self.assertEqual(target.value(), b"hello")

    def test_pipelinedData(self) -> None:
        """Data sent with the request, before the reply, reaches the target."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT + b"early data")
        protocol.dataReceived(b", more while connecting")
        self.assertEqual(transport.producerState, "producing")
        _, target = self.outbound.succeed()
        self.assertEqual(target.value(), b"early data, more while connecting")
        self.assertEqual(transport.producerState, "producing")

    def test_holdLimitWhileConnecting(self) -> None:
        """Past HOLD_LIMIT bytes sent ahead, reading pauses until the tunnel is up."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        ahead = b"x" * (HOLD_LIMIT + 1)
        protocol.dataReceived(ahead)
        self.assertEqual(transport.producerState, "paused")
        _, target = self.outbound.succeed()
        self.assertEqual(target.value(), ahead)
        self.assertEqual(transport.producerState, "producing")

    def test_relayBothWays(self) -> None:
        """After the reply, bytes flow both ways with producers registered."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        targetProtocol, target = self.outbound.succeed()
        transport.clear()
        protocol.dataReceived(b"up")
        targetProtocol.dataReceived(b"down")
        self.assertEqual(target.value(), b"up")
        self.assertEqual(transport.value(), b"down")
        self.assertIs(target.producer, transport)
        self.assertIs(transport.producer, target)

    def test_wrongVersion(self) -> None:
        """A greeting that is not SOCKS5 is closed without a reply."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_noMethods(self) -> None:
        """NMETHODS=0 is answered 0xFF, then the connection closes."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), b"\x05\xff")
        self.assertTrue(transport.disconnecting)

    def test_noAcceptableMethod(self) -> None:
        """A client that cannot do any offered method gets 0xFF."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x02\x01\x02")
        self.assertEqual(transport.value(), b"\x05\xff")
        self.assertTrue(transport.disconnecting)

    def test_unsupportedCommands(self) -> None:
        """Unknown CMDs get 0x07."""
        for command in (0, 4, 9, 255):
            protocol, transport = self.connect()
            request = wire.Request(command, wire.Address.fromHost("192.0.2.7", 80))
            protocol.dataReceived(GREETING + request.encode())
            self.assertEqual(transport.value()[2:4], b"\x05\x07")
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.outbound.attempts, [])

    def test_unknownAddressType(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + b"\x05\x01\x00\x07\x01\x02\x03\x04\x00\x50")
        self.assertEqual(transport.value()[2:], b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertTrue(transport.disconnecting)

    def test_requestWrongVersion(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + b"\x04\x01\x00\x01\x01\x02\x03\x04\x00\x50")
        self.assertEqual(transport.value()[2:4], b"\x05\x01")

    def test_clientClosesDuringNegotiation(self) -> None:
        """A FIN mid-handshake closes the connection: nothing more can come."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x01")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_clientFinAfterPipelinedRequest(self) -> None:
        """
        A client that sends its request and data and then a FIN still gets
        its data delivered and the FIN passed on.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT + b"last words")
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        _, target = self.outbound.succeed()
        self.assertEqual(target.value(), b"last words")
        self.assertTrue(target.writeClosed)

    def test_clientGoneWhileConnecting(self) -> None:
        """The attempt is cancelled and nothing is written when the client leaves."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        transport.clear()
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.outbound.cancelled, [wire.Address.fromHost("192.0.2.7", 80)])
        self.assertEqual(transport.value(), b"")
        self.assertFalse([e for e in self.events if e["log_level"] >= LogLevel.error])


class FailureReplyTests(ServerTestCase):
    """A failed CONNECT is answered with the matching REP, then closed."""

    def assertReplyFor(self, exception: Exception, rep: int) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        transport.clear()
        self.outbound.attempts[-1][2].errback(exception)
        self.assertEqual(transport.value(), bytes([5, rep, 0, 1, 0, 0, 0, 0, 0, 0]))
        self.assertTrue(transport.disconnecting)

    def test_refused(self) -> None:
        self.assertReplyFor(error.ConnectionRefusedError(), 0x05)

    def test_unresolvable(self) -> None:
        self.assertReplyFor(error.DNSLookupError("no such name"), 0x04)

    def test_networkUnreachable(self) -> None:
        self.assertReplyFor(error.NoRouteError(), 0x03)

    def test_timeout(self) -> None:
        self.assertReplyFor(error.TimeoutError(), 0x06)

    def test_other(self) -> None:
        self.assertReplyFor(RuntimeError("surprise"), 0x01)

    def test_lingerLimit(self) -> None:
        """A client that never reads its error reply is cut off in 10 seconds."""
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        self.outbound.attempts[-1][2].errback(error.ConnectionRefusedError())
        self.clock.advance(ERROR_LINGER)
        self.assertTrue(transport.aborted)


class TimeoutTests(ServerTestCase):
    """Negotiation timeout."""

    def test_negotiationTimeout(self) -> None:
        """A client that stalls mid-handshake is dropped."""
        protocol, transport = self.connect(self.makeFactory(negotiateTimeout=5))
        protocol.dataReceived(b"\x05\x01")
        self.clock.advance(4.9)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.2)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(error.ConnectionAborted()))
        [event] = self.sessionEvents()
        self.assertEqual(event["outcome"], "negotiation timeout")

    def test_sessionLogOff(self) -> None:
        """logSessions=False: no session event, but the counters still count."""
        factory = self.makeFactory(negotiateTimeout=5, logSessions=False)
        protocol, transport = self.connect(factory)
        self.clock.advance(6)
        protocol.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(self.sessionEvents(), [])
        self.assertEqual(factory.counters.outcomes, {"negotiation timeout": 1})

    def test_noTimeoutOnceRelaying(self) -> None:
        """The negotiation timer stops once the request is in."""
        protocol, transport = self.connect(self.makeFactory(negotiateTimeout=5))
        protocol.dataReceived(GREETING + CONNECT)
        self.outbound.succeed()
        self.clock.advance(100)
        self.assertFalse(transport.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sharedTimer(self) -> None:
        """
        Negotiating clients share one timer; each is still cut at its own
        deadline, and one that finishes negotiating is not.
        """
        factory = self.makeFactory(negotiateTimeout=5)
        first, firstTransport = self.connect(factory)
        self.clock.advance(2)
        second, secondTransport = self.connect(factory)
        third, thirdTransport = self.connect(factory)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        third.dataReceived(GREETING + CONNECT)
        self.clock.advance(3)
        self.assertTrue(firstTransport.aborted)
        self.assertFalse(secondTransport.aborted)
        self.clock.advance(2)
        self.assertTrue(secondTransport.aborted)
        self.assertFalse(thirdTransport.aborted)

    def test_timeoutChanged(self) -> None:
        """A factory's negotiateTimeout changed later applies to clients that come after."""
        factory = self.makeFactory(negotiateTimeout=5)
        factory.negotiateTimeout = 2
        protocol, transport = self.connect(factory)
        self.clock.advance(2)
        self.assertTrue(transport.aborted)
        factory.negotiateTimeout = None
        protocol, transport = self.connect(factory)
        self.clock.advance(100)
        self.assertFalse(transport.aborted)

    def test_manyTimeoutLengths(self) -> None:
        """
        Past the timeout lengths that get a shared timer, a client still
        gets its negotiation timeout (its own timer).
        """
        factory = self.makeFactory(negotiateTimeout=5)
        for seconds in range(1, 11):
            factory.negotiateTimeout = seconds
            protocol, transport = self.connect(factory)
            self.clock.advance(seconds - 0.1)
            self.assertFalse(transport.aborted, seconds)
            self.clock.advance(0.2)
            self.assertTrue(transport.aborted, seconds)


class AuthenticationTests(ServerTestCase):
    """RFC 1929 username/password through twisted.cred checkers."""

    def authFactory(self, checker: Any, allowNone: bool = False) -> SOCKS5Factory:
        methods: list[Any] = [UsernamePasswordAuthentication()]
        if allowNone:
            methods.append(NoAuthentication())
        return self.makeFactory(authenticators=methods, checkers=[checker])

    def memoryChecker(self) -> Any:
        return strcred.makeChecker("memory:alice:secret")

    def test_goodPassword(self) -> None:
        protocol, transport = self.connect(self.authFactory(self.memoryChecker()))
        protocol.dataReceived(b"\x05\x02\x00\x02")
        self.assertEqual(transport.value(), b"\x05\x02")
        transport.clear()
        protocol.dataReceived(wire.AuthRequest(b"alice", b"secret").encode() + CONNECT)
        self.assertEqual(transport.value(), b"\x01\x00")
        self.assertEqual(len(self.outbound.attempts), 1)
        self.assertEqual(protocol.session.user, "alice")

    def test_wrongPassword(self) -> None:
        """A wrong password is answered with a failure status and a close."""
        protocol, transport = self.connect(self.authFactory(self.memoryChecker()))
        protocol.dataReceived(b"\x05\x01\x02" + wire.AuthRequest(b"alice", b"guess").encode() + CONNECT)
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.outbound.attempts, [])
        protocol.connectionLost(Failure(error.ConnectionDone()))
        for event in self.events:
            self.assertNotIn("guess", repr(event))

    def test_unknownUser(self) -> None:
        protocol, transport = self.connect(self.authFactory(self.memoryChecker()))
        protocol.dataReceived(b"\x05\x01\x02" + wire.AuthRequest(b"mallory", b"secret").encode())
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")

    def test_bytesChecker(self) -> None:
        """A checker keyed by bytes (as FilePasswordDB is) works too."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(bob=b"pw")
        checker.users = {b"bob": b"pw"}
        protocol, transport = self.connect(self.authFactory(checker))
        protocol.dataReceived(b"\x05\x01\x02" + wire.AuthRequest(b"bob", b"pw").encode())
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")

    def test_checkerAnswersLater(self) -> None:
        """
        A checker that answers later (a Deferred) holds the request the
        client sent meanwhile, and the request goes on once it answers.
        """
        answer: Deferred[bytes] = Deferred()

        @implementer(ICredentialsChecker)
        class LaterChecker:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
                return answer

        protocol, transport = self.connect(self.authFactory(LaterChecker()))
        protocol.dataReceived(b"\x05\x01\x02" + wire.AuthRequest(b"alice", b"secret").encode() + CONNECT)
        self.assertEqual(transport.value(), b"\x05\x02")
        self.assertEqual(self.outbound.attempts, [])
        answer.callback(b"alice")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")
        self.assertEqual(len(self.outbound.attempts), 1)
        self.assertEqual(protocol.session.user, "alice")

    def test_badSubnegotiationVersion(self) -> None:
        protocol, transport = self.connect(self.authFactory(self.memoryChecker()))
        protocol.dataReceived(b"\x05\x01\x02\x05\x01a\x01b")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(transport.disconnecting)

    def test_noAuthNotOfferedWithCredentials(self) -> None:
        """With credentials configured, a client offering only 0x00 is refused."""
        protocol, transport = self.connect(self.authFactory(self.memoryChecker()))
        protocol.dataReceived(GREETING)
        self.assertEqual(transport.value(), b"\x05\xff")

    def test_preference(self) -> None:
        """When both are allowed, a client offering both must authenticate."""
        factory = self.authFactory(self.memoryChecker(), allowNone=True)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"\x05\x02\x00\x02")
        self.assertEqual(transport.value(), b"\x05\x02")
        protocol, transport = self.connect(factory)
        protocol.dataReceived(GREETING)
        self.assertEqual(transport.value(), b"\x05\x00")

    def test_needsChecker(self) -> None:
        self.assertRaises(ValueError, self.makeFactory, authenticators=[UsernamePasswordAuthentication()])


class AccountingTests(ServerTestCase):
    """One structured log event per finished session."""

    def test_sessionEvent(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT + b"12345")
        targetProtocol, target = self.outbound.succeed()
        targetProtocol.dataReceived(b"abc")
        self.clock.advance(2)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        [event] = self.sessionEvents()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(
            {k: event[k] for k in ("outcome", "client", "command", "destination", "bytesUp", "bytesDown")},
            {
                "outcome": "succeeded",
                "client": "127.0.0.1:50000",
                "command": "connect",
                "destination": "192.0.2.7:80",
                "bytesUp": 5,
                "bytesDown": 3,
            },
        )
        self.assertEqual(event["duration"], 2)
        self.assertTrue(target.disconnecting)
        self.assertEqual(
            formatEvent(event),
            "session succeeded: client=127.0.0.1:50000 user=None command=connect "
            "destination=192.0.2.7:80 up=5 down=3 duration=2.000s",
        )

    def test_refusedOutcome(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GREETING + CONNECT)
        self.outbound.attempts[0][2].errback(error.ConnectionRefusedError())
        protocol.connectionLost(Failure(error.ConnectionDone()))
        [event] = self.sessionEvents()
        self.assertEqual(event["outcome"], "connection refused")

    def test_mappedClientAddress(self) -> None:
        """Clients on a dual-stack socket are logged as plain IPv4."""
        protocol, transport = self.connect(peer=IPv6Address("TCP", "::ffff:10.0.0.9", 1234))
        protocol.connectionLost(Failure(error.ConnectionDone()))
        [event] = self.sessionEvents()
        self.assertEqual(event["client"], "10.0.0.9:1234")

    def test_noErrorsForGarbage(self) -> None:
        """Garbage is closed quietly: nothing at error level."""
        for junk in (b"\xff" * 50, b"GET / HTTP/1.0\r\n\r\n", b"\x05\x01\x00\x05\x01\x00\x09"):
            protocol, transport = self.connect()
            protocol.dataReceived(junk)
            protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertFalse([e for e in self.events if e["log_level"] >= LogLevel.error])


class LimitTests(ServerTestCase):
    """maxConnections."""

    def test_maxConnections(self) -> None:
        factory = self.makeFactory(maxConnections=1)
        protocol, _ = self.connect(factory)
        self.assertIsNone(factory.buildProtocol(CLIENT))
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNotNone(factory.buildProtocol(CLIENT))


class FuzzTests(ServerTestCase):
    """No input, in any chunking, makes the protocol raise or log an error."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([GREETING, b"\x05\x01\x02", CONNECT, b"\x01\x05alice\x06secret"]),
            ),
            max_size=8,
        ),
        st.booleans(),
    )
    def test_anyInput(self, chunks: list[bytes], withAuth: bool) -> None:
        if withAuth:
            factory = self.makeFactory(
                authenticators=[UsernamePasswordAuthentication(), NoAuthentication()],
                checkers=[strcred.makeChecker("memory:alice:secret")],
            )
        else:
            factory = self.makeFactory()
        protocol, transport = self.connect(factory)
        for chunk in chunks:
            if transport.disconnecting:
                break
            protocol.dataReceived(chunk)
        for attempt in self.outbound.attempts:
            if not attempt[2].called:
                attempt[2].errback(error.ConnectionRefusedError())
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.clock.advance(60)
        self.assertFalse([e for e in self.events if e["log_level"] >= LogLevel.error])


def _login(username: bytes, password: bytes) -> bytes:
    return b"\x05\x01\x02" + bytes([1, len(username)]) + username + bytes([len(password)]) + password


class AccessRuleTests(ServerTestCase):
    """Client admission, request rules and limits, as the state machine applies them."""

    def rules(self, *lines: str) -> RuleSet:
        clients, requests = parseRulesFile("t.rules", lines)
        return RuleSet(clients, requests)

    def test_deniedConnectGetsNotAllowed(self) -> None:
        """A denied CONNECT is answered 0x02 without an outbound attempt, and logged with its rule."""
        protocol, transport = self.connect(self.makeFactory(rules=self.rules("deny to 192.0.2.0/24")))
        protocol.dataReceived(GREETING + CONNECT)
        self.assertEqual(transport.value()[2:4], b"\x05\x02")
        self.assertEqual(self.outbound.attempts, [])
        self.assertTrue(transport.disconnecting)
        [denied] = [formatEvent(e) for e in self.events if "Denied" in formatEvent(e)]
        self.assertIn("CONNECT 192.0.2.7:80", denied)
        self.assertIn("rule t.rules:1", denied)

    def test_protectedByDefault(self) -> None:
        """The metadata address is denied with no rules configured."""
        protocol, transport = self.connect()
        request = wire.Request(wire.Command.CONNECT, wire.Address.fromHost("169.254.169.254", 80)).encode()
        protocol.dataReceived(GREETING + request)
        self.assertEqual(transport.value()[2:4], b"\x05\x02")
        self.assertEqual(self.outbound.attempts, [])

    def test_literalSentAsName(self) -> None:
        """An IP literal sent as a name (ATYP 3) is checked as the address it is."""
        protocol, transport = self.connect()
        request = wire.Request(
            wire.Command.CONNECT, wire.Address(wire.AddressType.DOMAIN, "169.254.169.254", 80)
        ).encode()
        protocol.dataReceived(GREETING + request)
        self.assertEqual(transport.value()[2:4], b"\x05\x02")

    def test_deniedNameBeforeResolution(self) -> None:
        """A name rule denies before any resolution or connection."""
        protocol, transport = self.connect(self.makeFactory(rules=self.rules("deny to .example.com")))
        request = wire.Request(wire.Command.CONNECT, wire.Address.fromHost("www.example.com", 443)).encode()
        protocol.dataReceived(GREETING + request)
        self.assertEqual(transport.value()[2:4], b"\x05\x02")
        self.assertEqual(self.outbound.attempts, [])

    def test_namesCarryAnAddressCheck(self) -> None:
        """An allowed name is connected with a check for each address it resolves to."""
        protocol, transport = self.connect(self.makeFactory(rules=self.rules("deny to 10.0.0.0/8")))
        request = wire.Request(wire.Command.CONNECT, wire.Address.fromHost("www.example.com", 443)).encode()
        protocol.dataReceived(GREETING + request)
        check = self.outbound.allowAddress
        assert check is not None
        self.assertTrue(check("192.0.2.1"))
        self.assertFalse(check("10.1.2.3"))
        self.assertFalse(check("169.254.169.254"))

    def test_everyAddressDeniedIsNotAllowed(self) -> None:
        """When every address of a name is denied, the reply is 0x02."""
        protocol, transport = self.connect()
        request = wire.Request(wire.Command.CONNECT, wire.Address.fromHost("www.example.com", 443)).encode()
        protocol.dataReceived(GREETING + request)
        self.outbound.attempts[0][2].errback(AddressNotAllowed("every address denied"))
        self.assertEqual(transport.value()[2:4], b"\x05\x02")

    def test_deniedAssociate(self) -> None:
        """A rule denying the udp command answers UDP ASSOCIATE with 0x02."""
        factory = self.makeFactory(rules=self.rules("deny command udp"))
        protocol, transport = self.connect(factory)
        request = wire.Request(wire.Command.UDP_ASSOCIATE, wire.Address.fromHost("0.0.0.0", 0)).encode()
        protocol.dataReceived(GREETING + request)
        self.assertEqual(transport.value()[2:4], b"\x05\x02")

    def test_perUserRule(self) -> None:
        """Rules naming users apply to whoever logged in."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw", bob=b"pw")
        factory = self.makeFactory(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[checker],
            rules=self.rules("allow user alice", "deny"),
        )
        alice, aliceTransport = self.connect(factory)
        alice.dataReceived(_login(b"alice", b"pw") + CONNECT)
        self.assertEqual(len(self.outbound.attempts), 1)
        bob, bobTransport = self.connect(factory)
        bob.dataReceived(_login(b"bob", b"pw") + CONNECT)
        self.assertEqual(bobTransport.value()[-10:-8], b"\x05\x02")
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_clientRefusedAtAccept(self) -> None:
        """A client the client rules deny gets no protocol (the connection is closed)."""
        factory = self.makeFactory(rules=self.rules("client deny from 127.0.0.0/8"))
        self.assertIsNone(factory.buildProtocol(CLIENT))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)))
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))

    def test_refusalsAreLoggedSparingly(self) -> None:
        """A flood of refused clients logs one line per interval, then how many were not logged."""
        factory = self.makeFactory(rules=self.rules("client deny from any"))
        for _ in range(5):
            factory.buildProtocol(CLIENT)
        self.clock.advance(11)
        factory.buildProtocol(CLIENT)
        lines = [formatEvent(e) for e in self.events if "Refused" in formatEvent(e)]
        self.assertEqual(len(lines), 2)
        self.assertIn("4 more refused", lines[1])

    def test_connectionsPerClient(self) -> None:
        """At the per-address limit, more connections from it are refused; others are not."""
        factory = self.makeFactory(maxConnectionsPerClient=2)
        first, firstTransport = self.connect(factory)
        self.connect(factory)
        self.assertIsNone(factory.buildProtocol(CLIENT))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)))
        first.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNotNone(factory.buildProtocol(CLIENT))

    def test_udpAssociationsPerUser(self) -> None:
        """A user at the UDP association limit is refused another, from any address."""
        factory = self.makeFactory(maxUDPAssociationsPerUser=1)
        self.assertIsNone(factory.admitAssociation("127.0.0.1", "alice"))
        self.assertIsNotNone(factory.admitAssociation("127.0.0.2", "alice"))
        self.assertIsNone(factory.admitAssociation("127.0.0.2", "bob"))
        factory.releaseAssociation("127.0.0.1", "alice")
        self.assertIsNone(factory.admitAssociation("127.0.0.2", "alice"))


class LoginThrottleTests(ServerTestCase):
    """Failed logins from one address lock its logins out for a while."""

    def factory(self) -> SOCKS5Factory:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"right")
        return self.makeFactory(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[checker],
            maxLoginFailures=3,
            loginLockout=60.0,
        )

    def login(self, factory: SOCKS5Factory, password: bytes, peer: Any = CLIENT) -> bytes:
        protocol, transport = self.connect(factory, peer)
        protocol.dataReceived(_login(b"alice", password))
        self.lastProtocol = protocol
        return transport.value()[2:4]

    def test_lockoutAfterFailures(self) -> None:
        """After three failures even the right password fails, until the lockout passes."""
        factory = self.factory()
        for _ in range(3):
            self.assertEqual(self.login(factory, b"wrong"), b"\x01\x01")
        self.assertEqual(self.login(factory, b"right"), b"\x01\x01")
        self.assertEqual(self.lastProtocol.session.outcome, "login throttled")
        other = IPv4Address("TCP", "127.0.0.2", 1)
        self.assertEqual(self.login(factory, b"right", other), b"\x01\x00")
        self.clock.advance(61)
        self.assertEqual(self.login(factory, b"right"), b"\x01\x00")

    def test_lockoutAppliesWhenCredentialsArrive(self) -> None:
        """A client that greeted before the lockout began is refused unchecked too."""
        factory = self.factory()
        early, earlyTransport = self.connect(factory)
        early.dataReceived(b"\x05\x01\x02")
        for _ in range(3):
            self.login(factory, b"wrong")
        early.dataReceived(_login(b"alice", b"right")[3:])
        self.assertEqual(earlyTransport.value(), b"\x05\x02\x01\x01")
        self.assertEqual(early.session.outcome, "login throttled")

    def test_successForgetsFailures(self) -> None:
        """A successful login starts the count again."""
        factory = self.factory()
        for _ in range(2):
            self.login(factory, b"wrong")
        self.login(factory, b"right")
        for _ in range(2):
            self.login(factory, b"wrong")
        self.assertEqual(self.login(factory, b"right"), b"\x01\x00")

    def test_repeatLockoutsDouble(self) -> None:
        """A second lockout of the same address lasts twice as long."""
        factory = self.factory()
        for _ in range(3):
            self.login(factory, b"wrong")
        self.clock.advance(61)
        for _ in range(3):
            self.login(factory, b"wrong")
        self.clock.advance(61)
        self.assertEqual(self.login(factory, b"right"), b"\x01\x01")
        self.clock.advance(60)
        self.assertEqual(self.login(factory, b"right"), b"\x01\x00")

    def test_off(self) -> None:
        """maxLoginFailures=0 never locks out."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"right")
        factory = self.makeFactory(
            authenticators=[UsernamePasswordAuthentication()], checkers=[checker], maxLoginFailures=0
        )
        for _ in range(10):
            self.login(factory, b"wrong")
        self.assertEqual(self.login(factory, b"right"), b"\x01\x00")

    def test_trackedAddressesBounded(self) -> None:
        """The throttle remembers a bounded number of addresses."""
        throttle = LoginThrottle(self.clock, maxFailures=3, maxTracked=100)
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
        self.assertLessEqual(len(throttle._failures), 100)
