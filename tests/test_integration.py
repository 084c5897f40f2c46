"""
End-to-end tests over real loopback sockets: curl, python-socks and PySocks
clients, raw byte-level exchanges, bulk transfers, half-closes,
backpressure and timeouts, against an in-process L{SOCKS5Factory} or a
C{twistd socks5} child process.

Only 127.0.0.1 and ::1 are used, and names are resolved by a fake resolver
(see L{tests.support}), never by DNS.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import socks
from python_socks import ProxyError, ProxyType
from python_socks.sync import Proxy
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from tests.support import (
    CURL,
    LOOPBACK4,
    LOOPBACK6,
    SERVING_IPV6,
    SKIP_CURL,
    EchoProtocol,
    HalfCloseFirstProtocol,
    IntegrationTestCase,
    Server,
    SinkProtocol,
    SourceProtocol,
    connectTo,
    encodeAuth,
    encodeRequest,
    freePort,
    listenDualStack,
    needsIPv6,
    pattern,
    processExitedCleanly,
    pump,
    reactor,
    readReply,
    recvExactly,
    recvUntilClosed,
    runCurl,
    runProcess,
    sleep,
    socksConnect,
    startTarget,
    startTwistd,
    twistdCommand,
    vmRSS,
    waitFor,
)
from txsocks5 import relay, wire
from txsocks5._fastpath import FastEPollReactor
from txsocks5._leantcp import lendReadsTo
from txsocks5.auth import UsernamePasswordAuthentication

BODY = b"hello through txsocks5\n" * 50
CREDENTIALS = (b"alice", b"secret")
WRONG_CREDENTIALS = (b"alice", b"not-the-password")


def echoRoundTrip(sock: socket.socket, payload: bytes = b"ping through the tunnel") -> bytes:
    """Send C{payload} to an echo target and read it back."""
    sock.sendall(payload)
    return recvExactly(sock, len(payload))


def exchange(
    address: tuple[str, int],
    chunks: list[bytes],
    delay: float = 0.0,
    limit: int = 65536,
    timeout: float = 5.0,
) -> tuple[bytes, bool]:
    """
    Connect, send C{chunks} (pausing C{delay} between them), then read until
    the server closes; return what was read and whether the close was a
    reset (rather than a clean FIN).  Fails with C{socket.timeout} if the
    server does not close within C{timeout}.
    """
    with connectTo(address, timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            sock.sendall(chunk)
            if delay:
                time.sleep(delay)
        data = bytearray()
        for _ in range(limit):
            try:
                got = sock.recv(4096)
            except ConnectionResetError:
                return bytes(data), True
            if not got:
                return bytes(data), False
            data += got
        raise AssertionError(f"server sent more than {limit} bytes")


def memoryChecker() -> ICredentialsChecker:
    """strcred's C{memory:} checker with alice/secret."""
    return strcred.makeChecker("memory:alice:secret")  # type: ignore[no-any-return]


def fileChecker(testCase: IntegrationTestCase) -> ICredentialsChecker:
    """strcred's C{file:} checker (a FilePasswordDB) with alice/secret."""
    path = Path(testCase.mktemp())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("bob:hunter2\nalice:secret\n")
    return strcred.makeChecker(f"file:{path}")  # type: ignore[no-any-return]


async def startAuthServer(testCase: IntegrationTestCase, checker: ICredentialsChecker, **kw: Any) -> Server:
    """An in-process server that requires username/password."""
    return await testCase.startServer(
        authenticators=[UsernamePasswordAuthentication()], checkers=[checker], **kw
    )


