"""
End-to-end tests of the access rules over real loopback sockets: the
protected destinations (link-local and cloud metadata, unspecified,
multicast, broadcast, loopback for clients not on loopback), destination
rules on IP literals, networks, ports and name patterns (names checked
before resolution, each resolved address after), client admission at
accept, per-user rules, UDP datagrams and BIND checked like destinations,
the per-client and per-user limits, the failed-login lockout, and the same
rules given to a C{twistd socks5} child process and seen by curl.

Only loopback addresses are ever connected to (127.0.0.1, 127.0.0.2 as a
second source or target address, and ::1).  Names are resolved by the fake
resolver of L{tests.support}, never by DNS; a name the fake resolver maps
to a protected address (169.254.169.254) must be refused by the rules
before any connection: the server's outbound side runs on a reactor whose
C{connectTCP} records every attempt and refuses (without touching the
network) anything that is not loopback, so a rule that failed to stop it
shows up as a recorded attempt and a REP other than 0x02.

"Clients not on loopback" cannot connect here; their rules are exercised by
L{PretendRemoteClient}, a rule set that hands the real L{RuleSet} another
client address while every byte still goes over loopback.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import error
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from tests.support import (
    DEFAULT_HOSTS,
    LOOPBACK4,
    LOOPBACK6,
    SKIP_CURL,
    EchoProtocol,
    FakeHostnameResolver,
    FakeResolverReactor,
    IntegrationTestCase,
    LoopbackOnlyOutbound,
    Server,
    TrackedProtocol,
    TrackingFactory,
    canBind,
    connectTo,
    encodeAuth,
    encodeRequest,
    isLoopback,
    listenDualStack,
    listenTCP,
    needsIPv6,
    reactor,
    readReply,
    recvExactly,
    recvUntilClosed,
    runCurl,
    runProcess,
    sleep,
    startTarget,
    startTwistd,
    twistdCommand,
    waitFor,
    watchSessions,
)
from tests.test_bind_integration import bindRequest, connectPeer
from tests.test_integration import BODY, httpSite
from tests.test_udp_integration import Association, startUDPEcho
from txsocks5 import wire
from txsocks5.auth import UsernamePasswordAuthentication
from txsocks5.interfaces import AccessRequest, IRuleSet, Verdict
from txsocks5.outbound import DirectOutbound
from txsocks5.rules import Rule, RuleSet, parseNetwork, parseRulesFile
from txsocks5.server import SOCKS5Factory

#: A SOCKS5 reply as L{readReply} returns it: (REP, BND.ADDR, BND.PORT).
Reply = tuple[int, str, int]

#: What every error reply carries: REP and BND 0.0.0.0:0.
NOT_ALLOWED: Reply = (0x02, "0.0.0.0", 0)

CONNECT, BIND, UDP_ASSOCIATE = 1, 2, 3

#: The cloud metadata address, protected by default.
METADATA = "169.254.169.254"

#: A second loopback address: another client or target that is still this host.
OTHER_LOOPBACK4 = "127.0.0.2"
HAVE_OTHER_LOOPBACK4 = canBind(OTHER_LOOPBACK4)
SKIP_OTHER_LOOPBACK = None if HAVE_OTHER_LOOPBACK4 else f"{OTHER_LOOPBACK4} cannot be bound here"

#: An address from TEST-NET-1 that rules are told the client has (see L{PretendRemoteClient}).
REMOTE_CLIENT = "192.0.2.10"

PAYLOAD = b"ping through the rules"

#: Names the fake resolver knows in these tests, beyond L{DEFAULT_HOSTS}.
HOSTS: dict[str, Sequence[str]] = {
    **DEFAULT_HOSTS,
    "metadata.test": (METADATA,),
    "mapped-metadata.test": (f"::ffff:{METADATA}",),
    "2852039166": (METADATA,),  # What getaddrinfo makes of 169.254.169.254 as one decimal number.
    "ok.test": (LOOPBACK4,),
    "blocked.test": (LOOPBACK4,),
    "www.blocked.test": (LOOPBACK4,),
    "deep.www.blocked.test": (LOOPBACK4,),
    "notblocked.test": (LOOPBACK4,),
    "mixed.test": (OTHER_LOOPBACK4, LOOPBACK4),
    "alldenied.test": (OTHER_LOOPBACK4, "127.0.0.3"),
}

CREDENTIALS = {"alice": (b"alice", b"pw"), "bob": (b"bob", b"pw")}


def ruleSet(*lines: str, protect: bool = True) -> RuleSet:
    """A L{RuleSet} from rules-file lines (their source is C{rules:LINE})."""
    clientRules, requestRules = parseRulesFile("rules", lines)
    return RuleSet(clientRules, requestRules, protect=protect)


def memoryChecker() -> ICredentialsChecker:
    """strcred's C{memory:} checker with alice/pw and bob/pw."""
    return strcred.makeChecker("memory:alice:pw:bob:pw")  # type: ignore[no-any-return]


@implementer(IRuleSet)
class PretendRemoteClient:
    """
    A rule set that asks C{inner} as if every client came from C{client}
    (not a loopback address), so that the protection of this host's
    loopback from remote clients can be exercised over loopback sockets.
    """

    def __init__(self, inner: IRuleSet, client: str = REMOTE_CLIENT) -> None:
        self.inner = inner
        self.client = client

    def admitClient(self, client: str | None) -> Verdict:
        return self.inner.admitClient(self.client)

    def checkRequest(self, request: AccessRequest) -> Verdict | None:
        return self.inner.checkRequest(replace(request, client=self.client))


class ConnectGuardReactor(FakeResolverReactor):
    """
    The reactor the server's outbound side connects with: names resolve
    with the fake resolver, and C{connectTCP} records every attempt and
    refuses (raising, so nothing reaches the network) any host that is not
    a loopback address.

    @ivar tcpAttempts: C{(host, port)} of every C{connectTCP}.
    @ivar refused: those that were refused.
    """

    def __init__(self, resolver: FakeHostnameResolver) -> None:
        super().__init__(resolver)
        self.tcpAttempts: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
    ) -> Any:
        """Connect with the real reactor if C{host} is loopback; record it either way."""
        self.tcpAttempts.append((host, port))
        if not isLoopback(host):
            self.refused.append((host, port))
            raise error.ConnectionRefusedError(f"test guard: {host} is not loopback")
        return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)


class RulesServer(Server):
    """A L{Server} whose outbound reactor is a L{ConnectGuardReactor} (C{connecting})."""

    connecting: ConnectGuardReactor


# -- blocking client code (run it in threads) --------------------------------


class LoginRefused(Exception):
    """The server answered an RFC 1929 login with a status other than 0."""

    def __init__(self, status: bytes) -> None:
        super().__init__(f"login refused: {status!r}")
        self.status = status


def greet(sock: socket.socket, credentials: tuple[bytes, bytes] | None = None) -> None:
    """The greeting (and login), as far as the request."""
    if credentials is None:
        sock.sendall(b"\x05\x01\x00")
        method = recvExactly(sock, 2)
        if method != b"\x05\x00":
            raise AssertionError(f"no-authentication was not accepted: {method!r}")
        return
    sock.sendall(b"\x05\x01\x02")
    method = recvExactly(sock, 2)
    if method != b"\x05\x02":
        raise AssertionError(f"username/password was not selected: {method!r}")
    sock.sendall(encodeAuth(*credentials))
    status = recvExactly(sock, 2)
    if status != b"\x01\x00":
        raise LoginRefused(status)


def request(
    proxy: tuple[str, int],
    host: str,
    port: int,
    command: int = CONNECT,
    credentials: tuple[bytes, bytes] | None = None,
    source: tuple[str, int] | None = None,
    raw: bytes | None = None,
) -> tuple[socket.socket, Reply]:
    """
    Connect to C{proxy} (from C{source}), greet, send a request for
    C{host}:C{port} (or the C{raw} request bytes) and read the reply.
    """
    sock = connectTo(proxy, source=source)
    try:
        greet(sock, credentials)
        sock.sendall(raw if raw is not None else encodeRequest(host, port, command))
        return sock, readReply(sock)
    except BaseException:
        sock.close()
        raise


def replyAndClose(proxy: tuple[str, int], host: str, port: int, **kw: Any) -> tuple[Reply, bytes]:
    """
    The reply to a request, and whatever came after it until the server
    closed (nothing is read after a success: that would wait for data).
    """
    sock, reply = request(proxy, host, port, **kw)
    with sock:
        return reply, b"" if reply[0] == 0 else recvUntilClosed(sock)


def relay(proxy: tuple[str, int], host: str, port: int, **kw: Any) -> tuple[Reply, bytes]:
    """The reply to a CONNECT and, if it succeeded, L{PAYLOAD} echoed back through it."""
    sock, reply = request(proxy, host, port, **kw)
    with sock:
        if reply[0] != 0:
            return reply, b""
        sock.sendall(PAYLOAD)
        return reply, recvExactly(sock, len(PAYLOAD))


