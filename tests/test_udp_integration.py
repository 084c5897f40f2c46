"""
End-to-end tests of UDP ASSOCIATE over real loopback sockets: raw SOCKS5
UDP datagrams from blocking sockets (in threads), PySocks, Dante's
C{socksify}, and a C{twistd socks5} child process, against UDP echo servers
on 127.0.0.1 and ::1.

Only 127.0.0.1, 127.0.0.2 (a second loopback address, for "another host")
and ::1 are ever sent to (the dual-stack tests listen on C{::}, but only
loopback clients connect); names are resolved by the fake resolver of
L{tests.support}, never by DNS, and the in-process server's UDP sockets
refuse to send anywhere but to loopback addresses.  Every blocking socket
has a timeout and every loop is bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import re
import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import socks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.support import (
    HAVE_IPV6,
    LOOPBACK4,
    LOOPBACK6,
    SERVING_IPV6,
    SKIP_IPV6,
    SOCKET_TIMEOUT,
    IntegrationTestCase,
    Server,
    canBind,
    childEnvironment,
    connectTo,
    encodeAddress,
    encodeRequest,
    needsIPv6,
    pattern,
    reactor,
    readReply,
    recvExactly,
    runProcess,
    startTwistd,
    waitFor,
    watchSessions,
)
from tests.test_integration import assertLogClean, watchLog

#: A second loopback address: a "different host" that is still this one.
LOOPBACK4_OTHER = "127.0.0.2"

#: Largest payload an IPv4 SOCKS5 UDP datagram with an IPv4 header (10
#: bytes) can carry: 65,535 - 20 (IP) - 8 (UDP) - 10.
MAX_IPV4_PAYLOAD = 65507 - 10

SOCKSIFY = shutil.which("socksify")
SOCAT = shutil.which("socat")


def _skipDualStack() -> str | None:
    """Why a listener on C{::} cannot take IPv4 clients here, or C{None} if it can."""
    if not HAVE_IPV6:
        return SKIP_IPV6
    try:
        v6only = Path("/proc/sys/net/ipv6/bindv6only").read_text().strip()
    except OSError:
        return None
    return "IPv6 sockets are IPv6-only here (net.ipv6.bindv6only=1)" if v6only != "0" else None


SKIP_DUAL_STACK = _skipDualStack()


def _skipLocalhost() -> str | None:
    """
    Why the system resolver might ask DNS for C{localhost} here, or C{None}
    if it answers from /etc/hosts (a C{localhost} line, and C{files} before
    C{dns} in /etc/nsswitch.conf).
    """
    try:
        hosts = Path("/etc/hosts").read_text()
        nsswitch = Path("/etc/nsswitch.conf").read_text()
    except OSError as e:
        return f"cannot read the resolver configuration: {e}"
    if not re.search(r"(?m)^\s*(127\.0\.0\.1|::1)\s+(.*\s)?localhost(\s|$)", hosts):
        return "/etc/hosts has no localhost line"
    sources = re.search(r"(?m)^hosts:\s*(.*)$", nsswitch)
    order = sources.group(1).split() if sources else []
    if "files" not in order or ("dns" in order and order.index("dns") < order.index("files")):
        return "the system resolver may ask DNS before /etc/hosts"
    return None


SKIP_LOCALHOST = _skipLocalhost()
SKIP_OTHER_LOOPBACK = (
    None if canBind(LOOPBACK4_OTHER, socket.SOCK_DGRAM) else f"cannot bind {LOOPBACK4_OTHER}"
)


# -- UDP echo servers (in the reactor) --------------------------------------


class UDPEcho(DatagramProtocol):
    """
    Sends every datagram back to where it came from.

    @ivar received: C{(datagram, (host, port))} for every datagram, in order.
    """

    noisy = False

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, (addr[0], addr[1])))
        self.transport.write(datagram, addr)  # type: ignore[union-attr]

    @property
    def payloads(self) -> list[bytes]:
        """What was received, without the sources."""
        return [datagram for datagram, _ in self.received]


class UDPResponder(UDPEcho):
    """Answers every datagram with C{answer} instead of an echo."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, (addr[0], addr[1])))
        self.transport.write(self.answer, addr)  # type: ignore[union-attr]


def startUDPEcho(
    testCase: IntegrationTestCase, host: str = LOOPBACK4, port: int = 0, echo: UDPEcho | None = None
) -> tuple[UDPEcho, int]:
    """
    A UDP echo server (or C{echo}) on C{host} (port 0: any free port),
    closed when the test ends; its protocol and port number.
    """
    echo = echo if echo is not None else UDPEcho()
    listening = reactor.listenUDP(port, echo, interface=host, maxPacketSize=65536)
    testCase.addCleanup(listening.stopListening)
    return echo, listening.getHost().port


# -- a blocking SOCKS5 UDP client (run it in threads) -----------------------


class Datagram(NamedTuple):
    """A datagram the relay sent the client, split by an independent parser."""

    fragment: int
    atyp: int
    host: str
    port: int
    payload: bytes
    source: tuple[str, int]


def udpHeader(host: str, port: int, fragment: int = 0) -> bytes:
    """The RFC 1928 UDP request header: RSV, FRAG, ATYP, DST.ADDR, DST.PORT."""
    return b"\x00\x00" + bytes([fragment]) + encodeAddress(host, port)


def parseDatagram(data: bytes, source: tuple[str, int]) -> Datagram:
    """Split a datagram from the relay into its header fields and payload."""
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(f"bad UDP header {data[:24]!r}")
    atyp = data[3]
    if atyp == 1:
        host, end = str(ipaddress.IPv4Address(data[4:8])), 8
    elif atyp == 4:
        host, end = str(ipaddress.IPv6Address(data[4:20])), 20
    elif atyp == 3:
        end = 5 + data[4]
        host = data[5:end].decode("ascii", "replace")
    else:
        raise ValueError(f"bad ATYP {atyp} in {data[:24]!r}")
    if len(data) < end + 2:
        raise ValueError(f"truncated UDP header {data!r}")
    (port,) = struct.unpack("!H", data[end : end + 2])
    return Datagram(data[2], atyp, host, port, data[end + 2 :], source)