def watchLog(testCase: IntegrationTestCase) -> dict[str, str]:
    """
    Watch the global log for the rest of the test: returns a dict, filled
    as it happens, of bad events (error level or above, carrying a
    failure, or not encodable as UTF-8 for a text log) by kind, with an
    example of each.
    """
    events: dict[str, str] = {}

    @implementer(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure") or event.get("failure")
        if (level is not None and level >= LogLevel.error) or failure is not None or event.get("isError"):
            kind = f"{level} {event.get('log_format')!r}"
            events.setdefault(kind, repr(failure.value if failure else event)[:300])
            return
        try:
            (formatEvent(event) or "").encode("utf-8")
        except UnicodeError:
            kind = f"not UTF-8-encodable: {event.get('log_format')!r}"
            events.setdefault(kind, ascii(formatEvent(event))[:300])

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def assertLogClean(testCase: IntegrationTestCase, events: dict[str, str]) -> None:
    """Fail, listing them, if L{watchLog} saw bad events."""
    # What trial's own UTF-8 log file choked on is reported here, once.
    testCase.flushLoggedErrors(UnicodeError)
    if events:
        listed = "\n".join(f"- {kind}\n    e.g. {example}" for kind, example in events.items())
        testCase.fail(f"bad log events:\n{listed}")


def httpSite() -> Site:
    """An HTTP server answering every GET with L{BODY}."""
    resource = Data(BODY, "text/plain")
    resource.isLeaf = True
    site = Site(resource)
    site.noisy = False
    return site


async def startEcho(testCase: IntegrationTestCase, host: str = LOOPBACK4) -> tuple[Any, int]:
    """An echo target on C{host}."""
    return await startTarget(testCase, EchoProtocol, host)


class CurlTests(IntegrationTestCase):
    """curl --socks5 / --socks5-hostname / --proxy-user through the in-process server."""

    skip = SKIP_CURL

    async def httpTarget(self) -> int:
        """A static HTTP resource on 127.0.0.1 and ::1, same port."""
        return await listenDualStack(self, httpSite())

    async def assertFetched(self, server: Server, option: str, url: str, *extra: str) -> None:
        out, err, code = await runCurl(option, server.url, *extra, url)
        self.assertEqual((code, out), (0, BODY), f"curl failed: {err!r}")

    async def test_socks5IPv4Literal(self) -> None:
        """--socks5 to http://127.0.0.1: the request carries ATYP IPv4."""
        server = await self.startServer()
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5", f"http://127.0.0.1:{port}/")
        self.assertEqual(server.outbound.attempts, [wire.Address(wire.AddressType.IPV4, LOOPBACK4, port)])

    async def test_socks5Localhost(self) -> None:
        """--socks5 to http://localhost: curl resolves it and sends an IP literal."""
        server = await self.startServer()
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5", f"http://localhost:{port}/")
        [attempt] = server.outbound.attempts
        self.assertIn(attempt.type, (wire.AddressType.IPV4, wire.AddressType.IPV6))
        self.assertEqual(server.resolver.lookups, [])

    @needsIPv6
    async def test_socks5IPv6(self) -> None:
        """A proxy on [::1] and a target at http://[::1]: ATYP IPv6."""
        server = await self.startServer(host=LOOPBACK6)
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5", f"http://[::1]:{port}/")
        self.assertEqual(server.outbound.attempts, [wire.Address(wire.AddressType.IPV6, LOOPBACK6, port)])

    async def test_socks5HostnameLocalhost(self) -> None:
        """--socks5-hostname localhost: the server resolves the name (fake resolver)."""
        server = await self.startServer()
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5-hostname", f"http://localhost:{port}/")
        self.assertEqual(server.outbound.attempts, [wire.Address(wire.AddressType.DOMAIN, "localhost", port)])
        self.assertEqual(server.resolver.lookups, ["localhost"])

    async def test_socks5HostnameIPv4Name(self) -> None:
        """--socks5-hostname with a name that resolves to 127.0.0.1 only."""
        server = await self.startServer()
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5-hostname", f"http://target4.test:{port}/")
        self.assertEqual(server.resolver.lookups, ["target4.test"])

    @needsIPv6
    async def test_socks5HostnameIPv6Name(self) -> None:
        """--socks5-hostname with a name that resolves to ::1 only."""
        server = await self.startServer()
        port = await self.httpTarget()
        await self.assertFetched(server, "--socks5-hostname", f"http://target6.test:{port}/")
        self.assertEqual(server.resolver.lookups, ["target6.test"])

    async def test_socks5HostnameUnknown(self) -> None:
        """A name the server cannot resolve: curl fails, nothing is fetched."""
        server = await self.startServer()
        port = await self.httpTarget()
        out, err, code = await runCurl("--socks5-hostname", server.url, f"http://nowhere.test:{port}/")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertEqual(server.resolver.lookups, ["nowhere.test"])

    async def test_proxyUserMemoryChecker(self) -> None:
        """--proxy-user against a strcred memory: checker: right password works."""
        server = await startAuthServer(self, memoryChecker())
        port = await self.httpTarget()
        await self.assertFetched(
            server, "--socks5", f"http://127.0.0.1:{port}/", "--proxy-user", "alice:secret"
        )

    async def test_proxyUserMemoryCheckerWrongPassword(self) -> None:
        """A wrong password against memory: is refused; curl fails."""
        server = await startAuthServer(self, memoryChecker())
        port = await self.httpTarget()
        out, err, code = await runCurl(
            "--socks5", server.url, "--proxy-user", "alice:wrong", f"http://127.0.0.1:{port}/"
        )
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertEqual(server.outbound.attempts, [])

    async def test_proxyUserFileChecker(self) -> None:
        """--proxy-user against a strcred file: checker (FilePasswordDB)."""
        server = await startAuthServer(self, fileChecker(self))
        port = await self.httpTarget()
        await self.assertFetched(
            server, "--socks5-hostname", f"http://target4.test:{port}/", "--proxy-user", "alice:secret"
        )

    async def test_proxyUserFileCheckerWrongPassword(self) -> None:
        """A wrong password against file: is refused; curl fails."""
        server = await startAuthServer(self, fileChecker(self))
        port = await self.httpTarget()
        out, err, code = await runCurl(
            "--socks5", server.url, "--proxy-user", "alice:wrong", f"http://127.0.0.1:{port}/"
        )
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertEqual(server.outbound.attempts, [])

    async def test_noCredentialsOffered(self) -> None:
        """curl without --proxy-user offers only no-auth: refused with 05 FF."""
        server = await startAuthServer(self, memoryChecker())
        port = await self.httpTarget()
        out, err, code = await runCurl("--socks5", server.url, f"http://127.0.0.1:{port}/")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")


class AuthenticationWireTests(IntegrationTestCase):
    """RFC 1929 over raw sockets: the exact bytes for a refused and an accepted login."""

    async def assertRefused(self, checker: ICredentialsChecker) -> None:
        server = await startAuthServer(self, checker)
        data, reset = await deferToThread(
            exchange, server.address, [b"\x05\x01\x02", encodeAuth(*WRONG_CREDENTIALS)]
        )
        self.assertEqual(data, b"\x05\x02\x01\x01")
        self.assertFalse(reset, "the server reset the connection instead of closing it")

    async def assertAccepted(self, checker: ICredentialsChecker) -> None:
        server = await startAuthServer(self, checker)
        _, port = await startEcho(self)

        def client() -> tuple[tuple[int, str, int], bytes]:
            sock, reply = socksConnect(server.address, LOOPBACK4, port, CREDENTIALS)
            with sock:
                return reply, echoRoundTrip(sock)

        reply, echoed = await deferToThread(client)
        self.assertEqual(reply[0], 0)
        self.assertEqual(echoed, b"ping through the tunnel")

    async def test_memoryWrongPassword(self) -> None:
        """memory: checker, wrong password: 05 02, then 01 01 and a clean close."""
        await self.assertRefused(memoryChecker())

    async def test_fileWrongPassword(self) -> None:
        """file: checker, wrong password: 05 02, then 01 01 and a clean close."""
        await self.assertRefused(fileChecker(self))

    async def test_unknownUser(self) -> None:
        """A user that is not in the file: 01 01."""
        server = await startAuthServer(self, fileChecker(self))
        data, _ = await deferToThread(exchange, server.address, [b"\x05\x01\x02", encodeAuth(b"eve", b"x")])
        self.assertEqual(data, b"\x05\x02\x01\x01")

    async def test_memoryRightPassword(self) -> None:
        """memory: checker, right password: a working tunnel."""
        await self.assertAccepted(memoryChecker())

    async def test_fileRightPassword(self) -> None:
        """file: checker, right password: a working tunnel."""
        await self.assertAccepted(fileChecker(self))


class ClientLibraryChecks:
    """
    CONNECT with each ATYP, with and without login, through a SOCKS client
    library; mixed into a test case per library, which gives L{roundTrip}.
    """

    #: What the library's client sends to the echo target and gets back.
    greeting: bytes
    #: What the library raises when the login is refused.
    loginError: type[Exception]
    #: The credentials checker of the login tests.
    makeChecker: Callable[[], ICredentialsChecker]
    #: C{roundTrip(server, host, port, credentials=None)}: connect through
    #: C{server} to an echo target; return its echo of L{greeting}.
    roundTrip: Callable[..., Awaitable[bytes]]

    async def check(self, host: str, credentials: tuple[str, str] | None = None) -> Server:
        testCase: Any = self
        if credentials:
            server = await startAuthServer(testCase, self.makeChecker())
        else:
            server = await testCase.startServer()
        _, port = await startEcho(testCase, LOOPBACK6 if host in (LOOPBACK6, "target6.test") else LOOPBACK4)
        testCase.assertEqual(await self.roundTrip(server, host, port, credentials), self.greeting)
        [attempt] = server.outbound.attempts
        testCase.assertEqual(attempt.host, host)
        return server

    async def test_noAuthIPv4(self) -> None:
        """No authentication, ATYP IPv4."""
        await self.check(LOOPBACK4)

    @needsIPv6
    async def test_noAuthIPv6(self) -> None:
        """No authentication, ATYP IPv6."""
        await self.check(LOOPBACK6)

    async def test_noAuthDomain(self) -> None:
        """No authentication, ATYP domain name (resolved by the server)."""
        server = await self.check("target4.test")
        testCase: Any = self
        testCase.assertEqual(server.resolver.lookups, ["target4.test"])

    async def test_loginIPv4(self) -> None:
        """Username/password, ATYP IPv4."""
        await self.check(LOOPBACK4, ("alice", "secret"))

    @needsIPv6
    async def test_loginIPv6(self) -> None:
        """Username/password, ATYP IPv6."""
        await self.check(LOOPBACK6, ("alice", "secret"))

    async def test_loginDomain(self) -> None:
        """Username/password, ATYP domain name."""
        await self.check("target4.test", ("alice", "secret"))

    @needsIPv6
    async def test_loginDomainIPv6(self) -> None:
        """Username/password, ATYP domain name resolving to ::1."""
        await self.check("target6.test", ("alice", "secret"))

    async def test_wrongPassword(self) -> None:
        """A wrong password makes the library raise its proxy error."""
        testCase: Any = self
        server = await startAuthServer(testCase, self.makeChecker())
        _, port = await startEcho(testCase)
        with testCase.assertRaises(self.loginError):
            await self.roundTrip(server, LOOPBACK4, port, ("alice", "wrong"))


class PythonSocksTests(ClientLibraryChecks, IntegrationTestCase):
    """python-socks (its sync Proxy, in a thread), with strcred's memory: checker."""

    greeting = b"python-socks says hi"
    loginError = ProxyError

    def makeChecker(self) -> ICredentialsChecker:
        return memoryChecker()

    async def roundTrip(
        self, server: Server, host: str, port: int, credentials: tuple[str, str] | None = None
    ) -> bytes:
        username, password = credentials if credentials else (None, None)
        proxy = Proxy(ProxyType.SOCKS5, server.host, server.port, username, password, rdns=True)

        def client() -> bytes:
            sock = proxy.connect(dest_host=host, dest_port=port, timeout=10)
            with sock:
                sock.settimeout(10)
                return echoRoundTrip(sock, self.greeting)

        return await deferToThread(client)  # type: ignore[no-any-return]

    async def test_refusedReply(self) -> None:
        """CONNECT to a closed port: python-socks reports REP 05."""
        server = await self.startServer()
        with self.assertRaises(ProxyError) as caught:
            await self.roundTrip(server, LOOPBACK4, freePort())
        self.assertEqual(caught.exception.error_code, 5)


class PySocksTests(ClientLibraryChecks, IntegrationTestCase):
    """PySocks (socks.socksocket, in a thread), with strcred's file: checker."""

    greeting = b"PySocks says hi"
    loginError = socks.ProxyError

    def makeChecker(self) -> ICredentialsChecker:
        return fileChecker(self)

    async def roundTrip(
        self, server: Server, host: str, port: int, credentials: tuple[str, str] | None = None
    ) -> bytes:
        username, password = credentials if credentials else (None, None)

        def client() -> bytes:
            with socks.socksocket(socket.AF_INET6 if ":" in server.host else socket.AF_INET) as sock:
                sock.set_proxy(
                    socks.SOCKS5, server.host, server.port, rdns=True, username=username, password=password
                )
                sock.settimeout(10)
                sock.connect((host, port))
                return echoRoundTrip(sock, self.greeting)

        return await deferToThread(client)  # type: ignore[no-any-return]


class RawProtocolTests(IntegrationTestCase):
    """Byte-level exchanges: segmentation, malformed input and every error reply."""

    async def test_pipelinedInOneSegment(self) -> None:
        """Greeting, request and data in one segment: the data reaches the target."""
        server = await self.startServer()
        echo, port = await startEcho(self)
        payload = b"data pipelined after the request" * 100

        def client() -> tuple[tuple[int, str, int], bytes]:
            with connectTo(server.address) as sock:
                sock.sendall(b"\x05\x01\x00" + encodeRequest(LOOPBACK4, port) + payload)
                self.assertEqual(recvExactly(sock, 2), b"\x05\x00")
                reply = readReply(sock)
                return reply, recvExactly(sock, len(payload))

        reply, echoed = await deferToThread(client)
        self.assertEqual(reply[0], 0)
        self.assertEqual(echoed, payload)

    async def test_pipelinedWithLogin(self) -> None:
        """Greeting, login, request and data in one segment, across the checker's Deferred."""
        server = await startAuthServer(self, fileChecker(self))
        _, port = await startEcho(self)
        payload = b"pipelined past the login"

        def client() -> bytes:
            with connectTo(server.address) as sock:
                sock.sendall(
                    b"\x05\x01\x02" + encodeAuth(*CREDENTIALS) + encodeRequest("target4.test", port) + payload
                )
                self.assertEqual(recvExactly(sock, 4), b"\x05\x02\x01\x00")
                self.assertEqual(readReply(sock)[0], 0)
                return recvExactly(sock, len(payload))

        self.assertEqual(await deferToThread(client), payload)

    async def test_oneByteAtATime(self) -> None:
        """Every byte of the negotiation in its own segment."""
        server = await startAuthServer(self, memoryChecker())
        _, port = await startEcho(self)
        negotiation = b"\x05\x02\x00\x02" + encodeAuth(*CREDENTIALS) + encodeRequest(LOOPBACK4, port)

        def client() -> tuple[bytes, tuple[int, str, int], bytes]:
            with connectTo(server.address) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(negotiation)):
                    sock.sendall(negotiation[i : i + 1])
                    time.sleep(0.002)
                answers = recvExactly(sock, 4)
                reply = readReply(sock)
                for byte in b"tiny":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.002)
                return answers, reply, recvExactly(sock, 4)

        answers, reply, echoed = await deferToThread(client)
        self.assertEqual(answers, b"\x05\x02\x01\x00")
        self.assertEqual(reply[0], 0)
        self.assertEqual(echoed, b"tiny")

    async def test_oneByteAtATimeDomain(self) -> None:
        """A domain-name request split into single bytes."""
        server = await self.startServer()
        _, port = await startEcho(self)
        negotiation = b"\x05\x01\x00" + encodeRequest("target4.test", port)

        def client() -> tuple[int, str, int]:
            with connectTo(server.address) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(negotiation)):
                    sock.sendall(negotiation[i : i + 1])
                    time.sleep(0.002)
                self.assertEqual(recvExactly(sock, 2), b"\x05\x00")
                reply = readReply(sock)
                self.assertEqual(echoRoundTrip(sock), b"ping through the tunnel")
                return reply

        self.assertEqual((await deferToThread(client))[0], 0)

    async def test_wrongGreetingVersion(self) -> None:
        """A greeting with VER 4: closed cleanly, no reply at all."""
        server = await self.startServer()
        data, reset = await deferToThread(exchange, server.address, [b"\x04\x01\x00"])
        self.assertEqual(data, b"")
        self.assertFalse(reset)

    async def test_noMethods(self) -> None:
        """NMETHODS = 0: 05 FF, then close."""
        server = await self.startServer()
        data, reset = await deferToThread(exchange, server.address, [b"\x05\x00"])
        self.assertEqual(data, b"\x05\xff")
        self.assertFalse(reset)

    async def test_noAcceptableMethod(self) -> None:
        """Only GSSAPI and username/password offered to a no-auth server: 05 FF."""
        server = await self.startServer()
        data, _ = await deferToThread(exchange, server.address, [b"\x05\x02\x01\x02"])
        self.assertEqual(data, b"\x05\xff")

    async def test_noAcceptableMethodWithAuth(self) -> None:
        """Only no-auth offered to a server that requires a login: 05 FF."""
        server = await startAuthServer(self, memoryChecker())
        data, _ = await deferToThread(exchange, server.address, [b"\x05\x01\x00"])
        self.assertEqual(data, b"\x05\xff")

    async def assertReplyThenClose(self, request: bytes, rep: int) -> None:
        server = await self.startServer()
        data, reset = await deferToThread(exchange, server.address, [b"\x05\x01\x00" + request])
        self.assertEqual(data[:2], b"\x05\x00")
        self.assertEqual(data[2:4], bytes([5, rep]), f"whole answer: {data!r}")
        self.assertEqual(len(data), 2 + 10, f"whole answer: {data!r}")  # VER REP RSV ATYP=1 4+2
        self.assertFalse(reset)
        self.assertEqual(server.outbound.attempts, [])

    async def test_unknownCommand(self) -> None:
        """CMD 0x09: 05 07, then close."""
        await self.assertReplyThenClose(encodeRequest(LOOPBACK4, 80, command=9), 7)

    async def test_unknownAddressType(self) -> None:
        """ATYP 0x05: 05 08, then close."""
        await self.assertReplyThenClose(b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x50", 8)

    async def test_wrongRequestVersion(self) -> None:
        """A request with VER 4: 05 01 (general failure), then close."""
        await self.assertReplyThenClose(b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", 1)

    async def test_connectionRefused(self) -> None:
        """CONNECT to a closed loopback port: 05 05."""
        server = await self.startServer()
        port = freePort()

        def client() -> tuple[int, str, int]:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                self.assertEqual(recvUntilClosed(sock), b"")
            return reply

        self.assertEqual((await deferToThread(client))[0], 5)

    async def test_unresolvableName(self) -> None:
        """A name the resolver does not know: 05 04."""
        server = await self.startServer()

        def client() -> tuple[int, str, int]:
            sock, reply = socksConnect(server.address, "nowhere.test", 80)
            with sock:
                self.assertEqual(recvUntilClosed(sock), b"")
            return reply

        self.assertEqual((await deferToThread(client))[0], 4)
        self.assertEqual(server.resolver.lookups, ["nowhere.test"])

    async def assertBoundAddress(self, serverHost: str, targetHost: str, requestHost: str) -> None:
        server = await self.startServer(host=serverHost)
        echo, port = await startEcho(self, targetHost)

        def client() -> tuple[int, str, int]:
            sock, reply = socksConnect(server.address, requestHost, port)
            with sock:
                echoRoundTrip(sock)
            return reply

        rep, host, boundPort = await deferToThread(client)
        target = await echo.whenConnected(0)
        self.assertEqual(rep, 0)
        self.assertEqual((host, boundPort), (target.peer.host, target.peer.port))

    async def test_boundAddressIPv4(self) -> None:
        """BND.ADDR/BND.PORT are the outbound socket's address, as the target saw it."""
        await self.assertBoundAddress(LOOPBACK4, LOOPBACK4, LOOPBACK4)

    @needsIPv6
    async def test_boundAddressIPv6(self) -> None:
        """The same over IPv6: BND.ADDR is ::1 with the real outbound port."""
        await self.assertBoundAddress(LOOPBACK4, LOOPBACK6, LOOPBACK6)

    @needsIPv6
    async def test_boundAddressIPv6Name(self) -> None:
        """The same for a name resolved to ::1, through a server on ::1."""
        await self.assertBoundAddress(LOOPBACK6, LOOPBACK6, "target6.test")

    async def test_garbageIsNeverAnError(self) -> None:
        """
        Hundreds of malformed inputs at every stage: each connection ends,
        and nothing is logged at error level or with a failure.
        """
        events = watchLog(self)
        plain = await self.startServer(negotiateTimeout=2.0)
        login = await startAuthServer(self, memoryChecker(), negotiateTimeout=2.0)
        rng = random.Random(1928)

        def blob(n: int) -> bytes:
            return rng.randbytes(rng.randrange(n))

        def notIn(*values: int) -> int:
            while True:
                b = rng.randrange(256)
                if b not in values:
                    return b

        cases: list[tuple[tuple[str, int], bytes]] = []
        for _ in range(60):  # bad greeting version
            cases.append((plain.address, bytes([notIn(5)]) + blob(200)))
        for _ in range(20):  # truncated greetings
            cases.append((plain.address, b"\x05" + bytes([rng.randrange(1, 255)]) + blob(3)))
        greet = b"\x05\x01\x00"
        for _ in range(40):  # bad request version
            cases.append((plain.address, greet + bytes([notIn(5)]) + blob(100)))
        for _ in range(40):  # commands other than CONNECT
            cases.append((plain.address, greet + b"\x05" + bytes([notIn(1), rng.randrange(256)]) + blob(40)))
        for _ in range(40):  # unknown address types
            cases.append((plain.address, greet + b"\x05\x01\x00" + bytes([notIn(1, 3, 4)]) + blob(40)))
        for _ in range(40):  # CONNECT to garbage names (the fake resolver knows none of them)
            name = rng.randbytes(rng.randrange(0, 256))
            port = rng.randrange(65536).to_bytes(2, "big")
            cases.append((plain.address, greet + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port))
        for _ in range(20):  # truncated requests
            cases.append((plain.address, greet + b"\x05\x01\x00\x03\x20" + blob(20)))
        for _ in range(30):  # garbage login
            cases.append((login.address, b"\x05\x01\x02" + bytes([notIn(1)]) + blob(60)))
        for _ in range(30):  # well-formed but wrong logins, and truncated ones
            cases.append((login.address, b"\x05\x01\x02\x01" + blob(60)))

        def client() -> list[bytes]:
            answers = []
            for address, data in cases:
                with connectTo(address, 5.0) as sock:
                    try:
                        sock.sendall(data)
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass  # the server may already have closed
                    answers.append(recvUntilClosed(sock, 4096))
            return answers

        answers = await deferToThread(client)
        self.assertEqual(len(answers), len(cases))
        for answer in answers:
            self.assertLessEqual(len(answer), 2 + 2 + 10)
        for attempt in plain.outbound.attempts + login.outbound.attempts:
            self.assertEqual(attempt.type, wire.AddressType.DOMAIN)
        await waitFor(
            lambda: plain.factory.counters.active == 0 and login.factory.counters.active == 0,
            what="every session to end",
        )
        assertLogClean(self, events)


class BulkTransferTests(IntegrationTestCase):
    """64 MiB each way through one tunnel at the same time, checked with SHA-256 at both ends."""

    size = 64 * 1024 * 1024

    async def test_bothWaysAtOnce(self) -> None:
        """The client streams 64 MiB to an echo target while reading it back."""
        server = await self.startServer()
        echo, port = await startEcho(self)
        size = self.size

        def client() -> tuple[str, str, int]:
            data = random.Random(1929).randbytes(size)
            sentHash = hashlib.sha256(data).hexdigest()
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                assert reply[0] == 0, reply
                sock.settimeout(30)
                receivedHash, count = pump(sock, data)
                return sentHash, receivedHash, count

        started = time.monotonic()
        sentHash, receivedHash, count = await deferToThread(client)
        target = await echo.whenConnected(0)
        await target.done
        self.assertEqual(count, size)
        self.assertEqual(target.received, size)
        self.assertEqual(target.hash.hexdigest(), sentHash)
        self.assertEqual(receivedHash, sentHash)
        await waitFor(lambda: server.factory.counters.sessions == 1, what="the session to be recorded")
        counters = server.factory.counters
        self.assertEqual((counters.bytesUp, counters.bytesDown), (size, size))
        self.assertLess(time.monotonic() - started, 40)


class SocketOptionTests(IntegrationTestCase):
    """
    A tunnel does not hold small writes back (TCP_NODELAY on both of its
    sockets) and notices vanished peers (SO_KEEPALIVE).
    """

    async def test_bothSides(self) -> None:
        """Once the tunnel is up, the server's client and target sockets have both options set."""
        server = await self.startServer()
        _, port = await startEcho(self)
        sock, reply = await deferToThread(socksConnect, server.address, LOOPBACK4, port)
        self.addCleanup(sock.close)
        self.assertEqual(reply[0], 0)
        self.assertEqual(await deferToThread(echoRoundTrip, sock), b"ping through the tunnel")
        tunnel = [
            r
            for r in reactor.getReaders()
            if type(getattr(r, "protocol", None)).__name__ in ("SOCKS5ServerProtocol", "TargetProtocol")
        ]
        self.assertEqual(len(tunnel), 2)
        for transport in tunnel:
            handle = transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1, transport)
            self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1, transport)