def closedBeforeNegotiation(address: tuple[str, int], source: tuple[str, int] | None = None) -> bytes:
    """
    Connect (from C{source}), send a greeting and read until the server
    closes: what the server sent (nothing, if it closed at accept).  A
    reset counts as a close.
    """
    try:
        sock = connectTo(address, 5.0, source)
    except ConnectionRefusedError:
        raise AssertionError("the server does not listen") from None
    with sock:
        with contextlib.suppress(OSError):  # It may be closed already.
            sock.sendall(b"\x05\x01\x00")
        return recvUntilClosed(sock)


def rawNameRequest(name: bytes, port: int, command: int = CONNECT) -> bytes:
    """A request with ATYP 3 and exactly the bytes C{name} (no IDNA encoding)."""
    return bytes([5, command, 0, 3, len(name)]) + name + struct.pack("!H", port)


def associate(
    proxy: tuple[str, int], credentials: tuple[bytes, bytes] | None = None
) -> tuple[socket.socket, Reply]:
    """A UDP ASSOCIATE (DST 0.0.0.0:0) on a new control connection; the socket and the reply."""
    return request(proxy, "0.0.0.0", 0, command=UDP_ASSOCIATE, credentials=credentials)


# -- the test cases ------------------------------------------------------------


class RulesTestCase(IntegrationTestCase):
    """
    Base: servers with the guarded outbound reactor, and the log lines and
    session events of each test.

    @ivar lines: C{(namespace, level, text)} of every txsocks5 log event.
    @ivar sessions: the session log events.
    """

    def setUp(self) -> None:
        super().setUp()
        self.sessions = watchSessions(self)
        self.lines: list[tuple[str, LogLevel, str]] = []

        @implementer(ILogObserver)
        def observer(event: dict[str, Any]) -> None:
            namespace = event.get("log_namespace") or ""
            if namespace.startswith("txsocks5"):
                self.lines.append((namespace, event.get("log_level"), formatEvent(event) or ""))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def startServer(  # type: ignore[override]
        self,
        host: str = LOOPBACK4,
        hosts: Mapping[str, Sequence[str]] = HOSTS,
        connectTimeout: float = 10.0,
        **factoryArgs: Any,
    ) -> RulesServer:
        """
        Like L{IntegrationTestCase.startServer} (names from C{hosts}), with
        the outbound side on a L{ConnectGuardReactor} behind
        L{LoopbackOnlyOutbound}; the test fails if the server's UDP sockets
        were asked to send beyond loopback.
        """
        resolver = FakeHostnameResolver(hosts)
        connecting = ConnectGuardReactor(resolver)
        outbound = LoopbackOnlyOutbound(DirectOutbound(connecting, connectTimeout))  # type: ignore[arg-type]
        serverReactor = FakeResolverReactor(resolver)
        factory = SOCKS5Factory(outbound=outbound, reactor=serverReactor, **factoryArgs)
        self._socksFactories.append(factory)
        port = await listenTCP(self, factory, host)
        server = RulesServer(factory, host, port.getHost().port, resolver, outbound, serverReactor)  # type: ignore[attr-defined]
        server.connecting = connecting
        refused = serverReactor.udpRefused
        self.addCleanup(lambda: self.assertEqual(refused, [], "the server sent UDP beyond loopback"))
        return server

    async def startEcho(self, host: str = LOOPBACK4) -> tuple[TrackingFactory, int]:
        """A TCP echo target on C{host}."""
        return await startTarget(self, EchoProtocol, host)

    def logged(self, fragment: str, namespace: str = "txsocks5.server") -> list[str]:
        """The log lines of C{namespace} that contain C{fragment}."""
        return [text for ns, _, text in self.lines if ns == namespace and fragment in text]

    async def assertDenied(
        self, server: Server, host: str, port: int, expected: Reply = NOT_ALLOWED, **kw: Any
    ) -> None:
        """A request for C{host}:C{port} gets C{expected} (REP 0x02) and the server closes."""
        reply, rest = await deferToThread(replyAndClose, server.address, host, port, **kw)
        self.assertEqual(reply, expected, f"request for {host}:{port}")
        self.assertEqual(rest, b"", "the server sent more after the error reply")

    async def assertRelays(self, server: Server, host: str, port: int, **kw: Any) -> Reply:
        """A CONNECT to the echo target at C{host}:C{port} succeeds and carries data both ways."""
        reply, echoed = await deferToThread(relay, server.address, host, port, **kw)
        self.assertEqual(reply[0], 0, f"CONNECT {host}:{port} got {reply}")
        self.assertEqual(echoed, PAYLOAD)
        return reply

    async def settled(self, server: Server) -> None:
        """Wait until the server has no session left."""
        await waitFor(lambda: server.factory.counters.active == 0, what="the sessions to end")


class DefaultProtectionTests(RulesTestCase):
    """
    With no rules at all, protected destinations are denied (REP 0x02);
    loopback is not, for loopback clients.
    """

    async def test_metadataLiteral(self) -> None:
        """
        CONNECT 169.254.169.254:80: REP 0x02 before any connection attempt,
        an info line "Denied CONNECT" naming the protected range, and a
        session with outcome "not allowed".
        """
        server = await self.startServer()
        await self.assertDenied(server, METADATA, 80)
        self.assertEqual(server.outbound.attempts, [])
        self.assertEqual(server.connecting.tcpAttempts, [])
        [line] = self.logged("Denied CONNECT")
        self.assertIn(f"{METADATA}:80", line)
        self.assertIn("169.254.0.0/16 is protected", line)
        [level] = [lvl for _, lvl, text in self.lines if text == line]
        self.assertEqual(level, LogLevel.info)
        await waitFor(lambda: bool(self.sessions), what="the session to be logged")
        self.assertEqual(
            (self.sessions[0]["command"], self.sessions[0]["outcome"]), ("connect", "not allowed")
        )

    async def test_metadataName(self) -> None:
        """
        A name the resolver maps to 169.254.169.254: resolved, then REP
        0x02; no TCP connection was attempted to it (the guard would have
        made it REP 0x05).
        """
        server = await self.startServer()
        await self.assertDenied(server, "metadata.test", 80)
        self.assertEqual(server.resolver.lookups, ["metadata.test"])
        self.assertEqual(
            server.outbound.attempts, [wire.Address(wire.AddressType.DOMAIN, "metadata.test", 80)]
        )
        self.assertEqual(server.connecting.tcpAttempts, [])
        [line] = self.logged("Denied CONNECT")
        self.assertIn(f"metadata.test:80 ({METADATA})", line)

    async def test_metadataInDisguise(self) -> None:
        """
        The metadata address written other ways is still denied without a
        connection attempt: as an IPv4-mapped IPv6 literal (ATYP 4), as a
        dotted literal sent as a name (ATYP 3), as a name resolving to the
        IPv4-mapped form, and as a decimal "name" that a system resolver
        would turn into it.
        """
        server = await self.startServer()
        await self.assertDenied(server, f"::ffff:{METADATA}", 80)
        await self.assertDenied(server, "", 0, raw=rawNameRequest(METADATA.encode(), 80))
        await self.assertDenied(server, "mapped-metadata.test", 80)
        await self.assertDenied(server, "2852039166", 80)
        self.assertEqual(server.connecting.tcpAttempts, [])
        self.assertEqual([a.type for a in server.outbound.attempts], [wire.AddressType.DOMAIN] * 2)
        self.assertEqual(server.resolver.lookups, ["mapped-metadata.test", "2852039166"])

    async def test_otherLinkLocalAndMetadata(self) -> None:
        """Other link-local addresses (IPv4 and IPv6) and other clouds' metadata addresses are protected."""
        server = await self.startServer()
        for host in (
            "169.254.0.1",
            "169.254.255.255",
            "fe80::1",
            "fe80::a9fe:a9fe",
            "fd00:ec2::254",
            "100.100.100.200",
        ):
            await self.assertDenied(server, host, 80)
        self.assertEqual(server.outbound.attempts, [])

    async def test_unspecified(self) -> None:
        """
        0.0.0.0 (which connect() takes as this host) and :: are denied: the
        echo target on the same port never sees a connection.
        """
        server = await self.startServer()
        echo, port = await self.startEcho()
        await self.assertDenied(server, "0.0.0.0", port)
        await self.assertDenied(server, "0.1.2.3", port)
        await self.assertDenied(server, "::", port)
        self.assertEqual(echo.instances, [])
        self.assertEqual(server.outbound.attempts, [])

    async def test_multicastAndBroadcast(self) -> None:
        """Multicast (IPv4 and IPv6) and the limited broadcast address: REP 0x02."""
        server = await self.startServer()
        for host in ("224.0.0.1", "239.255.255.250", "255.255.255.255", "ff02::1"):
            await self.assertDenied(server, host, 80)
        self.assertEqual(server.outbound.attempts, [])

    async def test_loopbackClientReachesLoopback(self) -> None:
        """A client on loopback reaches a loopback target, by literal and by name."""
        server = await self.startServer()
        echo, port = await self.startEcho()
        await self.assertRelays(server, LOOPBACK4, port)
        await self.assertRelays(server, "target4.test", port)
        await self.assertRelays(server, "ok.test", port)
        self.assertEqual(len(echo.instances), 3)
        self.assertEqual(self.logged("Denied"), [])

    @needsIPv6
    async def test_loopbackClientReachesLoopbackIPv6(self) -> None:
        """A client on ::1 reaches a target on ::1."""
        server = await self.startServer(host=LOOPBACK6)
        _, port = await self.startEcho(LOOPBACK6)
        await self.assertRelays(server, LOOPBACK6, port)
        await self.assertRelays(server, "target6.test", port)

    async def test_broadAllowDoesNotOpen(self) -> None:
        """
        allow any, allow 0.0.0.0/0 and allow a name pattern do not open the
        protected ranges; loopback still works for a loopback client.
        """
        _, port = await self.startEcho()
        for rules in (
            ruleSet("allow to any"),
            ruleSet("allow to 0.0.0.0/0,[::/0]"),
            ruleSet("allow to .test"),
            ruleSet("allow to *:80"),
        ):
            server = await self.startServer(rules=rules)
            await self.assertDenied(server, METADATA, 80)
            await self.assertDenied(server, "metadata.test", 80)
            await self.assertDenied(server, "224.0.0.1", 80)
            self.assertEqual(server.connecting.tcpAttempts, [], rules.requestRules)
            if rules.requestRules[0].destinations[0].text != "*:80":  # The echo is not on port 80.
                await self.assertRelays(server, "target4.test", port)

    async def test_narrowAllowOpens(self) -> None:
        """
        An allow rule whose network lies inside a protected range opens it:
        the request goes on to the outbound side (whose test guard refuses
        it: REP 0x05, not 0x02), by literal and by name; another port of
        the same address is still denied.
        """
        server = await self.startServer(rules=ruleSet(f"allow to {METADATA}:80"))
        await self.assertDenied(server, METADATA, 80, expected=(0x05, "0.0.0.0", 0))
        self.assertEqual(server.outbound.attempts, [wire.Address(wire.AddressType.IPV4, METADATA, 80)])
        await self.assertDenied(server, "metadata.test", 80, expected=(0x05, "0.0.0.0", 0))
        self.assertEqual(server.connecting.refused, [(METADATA, 80)])
        await self.assertDenied(server, METADATA, 81)
        await self.assertDenied(server, "169.254.169.253", 80)
        self.assertEqual(server.connecting.tcpAttempts, [(METADATA, 80)])

    async def test_broadDestinationBesideNarrowOneDoesNotOpenRange(self) -> None:
        """
        A rule listing a narrow destination inside a protected range beside
        a broad one (C{allow to 169.254.1.1,any}) opens only the narrow
        one: 169.254.169.254 is still denied (REP 0x02, no outbound
        attempt).  (Regression: the rule used to open the whole range when
        any of its destinations lay inside it, whichever one matched.)
        """
        server = await self.startServer(rules=ruleSet("allow to 169.254.1.1,any"))
        await self.assertDenied(server, METADATA, 80)
        self.assertEqual(server.outbound.attempts, [])

    async def test_protectionOff(self) -> None:
        """RuleSet(protect=False) lets 169.254.169.254 through to the outbound side (the guard: 0x05)."""
        server = await self.startServer(rules=RuleSet(protect=False))
        await self.assertDenied(server, METADATA, 80, expected=(0x05, "0.0.0.0", 0))
        self.assertEqual(server.outbound.attempts, [wire.Address(wire.AddressType.IPV4, METADATA, 80)])