def udpSocket(host: str = LOOPBACK4) -> socket.socket:
    """A UDP socket bound on C{host} (any port), with a timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(SOCKET_TIMEOUT)
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def socksAssociate(
    proxy: tuple[str, int], host: str = "0.0.0.0", port: int = 0
) -> tuple[socket.socket, tuple[int, str, int]]:
    """
    Open the TCP control connection to C{proxy} and ask for UDP ASSOCIATE
    with DST.ADDR/DST.PORT C{host}:C{port}; return the socket and the reply.
    """
    sock = connectTo(proxy)
    try:
        sock.sendall(b"\x05\x01\x00")
        if recvExactly(sock, 2) != b"\x05\x00":
            raise ValueError("no-authentication was not accepted")
        sock.sendall(encodeRequest(host, port, command=3))
        return sock, readReply(sock)
    except BaseException:
        sock.close()
        raise


class Association:
    """
    One UDP association seen from a blocking client: the TCP control
    connection, a UDP socket on C{udpHost}, and where the relay said it is.

    @param request: DST.ADDR and DST.PORT of the request; with
        C{announcePort}, DST.PORT is the UDP socket's own port.
    @param relayHost: where to send datagrams instead of the reply's
        BND.ADDR (for a server that advertises another address).
    @ivar reply: C{(REP, BND.ADDR, BND.PORT)}.
    @ivar relay: where datagrams are sent.
    """

    def __init__(
        self,
        proxy: tuple[str, int],
        udpHost: str = LOOPBACK4,
        request: tuple[str, int] = ("0.0.0.0", 0),
        announcePort: bool = False,
        relayHost: str | None = None,
    ) -> None:
        self.udp = udpSocket(udpHost)
        if announcePort:
            request = (request[0], self.udp.getsockname()[1])
        try:
            self.tcp, self.reply = socksAssociate(proxy, *request)
        except BaseException:
            self.udp.close()
            raise
        _, host, port = self.reply
        self.relay = (relayHost or host, port)

    def __enter__(self) -> Association:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the control connection and the UDP socket."""
        self.tcp.close()
        self.udp.close()

    def send(
        self, host: str, port: int, payload: bytes, fragment: int = 0, sock: socket.socket | None = None
    ) -> None:
        """Send C{payload} for C{host}:C{port} to the relay (from C{sock}, or our UDP socket)."""
        (sock or self.udp).sendto(udpHeader(host, port, fragment) + payload, self.relay)

    def receive(self, timeout: float = SOCKET_TIMEOUT, sock: socket.socket | None = None) -> Datagram | None:
        """The next datagram on C{sock} (or our UDP socket), or C{None} after C{timeout}."""
        sock = sock or self.udp
        sock.settimeout(timeout)
        try:
            data, source = sock.recvfrom(70000)
        except TimeoutError:
            return None
        return parseDatagram(data, (source[0], source[1]))

    def roundTrip(self, host: str, port: int, payload: bytes, timeout: float = 5.0) -> Datagram:
        """Send C{payload} to an echo server at C{host}:C{port} and return the answer."""
        self.send(host, port, payload)
        answer = self.receive(timeout)
        if answer is None:
            raise AssertionError(f"no answer from {host}:{port} through {self.relay} in {timeout}s")
        return answer

    def controlOpen(self) -> bool:
        """Whether the server has not closed the control connection (without blocking)."""
        timeout = self.tcp.gettimeout()
        self.tcp.setblocking(False)  # with a timeout, recv would wait for data first
        try:
            data = self.tcp.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        finally:
            self.tcp.settimeout(timeout)
        return bool(data)

    def waitControlClosed(self, timeout: float) -> float:
        """Seconds until the server closed the control connection (EOF or reset)."""
        started = time.monotonic()
        self.tcp.settimeout(timeout)
        with contextlib.suppress(ConnectionResetError):  # A reset ends it as well as EOF.
            while self.tcp.recv(4096):
                if time.monotonic() - started > timeout:
                    raise AssertionError("the server kept sending on the control connection")
        return time.monotonic() - started


def freeUDPRange(size: int, host: str = LOOPBACK4) -> tuple[int, int]:
    """
    C{size} consecutive UDP ports on C{host} that were all free a moment ago,
    below the usual ephemeral range (so the OS does not hand them out).
    """
    chooser = random.Random()
    for _ in range(50):
        low = chooser.randrange(20000, 30000 - size)
        held: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return low, low + size - 1
    raise SkipTest(f"no {size} consecutive free UDP ports found")