class LentReadTests(IntegrationTestCase):
    """A bulk tunnel between two lean connections reads into the shared buffer."""

    async def test_bulkTunnelLends(self) -> None:
        """
        Once each side of a tunnel is bulk (8 MiB each way), it lends its
        reads if both transports are lean (the fast reactor's); with
        Twisted's own transports, neither does.  The data arrives intact.
        """
        lent: list[bool] = []

        def recordingLendReadsTo(reader: object, writer: object) -> bool:
            lent.append(lendReadsTo(reader, writer))
            return lent[-1]

        self.patch(relay, "lendReadsTo", recordingLendReadsTo)
        server = await self.startServer()
        _, port = await startEcho(self)
        data = random.Random(1928).randbytes(8 * 1024 * 1024)

        def client() -> tuple[str, int]:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                assert reply[0] == 0, reply
                sock.settimeout(30)
                return pump(sock, data)

        self.assertEqual(await deferToThread(client), (hashlib.sha256(data).hexdigest(), len(data)))
        self.assertEqual(lent, [isinstance(reactor, FastEPollReactor)] * 2)


class HalfCloseTests(IntegrationTestCase):
    """A FIN from either side is passed on as a half-close; the other direction keeps going."""

    async def test_clientHalfClosesFirst(self) -> None:
        """After the client's SHUT_WR it still receives what the target sends."""
        server = await self.startServer()
        sink, port = await startTarget(self, SinkProtocol)
        payload = random.Random(1).randbytes(1 << 20)

        def client() -> bytes:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                assert reply[0] == 0, reply
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                return recvUntilClosed(sock)

        answer = await deferToThread(client)
        expected = b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        self.assertEqual(answer, expected)
        target = await sink.whenConnected(0)
        await target.done
        self.assertTrue(target.gotEOF)

    async def test_targetHalfClosesFirst(self) -> None:
        """After the target's FIN reaches the client, the client's data still reaches the target."""
        server = await self.startServer()
        greeting = b"target says hello and half-closes\n"
        halfCloser, port = await startTarget(self, lambda: HalfCloseFirstProtocol(greeting))
        payload = random.Random(2).randbytes(256 * 1024)

        def client() -> bytes:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                assert reply[0] == 0, reply
                got = bytearray()
                for _ in range(1000):  # read up to the target's FIN
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                self.assertEqual(recvUntilClosed(sock), b"")
                return bytes(got)

        self.assertEqual(await deferToThread(client), greeting)
        target = await halfCloser.whenConnected(0)
        await target.done
        self.assertTrue(target.gotEOF)
        self.assertEqual(len(target.received), len(payload))
        self.assertEqual(bytes(target.received), payload)