class RemoteClientTests(RulesTestCase):
    """
    This host's loopback is protected from clients that are not on
    loopback (pretended with L{PretendRemoteClient}); a rule naming a
    loopback network opens it.
    """

    async def test_loopbackDenied(self) -> None:
        """By default a remote client gets REP 0x02 for 127.0.0.1, by literal or name; nothing connects."""
        echo, port = await self.startEcho()
        server = await self.startServer(rules=PretendRemoteClient(RuleSet()))
        await self.assertDenied(server, LOOPBACK4, port)
        await self.assertDenied(server, "127.1.2.3", port)
        await self.assertDenied(server, "::1", port)
        await self.assertDenied(server, f"::ffff:{LOOPBACK4}", port)
        await self.assertDenied(server, "target4.test", port)
        await self.assertDenied(server, "localhost", port)
        self.assertEqual(echo.instances, [])
        self.assertEqual(server.connecting.tcpAttempts, [])
        self.assertTrue(all("loopback" in line for line in self.logged("Denied CONNECT")))

    async def test_broadAllowDoesNotOpenLoopback(self) -> None:
        """allow any does not open loopback to a remote client."""
        echo, port = await self.startEcho()
        server = await self.startServer(rules=PretendRemoteClient(ruleSet("allow to any")))
        await self.assertDenied(server, LOOPBACK4, port)
        await self.assertDenied(server, "target4.test", port)
        self.assertEqual(echo.instances, [])

    async def test_narrowAllowOpensLoopback(self) -> None:
        """allow 127.0.0.1:PORT opens that port (literal and name) to a remote client; others stay denied."""
        echo, port = await self.startEcho()
        other, otherPort = await self.startEcho()
        server = await self.startServer(rules=PretendRemoteClient(ruleSet(f"allow to 127.0.0.1:{port}")))
        await self.assertRelays(server, LOOPBACK4, port)
        await self.assertRelays(server, "target4.test", port)
        await self.assertDenied(server, LOOPBACK4, otherPort)
        self.assertEqual(len(echo.instances), 2)
        self.assertEqual(other.instances, [])

    async def test_broadDestinationBesideNarrowOneDoesNotOpenLoopback(self) -> None:
        """
        C{allow to 127.0.0.1:ECHO,any} (or C{...,.test}) opens only
        127.0.0.1:ECHO to a remote client: another loopback port gets REP
        0x02, by literal and by name.  (Regression: the C{any} or the name
        pattern used to match and the rule "opened" loopback thanks to its
        other destination, a tunnel to every loopback port.)
        """
        _, port = await self.startEcho()
        other, otherPort = await self.startEcho()
        for rule in (f"allow to 127.0.0.1:{port},any", f"allow to 127.0.0.1:{port},.test"):
            server = await self.startServer(rules=PretendRemoteClient(ruleSet(rule)))
            await self.assertRelays(server, LOOPBACK4, port)
            await self.assertDenied(server, "target4.test", otherPort)
            await self.assertDenied(server, LOOPBACK4, otherPort)
        self.assertEqual(other.instances, [], "a remote client reached another loopback port")