def udpPortFree(host: str, port: int) -> bool:
    """Whether a UDP socket can be bound on C{host}:C{port} right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, port))
    except OSError:
        return False
    return True


class UDPTestCase(IntegrationTestCase):
    """
    Shared set-up: the session log events and bad log events of each test
    are collected, and a test fails if the in-process server tried to send
    a datagram anywhere but to a loopback address.
    """

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.sessions = watchSessions(self)
        self.badLog = watchLog(self)

    async def startServer(self, *args: Any, **kwargs: Any) -> Server:  # type: ignore[override]
        server = await super().startServer(*args, **kwargs)
        assert server.reactor is not None
        refused = server.reactor.udpRefused
        self.addCleanup(lambda: self.assertEqual(refused, [], "the server sent UDP beyond loopback"))
        return server

    async def sessionEnded(self, count: int = 1, limit: float = 10.0) -> dict[str, Any]:
        """Wait until C{count} sessions were logged; return the C{count}-th."""
        await waitFor(lambda: len(self.sessions) >= count, limit, f"{count} session(s) to be logged")
        return self.sessions[count - 1]

    def assertUDPSession(self, event: dict[str, Any], outcome: str = "succeeded", **counts: int) -> None:
        """The session event is a UDP association with C{outcome} and these counters."""
        self.assertEqual(event["command"], "udp_associate")
        self.assertEqual(event["outcome"], outcome)
        self.assertEqual({k: event[k] for k in counts}, counts)

    def assertClean(self) -> None:
        """No error was logged."""
        assertLogClean(self, self.badLog)


# -- the tests ---------------------------------------------------------------


class RoundTripTests(UDPTestCase):
    """One datagram there and back, for each ATYP and both families."""

    async def check(
        self,
        serverHost: str,
        clientHost: str,
        echoHost: str,
        requestHost: str | None = None,
        expectAtyp: int = 1,
    ) -> tuple[Server, UDPEcho, Datagram, Association]:
        server = await self.startServer(host=serverHost)
        echo, echoPort = startUDPEcho(self, echoHost)
        payload = b"datagram for " + (requestHost or echoHost).encode()

        def client() -> tuple[Datagram, Association, tuple[str, int]]:
            with Association(server.address, clientHost) as association:
                answer = association.roundTrip(requestHost or echoHost, echoPort, payload)
                return answer, association, association.udp.getsockname()[:2]

        answer, association, clientAddress = await deferToThread(client)
        self.assertEqual(association.reply[0], 0)
        self.assertEqual(
            answer,
            Datagram(0, expectAtyp, echoHost, echoPort, payload, association.relay),
            "the answer's header must name the destination's real address and port",
        )
        [(received, source)] = echo.received
        self.assertEqual(received, payload, "the echo server must get the payload without the header")
        self.assertNotEqual(source, clientAddress, "the datagram must come from the relay, not the client")
        await self.sessionEnded()
        self.assertUDPSession(self.sessions[0], datagramsUp=1, datagramsDown=1, dropped=0)
        self.assertUDPSession(self.sessions[0], bytesUp=len(payload), bytesDown=len(payload))
        self.assertClean()
        return server, echo, answer, association

    async def test_ipv4(self) -> None:
        """ATYP IPv4: the answer's header says 127.0.0.1 and the echo server's port."""
        await self.check(LOOPBACK4, LOOPBACK4, LOOPBACK4)

    @needsIPv6
    async def test_ipv6(self) -> None:
        """ATYP IPv6 from an IPv6 client: the answer's header says ::1 (ATYP 4)."""
        await self.check(LOOPBACK6, LOOPBACK6, LOOPBACK6, expectAtyp=4)

    @needsIPv6
    async def test_ipv6DestinationFromIPv4Client(self) -> None:
        """An IPv4 client's datagram for ::1 crosses families on the server's side."""
        await self.check(LOOPBACK4, LOOPBACK4, LOOPBACK6, expectAtyp=4)

    @needsIPv6
    async def test_ipv4DestinationFromIPv6Client(self) -> None:
        """An IPv6 client's datagram for 127.0.0.1."""
        await self.check(LOOPBACK6, LOOPBACK6, LOOPBACK4)

    async def test_domainIPv4(self) -> None:
        """
        ATYP domain name: the server resolves it (through the fake resolver)
        and the answer's header carries the resolved IP, not the name.
        """
        server, *_ = await self.check(LOOPBACK4, LOOPBACK4, LOOPBACK4, requestHost="target4.test")
        self.assertEqual(server.resolver.lookups, ["target4.test"])

    @needsIPv6
    async def test_domainIPv6(self) -> None:
        """A name that resolves to ::1 only: the answer's header says ::1."""
        server, *_ = await self.check(
            LOOPBACK4, LOOPBACK4, LOOPBACK6, requestHost="target6.test", expectAtyp=4
        )
        self.assertEqual(server.resolver.lookups, ["target6.test"])

    @needsIPv6
    async def test_ipv4MappedDestination(self) -> None:
        """
        A datagram for ::ffff:127.0.0.1 (ATYP 4) reaches 127.0.0.1, and the
        answer names 127.0.0.1 with ATYP 1: IPv4-mapped addresses never
        appear in what the server sends.
        """
        if SKIP_DUAL_STACK:
            raise SkipTest(SKIP_DUAL_STACK)
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self, LOOPBACK4)

        def client() -> Datagram:
            with Association(server.address) as association:
                return association.roundTrip("::ffff:127.0.0.1", echoPort, b"mapped")

        answer = await deferToThread(client)
        self.assertEqual((answer.atyp, answer.host, answer.port), (1, LOOPBACK4, echoPort))
        self.assertEqual(echo.payloads, [b"mapped"])


class BoundAddressTests(UDPTestCase):
    """
    BND.ADDR of the reply is the address the client reached the server on
    (never 0.0.0.0 or ::, never IPv4-mapped), and the relay answers there.
    """

    async def check(self, serverHost: str, connectHost: str, expectAtyp: int) -> None:
        server = await self.startServer(host=serverHost)
        echo4, echo4Port = startUDPEcho(self, LOOPBACK4)
        targets = [(LOOPBACK4, echo4Port, 1)]
        if HAVE_IPV6:
            _, echo6Port = startUDPEcho(self, LOOPBACK6)
            targets.append((LOOPBACK6, echo6Port, 4))

        def client() -> tuple[tuple[int, str, int], list[Datagram], bytes]:
            with Association((connectHost, server.port), connectHost) as association:
                answers = []
                for host, port, _ in targets:
                    answers.append(association.roundTrip(host, port, b"to " + host.encode()))
                association.send(LOOPBACK4, echo4Port, b"raw")
                association.udp.settimeout(5)
                raw = association.udp.recv(70000)
                return association.reply, answers, raw

        reply, answers, raw = await deferToThread(client)
        rep, host, port = reply
        self.assertEqual(rep, 0)
        self.assertEqual(host, connectHost, "BND.ADDR must be the address the client connected to")
        self.assertNotEqual(port, 0)
        for answer, (targetHost, targetPort, atyp) in zip(answers, targets, strict=True):
            self.assertEqual((answer.atyp, answer.host, answer.port), (atyp, targetHost, targetPort))
            self.assertEqual(answer.source, (connectHost, port), "answers must come from BND.ADDR:BND.PORT")
        self.assertEqual(raw[:10], b"\x00\x00\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", echo4Port))
        await self.sessionEnded()
        self.assertNotIn("::ffff:", str(self.sessions[0]["client"]))
        self.assertNotIn("::ffff:", str(self.sessions[0]["destination"]))
        self.assertClean()

    async def test_ipv4Client(self) -> None:
        """A client of a 127.0.0.1 listener: BND.ADDR 127.0.0.1 (ATYP 1)."""
        await self.check(LOOPBACK4, LOOPBACK4, 1)

    @needsIPv6
    async def test_ipv6Client(self) -> None:
        """A client of a ::1 listener: BND.ADDR ::1 (ATYP 4)."""
        await self.check(LOOPBACK6, LOOPBACK6, 4)

    async def test_dualStackIPv4Client(self) -> None:
        """
        An IPv4 client of a dual-stack C{::} listener (its peer address is
        ::ffff:127.0.0.1): BND.ADDR is plain 127.0.0.1, ATYP 1, and the
        relay answers from there.
        """
        if SKIP_DUAL_STACK:
            raise SkipTest(SKIP_DUAL_STACK)
        await self.check("::", LOOPBACK4, 1)

    async def test_dualStackIPv6Client(self) -> None:
        """An IPv6 client of a dual-stack C{::} listener: BND.ADDR ::1."""
        if SKIP_DUAL_STACK:
            raise SkipTest(SKIP_DUAL_STACK)
        await self.check("::", LOOPBACK6, 4)

    async def test_replyBytes(self) -> None:
        """The whole reply, byte for byte, for an IPv4 client: 05 00 00 01 7f000001 PORT."""
        server = await self.startServer()

        def client() -> bytes:
            with connectTo(server.address) as sock:
                sock.sendall(b"\x05\x01\x00" + encodeRequest("0.0.0.0", 0, command=3))
                return recvExactly(sock, 2 + 10)

        data = await deferToThread(client)
        self.assertEqual(data[:8], b"\x05\x00\x05\x00\x00\x01\x7f\x00")
        self.assertEqual(data[8:10], b"\x00\x01")
        self.assertNotEqual(data[10:], b"\x00\x00")