class ReferenceCycleTests(IntegrationTestCase):
    """
    A finished session is freed by reference counting alone: nothing of
    txsocks5's waits for the garbage collector (whose passes cost every
    connection time, and memory while the garbage waits).
    """

    async def test_connectSessions(self) -> None:
        """Tunnels that ran, and a CONNECT that was refused, leave no cycles."""
        server = await self.startServer()
        _, port = await startEcho(self)
        closedPort = freePort()

        def clients() -> list[int]:
            replies = []
            for _ in range(3):
                sock, reply = socksConnect(server.address, LOOPBACK4, port)
                with sock:
                    self.assertEqual(echoRoundTrip(sock), b"ping through the tunnel")
                replies.append(reply[0])
            sock, reply = socksConnect(server.address, LOOPBACK4, closedPort)
            with sock:
                recvUntilClosed(sock)
            replies.append(reply[0])
            return replies

        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.assertEqual(await deferToThread(clients), [0, 0, 0, 5])
        for _ in range(500):
            if server.factory.counters.sessions == 4 and not server.factory.counters.active:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(server.factory.counters.sessions, 4)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            # Only cycles through txsocks5's objects: Twisted's own tcp.Client
            # and its connector refer to each other (and so keep the factory
            # they share until a collection).
            ours = sorted(
                {
                    type(o).__qualname__
                    for o in gc.garbage
                    if type(o).__module__.startswith("txsocks5") and _inCycle(o, gc.garbage)
                }
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        self.assertEqual(ours, [])


def _inCycle(start: object, garbage: list[Any]) -> bool:
    """Whether C{start} can reach itself through references among C{garbage}."""
    among = {id(o) for o in garbage}
    seen: set[int] = set()
    stack = list(gc.get_referents(start))
    for _ in range(100_000):
        if not stack:
            return False
        o = stack.pop()
        if o is start:
            return True
        if id(o) in among and id(o) not in seen:
            seen.add(id(o))
            stack.extend(gc.get_referents(o))
    return True  # Too tangled to tell: count it.


class EarlyEndTests(IntegrationTestCase):
    """Connections that end at awkward moments: right after the request, right after connecting."""

    async def test_pipelinedThenFIN(self) -> None:
        """
        Greeting, request, data and the client's FIN all arrive before the
        outbound connection exists: the data and the FIN still reach the
        target, and the target's answer reaches the client.
        """
        server = await self.startServer()
        sink, port = await startTarget(self, SinkProtocol)
        payload = b"sent with the request, then FIN" * 1000

        def client() -> bytes:
            with connectTo(server.address) as sock:
                sock.sendall(b"\x05\x01\x00" + encodeRequest("target4.test", port) + payload)
                sock.shutdown(socket.SHUT_WR)
                self.assertEqual(recvExactly(sock, 2), b"\x05\x00")
                self.assertEqual(readReply(sock)[0], 0)
                return recvUntilClosed(sock)

        answer = await deferToThread(client)
        self.assertEqual(answer, b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode()))

    async def test_targetSendsAndClosesAtOnce(self) -> None:
        """
        A target that sends 200 KB and closes as soon as it is connected
        (possibly before the reply is even written): the client gets the
        reply, then all 200 KB, then EOF.
        """
        server = await self.startServer()
        size = 200 * 1000
        _, port = await startTarget(self, lambda: SourceProtocol(size))

        def client() -> tuple[int, bytes]:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                return reply[0], recvUntilClosed(sock, 2 * size)

        rep, data = await deferToThread(client)
        self.assertEqual(rep, 0)
        self.assertEqual(len(data), size)
        self.assertEqual(data[: SourceProtocol.chunk], pattern(SourceProtocol.chunk, seed=7)[:size])

    async def test_clientResetMidTransfer(self) -> None:
        """
        A client that resets its connection (SO_LINGER 0) in the middle of a
        download: the target's connection is closed too, nothing is logged
        as an error.
        """
        events = watchLog(self)
        server = await self.startServer()
        source, port = await startTarget(self, lambda: SourceProtocol(256 * 1024 * 1024))

        def client() -> None:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                self.assertEqual(reply[0], 0)
                recvExactly(sock, 1024 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        await deferToThread(client)
        target = await source.whenConnected(0)
        await target.done.addTimeout(10, reactor)
        self.assertLess(target.sent, 256 * 1024 * 1024)
        await waitFor(lambda: server.factory.counters.active == 0, what="the session to end")
        assertLogClean(self, events)


class TimeoutTests(IntegrationTestCase):
    """Negotiation and idle timeouts and the connection limit, with short values over real sockets."""

    async def timeToClose(self, server: Server, send: bytes, expect: bytes) -> float:
        def client() -> float:
            with connectTo(server.address, 5.0) as sock:
                started = time.monotonic()
                if send:
                    sock.sendall(send)
                self.assertEqual(recvUntilClosed(sock), expect)
                return time.monotonic() - started

        return await deferToThread(client)  # type: ignore[no-any-return]

    async def test_negotiationTimeoutSilentClient(self) -> None:
        """A client that sends nothing is cut after negotiateTimeout."""
        server = await self.startServer(negotiateTimeout=0.5)
        elapsed = await self.timeToClose(server, b"", b"")
        self.assertGreater(elapsed, 0.3)
        self.assertLess(elapsed, 3.0)

    async def test_negotiationTimeoutAfterGreeting(self) -> None:
        """A client that stops after its greeting is cut too."""
        server = await self.startServer(negotiateTimeout=0.5)
        elapsed = await self.timeToClose(server, b"\x05\x01\x00", b"\x05\x00")
        self.assertLess(elapsed, 3.0)

    async def test_idleTimeout(self) -> None:
        """An open tunnel that carries nothing is closed after about idleTimeout."""
        server = await self.startServer(idleTimeout=0.5)
        echo, port = await startEcho(self)

        def client() -> float:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                assert reply[0] == 0, reply
                echoRoundTrip(sock)
                started = time.monotonic()
                self.assertEqual(recvUntilClosed(sock), b"")
                return time.monotonic() - started

        elapsed = await deferToThread(client)
        self.assertLess(elapsed, 3.0)
        target = await echo.whenConnected(0)
        await target.done

    async def test_idleTimeoutSparesBusyTunnel(self) -> None:
        """A tunnel with a little traffic every 0.2 s outlives a 0.5 s idle timeout."""
        server = await self.startServer(idleTimeout=0.5)
        _, port = await startEcho(self)

        def client() -> int:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                rounds = 0
                for i in range(8):
                    self.assertEqual(echoRoundTrip(sock, b"%d" % i), b"%d" % i)
                    rounds += 1
                    time.sleep(0.2)
                return rounds

        self.assertEqual(await deferToThread(client), 8)

    async def test_maxConnections(self) -> None:
        """With maxConnections=1 a second client is closed before any negotiation."""
        server = await self.startServer(maxConnections=1)
        _, port = await startEcho(self)

        def client() -> None:
            with connectTo(server.address) as first:
                first.sendall(b"\x05\x01\x00")
                self.assertEqual(recvExactly(first, 2), b"\x05\x00")
                with connectTo(server.address, 5.0) as second:
                    with contextlib.suppress(OSError):  # It may be closed already.
                        second.sendall(b"\x05\x01\x00")
                    self.assertEqual(recvUntilClosed(second), b"")
                first.sendall(encodeRequest(LOOPBACK4, port))
                self.assertEqual(readReply(first)[0], 0)
                self.assertEqual(echoRoundTrip(first), b"ping through the tunnel")

        await deferToThread(client)
        await waitFor(lambda: server.factory.counters.active == 0, what="the first client to be gone")

        def third() -> bytes:
            sock, reply = socksConnect(server.address, LOOPBACK4, port)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(third), b"ping through the tunnel")