class DestinationRuleTests(RulesTestCase):
    """Request rules on addresses, networks, ports and name patterns."""

    async def test_denyPort(self) -> None:
        """deny 127.0.0.1:PORT: that port gets REP 0x02 (logged with the rule), another port works."""
        denied, deniedPort = await self.startEcho()
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"deny to 127.0.0.1:{deniedPort}"))
        await self.assertDenied(server, LOOPBACK4, deniedPort)
        await self.assertDenied(server, "target4.test", deniedPort)
        await self.assertRelays(server, LOOPBACK4, port)
        self.assertEqual(denied.instances, [])
        lines = self.logged("Denied CONNECT")
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(f"Denied CONNECT 127.0.0.1:{deniedPort} for 127.0.0.1:", lines[0])
        self.assertTrue(lines[0].endswith(": rule rules:1"), lines[0])
        self.assertIn(f"target4.test:{deniedPort} (127.0.0.1)", lines[1])

    async def test_denyPortRangeAndNetwork(self) -> None:
        """deny to a network with a port range: the ports in the range are denied, others are not."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"deny to 127.0.0.0/8:{port}-{port + 1}"))
        await self.assertDenied(server, LOOPBACK4, port)
        server2 = await self.startServer(rules=ruleSet(f"deny to 127.0.0.0/8:{port + 1}-65535"))
        await self.assertRelays(server2, LOOPBACK4, port)

    async def test_denyNamePattern(self) -> None:
        """
        deny .blocked.test: the name and every name under it are denied
        before resolution (any case, with a trailing dot); ok.test and
        notblocked.test (which only end with the same letters) work.
        """
        echo, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("deny to .blocked.test"))
        for name in (b"www.blocked.test", b"blocked.test", b"deep.www.blocked.test", b"WWW.Blocked.TEST."):
            await self.assertDenied(server, "", 0, raw=rawNameRequest(name, port))
        self.assertEqual(server.resolver.lookups, [])
        self.assertEqual(server.outbound.attempts, [])
        self.assertEqual(echo.instances, [])
        await self.assertRelays(server, "ok.test", port)
        await self.assertRelays(server, "notblocked.test", port)
        self.assertEqual(server.resolver.lookups, ["ok.test", "notblocked.test"])

    async def test_subdomainsOnlyPattern(self) -> None:
        """deny *.blocked.test: names under it are denied, the name itself is not."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("deny to *.blocked.test"))
        await self.assertDenied(server, "www.blocked.test", port)
        await self.assertRelays(server, "blocked.test", port)

    async def test_exactNamePattern(self) -> None:
        """deny blocked.test: only that name, not the names under it."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"deny to blocked.test:{port}"))
        await self.assertDenied(server, "blocked.test", port)
        await self.assertRelays(server, "www.blocked.test", port)

    async def test_namePatternDoesNotMatchLiterals(self) -> None:
        """A name pattern never matches an IP literal: deny .test leaves 127.0.0.1 alone."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("deny to .test"))
        await self.assertDenied(server, "target4.test", port)
        await self.assertRelays(server, LOOPBACK4, port)

    async def test_oneOfTwoAddressesDenied(self) -> None:
        """
        mixed.test resolves to 127.0.0.2 then 127.0.0.1; with 127.0.0.2
        denied the connection goes to 127.0.0.1 (a trap listening on
        127.0.0.2, same port, sees nothing).
        """
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        echo, trap, port = await self.samePortTwice()
        server = await self.startServer(rules=ruleSet(f"deny to {OTHER_LOOPBACK4}"))
        await self.assertRelays(server, "mixed.test", port)
        self.assertEqual(trap.instances, [])
        self.assertEqual(len(echo.instances), 1)
        self.assertEqual(server.connecting.tcpAttempts, [(LOOPBACK4, port)])
        [line] = self.logged("Denied CONNECT")
        self.assertIn(f"mixed.test:{port} ({OTHER_LOOPBACK4})", line)

    async def test_oneOfTwoAddressesDeniedControl(self) -> None:
        """Without the rule, the same name does reach the trap on 127.0.0.2 first (the control case)."""
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        echo, trap, port = await self.samePortTwice()
        server = await self.startServer()
        sock, reply = await deferToThread(request, server.address, "mixed.test", port)
        sock.close()
        self.assertEqual(reply[0], 0)
        await waitFor(lambda: bool(trap.instances), what="the trap to be reached")
        self.assertEqual(server.connecting.tcpAttempts[0], (OTHER_LOOPBACK4, port))
        await trap.instances[0].done
        await self.settled(server)

    async def samePortTwice(self) -> tuple[TrackingFactory, TrackingFactory, int]:
        """An echo target on 127.0.0.1 and a silent trap on 127.0.0.2, on the same port."""
        trap = TrackingFactory(TrackedProtocol)
        for _ in range(20):
            echo, port = await self.startEcho()
            try:
                await listenTCP(self, trap, OTHER_LOOPBACK4, port)
            except error.CannotListenError:
                continue
            return echo, trap, port
        raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")

    async def test_everyAddressDenied(self) -> None:
        """A name all of whose addresses are denied: REP 0x02, each address logged, nothing connected."""
        server = await self.startServer(rules=ruleSet(f"deny to {OTHER_LOOPBACK4},127.0.0.3"))
        await self.assertDenied(server, "alldenied.test", 80)
        self.assertEqual(server.connecting.tcpAttempts, [])
        lines = self.logged("Denied CONNECT alldenied.test:80")
        self.assertEqual(len(lines), 2, lines)

    async def test_allowList(self) -> None:
        """
        allow only 127.0.0.1:ECHOPORT: that works (literal and a name that
        resolves to it); another port gets REP 0x02 (the default of a stage
        with an allow rule), and so does a name resolving elsewhere.
        """
        echo, port = await self.startEcho()
        other, otherPort = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"allow to 127.0.0.1:{port}"))
        await self.assertRelays(server, LOOPBACK4, port)
        await self.assertRelays(server, "target4.test", port)
        await self.assertDenied(server, LOOPBACK4, otherPort)
        await self.assertDenied(server, "target4.test", otherPort)
        self.assertEqual(other.instances, [])
        self.assertEqual(len(echo.instances), 2)
        self.assertIn("no request rule matched", self.logged("Denied CONNECT")[0])

    async def test_firstMatchWins(self) -> None:
        """allow 127.0.0.1:P then deny 127.0.0.0/8: P works, others are denied; the other order denies P."""
        _, port = await self.startEcho()
        _, otherPort = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"allow to 127.0.0.1:{port}", "deny to 127.0.0.0/8"))
        await self.assertRelays(server, LOOPBACK4, port)
        await self.assertDenied(server, LOOPBACK4, otherPort)
        reversed_ = await self.startServer(rules=ruleSet("deny to 127.0.0.0/8", f"allow to 127.0.0.1:{port}"))
        await self.assertDenied(reversed_, LOOPBACK4, port)

    async def test_logKeyword(self) -> None:
        """A rule with log: what it allows is logged as "Allowed CONNECT ...: rule rules:1"."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"allow to 127.0.0.1:{port} log"))
        await self.assertRelays(server, LOOPBACK4, port)
        [line] = self.logged("Allowed CONNECT")
        self.assertIn(f"127.0.0.1:{port}", line)
        self.assertTrue(line.endswith("rule rules:1"), line)

    async def test_commandRule(self) -> None:
        """deny command bind: BIND gets REP 0x02, CONNECT still works."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("deny command bind"))
        await self.assertDenied(server, LOOPBACK4, 0, command=BIND)
        await self.assertRelays(server, LOOPBACK4, port)

    async def test_perUserRules(self) -> None:
        """allow user alice, deny the rest: alice relays, bob gets REP 0x02 (logged with his name)."""
        _, port = await self.startEcho()
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            rules=ruleSet("allow user alice to any", "deny to any"),
        )
        await self.assertRelays(server, LOOPBACK4, port, credentials=CREDENTIALS["alice"])
        await self.assertDenied(server, LOOPBACK4, port, credentials=CREDENTIALS["bob"])
        [line] = self.logged("Denied CONNECT")
        self.assertIn("(user bob): rule rules:2", line)

    async def test_perUserRulesFileChecker(self) -> None:
        """Per-user rules with strcred's file: checker (which hands back bytes avatar IDs) too."""
        _, port = await self.startEcho()
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("alice:pw\nbob:pw\n")
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[strcred.makeChecker(f"file:{path}")],
            rules=ruleSet("deny user bob,carol", "allow user alice to 127.0.0.0/8"),
        )
        await self.assertRelays(server, LOOPBACK4, port, credentials=CREDENTIALS["alice"])
        await self.assertDenied(server, LOOPBACK4, port, credentials=CREDENTIALS["bob"])
        [line] = self.logged("Denied CONNECT")
        self.assertIn("(user bob): rule rules:1", line)

    async def test_requestRuleFromClients(self) -> None:
        """Request rules with from: allow from 127.0.0.2, deny the rest: only 127.0.0.2 relays."""
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("allow from 127.0.0.2 to any", "deny to any"))
        await self.assertRelays(server, LOOPBACK4, port, source=(OTHER_LOOPBACK4, 0))
        await self.assertDenied(server, LOOPBACK4, port)

    async def test_nameRuleAfterNetworkRuleBeforeResolution(self) -> None:
        """
        Name rules apply before resolution even after a network rule:
        with C{deny to 127.0.0.2} then C{deny to .blocked.test}, a CONNECT
        to www.blocked.test is denied whatever the name resolves to, so it
        is denied (REP 0x02) without being looked up.  (Regression: the
        first network rule used to leave the verdict open, and the blocked
        name was resolved first.)
        """
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet(f"deny to {OTHER_LOOPBACK4}", "deny to .blocked.test"))
        await self.assertDenied(server, "www.blocked.test", port)
        self.assertEqual(server.resolver.lookups, [], "the denied name was resolved")

    async def test_userRuleNeverMatchesAnonymous(self) -> None:
        """deny user alice does not deny a client that did not log in."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("deny user alice to any"))
        await self.assertRelays(server, LOOPBACK4, port)


class ClientAdmissionTests(RulesTestCase):
    """Client rules: decided at accept, before any byte of negotiation."""

    skip = SKIP_OTHER_LOOPBACK

    async def test_deniedClientClosedAtAccept(self) -> None:
        """
        deny clients from 127.0.0.2: a client from there is closed before
        the method selection (nothing is read back), and logged as refused;
        a client from 127.0.0.1 works.
        """
        _, port = await self.startEcho()
        server = await self.startServer(
            rules=RuleSet([Rule(False, "test", clients=(parseNetwork("127.0.0.2"),))])
        )
        got = await deferToThread(closedBeforeNegotiation, server.address, (OTHER_LOOPBACK4, 0))
        self.assertEqual(got, b"")
        await self.assertRelays(server, LOOPBACK4, port)
        [refused] = [text for _, _, text in self.lines if text.startswith("Refused 127.0.0.2:")]
        self.assertTrue(refused.endswith(": rule test"), refused)
        await self.settled(server)
        self.assertEqual(server.factory.counters.sessions, 1, "the refused client became a session")

    async def test_allowClientOnly(self) -> None:
        """allow only 127.0.0.2: 127.0.0.1 is refused at accept, 127.0.0.2 relays."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("client allow from 127.0.0.2"))
        self.assertEqual(await deferToThread(closedBeforeNegotiation, server.address), b"")
        await self.assertRelays(server, LOOPBACK4, port, source=(OTHER_LOOPBACK4, 0))

    async def test_firstClientRuleWins(self) -> None:
        """client deny 127.0.0.2 then client allow 127.0.0.0/8: 127.0.0.2 refused, 127.0.0.1 served."""
        _, port = await self.startEcho()
        server = await self.startServer(
            rules=ruleSet("client deny from 127.0.0.2", "client allow from 127.0.0.0/8")
        )
        got = await deferToThread(closedBeforeNegotiation, server.address, (OTHER_LOOPBACK4, 0))
        self.assertEqual(got, b"")
        await self.assertRelays(server, LOOPBACK4, port)

    async def test_clientRuleLog(self) -> None:
        """client allow ... log: an admitted client is logged as "Admitted 127.0.0.1: rule rules:1"."""
        _, port = await self.startEcho()
        server = await self.startServer(rules=ruleSet("client allow from 127.0.0.0/8 log"))
        await self.assertRelays(server, LOOPBACK4, port)
        self.assertEqual(self.logged("Admitted"), ["Admitted 127.0.0.1: rule rules:1"])