class TrafficTests(UDPTestCase):
    """Many datagrams, several destinations, large datagrams."""

    async def test_manyDatagramsSeveralDestinations(self) -> None:
        """
        200 datagrams in one association, 20 in flight at a time, spread over
        two IPv4 echo servers, one IPv6 echo server (when available) and a
        name: every one comes back once, intact, its header naming the
        server that echoed it.
        """
        server = await self.startServer()
        echoA, portA = startUDPEcho(self, LOOPBACK4)
        echoB, portB = startUDPEcho(self, LOOPBACK4)
        # (request host, port, the address the answer must name, the echo server)
        destinations: list[tuple[str, int, str, UDPEcho]] = [
            (LOOPBACK4, portA, LOOPBACK4, echoA),
            (LOOPBACK4, portB, LOOPBACK4, echoB),
            ("target4.test", portB, LOOPBACK4, echoB),
        ]
        if HAVE_IPV6:
            echoC, portC = startUDPEcho(self, LOOPBACK6)
            destinations.append((LOOPBACK6, portC, LOOPBACK6, echoC))
        batches, window = 10, 20
        total = batches * window

        def client() -> tuple[dict[bytes, Datagram], int]:
            answers: dict[bytes, Datagram] = {}
            duplicates = 0
            with Association(server.address) as association:
                for batch in range(batches):
                    for i in range(window):
                        n = batch * window + i
                        host, port, _, _ = destinations[n % len(destinations)]
                        association.send(host, port, b"%04d" % n + pattern(40 + n, seed=n))
                    for _ in range(window):
                        answer = association.receive(timeout=5)
                        if answer is None:
                            break
                        if answer.payload[:4] in answers:
                            duplicates += 1
                        answers[answer.payload[:4]] = answer
            return answers, duplicates

        answers, duplicates = await deferToThread(client)
        self.assertEqual(duplicates, 0)
        self.assertEqual(len(answers), total, f"{total - len(answers)} datagrams lost")
        for n in range(total):
            _, port, answerHost, _ = destinations[n % len(destinations)]
            answer = answers[b"%04d" % n]
            self.assertEqual(answer.payload, b"%04d" % n + pattern(40 + n, seed=n), f"datagram {n}")
            self.assertEqual(
                (answer.fragment, answer.host, answer.port), (0, answerHost, port), f"datagram {n}"
            )
        for _, _, _, echo in destinations:
            expected = sorted(
                b"%04d" % n + pattern(40 + n, seed=n)
                for n in range(total)
                if destinations[n % len(destinations)][3] is echo
            )
            self.assertEqual(sorted(echo.payloads), expected)
        self.assertEqual(server.resolver.lookups, ["target4.test"], "a resolved name is cached")
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=total, datagramsDown=total, dropped=0)
        self.assertClean()

    async def check(self, host: str, size: int) -> None:
        """A C{size}-byte payload to an echo server on C{host} and back, intact."""
        server = await self.startServer(host=host)
        echo, echoPort = startUDPEcho(self, host)
        payload = pattern(size, seed=size)

        def client() -> Datagram:
            with Association(server.address, host) as association:
                association.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                return association.roundTrip(host, echoPort, payload)

        answer = await deferToThread(client)
        self.assertEqual(echo.payloads, [payload], "the echo server must get the whole payload")
        self.assertEqual(len(answer.payload), size)
        self.assertEqual(answer.payload, payload)
        self.assertEqual((answer.host, answer.port), (host, echoPort))
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, bytesUp=size, bytesDown=size)
        self.assertClean()

    async def test_large(self) -> None:
        """60,000 bytes of payload both ways over IPv4."""
        await self.check(LOOPBACK4, 60000)

    @needsIPv6
    async def test_largeIPv6(self) -> None:
        """60,000 bytes of payload both ways over IPv6."""
        await self.check(LOOPBACK6, 60000)

    async def test_largestIPv4(self) -> None:
        """The largest payload an IPv4 SOCKS5 UDP datagram holds (65,497 bytes), both ways."""
        await self.check(LOOPBACK4, MAX_IPV4_PAYLOAD)

    async def test_answerTooLargeForClient(self) -> None:
        """
        A destination's 65,507-byte answer cannot fit in an IPv4 datagram
        once the 10-byte header is added: it is dropped (and counted), and
        the association goes on.
        """
        server = await self.startServer()
        big, bigPort = startUDPEcho(self, echo=UDPResponder(pattern(65507)))
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[Datagram | None, bytes]:
            with Association(server.address) as association:
                association.send(LOOPBACK4, bigPort, b"answer me")
                tooBig = association.receive(timeout=0.5)
                return tooBig, association.roundTrip(LOOPBACK4, echoPort, b"still here").payload

        tooBig, payload = await deferToThread(client)
        self.assertIsNone(tooBig)
        self.assertEqual(big.payloads, [b"answer me"])
        self.assertEqual(payload, b"still here")
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=2, datagramsDown=1, dropped=1)
        self.assertClean()

    async def test_associationsKeptApart(self) -> None:
        """
        Two associations of the same client at once, to the same echo
        server, interleaved: each gets exactly its own answers back.
        """
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[list[bytes], list[bytes]]:
            with Association(server.address) as first, Association(server.address) as second:
                for i in range(10):
                    first.send(LOOPBACK4, echoPort, b"first %d" % i)
                    second.send(LOOPBACK4, echoPort, b"second %d" % i)
                got: tuple[list[bytes], list[bytes]] = ([], [])
                for association, answers in ((first, got[0]), (second, got[1])):
                    for _ in range(11):
                        answer = association.receive(timeout=2 if len(answers) < 10 else 0.3)
                        if answer is None:
                            break
                        answers.append(answer.payload)
                return got

        firstGot, secondGot = await deferToThread(client)
        self.assertEqual(sorted(firstGot), [b"first %d" % i for i in range(10)])
        self.assertEqual(sorted(secondGot), [b"second %d" % i for i in range(10)])
        self.assertEqual(len(echo.received), 20)
        sources = {source for _, source in echo.received}
        self.assertEqual(len(sources), 2, "each association has its own socket towards destinations")
        await self.sessionEnded(2)
        self.assertClean()