class TwistdTests(IntegrationTestCase):
    """The twistd plugin as a real child process: help, option errors, serving, shutdown, memory."""

    async def twistd(self, *args: str) -> tuple[bytes, bytes, int]:
        """Run twistd to completion (it must exit by itself)."""
        workdir = self.mktemp()
        Path(workdir).mkdir(parents=True)
        return await runProcess(twistdCommand(*args), timeout=30, path=workdir)

    async def echoThrough(self, proxy: tuple[str, int]) -> int:
        """
        Pass one echo round trip through a CONNECT tunnel from C{proxy} to a
        new echo server (by IPv4 address); return the echo server's port.
        """
        _, port = await startEcho(self)

        def client() -> bytes:
            sock, _ = socksConnect(proxy, LOOPBACK4, port)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), b"ping through the tunnel")
        return port

    async def test_helpListsSocks5(self) -> None:
        """twistd --help lists the socks5 command."""
        out, err, code = await self.twistd("--help")
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"(?m)^\s+socks5\s+A SOCKS5 proxy")

    async def test_socks5Help(self) -> None:
        """twistd socks5 --help documents the options."""
        out, err, code = await self.twistd("socks5", "--help")
        self.assertEqual(code, 0, err)
        for option in (b"--port", b"--auth", b"--max-connections", b"--connect-timeout"):
            self.assertIn(option, out)

    async def test_badOptions(self) -> None:
        """Each bad option: non-zero exit, a usage error naming the problem, no traceback."""
        cases = [
            (["--max-connections=-1"], b"-1"),
            (["--port", "nonsense:xx"], b"nonsense"),
            (["--method", "bogus"], b"bogus"),
            (["--connect-timeout=0"], b"more than 0"),
            (["--idle-timeout=-5"], b"-5"),
            (["--method", "username"], b"--auth"),
        ]
        for args, mention in cases:
            out, err, code = await self.twistd("--pidfile=", "-n", "socks5", *args)
            both = out + err
            self.assertNotEqual(code, 0, f"{args}: {both!r}")
            self.assertNotIn(b"Traceback", both, f"{args}")
            lastLine = both.strip().splitlines()[-1]
            self.assertIn(mention.lower(), lastLine.lower(), f"{args}: last line {lastLine!r}")

    async def test_portInUse(self) -> None:
        """A port already in use: non-zero exit with one line saying so, no traceback."""
        with socket.socket() as holder:
            holder.bind((LOOPBACK4, 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            out, err, code = await self.twistd(
                "--pidfile=", "-n", "socks5", "--port", f"tcp:{port}:interface=127.0.0.1"
            )
        both = out + err
        self.assertNotEqual(code, 0, both)
        self.assertNotIn(b"Traceback", both)
        lines = [line for line in both.splitlines() if b"in use" in line and b"txsocks5:" in line]
        self.assertEqual(len(lines), 1, both)

    @needsIPv6
    async def test_listenIPv6(self) -> None:
        """--port tcp6:0:interface=\\:\\:1 serves on ::1 (escaped as endpoints want)."""
        child = await startTwistd(self, "--port", "tcp6:0:interface=\\:\\:1", serving=SERVING_IPV6)
        await self.echoThrough((LOOPBACK6, await child.listening))

    async def test_noSessionLog(self) -> None:
        """--no-session-log: tunnels work, and no session line is logged."""
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", "--no-session-log")
        await self.echoThrough((LOOPBACK4, await child.listening))
        await sleep(0.3)  # Time for a session line, if one were coming.
        self.assertNotIn(b"session ", bytes(child.output))

    async def test_sessionLogBatchedUntilShutdown(self) -> None:
        """
        --session-log-delay: a finished session waits to be logged (here
        longer than the test), and is logged when SIGTERM stops twistd,
        stamped with the time it ended.
        """
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", "--session-log-delay", "3600")
        port = await self.echoThrough((LOOPBACK4, await child.listening))
        ended = time.time()
        await sleep(0.3)
        self.assertNotIn(b"session succeeded", bytes(child.output))
        await sleep(2.5)  # A line stamped when it was written would be 2.8 s late.
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        [reason] = await child.ended.addTimeout(15, reactor)
        self.assertTrue(processExitedCleanly(reason), f"{reason!r}\n{bytes(child.output).decode()}")
        output = bytes(child.output).decode()
        [line] = [line for line in output.splitlines() if "session succeeded" in line]
        self.assertIn(f"destination=127.0.0.1:{port}", line)
        stamp = line.split(" [", 1)[0]
        logged = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
        self.assertLess(abs(logged - ended), 1.5, f"stamped {stamp}, ended at {ended}")
        self.assertLess(output.index("session succeeded"), output.index("Server Shut Down."))

    async def test_curlThroughTwistdThenSIGTERM(self) -> None:
        """curl through a twistd child; then SIGTERM makes it exit."""
        if CURL is None:
            raise SkipTest("curl is not installed")
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1")
        port = await child.listening
        targetPort = await listenDualStack(self, httpSite())
        out, err, code = await runCurl("--socks5", f"127.0.0.1:{port}", f"http://127.0.0.1:{targetPort}/")
        self.assertEqual((code, out), (0, BODY), err)
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        [reason] = await child.ended.addTimeout(15, reactor)
        self.assertTrue(processExitedCleanly(reason), f"{reason!r}\n{bytes(child.output).decode()}")
        self.assertNotIn(b"Traceback", bytes(child.output))
        self.assertIn(b"Server Shut Down.", bytes(child.output))

    async def test_undecodableNameInLogs(self) -> None:
        """
        A request naming a destination that is not UTF-8 (it cannot be a
        host name, so nothing is resolved) is answered, and its session is logged in
        twistd's --logfile like any other (no line lost to a
        UnicodeEncodeError, no observer disabled).
        """
        logFile = str(Path(self.mktemp()).absolute())
        Path(logFile).parent.mkdir(parents=True, exist_ok=True)
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", logFile=logFile)
        port = await child.listening
        _, targetPort = await startEcho(self)
        name = b"\xff\xfe-not-utf8.test"
        request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x50"
        data, _ = await deferToThread(exchange, (LOOPBACK4, port), [b"\x05\x01\x00" + request])
        self.assertEqual(data[:4], b"\x05\x00\x05\x04")

        def client() -> bytes:
            sock, reply = socksConnect((LOOPBACK4, port), LOOPBACK4, targetPort)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), b"ping through the tunnel")
        await waitFor(
            lambda: f"destination=127.0.0.1:{targetPort}".encode() in Path(logFile).read_bytes(),
            what="the second session to be logged",
        )
        log = Path(logFile).read_bytes() + bytes(child.output)
        self.assertNotIn(b"Traceback", log)
        self.assertNotIn(b"UnicodeEncodeError", log)
        self.assertNotIn(b"Temporarily disabling observer", log)
        self.assertIn(b"-not-utf8.test:80", log, "the session with the undecodable name was not logged")

    async def test_backpressure(self) -> None:
        """
        A client that never reads while the target pushes up to 256 MiB:
        the target is held back and the server's RSS grows by less than
        16 MiB.
        """
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1")
        port = await child.listening
        assert child.pid is not None
        size = 256 * 1024 * 1024
        source, targetPort = await startTarget(self, lambda: SourceProtocol(size, waitForTrigger=True))
        sock, reply = await deferToThread(socksConnect, (LOOPBACK4, port), LOOPBACK4, targetPort)
        try:
            self.assertEqual(reply[0], 0)
            target = await source.whenConnected(0)
            await sleep(0.2)
            before = vmRSS(child.pid)
            await deferToThread(sock.sendall, b"go")
            await waitFor(lambda: target.started, what="the target to start pushing")
            # Wait until the target is stalled (nothing more sent for 1 s) or done.
            last, stalledSince = -1, time.monotonic()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and target.sent < size:
                if target.sent != last:
                    last, stalledSince = target.sent, time.monotonic()
                elif time.monotonic() - stalledSince > 1.0:
                    break
                await sleep(0.05)
            after = vmRSS(child.pid)
            growth = after - before
            self.assertLess(
                growth,
                16 * 1024 * 1024,
                f"server RSS grew by {growth / 2**20:.1f} MiB; target pushed {target.sent / 2**20:.1f} MiB",
            )
            self.assertLess(target.sent, size, "the target was never held back")
        finally:
            sock.close()
        await target.done