class ClientAdmissionIPv6Tests(RulesTestCase):
    """Client rules for a client on ::1."""

    @needsIPv6
    async def test_deniedIPv6Client(self) -> None:
        """client deny from ::1: a client on ::1 is closed at accept."""
        server = await self.startServer(host=LOOPBACK6, rules=ruleSet("client deny from ::1"))
        self.assertEqual(await deferToThread(closedBeforeNegotiation, server.address), b"")

    @needsIPv6
    async def test_allowedIPv6Client(self) -> None:
        """client allow from ::1 only: a client on ::1 relays, one on 127.0.0.1 is refused."""
        _, port = await self.startEcho()
        rules = ruleSet("client allow from [::1]")
        server = await self.startServer(host=LOOPBACK6, rules=rules)
        await self.assertRelays(server, LOOPBACK4, port)
        server4 = await self.startServer(rules=rules)
        self.assertEqual(await deferToThread(closedBeforeNegotiation, server4.address), b"")


class MappedClientTests(RulesTestCase):
    """
    A server on an IPv6 socket bound to ::ffff:127.0.0.1 sees IPv4 clients
    as IPv4-mapped addresses: client rules, the loopback exemption and the
    per-client limit take them as the IPv4 addresses they are.
    """

    async def startMappedServer(self, **factoryArgs: Any) -> RulesServer:
        try:
            return await self.startServer(host=f"::ffff:{LOOPBACK4}", **factoryArgs)
        except error.CannotListenError as e:
            self.skipTest(f"cannot listen on ::ffff:127.0.0.1: {e}")

    async def test_mappedClientRule(self) -> None:
        """client deny from 127.0.0.2 refuses ::ffff:127.0.0.2; ::ffff:127.0.0.1 reaches 127.0.0.1."""
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        _, port = await self.startEcho()
        server = await self.startMappedServer(rules=ruleSet("client deny from 127.0.0.2"))
        proxy = (LOOPBACK4, server.port)
        self.assertEqual(await deferToThread(closedBeforeNegotiation, proxy, (OTHER_LOOPBACK4, 0)), b"")
        reply, echoed = await deferToThread(relay, proxy, LOOPBACK4, port)
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        await self.assertDenied(server, METADATA, 80)

    async def test_mappedClientLimit(self) -> None:
        """maxConnectionsPerClient=1 counts ::ffff:127.0.0.1 once: the second connection is closed."""
        server = await self.startMappedServer(maxConnectionsPerClient=1)
        proxy = (LOOPBACK4, server.port)

        def client() -> bytes:
            with connectTo(proxy) as first:
                greet(first)
                return closedBeforeNegotiation(proxy)

        self.assertEqual(await deferToThread(client), b"")
        self.assertEqual(len([t for _, _, t in self.lines if t.startswith("Refused 127.0.0.1:")]), 1)


class UDPRuleTests(RulesTestCase):
    """Every datagram's destination is checked; denied ones are dropped and counted."""

    async def sessionEnded(self, count: int = 1) -> dict[str, Any]:
        """The C{count}-th session event, once logged."""
        await waitFor(lambda: len(self.sessions) >= count, 10.0, f"{count} session(s) to be logged")
        return self.sessions[count - 1]

    def droppedByRules(self) -> list[str]:
        """The relay's debug lines for datagrams the rules dropped."""
        return self.logged("dropped a datagram: denied by the rules", namespace="txsocks5.udp")

    async def test_deniedDestinationDropped(self) -> None:
        """
        deny 127.0.0.1:DENIED: the association is granted; datagrams to the
        allowed echo are answered, the two to the denied one never arrive;
        the session counts 2 dropped (reason: denied by the rules), and the
        denial is logged once (the verdict is kept for the association).
        """
        allowed, allowedPort = startUDPEcho(self)
        denied, deniedPort = startUDPEcho(self)
        server = await self.startServer(rules=ruleSet(f"deny to 127.0.0.1:{deniedPort}"))

        def client() -> tuple[Reply, bytes, bytes, Any]:
            with Association(server.address) as association:
                association.send(LOOPBACK4, deniedPort, b"never 1")
                first = association.roundTrip(LOOPBACK4, allowedPort, b"allowed 1")
                association.send(LOOPBACK4, deniedPort, b"never 2")
                second = association.roundTrip(LOOPBACK4, allowedPort, b"allowed 2")
                return association.reply, first.payload, second.payload, association.receive(timeout=0.3)

        reply, first, second, extra = await deferToThread(client)
        self.assertEqual(reply[0], 0)
        self.assertEqual((first, second, extra), (b"allowed 1", b"allowed 2", None))
        self.assertEqual(denied.received, [])
        self.assertEqual(allowed.payloads, [b"allowed 1", b"allowed 2"])
        event = await self.sessionEnded()
        self.assertEqual(
            (event["command"], event["outcome"], event["datagramsUp"], event["dropped"]),
            ("udp_associate", "succeeded", 2, 2),
        )
        self.assertEqual(len(self.droppedByRules()), 1)
        lines = self.logged("Denied UDP")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"127.0.0.1:{deniedPort}", lines[0])

    async def test_protectedDestinationsDropped(self) -> None:
        """
        With no rules, datagrams to 169.254.169.254 (literal, IPv4-mapped,
        and a name resolving to it) and to multicast are dropped by the
        rules, never handed to a socket (the test guard on the server's UDP
        sockets saw nothing); loopback is answered.
        """
        echo, port = startUDPEcho(self)
        server = await self.startServer()

        def client() -> tuple[bytes, Any]:
            with Association(server.address) as association:
                association.send(METADATA, 53, b"literal")
                association.send(f"::ffff:{METADATA}", 53, b"mapped")
                association.send("metadata.test", 53, b"name")
                association.send("224.0.0.251", 5353, b"multicast")
                association.send("0.0.0.0", port, b"unspecified")
                good = association.roundTrip(LOOPBACK4, port, b"loopback")
                return good.payload, association.receive(timeout=0.3)

        self.assertEqual(await deferToThread(client), (b"loopback", None))
        self.assertEqual(echo.payloads, [b"loopback"])
        self.assertEqual(server.resolver.lookups, ["metadata.test"])
        event = await self.sessionEnded()
        self.assertEqual((event["datagramsUp"], event["dropped"]), (1, 5))
        self.assertEqual(len(self.droppedByRules()), 1)
        # The IPv4-mapped form is the same destination as the literal: one verdict, one line.
        self.assertEqual(len(self.logged("Denied UDP")), 4)

    async def test_deniedNameNotResolved(self) -> None:
        """deny .blocked.test: a datagram for www.blocked.test is dropped before resolution."""
        echo, port = startUDPEcho(self)
        server = await self.startServer(rules=ruleSet("deny to .blocked.test"))

        def client() -> bytes:
            with Association(server.address) as association:
                association.send("www.blocked.test", port, b"blocked")
                return association.roundTrip("ok.test", port, b"ok").payload

        self.assertEqual(await deferToThread(client), b"ok")
        self.assertEqual(echo.payloads, [b"ok"])
        self.assertEqual(server.resolver.lookups, ["ok.test"])
        event = await self.sessionEnded()
        self.assertEqual(event["dropped"], 1)

    async def test_nameWithOneAddressDenied(self) -> None:
        """
        A datagram for mixed.test (127.0.0.2 then 127.0.0.1) with
        127.0.0.2 denied goes to 127.0.0.1; a UDP trap on 127.0.0.2, same
        port, gets nothing.
        """
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        for _ in range(20):
            echo, port = startUDPEcho(self)
            try:
                trap, _ = startUDPEcho(self, OTHER_LOOPBACK4, port)
            except error.CannotListenError:
                continue
            break
        else:
            raise AssertionError("no UDP port free on both 127.0.0.1 and 127.0.0.2")
        server = await self.startServer(rules=ruleSet(f"deny to {OTHER_LOOPBACK4}"))

        def client() -> Any:
            with Association(server.address) as association:
                return association.roundTrip("mixed.test", port, b"to the allowed address")

        answer = await deferToThread(client)
        self.assertEqual(
            (answer.host, answer.port, answer.payload), (LOOPBACK4, port, b"to the allowed address")
        )
        self.assertEqual(trap.received, [])
        self.assertEqual(echo.payloads, [b"to the allowed address"])
        event = await self.sessionEnded()
        self.assertEqual((event["datagramsUp"], event["dropped"]), (1, 0))

    async def test_allowListDecidesPerDatagram(self) -> None:
        """
        allow only 127.0.0.1:ECHO: the association is granted (its
        destinations are not known yet); the echo answers, another port
        gets nothing.
        """
        echo, port = startUDPEcho(self)
        other, otherPort = startUDPEcho(self)
        server = await self.startServer(rules=ruleSet(f"allow to 127.0.0.1:{port}"))

        def client() -> tuple[Reply, bytes]:
            with Association(server.address) as association:
                association.send(LOOPBACK4, otherPort, b"not allowed")
                return association.reply, association.roundTrip("target4.test", port, b"allowed").payload

        reply, answer = await deferToThread(client)
        self.assertEqual((reply[0], answer), (0, b"allowed"))
        self.assertEqual(other.received, [])
        event = await self.sessionEnded()
        self.assertEqual(event["dropped"], 1)

    async def test_udpCommandDenied(self) -> None:
        """deny command udp (no destination condition): UDP ASSOCIATE gets REP 0x02."""
        server = await self.startServer(rules=ruleSet("deny command udp"))
        await self.assertDenied(server, "0.0.0.0", 0, command=UDP_ASSOCIATE)
        [line] = self.logged("Denied UDP")
        self.assertIn("rule rules:1", line)

    async def test_udpForUserDenied(self) -> None:
        """deny user bob command udp: bob's association is refused with REP 0x02, alice's granted."""
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            rules=ruleSet("deny user bob command udp"),
        )
        await self.assertDenied(server, "0.0.0.0", 0, command=UDP_ASSOCIATE, credentials=CREDENTIALS["bob"])
        sock, reply = await deferToThread(associate, server.address, CREDENTIALS["alice"])
        sock.close()
        self.assertEqual(reply[0], 0)


