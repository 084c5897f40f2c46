"""
Clients behind a load balancer that speaks HAProxy's PROXY protocol (the
C{haproxy:} endpoint), over real loopback sockets: each client is admitted
and checked by the address its PROXY header names, not by the balancer's
(here 127.0.0.1), both for an embedded factory behind
L{ProxyProtocolEndpoint} and for C{twistd socks5 --port haproxy:...}.

The headers name addresses from the documentation ranges (192.0.2.0/24,
198.51.100.0/24); every byte still goes over loopback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    LOOPBACK4,
    SinkProtocol,
    connectTo,
    encodeRequest,
    reactor,
    readReply,
    recvExactly,
    recvUntilClosed,
    runProcess,
    startTarget,
    startTwistd,
    twistdCommand,
    waitFor,
)
from tests.test_rules_integration import PAYLOAD, RulesTestCase, ruleSet
from txsocks5 import proxyprotocol
from txsocks5.auth import NoAuthentication, UsernamePasswordAuthentication
from txsocks5.proxyprotocol import ProxyProtocolEndpoint, halfCloseAvailable
from txsocks5.rules import RuleSet
from txsocks5.server import SOCKS5Factory
from txsocks5.service import openProxyProblem

#: What every PROXY protocol v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

DENIED = "192.0.2.7"
ALLOWED = "198.51.100.9"


def proxyHeader(source: str, port: int = 5555) -> bytes:
    """A PROXY protocol v1 header for a client at C{source}:C{port}."""
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 1080\r\n".encode()


def proxyHeaderV2(source: str, port: int = 5555) -> bytes:
    """A PROXY protocol v2 (binary) header for a TCP client at C{source}:C{port} (IPv4 or IPv6)."""
    client = ipaddress.ip_address(source)
    server = ipaddress.ip_address("::1" if client.version == 6 else LOOPBACK4)
    family = 0x21 if client.version == 6 else 0x11  # TCP over IPv6 / IPv4.
    addresses = client.packed + server.packed + struct.pack("!HH", port, 1080)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


def methodAfterHeader(
    proxy: tuple[str, int], source: str, header: Callable[[str], bytes] = proxyHeader
) -> bytes:
    """
    Send a C{header} (v1 unless told) for C{source} and a greeting: the
    method selection, or nothing if the server closed first (a reset counts
    as a close: a refused connection is closed with the greeting unread).
    """
    with connectTo(proxy, 5.0) as sock:
        sock.sendall(header(source) + b"\x05\x01\x00")
        try:
            first = sock.recv(2)
        except ConnectionResetError:
            return b""
        return first if first else recvUntilClosed(sock)


def connectAfterHeader(proxy: tuple[str, int], source: str, port: int) -> tuple[int, bytes]:
    """A CONNECT to the echo target at C{port} from C{source}: its REP and what was echoed."""
    with connectTo(proxy, 5.0) as sock:
        sock.sendall(proxyHeader(source) + b"\x05\x01\x00")
        if recvExactly(sock, 2) != b"\x05\x00":
            raise AssertionError("no-authentication was not accepted")
        sock.sendall(encodeRequest(LOOPBACK4, port))
        rep = readReply(sock)[0]
        if rep != 0:
            return rep, b""
        sock.sendall(PAYLOAD)
        return rep, recvExactly(sock, len(PAYLOAD))


class ProxyProtocolTests(RulesTestCase):
    """An in-process factory listening through L{ProxyProtocolEndpoint}."""

    async def startProxied(self, **factoryArgs: Any) -> tuple[SOCKS5Factory, tuple[str, int]]:
        factory = SOCKS5Factory(**factoryArgs)
        self._socksFactories.append(factory)
        endpoint = ProxyProtocolEndpoint(serverFromString(reactor, f"tcp:0:interface={LOOPBACK4}"))
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return factory, (LOOPBACK4, port.getHost().port)

    async def test_clientRulesSeeTheHeader(self) -> None:
        """
        client deny from 192.0.2.7: a client whose header names it is closed
        before the method selection and logged as refused by its own
        address; one from 198.51.100.9 relays (loopback destinations
        allowed by a rule), and the session log names it.
        """
        _, echoPort = await self.startEcho()
        factory, proxy = await self.startProxied(
            rules=ruleSet(f"client deny from {DENIED}", f"allow to 127.0.0.1:{echoPort}")
        )
        self.assertEqual(await deferToThread(methodAfterHeader, proxy, DENIED), b"")
        self.assertEqual(await deferToThread(connectAfterHeader, proxy, ALLOWED, echoPort), (0, PAYLOAD))
        await self.settledFactory(factory)
        [refused] = [text for _, _, text in self.lines if text.startswith("Refused ")]
        self.assertTrue(refused.startswith(f"Refused {DENIED}:5555: "), refused)
        clients = sorted((s["client"], s["outcome"]) for s in self.sessions)
        self.assertEqual(clients, [(f"{DENIED}:5555", "client refused"), (f"{ALLOWED}:5555", "succeeded")])

    async def test_versionTwoHeaders(self) -> None:
        """
        Binary (v2) headers name the client too, IPv4 or IPv6: client deny
        from 192.0.2.7 and from 2001:db8::7 refuse those, and a client at
        2001:db8::9 is served (its session logged as [2001:db8::9]:5555).
        """
        factory, proxy = await self.startProxied(
            rules=ruleSet(f"client deny from {DENIED}", "client deny from 2001:db8::7")
        )
        got = [
            await deferToThread(methodAfterHeader, proxy, source, proxyHeaderV2)
            for source in (DENIED, "2001:db8::7", "2001:db8::9")
        ]
        self.assertEqual(got, [b"", b"", b"\x05\x00"])
        await self.settledFactory(factory)
        clients = sorted(s["client"] for s in self.sessions)
        self.assertEqual(clients, ["192.0.2.7:5555", "[2001:db8::7]:5555", "[2001:db8::9]:5555"])

    async def test_protectionsForRemoteClient(self) -> None:
        """
        With no rules, a client the header names as remote may not reach
        loopback destinations (REP 0x02), as if it had connected itself:
        the balancer's own loopback address gives it nothing.
        """
        _, echoPort = await self.startEcho()
        factory, proxy = await self.startProxied()
        self.assertEqual(await deferToThread(connectAfterHeader, proxy, ALLOWED, echoPort), (2, b""))
        await self.settledFactory(factory)

    async def test_perClientLimitCountsHeaderAddresses(self) -> None:
        """
        maxConnectionsPerClient=1: clients behind the same balancer with
        different header addresses are served side by side; a second one
        with the same address is closed.
        """
        factory, proxy = await self.startProxied(maxConnectionsPerClient=1)

        def clients() -> tuple[bytes, bytes, bytes]:
            with connectTo(proxy, 5.0) as first, connectTo(proxy, 5.0) as second:
                first.sendall(proxyHeader(ALLOWED) + b"\x05\x01\x00")
                second.sendall(proxyHeader(DENIED) + b"\x05\x01\x00")
                one, two = recvExactly(first, 2), recvExactly(second, 2)
                return one, two, methodAfterHeader(proxy, ALLOWED)

        self.assertEqual(await deferToThread(clients), (b"\x05\x00", b"\x05\x00", b""))
        await self.settledFactory(factory)

    async def test_maxConnections(self) -> None:
        """maxConnections=1: a second client is closed at once while the first is open."""
        factory, proxy = await self.startProxied(maxConnections=1)

        def clients() -> tuple[bytes, bytes]:
            with connectTo(proxy, 5.0) as first:
                first.sendall(proxyHeader(ALLOWED) + b"\x05\x01\x00")
                return recvExactly(first, 2), methodAfterHeader(proxy, DENIED)

        self.assertEqual(await deferToThread(clients), (b"\x05\x00", b""))
        await self.settledFactory(factory)
        refused = [text for _, _, text in self.lines if text.startswith("Refused ")]
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("1 connections already open", refused[0])

    async def test_halfClose(self) -> None:
        """
        A client's SHUT_WR reaches the target as a FIN, and what the target
        sends after it still reaches the client (Twisted's PROXY wrapper
        alone would close the tunnel at the client's FIN).
        """
        if not halfCloseAvailable():
            raise SkipTest("this Twisted's PROXY wrapper classes are not where txsocks5 looks")
        sink, port = await startTarget(self, SinkProtocol)
        factory, proxy = await self.startProxied(rules=ruleSet(f"allow to 127.0.0.1:{port}"))
        payload = random.Random(3).randbytes(256 * 1024)

        def client() -> bytes:
            with connectTo(proxy, 10.0) as sock:
                sock.sendall(proxyHeader(ALLOWED) + b"\x05\x01\x00")
                if recvExactly(sock, 2) != b"\x05\x00":
                    raise AssertionError("no-authentication was not accepted")
                sock.sendall(encodeRequest(LOOPBACK4, port))
                if readReply(sock)[0] != 0:
                    raise AssertionError("CONNECT failed")
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                return recvUntilClosed(sock)

        answer = await deferToThread(client)
        self.assertEqual(answer, b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode()))
        target = await sink.whenConnected(0)
        await target.done
        self.assertTrue(target.gotEOF)
        await self.settledFactory(factory)

    async def test_closedBeforeHeader(self) -> None:
        """A client that closes before its header leaves no count behind."""
        factory, proxy = await self.startProxied(maxConnectionsPerClient=1)

        def closeEarly() -> None:
            with connectTo(proxy, 5.0) as sock:
                sock.shutdown(socket.SHUT_WR)
                recvUntilClosed(sock)

        await deferToThread(closeEarly)
        await self.settledFactory(factory)
        self.assertEqual(factory._perClient, {})
        self.assertEqual(await deferToThread(methodAfterHeader, proxy, ALLOWED), b"\x05\x00")

    async def settledFactory(self, factory: SOCKS5Factory) -> None:
        await waitFor(lambda: factory.counters.active == 0, what="the sessions to end")


class PublicWrapperTests(ProxyProtocolTests):
    """
    The same through Twisted's public C{proxyEndpoint}, as when its wrapper
    classes cannot be found: everything but the half-close.
    """

    def setUp(self) -> None:
        super().setUp()
        self.patch(proxyprotocol, "HAProxyWrappingFactory", None)


class TwistdProxyProtocolTests(RulesTestCase):
    """C{twistd socks5 --port haproxy:...}."""

    async def test_denyClientBehindBalancer(self) -> None:
        """--deny-client 192.0.2.7 refuses the client its PROXY header names."""
        child = await startTwistd(
            self,
            "--port",
            f"haproxy:tcp:0:interface={LOOPBACK4}",
            "--deny-client",
            DENIED,
            "--allow-destination",
            "127.0.0.1",
        )
        port = await child.listening
        _, echoPort = await self.startEcho()
        proxy = (LOOPBACK4, port)
        self.assertEqual(await deferToThread(methodAfterHeader, proxy, DENIED), b"")
        self.assertEqual(await deferToThread(connectAfterHeader, proxy, ALLOWED, echoPort), (0, PAYLOAD))
        output = bytes(child.output).decode("utf-8", "replace")
        self.assertNotIn("Traceback", output)

    async def test_openProxyBehindBalancer(self) -> None:
        """
        Without authentication or client rules, a PROXY-protocol port is
        refused even on 127.0.0.1: its clients come from wherever the
        balancer takes them.
        """
        workdir = self.mktemp()
        Path(workdir).mkdir(parents=True)
        out, err, code = await runProcess(
            twistdCommand("--pidfile=", "-n", "socks5", "--port", f"haproxy:tcp:0:interface={LOOPBACK4}"),
            timeout=30,
            path=workdir,
        )
        self.assertNotEqual(code, 0)
        said = (out + err).decode("utf-8", "replace")
        self.assertIn("(behind a PROXY-protocol balancer) without authentication", said)
        self.assertNotIn("Traceback", said)


class OpenProxyProblemTests(SynchronousTestCase):
    """L{openProxyProblem} with ports behind a balancer."""

    def test_loopbackBehindBalancer(self) -> None:
        """A loopback port is an open proxy when a balancer feeds it, and not otherwise."""
        port = FakePort(LOOPBACK4)
        methods = [NoAuthentication()]
        self.assertIsNone(openProxyProblem(methods, RuleSet(), [port]))
        problem = openProxyProblem(methods, RuleSet(), [port], [port])
        self.assertIsNotNone(problem)
        self.assertIn(f"{LOOPBACK4}:1080 (behind a PROXY-protocol balancer)", problem or "")

    def test_clientRulesOrLogins(self) -> None:
        """Client rules, or logins required, say who may use it: no problem."""
        port = FakePort(LOOPBACK4)
        rules = ruleSet("client allow from 192.0.2.0/24")
        self.assertIsNone(openProxyProblem([NoAuthentication()], rules, [port], [port]))
        logins = [UsernamePasswordAuthentication()]
        self.assertIsNone(openProxyProblem(logins, RuleSet(), [port], [port]))


class FakePort:
    """A listening port that only says where it listens."""

    def __init__(self, host: str) -> None:
        self.address = IPv4Address("TCP", host, 1080)

    def getHost(self) -> IPv4Address:
        return self.address