def selfSignedPEM(path: Path) -> None:
    """Write a private key and a self-signed certificate for localhost to C{path}."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )


class TLSListenerTests(IntegrationTestCase):
    """C{--port ssl:...}: SOCKS5 inside TLS, as the README shows it."""

    async def test_connectOverTLS(self) -> None:
        """A TLS client negotiates SOCKS5 and relays through twistd's ssl: port."""
        import ssl

        pem = Path(self.mktemp()).resolve()
        pem.parent.mkdir(parents=True, exist_ok=True)
        selfSignedPEM(pem)
        child = await startTwistd(self, "--port", f"ssl:0:interface=127.0.0.1:privateKey={pem}")
        proxy = (LOOPBACK4, await child.listening)
        _, port = await startEcho(self)

        def client() -> tuple[bytes, bytes]:
            context = ssl.create_default_context(cafile=str(pem))
            context.check_hostname = False
            with context.wrap_socket(connectTo(proxy)) as sock:
                sock.sendall(b"\x05\x01\x00")
                method = recvExactly(sock, 2)
                sock.sendall(encodeRequest(LOOPBACK4, port))
                assert readReply(sock)[0] == 0
                return method, echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), (b"\x05\x00", b"ping through the tunnel"))
        await waitFor(lambda: b"session succeeded" in child.output, what="the session line")