class BindRuleTests(RulesTestCase):
    """BIND's DST.ADDR is checked like a destination; zeros mean any peer."""

    async def test_bindProtectedPeer(self) -> None:
        """BIND expecting a peer from 169.254.169.254 (literal or name): REP 0x02, nothing listens."""
        server = await self.startServer()
        await self.assertDenied(server, METADATA, 0, command=BIND)
        await self.assertDenied(server, "metadata.test", 0, command=BIND)
        self.assertEqual(len(self.logged("Denied BIND")), 2)

    async def test_bindAnyPeer(self) -> None:
        """BIND with DST.ADDR 0.0.0.0 (any peer) is not protected: both replies 0x00 and data flows."""
        server = await self.startServer()

        def run() -> tuple[Reply, Reply, bytes, bytes]:
            client, first = bindRequest(server.address, "0.0.0.0", 0)
            with client:
                if first[0] != 0:
                    return first, first, b"", b""
                with connectPeer((first[1], first[2])) as peer:
                    second = readReply(client)
                    client.sendall(b"to peer")
                    toPeer = recvExactly(peer, 7)
                    peer.sendall(b"to client")
                    return first, second, toPeer, recvExactly(client, 9)

        first, second, toPeer, toClient = await deferToThread(run)
        self.assertEqual(first[0], 0)
        self.assertEqual(first[1], LOOPBACK4)
        self.assertEqual(second[0], 0)
        self.assertEqual((toPeer, toClient), (b"to peer", b"to client"))

    async def test_bindPeerCheckedByRules(self) -> None:
        """
        BIND for any peer, with deny command bind to 127.0.0.2: a peer from
        127.0.0.2 is refused (and logged), the wait goes on, and a peer from
        127.0.0.1 becomes the tunnel's other end.
        """
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        server = await self.startServer(rules=ruleSet(f"deny command bind to {OTHER_LOOPBACK4}"))

        def run() -> tuple[Reply, bytes, Reply, bytes]:
            client, first = bindRequest(server.address, "0.0.0.0", 0)
            with client:
                listening = (first[1], first[2])
                with connectPeer(listening, (OTHER_LOOPBACK4, 0)) as refused:
                    refused.settimeout(5)
                    try:
                        fromRefused = refused.recv(1)
                    except ConnectionResetError:
                        fromRefused = b""
                with connectPeer(listening) as peer:
                    second = readReply(client)
                    peer.sendall(b"hello")
                    return first, fromRefused, second, recvExactly(client, 5)

        first, fromRefused, second, data = await deferToThread(run)
        self.assertEqual(first[0], 0)
        self.assertEqual(fromRefused, b"")
        self.assertEqual((second[0], second[1]), (0, LOOPBACK4))
        self.assertEqual(data, b"hello")
        [denied] = self.logged("Denied BIND")
        self.assertIn(OTHER_LOOPBACK4, denied)

    async def test_bindDeniedByDestinationRule(self) -> None:
        """deny command bind to 127.0.0.1: a BIND for a peer from 127.0.0.1 gets REP 0x02."""
        server = await self.startServer(rules=ruleSet("deny command bind to 127.0.0.1"))
        await self.assertDenied(server, LOOPBACK4, 0, command=BIND)