class DropTests(UDPTestCase):
    """
    What the relay must not pass on.  Each test sends the datagram that
    must be dropped, then a good one from the client: once the good one's
    answer is back, the relay has handled the bad one too (one socket,
    read in order), so the echo server's log shows whether it got through.
    """

    async def test_fragmentDropped(self) -> None:
        """FRAG != 0 (1, 0x7f, 0x80, 0xff): dropped, nothing reaches the echo server."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[Datagram, Datagram | None]:
            with Association(server.address) as association:
                for fragment in (1, 0x7F, 0x80, 0xFF):
                    association.send(LOOPBACK4, echoPort, b"fragment %d" % fragment, fragment=fragment)
                good = association.roundTrip(LOOPBACK4, echoPort, b"whole")
                return good, association.receive(timeout=0.3)

        good, extra = await deferToThread(client)
        self.assertEqual(good.payload, b"whole")
        self.assertIsNone(extra)
        self.assertEqual(echo.payloads, [b"whole"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, dropped=4)
        self.assertClean()

    async def test_malformedDropped(self) -> None:
        """Truncated headers and an unknown ATYP are dropped; the association goes on."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)
        junk = [b"", b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01\x7f\x00", b"\x00\x00\x00\x09abcdefgh"]
        junk.append(b"\x00\x00\x00\x03\x20short")

        def client() -> Datagram:
            with Association(server.address) as association:
                for datagram in junk:
                    association.udp.sendto(datagram, association.relay)
                return association.roundTrip(LOOPBACK4, echoPort, b"after the junk")

        self.assertEqual((await deferToThread(client)).payload, b"after the junk")
        self.assertEqual(echo.payloads, [b"after the junk"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, dropped=len(junk))
        self.assertClean()

    async def test_unresolvableNameDropped(self) -> None:
        """A name the resolver does not know: dropped, nothing is sent anywhere."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[Datagram, Datagram | None]:
            with Association(server.address) as association:
                association.send("nowhere.test", echoPort, b"lost")
                good = association.roundTrip(LOOPBACK4, echoPort, b"found")
                return good, association.receive(timeout=0.3)

        good, extra = await deferToThread(client)
        self.assertEqual((good.payload, extra), (b"found", None))
        self.assertEqual(echo.payloads, [b"found"])
        self.assertEqual(server.resolver.lookups, ["nowhere.test"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, dropped=1)

    async def test_portZeroDropped(self) -> None:
        """A datagram for port 0 cannot be sent: dropped, the association goes on."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> bytes:
            with Association(server.address) as association:
                association.send(LOOPBACK4, 0, b"nowhere")
                return association.roundTrip(LOOPBACK4, echoPort, b"somewhere").payload

        self.assertEqual(await deferToThread(client), b"somewhere")
        self.assertEqual(echo.payloads, [b"somewhere"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, dropped=1)
        self.assertClean()

    async def test_secondSocketDropped(self) -> None:
        """
        The first datagram fixes the client's port: a second UDP socket of
        the same client (same address, another port) gets nothing through,
        before or after, and nothing back; the first socket goes on working.
        """
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[list[bytes], Datagram | None]:
            with Association(server.address) as association, udpSocket() as other:
                got = [association.roundTrip(LOOPBACK4, echoPort, b"first").payload]
                association.send(LOOPBACK4, echoPort, b"intruder", sock=other)
                got.append(association.roundTrip(LOOPBACK4, echoPort, b"second").payload)
                association.send(LOOPBACK4, echoPort, b"intruder again", sock=other)
                got.append(association.roundTrip(LOOPBACK4, echoPort, b"third").payload)
                return got, association.receive(timeout=0.3, sock=other)

        got, intruderGot = await deferToThread(client)
        self.assertEqual(got, [b"first", b"second", b"third"])
        self.assertIsNone(intruderGot)
        self.assertEqual(echo.payloads, [b"first", b"second", b"third"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=3, datagramsDown=3, dropped=2)
        self.assertClean()

    async def checkAnnounced(self, requestHost: str) -> None:
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[bytes, Datagram | None]:
            with Association(server.address, request=(requestHost, 0), announcePort=True) as association:
                with udpSocket() as other:
                    # The other socket speaks first: still not the announced port.
                    association.send(LOOPBACK4, echoPort, b"intruder", sock=other)
                    good = association.roundTrip(LOOPBACK4, echoPort, b"announced")
                    return good.payload, association.receive(timeout=0.3, sock=other)

        payload, intruderGot = await deferToThread(client)
        self.assertEqual((payload, intruderGot), (b"announced", None))
        self.assertEqual(echo.payloads, [b"announced"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, dropped=1)

    async def test_announcedPortWithZeroAddress(self) -> None:
        """
        DST.ADDR 0.0.0.0 with DST.PORT set: only that port may send, even
        when another socket of the client sends first.
        """
        await self.checkAnnounced("0.0.0.0")

    async def test_announcedPortWithOwnAddress(self) -> None:
        """DST.ADDR the client's own address, with DST.PORT: only that port may send."""
        await self.checkAnnounced(LOOPBACK4)

    async def test_otherHostDropped(self) -> None:
        """A datagram from another address (127.0.0.2) than the client's TCP one is dropped."""
        if SKIP_OTHER_LOOPBACK:
            raise SkipTest(SKIP_OTHER_LOOPBACK)
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[bytes, Datagram | None]:
            with Association(server.address) as association, udpSocket(LOOPBACK4_OTHER) as other:
                association.send(LOOPBACK4, echoPort, b"from elsewhere", sock=other)
                good = association.roundTrip(LOOPBACK4, echoPort, b"from the client")
                return good.payload, association.receive(timeout=0.3, sock=other)

        payload, otherGot = await deferToThread(client)
        self.assertEqual((payload, otherGot), (b"from the client", None))
        self.assertEqual(echo.payloads, [b"from the client"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, dropped=1)


class LifetimeTests(UDPTestCase):
    """The association lives exactly as long as its TCP control connection."""

    async def assertRelayGone(self, relay: tuple[str, int], echo: UDPEcho, echoPort: int) -> None:
        """
        Datagrams to the old relay port get nothing back and reach nobody,
        and the port is free again (a new socket can bind it).
        """
        seen = len(echo.received)

        def client() -> Datagram | None:
            with udpSocket(relay[0]) as sock:
                sock.sendto(udpHeader(LOOPBACK4, echoPort) + b"too late", relay)
                sock.settimeout(0.5)
                try:
                    data, source = sock.recvfrom(70000)
                except (TimeoutError, ConnectionRefusedError):
                    return None
                return parseDatagram(data, source[:2])

        self.assertIsNone(await deferToThread(client))
        self.assertEqual(len(echo.received), seen, "a datagram got through a closed association")
        await waitFor(lambda: udpPortFree(*relay), 5.0, f"relay port {relay} to be closed")

    async def test_closeEndsAssociation(self) -> None:
        """After the client closes the control connection, the relay is gone."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[tuple[str, int], bytes]:
            with Association(server.address) as association:
                return association.relay, association.roundTrip(LOOPBACK4, echoPort, b"alive").payload

        relay, payload = await deferToThread(client)
        self.assertEqual(payload, b"alive")
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1)
        await self.assertRelayGone(relay, echo, echoPort)
        self.assertEqual(server.factory._associations, {}, "the association was not released")
        self.assertClean()

    async def test_halfCloseEndsAssociation(self) -> None:
        """A FIN from the client ends the association: the server closes the control connection."""
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[tuple[str, int], float]:
            with Association(server.address) as association:
                association.roundTrip(LOOPBACK4, echoPort, b"alive")
                association.tcp.shutdown(socket.SHUT_WR)
                return association.relay, association.waitControlClosed(5.0)

        relay, took = await deferToThread(client)
        self.assertLess(took, 5.0)
        await self.sessionEnded()
        await self.assertRelayGone(relay, echo, echoPort)
        self.assertClean()

    async def test_idleTimeout(self) -> None:
        """
        With udpIdleTimeout=0.5, an association that carries a datagram
        every 0.1 s stays up for 1.5 s; once quiet, the server closes the
        control connection within about two periods, and the relay is gone.
        """
        server = await self.startServer(udpIdleTimeout=0.5)
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[tuple[str, int], bool, float]:
            with Association(server.address) as association:
                started = time.monotonic()
                alive = True
                for i in range(30):
                    if time.monotonic() - started > 1.5:
                        break
                    association.roundTrip(LOOPBACK4, echoPort, b"keepalive %d" % i)
                    alive = alive and association.controlOpen()
                    time.sleep(0.1)
                return association.relay, alive, association.waitControlClosed(5.0)

        relay, aliveWhileBusy, quietFor = await deferToThread(client)
        self.assertTrue(aliveWhileBusy, "the association was closed while datagrams flowed")
        self.assertGreater(quietFor, 0.2)
        self.assertLess(quietFor, 3.0)
        event = await self.sessionEnded()
        self.assertUDPSession(event, outcome="idle timeout")
        self.assertGreater(event["datagramsUp"], 5)
        await self.assertRelayGone(relay, echo, echoPort)
        self.assertClean()


class ConfigurationTests(UDPTestCase):
    """udpPortRange, udpAdvertise and the association limit, over real sockets."""

    async def test_portRange(self) -> None:
        """Three associations at once all get relay ports in udpPortRange, and work."""
        low, high = freeUDPRange(16)
        server = await self.startServer(udpPortRange=(low, high))
        echo, echoPort = startUDPEcho(self)

        def client() -> list[tuple[int, bytes]]:
            associations = []
            try:
                for _ in range(3):
                    associations.append(Association(server.address))
                return [
                    (a.reply[2], a.roundTrip(LOOPBACK4, echoPort, b"%d" % i).payload)
                    for i, a in enumerate(associations)
                ]
            finally:
                for a in associations:
                    a.close()

        results = await deferToThread(client)
        ports = [port for port, _ in results]
        for port in ports:
            self.assertTrue(low <= port <= high, f"relay port {port} outside {low}-{high}")
        self.assertEqual(len(set(ports)), 3)
        self.assertEqual([payload for _, payload in results], [b"0", b"1", b"2"])
        await self.sessionEnded(3)
        self.assertClean()

    async def test_portRangeExhausted(self) -> None:
        """When every port of the range is taken, the reply is 0x01 and the connection closes."""
        low, high = freeUDPRange(1)
        server = await self.startServer(udpPortRange=(low, high))
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK4, low))

        def client() -> tuple[tuple[int, str, int], float]:
            with Association(server.address) as association:
                return association.reply, association.waitControlClosed(5.0)

        (rep, _, _), took = await deferToThread(client)
        self.assertEqual(rep, 1)
        self.assertLess(took, 5.0)
        event = await self.sessionEnded()
        self.assertEqual(event["outcome"], "general failure")
        self.assertEqual(server.factory._associations, {})
        self.assertClean()

    async def test_advertise(self) -> None:
        """
        udpAdvertise replaces BND.ADDR (here 127.0.0.2, as for a server
        behind NAT); BND.PORT is still the real relay port on 127.0.0.1.
        """
        server = await self.startServer(udpAdvertise=LOOPBACK4_OTHER)
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[tuple[int, str, int], bytes]:
            with Association(server.address, relayHost=LOOPBACK4) as association:
                return association.reply, association.roundTrip(LOOPBACK4, echoPort, b"natted").payload

        (rep, host, port), payload = await deferToThread(client)
        self.assertEqual((rep, host), (0, LOOPBACK4_OTHER))
        self.assertNotEqual(port, 0)
        self.assertEqual(payload, b"natted")
        await self.sessionEnded()
        self.assertClean()

    async def test_perClientLimit(self) -> None:
        """maxUDPAssociationsPerClient=2: the third at once gets 0x01; closing one frees a slot."""
        server = await self.startServer(maxUDPAssociationsPerClient=2)

        def client() -> list[int]:
            replies = []
            first, second = Association(server.address), Association(server.address)
            try:
                with Association(server.address) as third:
                    replies += [first.reply[0], second.reply[0], third.reply[0]]
                    third.waitControlClosed(5.0)
                first.close()
                # The server frees the slot when it sees the close.
                for _ in range(100):
                    with Association(server.address) as fourth:
                        if fourth.reply[0] == 0:
                            replies.append(0)
                            break
                    time.sleep(0.05)
                else:
                    replies.append(1)
            finally:
                first.close()
                second.close()
            return replies

        self.assertEqual(await deferToThread(client), [0, 0, 1, 0])


class PySocksTests(UDPTestCase):
    """PySocks' UDP support (socks.socksocket with SOCK_DGRAM) through the in-process server."""

    def setUp(self) -> None:
        super().setUp()

        class TimedSocket(socket.socket):
            """PySocks' control connection gets no timeout of its own: give every socket one."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                # PySocks also calls this on its own sockets (not TimedSockets): no super().
                socket.socket.__init__(self, *args, **kwargs)
                socket.socket.settimeout(self, SOCKET_TIMEOUT)

        self.patch(socks, "_orig_socket", TimedSocket)

    async def roundTrip(self, host: str, payload: bytes) -> tuple[bytes, tuple[str, int], int]:
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[bytes, tuple[str, int]]:
            with socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.set_proxy(socks.SOCKS5, server.host, server.port, rdns=True)
                sock.settimeout(SOCKET_TIMEOUT)
                sock.bind((LOOPBACK4, 0))  # not PySocks' default of every interface
                sock.sendto(payload, (host, echoPort))
                data, source = sock.recvfrom(65536)
                return data, source

        data, source = await deferToThread(client)
        self.assertEqual(echo.payloads, [payload])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, dropped=0)
        self.assertClean()
        return data, source, echoPort

    async def test_ipv4(self) -> None:
        """sendto/recvfrom an IPv4 echo server through the relay."""
        data, source, echoPort = await self.roundTrip(LOOPBACK4, b"PySocks over UDP")
        self.assertEqual((data, source), (b"PySocks over UDP", (LOOPBACK4, echoPort)))

    async def test_domain(self) -> None:
        """With rdns, the name goes to the server, and the answer names the resolved IP."""
        data, source, echoPort = await self.roundTrip("target4.test", pattern(1000))
        self.assertEqual((data, source), (pattern(1000), (LOOPBACK4, echoPort)))


class TwistdTests(UDPTestCase):
    """UDP ASSOCIATE through a C{twistd socks5} child process, with the --udp-* options."""

    async def test_roundTripAndSessionLog(self) -> None:
        """
        Through twistd with --udp-port-range: the relay port is in the range,
        datagrams go there and back, a fragment is dropped, and closing the
        control connection logs the session with its datagram counts.
        """
        low, high = freeUDPRange(16)
        child = await startTwistd(
            self, "--port", "tcp:0:interface=127.0.0.1", "--udp-port-range", f"{low}-{high}"
        )
        port = await child.listening
        echo, echoPort = startUDPEcho(self)
        payloads = [b"one", b"two" * 100, pattern(5000)]

        def client() -> tuple[tuple[int, str, int], list[Datagram]]:
            with Association((LOOPBACK4, port)) as association:
                association.send(LOOPBACK4, echoPort, b"fragment", fragment=1)
                answers = [association.roundTrip(LOOPBACK4, echoPort, p) for p in payloads]
                return association.reply, answers

        (rep, host, relayPort), answers = await deferToThread(client)
        self.assertEqual((rep, host), (0, LOOPBACK4))
        self.assertTrue(low <= relayPort <= high, f"relay port {relayPort} outside {low}-{high}")
        self.assertEqual([a.payload for a in answers], payloads)
        self.assertEqual({(a.host, a.port) for a in answers}, {(LOOPBACK4, echoPort)})
        self.assertEqual(echo.payloads, payloads)
        size = sum(map(len, payloads))
        line = re.compile(
            rb"session succeeded: client=127\.0\.0\.1:\d+ .*command=udp_associate "
            rb"relay=127\.0\.0\.1:%d datagrams up=3 down=3 dropped=1 bytes up=%d down=%d duration="
            % (relayPort, size, size)
        )
        await waitFor(lambda: bool(line.search(bytes(child.output))), 10.0, "the session log line")
        self.assertNotIn(b"Traceback", bytes(child.output))

    @needsIPv6
    async def test_bothFamiliesIPv6Client(self) -> None:
        """
        Through twistd on ::1 (whose relay sends with C{sendto} directly): an
        IPv6 client's datagrams reach an IPv6 and an IPv4 destination, from
        one destination socket of each family, and the answers come back,
        small and large.
        """
        child = await startTwistd(self, "--port", "tcp6:0:interface=\\:\\:1", serving=SERVING_IPV6)
        port = await child.listening
        echo6, echoPort6 = startUDPEcho(self, LOOPBACK6)
        echo4, echoPort4 = startUDPEcho(self, LOOPBACK4)
        payloads = [b"small", pattern(30000)]

        def client() -> list[Datagram]:
            with Association((LOOPBACK6, port), udpHost=LOOPBACK6) as association:
                return [
                    association.roundTrip(host, echoPort, payload)
                    for host, echoPort in ((LOOPBACK6, echoPort6), (LOOPBACK4, echoPort4))
                    for payload in payloads
                ]

        answers = await deferToThread(client)
        self.assertEqual([a.payload for a in answers], payloads * 2)
        self.assertEqual(
            [(a.host, a.port) for a in answers],
            [(LOOPBACK6, echoPort6)] * 2 + [(LOOPBACK4, echoPort4)] * 2,
        )
        self.assertEqual((echo6.payloads, echo4.payloads), (payloads, payloads))
        self.assertEqual(len({source for _, source in echo6.received}), 1)
        self.assertEqual(len({source for _, source in echo4.received}), 1)
        self.assertNotIn(b"Traceback", bytes(child.output))

    async def test_advertiseLimitAndIdleTimeout(self) -> None:
        """
        --udp-advertise shows in the reply, --max-udp-per-client 1 refuses a
        second association (0x01), and --udp-idle-timeout 0.5 closes a quiet
        one and logs it.
        """
        child = await startTwistd(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--udp-advertise",
            LOOPBACK4_OTHER,
            "--max-udp-per-client",
            "1",
            "--udp-idle-timeout",
            "0.5",
        )
        port = await child.listening
        echo, echoPort = startUDPEcho(self)

        def client() -> tuple[tuple[int, str, int], bytes, int, float]:
            with Association((LOOPBACK4, port), relayHost=LOOPBACK4) as first:
                payload = first.roundTrip(LOOPBACK4, echoPort, b"via twistd").payload
                with Association((LOOPBACK4, port)) as second:
                    refused = second.reply[0]
                return first.reply, payload, refused, first.waitControlClosed(5.0)

        (rep, host, _), payload, refused, quietFor = await deferToThread(client)
        self.assertEqual((rep, host, payload), (0, LOOPBACK4_OTHER, b"via twistd"))
        self.assertEqual(refused, 1)
        self.assertLess(quietFor, 3.0)
        await waitFor(
            lambda: b"session idle timeout: client=127.0.0.1" in bytes(child.output), 10.0, "the idle session"
        )
        self.assertNotIn(b"Traceback", bytes(child.output))


#: A plain UDP client with no SOCKS in it: one datagram with sendto/recvfrom,
#: one on a connected socket with send/recv; prints what came back.
PLAIN_UDP_CLIENT = """
import socket, sys
port = int(sys.argv[1])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(5)
    s.sendto(b"sendto via socksify", ("127.0.0.1", port))
    data, source = s.recvfrom(65536)
    print(data.decode(), source[0], source[1])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.send(b"send via socksify")
    print(s.recv(65536).decode())
"""


class SystemResolverTests(UDPTestCase):
    """A name in a datagram, resolved by twistd's own (system) resolver."""

    skip = SKIP_LOCALHOST

    async def test_localhostThroughTwistd(self) -> None:
        """
        A datagram for C{localhost} through twistd: its real resolver (in a
        thread) answers from /etc/hosts, and the answer's header names the
        loopback address it chose.
        """
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1")
        port = await child.listening
        echoes: list[UDPEcho] = []
        for _ in range(20):  # the same port number on 127.0.0.1 and ::1
            echo4, echoPort = startUDPEcho(self, LOOPBACK4)
            echoes = [echo4]
            if not HAVE_IPV6 or udpPortFree(LOOPBACK6, echoPort):
                break
        if HAVE_IPV6:
            echoes.append(startUDPEcho(self, LOOPBACK6, echoPort)[0])

        def client() -> Datagram:
            with Association((LOOPBACK4, port)) as association:
                return association.roundTrip("localhost", echoPort, b"resolved by twistd", timeout=10)

        answer = await deferToThread(client)
        self.assertEqual(answer.payload, b"resolved by twistd")
        self.assertIn((answer.atyp, answer.host), [(1, LOOPBACK4), (4, LOOPBACK6)])
        self.assertEqual(answer.port, echoPort)
        self.assertEqual(sum(len(echo.received) for echo in echoes), 1)
        await waitFor(
            lambda: (
                b"command=udp_associate" in bytes(child.output)
                and b"datagrams up=1 down=1 dropped=0" in bytes(child.output)
            ),
            10.0,
            "the session log line",
        )


class SocksifyTests(UDPTestCase):
    """
    Dante's C{socksify} (C{LD_PRELOAD} of its client library) wrapping
    plain UDP programs that know nothing of SOCKS: the datagrams must go
    through our relay (the server logs the association), not straight to
    the echo server.
    """

    skip = None if SOCKSIFY else "socksify is not installed (Debian package dante-client)"

    async def socksify(self, server: Server, argv: list[str]) -> tuple[bytes, bytes, int]:
        """Run C{argv} under socksify with a client config that sends all IPv4 through C{server}."""
        assert SOCKSIFY is not None
        config = Path(self.mktemp()).absolute()
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "logoutput: stderr\n"
            "resolveprotocol: fake\n"  # names never reach DNS from the client side
            "route {\n"
            f"    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {server.host} port = {server.port}\n"
            "    proxyprotocol: socks_v5\n"
            "    command: connect udpassociate\n"
            "    method: none\n"
            "}\n"
        )
        # Without SOCKS_AUTOADD_LANROUTES=no, Dante adds direct routes for the
        # local networks, 127.0.0.0/8 included, and the datagrams bypass the proxy.
        env = childEnvironment(SOCKS_CONF=str(config), SOCKS_AUTOADD_LANROUTES="no")
        return await runProcess([SOCKSIFY, *argv], timeout=20, env=env, path=str(config.parent))

    async def test_socat(self) -> None:
        """socat (UDP4 to 127.0.0.1) under socksify: a datagram there and back through the relay."""
        if SOCAT is None:
            raise SkipTest("socat is not installed")
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)
        payload = Path(self.mktemp()).absolute()
        payload.parent.mkdir(parents=True, exist_ok=True)
        payload.write_bytes(b"socat through socksify")
        out, err, code = await self.socksify(
            server,
            [SOCAT, "-t", "1", "-T", "5", f"GOPEN:{payload}!!STDOUT", f"UDP4:{LOOPBACK4}:{echoPort}"],
        )
        self.assertEqual((code, out), (0, b"socat through socksify"), err.decode(errors="replace"))
        self.assertEqual(echo.payloads, [b"socat through socksify"])
        event = await self.sessionEnded()
        self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, dropped=0)
        self.assertClean()

    async def test_plainPython(self) -> None:
        """
        A plain Python UDP client under socksify, both with sendto/recvfrom
        and on a connected socket: each datagram goes through its own
        association, and the answer seems to come from the echo server.
        """
        server = await self.startServer()
        echo, echoPort = startUDPEcho(self)
        out, err, code = await self.socksify(server, [sys.executable, "-c", PLAIN_UDP_CLIENT, str(echoPort)])
        self.assertEqual(code, 0, err.decode(errors="replace"))
        self.assertEqual(
            out.decode().splitlines(), [f"sendto via socksify {LOOPBACK4} {echoPort}", "send via socksify"]
        )
        self.assertEqual(echo.payloads, [b"sendto via socksify", b"send via socksify"])
        await self.sessionEnded(2)
        for event in self.sessions:
            self.assertUDPSession(event, datagramsUp=1, datagramsDown=1, dropped=0)
        self.assertClean()