class LimitTests(RulesTestCase):
    """Per-client connections, per-user UDP associations, and the failed-login lockout."""

    async def test_maxConnectionsPerClient(self) -> None:
        """
        maxConnectionsPerClient=2: a third connection from 127.0.0.1 is
        closed before any reply while two are open; once one closes, a new
        one relays.
        """
        _, port = await self.startEcho()
        server = await self.startServer(maxConnectionsPerClient=2)

        def client() -> bytes:
            with connectTo(server.address) as first, connectTo(server.address) as second:
                greet(first)
                greet(second)
                third = closedBeforeNegotiation(server.address)
                first.sendall(encodeRequest(LOOPBACK4, port))
                assert readReply(first)[0] == 0
                first.sendall(PAYLOAD)
                assert recvExactly(first, len(PAYLOAD)) == PAYLOAD
                return third

        self.assertEqual(await deferToThread(client), b"")
        await self.settled(server)
        await self.assertRelays(server, LOOPBACK4, port)
        refused = [text for _, _, text in self.lines if text.startswith("Refused 127.0.0.1:")]
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("2 connections already open from this address", refused[0])

    async def test_maxConnectionsPerClientAfterOneCloses(self) -> None:
        """Two open, one closes: the next connection is served while the other is still open."""
        _, port = await self.startEcho()
        server = await self.startServer(maxConnectionsPerClient=2)
        first = await deferToThread(connectTo, server.address)
        try:
            second = await deferToThread(connectTo, server.address)
            await deferToThread(greet, first)
            await deferToThread(greet, second)
            second.close()
            await waitFor(lambda: server.factory.counters.active == 1, what="the second client to be gone")
            await self.assertRelays(server, LOOPBACK4, port)
        finally:
            first.close()

    async def test_maxConnectionsPerClientOtherAddress(self) -> None:
        """The limit is per address: with two open from 127.0.0.1, a client from 127.0.0.2 is served."""
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        _, port = await self.startEcho()
        server = await self.startServer(maxConnectionsPerClient=2)
        held = [await deferToThread(connectTo, server.address) for _ in range(2)]
        try:
            for sock in held:
                await deferToThread(greet, sock)
            self.assertEqual(await deferToThread(closedBeforeNegotiation, server.address), b"")
            await self.assertRelays(server, LOOPBACK4, port, source=(OTHER_LOOPBACK4, 0))
        finally:
            for sock in held:
                sock.close()

    async def test_maxUDPAssociationsPerUser(self) -> None:
        """
        maxUDPAssociationsPerUser=1: alice's second association gets REP
        0x01 while her first is open; bob's is granted; once alice's first
        closes she may open another.
        """
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            maxUDPAssociationsPerUser=1,
        )
        first, reply = await deferToThread(associate, server.address, CREDENTIALS["alice"])
        try:
            self.assertEqual(reply[0], 0)
            secondOfAlice = {"command": UDP_ASSOCIATE, "credentials": CREDENTIALS["alice"]}
            await self.assertDenied(server, "0.0.0.0", 0, (0x01, "0.0.0.0", 0), **secondOfAlice)
            bob, bobReply = await deferToThread(associate, server.address, CREDENTIALS["bob"])
            bob.close()
            self.assertEqual(bobReply[0], 0)
        finally:
            first.close()
        await self.settled(server)
        again, againReply = await deferToThread(associate, server.address, CREDENTIALS["alice"])
        again.close()
        self.assertEqual(againReply[0], 0)
        self.assertEqual(len(self.logged("UDP associations open for user alice")), 1)

    async def login(
        self, server: Server, credentials: tuple[bytes, bytes], source: tuple[str, int] | None = None
    ) -> bytes:
        """One login attempt: the RFC 1929 status the server answers (then it may close)."""

        def attempt() -> bytes:
            with connectTo(server.address, source=source) as sock:
                try:
                    greet(sock, credentials)
                except LoginRefused as e:
                    self.assertEqual(recvUntilClosed(sock), b"", "the server did not close after a refusal")
                    return e.status
                return b"\x01\x00"

        return await deferToThread(attempt)  # type: ignore[no-any-return]

    async def test_loginLockout(self) -> None:
        """
        maxLoginFailures=3: after three wrong passwords from 127.0.0.1 the
        right one is refused too (status not 0); from 127.0.0.2 the right
        one still works, and relays.
        """
        _, port = await self.startEcho()
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            maxLoginFailures=3,
            loginLockout=60,
        )
        wrong = (b"alice", b"wrong")
        for _ in range(3):
            self.assertEqual(await self.login(server, wrong), b"\x01\x01")
        status = await self.login(server, CREDENTIALS["alice"])
        self.assertEqual(status[:1], b"\x01")
        self.assertNotEqual(status[1:], b"\x00")
        warnings = [text for ns, _, text in self.lines if "Refusing logins from 127.0.0.1" in text]
        self.assertEqual(len(warnings), 1, warnings)
        if HAVE_OTHER_LOOPBACK4:
            self.assertEqual(
                await self.login(server, CREDENTIALS["alice"], (OTHER_LOOPBACK4, 0)), b"\x01\x00"
            )
            await self.assertRelays(
                server, LOOPBACK4, port, credentials=CREDENTIALS["alice"], source=(OTHER_LOOPBACK4, 0)
            )

    async def lockoutServer(self, maxLoginFailures: int = 2, loginLockout: float = 1.0) -> RulesServer:
        """A server with username/password logins and a short lockout."""
        return await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            maxLoginFailures=maxLoginFailures,
            loginLockout=loginLockout,
        )

    async def lockOut(self, server: Server) -> float:
        """Two wrong passwords (maxLoginFailures=2); when the lockout began (about)."""
        for _ in range(2):
            self.assertEqual(await self.login(server, (b"alice", b"wrong")), b"\x01\x01")
        locked = reactor.seconds()
        self.assertNotEqual(await self.login(server, CREDENTIALS["alice"]), b"\x01\x00", "not locked out")
        return locked  # type: ignore[no-any-return]

    async def test_lockoutEnds(self) -> None:
        """loginLockout=1: 1.3 s after the lockout began, the right password works again."""
        server = await self.lockoutServer()
        locked = await self.lockOut(server)
        await sleep(max(0.0, locked + 1.3 - reactor.seconds()))
        self.assertEqual(await self.login(server, CREDENTIALS["alice"]), b"\x01\x00")

    async def test_lockoutDoubles(self) -> None:
        """
        A second lockout of the same address (no success in between) lasts
        twice as long: logged as 2 s, still refused 1.3 s in, over after
        2.3 s.
        """
        server = await self.lockoutServer()
        locked = await self.lockOut(server)
        await sleep(max(0.0, locked + 1.3 - reactor.seconds()))
        locked = await self.lockOut(server)
        warnings = [t for _, _, t in self.lines if t.startswith("Refusing logins from 127.0.0.1")]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("for 1 s after 2 failed logins", warnings[0])
        self.assertIn("for 2 s after 2 failed logins", warnings[1])
        await sleep(max(0.0, locked + 1.3 - reactor.seconds()))
        self.assertNotEqual(await self.login(server, CREDENTIALS["alice"]), b"\x01\x00", "lockout not longer")
        await sleep(max(0.0, locked + 2.3 - reactor.seconds()))
        self.assertEqual(await self.login(server, CREDENTIALS["alice"]), b"\x01\x00")

    async def test_lockoutAppliesToConnectionsGreetedBefore(self) -> None:
        """
        The lockout applies when credentials arrive, not only at the
        greeting: with maxLoginFailures=3, three wrong passwords on three
        connections greeted beforehand start a lockout, and the right
        password on a fourth connection, also greeted beforehand, is refused
        (status not 0).  (Regression: the lockout used to be checked at the
        greeting only, so pre-greeted connections bypassed it.)
        """
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            maxLoginFailures=3,
            loginLockout=60,
        )

        def client() -> list[bytes]:
            socks = [connectTo(server.address) for _ in range(4)]
            try:
                for sock in socks:
                    sock.sendall(b"\x05\x01\x02")
                    assert recvExactly(sock, 2) == b"\x05\x02"
                statuses = []
                for i, sock in enumerate(socks):
                    sock.sendall(encodeAuth(*(CREDENTIALS["alice"] if i == 3 else (b"alice", b"wrong"))))
                    statuses.append(recvExactly(sock, 2))
                return statuses
            finally:
                for sock in socks:
                    sock.close()

        statuses = await deferToThread(client)
        self.assertEqual(statuses[:3], [b"\x01\x01"] * 3)
        self.assertTrue(
            [t for _, _, t in self.lines if "Refusing logins from 127.0.0.1" in t], "no lockout began"
        )
        self.assertNotEqual(
            statuses[3], b"\x01\x00", "a login after the lockout began was checked and accepted"
        )

    async def test_successResetsFailures(self) -> None:
        """maxLoginFailures=3: two failures, a success, two failures: not locked out."""
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()],
            checkers=[memoryChecker()],
            maxLoginFailures=3,
            loginLockout=60,
        )
        wrong = (b"alice", b"wrong")
        for _ in range(2):
            for _ in range(2):
                self.assertEqual(await self.login(server, wrong), b"\x01\x01")
            self.assertEqual(await self.login(server, CREDENTIALS["bob"]), b"\x01\x00")


class TwistdRuleTests(RulesTestCase):
    """The rule options and the rules file of a C{twistd socks5} child process."""

    async def twistd(self, *args: str) -> tuple[bytes, bytes, int]:
        """Run C{twistd -n socks5 ARGS} to completion (it must exit by itself)."""
        workdir = self.mktemp()
        Path(workdir).mkdir(parents=True)
        return await runProcess(twistdCommand("--pidfile=", "-n", "socks5", *args), timeout=30, path=workdir)

    def rulesFile(self, text: str) -> str:
        """A rules file with C{text}; its absolute path."""
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    async def test_perUserRulesFile(self) -> None:
        """
        --auth memory:alice:pw:bob:pw --rules FILE (allow user alice ... log,
        deny to any): alice relays (logged as allowed by FILE:2), bob gets
        REP 0x02 and twistd logs "Denied CONNECT ... (user bob): rule FILE:3".
        """
        rules = self.rulesFile("# who may go where\nallow user alice to any log\ndeny to any\n")
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", "--auth", "memory:alice:pw:bob:pw", "--rules", rules
        )
        port = await child.listening
        _, echoPort = await self.startEcho()
        proxy = (LOOPBACK4, port)
        reply, echoed = await deferToThread(
            relay, proxy, LOOPBACK4, echoPort, credentials=CREDENTIALS["alice"]
        )
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        reply, rest = await deferToThread(
            replyAndClose, proxy, LOOPBACK4, echoPort, credentials=CREDENTIALS["bob"]
        )
        self.assertEqual((reply, rest), (NOT_ALLOWED, b""))
        await waitFor(lambda: b"Denied CONNECT" in bytes(child.output), what="twistd to log the denial")
        output = bytes(child.output).decode("utf-8", "replace")
        [denied] = [line for line in output.splitlines() if "Denied CONNECT" in line]
        self.assertIn(f"127.0.0.1:{echoPort}", denied)
        self.assertIn("(user bob)", denied)
        self.assertTrue(denied.endswith(f"rule {rules}:3"), denied)
        [allowed] = [line for line in output.splitlines() if "Allowed CONNECT" in line]
        self.assertTrue(allowed.endswith(f"rule {rules}:2"), allowed)
        self.assertIn("(user alice)", allowed)
        self.assertNotIn("Traceback", output)

    async def test_readmeExample(self) -> None:
        """
        The README's example rules file (its comments, ", " lists and all)
        through twistd with --auth: admin relays but not to the metadata
        address; alice gets REP 0x02 for BIND (line 8) and for a port that
        is not 80 or 443 (line 11, "deny log").
        """
        rules = self.rulesFile(
            "# /etc/txsocks5.rules\n"
            "client allow from 127.0.0.1, ::1\n"
            "client allow from 192.168.0.0/16\n"
            "client deny from any log               # and log who was refused\n"
            "\n"
            "allow user admin                        # admin may go anywhere (not to protected ranges)\n"
            "deny to 10.0.0.0/8, 172.16.0.0/12 log   # nobody else reaches the office network\n"
            "deny command bind\n"
            "allow command connect to any:80, any:443\n"
            "allow command udp to any:53\n"
            "deny log\n"
        )
        child = await startTwistd(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--auth",
            "memory:admin:pw:alice:pw",
            "--rules",
            rules,
        )
        proxy = (LOOPBACK4, await child.listening)
        _, port = await self.startEcho()
        admin = (b"admin", b"pw")
        reply, echoed = await deferToThread(relay, proxy, LOOPBACK4, port, credentials=admin)
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        reply, _ = await deferToThread(replyAndClose, proxy, METADATA, 80, credentials=admin)
        self.assertEqual(reply, NOT_ALLOWED)
        alice = CREDENTIALS["alice"]
        reply, _ = await deferToThread(replyAndClose, proxy, LOOPBACK4, 0, command=BIND, credentials=alice)
        self.assertEqual(reply, NOT_ALLOWED)
        reply, _ = await deferToThread(replyAndClose, proxy, LOOPBACK4, port, credentials=alice)
        self.assertEqual(reply, NOT_ALLOWED)
        await waitFor(lambda: bytes(child.output).count(b"Denied ") >= 3, what="twistd to log the denials")
        output = bytes(child.output).decode("utf-8", "replace")
        self.assertIn(f"(user alice): rule {rules}:8", output)
        self.assertIn(f"(user alice): rule {rules}:11", output)

    async def test_denyDestinationOption(self) -> None:
        """--deny-destination 127.0.0.1:PORT: REP 0x02 for that port (logged with the option), others work."""
        _, deniedPort = await self.startEcho()
        _, port = await self.startEcho()
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", "--deny-destination", f"127.0.0.1:{deniedPort}"
        )
        proxy = (LOOPBACK4, await child.listening)
        reply, rest = await deferToThread(replyAndClose, proxy, LOOPBACK4, deniedPort)
        self.assertEqual((reply, rest), (NOT_ALLOWED, b""))
        reply, echoed = await deferToThread(relay, proxy, LOOPBACK4, port)
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        reply, rest = await deferToThread(replyAndClose, proxy, METADATA, 80)
        self.assertEqual((reply, rest), (NOT_ALLOWED, b""))
        await waitFor(lambda: bytes(child.output).count(b"Denied CONNECT") >= 2, what="twistd to log")
        self.assertIn(f"rule --deny-destination 127.0.0.1:{deniedPort}".encode(), bytes(child.output))

    async def test_optionsAndFileInCommandLineOrder(self) -> None:
        """--allow-destination 127.0.0.1:P before --rules (deny to any): P is allowed, another port is not."""
        _, port = await self.startEcho()
        _, otherPort = await self.startEcho()
        rules = self.rulesFile("deny to any\n")
        child = await startTwistd(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--allow-destination",
            f"127.0.0.1:{port}",
            "--rules",
            rules,
        )
        proxy = (LOOPBACK4, await child.listening)
        reply, echoed = await deferToThread(relay, proxy, LOOPBACK4, port)
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        reply, _ = await deferToThread(replyAndClose, proxy, LOOPBACK4, otherPort)
        self.assertEqual(reply, NOT_ALLOWED)

    async def test_denyClientOption(self) -> None:
        """--deny-client 127.0.0.2: a client from 127.0.0.2 is closed at accept; 127.0.0.1 relays."""
        if not HAVE_OTHER_LOOPBACK4:
            self.skipTest(SKIP_OTHER_LOOPBACK)
        _, port = await self.startEcho()
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", "--deny-client", OTHER_LOOPBACK4
        )
        proxy = (LOOPBACK4, await child.listening)
        self.assertEqual(await deferToThread(closedBeforeNegotiation, proxy, (OTHER_LOOPBACK4, 0)), b"")
        reply, echoed = await deferToThread(relay, proxy, LOOPBACK4, port)
        self.assertEqual((reply[0], echoed), (0, PAYLOAD))
        await waitFor(lambda: b"Refused 127.0.0.2:" in bytes(child.output), what="twistd to log the refusal")
        self.assertIn(f"rule --deny-client {OTHER_LOOPBACK4}".encode(), bytes(child.output))

    async def test_limitsOptions(self) -> None:
        """
        --max-connections-per-client 1 and --login-attempts 2: a second
        connection and the third login are refused.
        """
        child = await startTwistd(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--auth",
            "memory:alice:pw",
            "--max-connections-per-client",
            "1",
            "--login-attempts",
            "2",
            "--login-lockout",
            "60",
        )
        proxy = (LOOPBACK4, await child.listening)

        def held() -> bytes:
            with connectTo(proxy) as first:
                greet(first, CREDENTIALS["alice"])
                return closedBeforeNegotiation(proxy)

        self.assertEqual(await deferToThread(held), b"")

        def login(credentials: tuple[bytes, bytes]) -> bytes:
            # The one connection allowed is free again once the server has seen
            # the previous one close, which may take a moment: retry (bounded).
            for _ in range(50):
                with connectTo(proxy) as sock:
                    try:
                        greet(sock, credentials)
                    except LoginRefused as e:
                        return e.status
                    except (ConnectionResetError, BrokenPipeError, EOFError):
                        time.sleep(0.05)
                        continue
                    return b"\x01\x00"
            raise AssertionError("never admitted")

        for _ in range(2):
            self.assertEqual(await deferToThread(login, (b"alice", b"wrong")), b"\x01\x01")
        status = await deferToThread(login, CREDENTIALS["alice"])
        self.assertNotEqual(status, b"\x01\x00")

    async def test_hostBitsUsageError(self) -> None:
        """--deny-destination 10.1.0.0/8: a usage error about host bits, non-zero exit, no traceback."""
        out, err, code = await self.twistd("--deny-destination", "10.1.0.0/8")
        both = out + err
        self.assertNotEqual(code, 0, both)
        self.assertIn(b"host bits", both)
        self.assertIn(b"10.0.0.0/8", both)
        self.assertNotIn(b"Traceback", both)

    async def test_badRulesFileNamesLine(self) -> None:
        """A rules file with a bad third line: a usage error naming FILE:3, non-zero exit."""
        rules = self.rulesFile("# fine\nallow to 127.0.0.1\nallow from 10.0.0.0/33 to any\n")
        out, err, code = await self.twistd("--rules", rules)
        both = out + err
        self.assertNotEqual(code, 0, both)
        self.assertIn(f"{rules}:3".encode(), both)
        self.assertNotIn(b"Traceback", both)

    async def test_badRulesFileWord(self) -> None:
        """An unknown action word and a missing file are usage errors too."""
        rules = self.rulesFile("permit to any\n")
        out, err, code = await self.twistd("--rules", rules)
        self.assertNotEqual(code, 0)
        self.assertIn(f"{rules}:1".encode(), out + err)
        missing = str(Path(self.mktemp()).absolute())
        out, err, code = await self.twistd("--rules", missing)
        self.assertNotEqual(code, 0)
        self.assertIn(missing.encode(), out + err)
        self.assertNotIn(b"Traceback", out + err)


class CurlRuleTests(RulesTestCase):
    """curl sees a denial as "connection not allowed by ruleset" (its exit code 97, CURLE_PROXY)."""

    skip = SKIP_CURL

    async def test_socks5HostnameDeniedAndAllowed(self) -> None:
        """
        --socks5-hostname: a name the server resolves to 169.254.169.254 is
        refused (curl exits 97, nothing fetched, nothing connected); one
        resolving to 127.0.0.1 is fetched.
        """
        server = await self.startServer()
        port = await listenDualStack(self, httpSite())
        out, err, code = await runCurl("--socks5-hostname", server.url, f"http://metadata.test:{port}/")
        self.assertEqual((code, out), (97, b""), err)
        self.assertIn(b"(2)", err)  # curl 7.88 names the REP code
        self.assertEqual(server.connecting.tcpAttempts, [])
        out, err, code = await runCurl("--socks5-hostname", server.url, f"http://target4.test:{port}/")
        self.assertEqual((code, out), (0, BODY), err)

    async def test_socks5LiteralDenied(self) -> None:
        """--socks5 to http://169.254.169.254/: curl exits 97, the server asked its outbound for nothing."""
        server = await self.startServer()
        out, err, code = await runCurl("--socks5", server.url, f"http://{METADATA}/latest/meta-data/")
        self.assertEqual((code, out), (97, b""), err)
        self.assertEqual(server.outbound.attempts, [])

    async def test_denyDestinationThroughTwistd(self) -> None:
        """
        twistd with --deny-destination 127.0.0.1:PORT: curl --socks5 to
        that port exits 97; to an allowed port it fetches.
        """
        denied = await listenDualStack(self, httpSite())
        allowed = await listenDualStack(self, httpSite())
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", "--deny-destination", f"127.0.0.1:{denied}"
        )
        proxy = f"127.0.0.1:{await child.listening}"
        out, err, code = await runCurl("--socks5", proxy, f"http://127.0.0.1:{denied}/")
        self.assertEqual((code, out), (97, b""), err)
        out, err, code = await runCurl("--socks5", proxy, f"http://127.0.0.1:{allowed}/")
        self.assertEqual((code, out), (0, BODY), err)
