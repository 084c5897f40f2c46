"""
End-to-end tests of the BIND command (RFC 1928 sections 4 and 6) over real
loopback sockets: both replies for IPv4 and IPv6, data both ways (bytes the
client sent early included), a large transfer, half-closes, the timeout,
peer checks, a client that leaves first, the port range, a C{twistd socks5}
child process, and Dante's C{socksify} running C{socat} as a listening
program.

Only 127.0.0.1, 127.0.0.2 (as a second source address on loopback) and ::1
are used, and names are resolved by the fake resolver of L{tests.support},
never by DNS.  Blocking socket code runs in threads, with a timeout on
every socket and a bound on every loop.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.support import (
    LOOPBACK4,
    LOOPBACK6,
    F,
    IntegrationTestCase,
    Server,
    canBind,
    childEnvironment,
    connectTo,
    encodeRequest,
    freePort,
    needsIPv6,
    pump,
    readReply,
    recvExactly,
    recvUntilClosed,
    runProcess,
    startTwistd,
    waitFor,
    watchSessions,
)
from txsocks5.bind import PeerCheck

#: A SOCKS5 reply as L{readReply} returns it: (REP, BND.ADDR, BND.PORT).
Reply = tuple[int, str, int]

#: BIND's command code.
BIND = 2

#: A second loopback address for peers that are not the expected one.
OTHER_LOOPBACK4 = "127.0.0.2"

#: Seconds a socket operation may take in these tests' client threads.
TIMEOUT = 10.0

SOCKSIFY = shutil.which("socksify")
SOCAT = shutil.which("socat")


HAVE_OTHER_LOOPBACK4 = canBind(OTHER_LOOPBACK4)


def needsOtherLoopback(f: F) -> F:
    """Skip a test when 127.0.0.2 cannot be bound (only 127.0.0.1 is loopback)."""
    if not HAVE_OTHER_LOOPBACK4:
        f.skip = f"{OTHER_LOOPBACK4} cannot be bound here"  # type: ignore[attr-defined]
    return f


def portRangeFrom(size: int = 16) -> tuple[int, int]:
    """An inclusive range of C{size} port numbers starting at a free one."""
    low = min(freePort(), 65535 - size + 1)
    return low, low + size - 1


# -- seeing what the server does -------------------------------------------


class RecordingReactor:
    """
    Stands in for a server factory's reactor, handing everything to the
    real one, and keeps the TCP ports it listens on (the BIND listeners):
    a test can learn a BIND's port without the client, and see it closed.

    @ivar ports: the ports listened on, in order.
    @ivar addresses: their addresses, as C{getHost} said when they were
        new (it fails once a port is closed).
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.ports: list[IListeningPort] = []
        self.addresses: list[Any] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> IListeningPort:
        """Listen with the real reactor and remember the port."""
        listening: IListeningPort = self._inner.listenTCP(port, factory, backlog=backlog, interface=interface)
        self.ports.append(listening)
        self.addresses.append(listening.getHost())
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def recordListeners(server: Server) -> RecordingReactor:
    """Make C{server}'s factory listen through a L{RecordingReactor}; return it."""
    recorder = RecordingReactor(server.factory.reactor)
    server.factory.reactor = recorder
    return recorder


def isListening(port: IListeningPort) -> bool:
    """Whether a Twisted listening port still has its socket open."""
    return bool(getattr(port, "connected", False))


# -- a blocking BIND client and its peer (run them in threads) --------------


def bindRequest(
    proxy: tuple[str, int], host: str, port: int, early: bytes = b"", timeout: float = TIMEOUT
) -> tuple[socket.socket, Reply]:
    """
    Greet the SOCKS5 server at C{proxy} (no authentication) and send a BIND
    for the peer C{host}:C{port}, followed in the same write by C{early}
    bytes; return the socket and the first reply.
    """
    sock = connectTo(proxy, timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x05\x01\x00")
        method = recvExactly(sock, 2)
        if method != b"\x05\x00":
            raise AssertionError(f"no-authentication was not accepted: {method!r}")
        sock.sendall(encodeRequest(host, port, command=BIND) + early)
        return sock, readReply(sock)
    except BaseException:
        sock.close()
        raise


def peerSocket(source: tuple[str, int] | None = None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket for a peer, bound to C{source} if given, with a timeout."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        if source is not None:
            sock.bind(source)
    except BaseException:
        sock.close()
        raise
    return sock


def connectPeer(address: tuple[str, int], source: tuple[str, int] | None = None) -> socket.socket:
    """Connect a peer to a BIND's listening C{address}, from C{source} if given."""
    return connectTo(address, TIMEOUT, source)


def address(sock: socket.socket) -> tuple[str, int]:
    """A socket's own (host, port), without IPv6 flow info and scope."""
    host, port = sock.getsockname()[:2]
    return host, port


def assertNoReplyYet(sock: socket.socket, wait: float = 0.3) -> None:
    """Fail if anything (a second reply, EOF) arrives on C{sock} within C{wait} seconds."""
    sock.settimeout(wait)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return
    finally:
        sock.settimeout(TIMEOUT)
    raise AssertionError(f"expected nothing yet, got {data!r}")


def assertRefused(where: tuple[str, int]) -> None:
    """Fail unless a connection to C{where} is refused."""
    try:
        sock = connectTo(where, 5.0)
    except ConnectionRefusedError:
        return
    sock.close()
    raise AssertionError(f"{where} still accepts connections")


class BindTestCase(IntegrationTestCase):
    """Base of the BIND tests: a shorter timeout than trial's default."""

    timeout = 45


# -- the two replies ---------------------------------------------------------


class BindReplyTests(BindTestCase):
    """
    The first reply names the address the server listens on (facing
    DST.ADDR, never a wildcard), the second the peer's real address.
    """

    async def bindAndConnect(
        self, server: Server, dstHost: str, dstPort: int = 0, source: tuple[str, int] | None = None
    ) -> tuple[Reply, Reply, tuple[str, int], tuple[str, int]]:
        """
        BIND through C{server} for C{dstHost}:C{dstPort}, connect a peer
        (from C{source}) to the first reply's address, read the second
        reply and exchange a line each way; return both replies, the peer's
        own address and the address it connected to.
        """

        def run() -> tuple[Reply, Reply, tuple[str, int], tuple[str, int]]:
            client, first = bindRequest(server.address, dstHost, dstPort)
            with client:
                assert first[0] == 0, first
                with connectPeer((first[1], first[2]), source) as peer:
                    second = readReply(client)
                    client.sendall(b"from the client\n")
                    assert recvExactly(peer, 16) == b"from the client\n"
                    peer.sendall(b"from the peer\n")
                    assert recvExactly(client, 14) == b"from the peer\n"
                    connectedTo = peer.getpeername()[:2]
                    return first, second, address(peer), connectedTo

        return await deferToThread(run)

    async def test_repliesIPv4(self) -> None:
        """
        DST.ADDR 127.0.0.1: the first reply is 127.0.0.1 and a real port
        (the one the peer reaches), the second the peer's address and port;
        the session is logged as a bind to the peer.
        """
        sessions = watchSessions(self)
        server = await self.startServer()
        first, second, peer, connectedTo = await self.bindAndConnect(server, LOOPBACK4, 0)
        self.assertEqual(first[1], LOOPBACK4)
        self.assertNotEqual(first[2], 0)
        self.assertEqual(connectedTo, (LOOPBACK4, first[2]))
        self.assertEqual(second, (0, *peer))
        self.assertEqual(peer[0], LOOPBACK4)
        await waitFor(lambda: bool(sessions), what="the session to be logged")
        [event] = sessions
        self.assertEqual(event["command"], "bind")
        self.assertEqual(event["destination"], f"{LOOPBACK4}:{peer[1]}")
        self.assertEqual(event["outcome"], "succeeded")
        self.assertEqual((event["bytesUp"], event["bytesDown"]), (16, 14))

    @needsIPv6
    async def test_repliesIPv6(self) -> None:
        """DST.ADDR ::1 through a server on ::1: both replies are IPv6 (::1), the second the peer's port."""
        server = await self.startServer(host=LOOPBACK6)
        first, second, peer, connectedTo = await self.bindAndConnect(server, LOOPBACK6, 0)
        self.assertEqual(first[1], LOOPBACK6)
        self.assertNotEqual(first[2], 0)
        self.assertEqual(connectedTo, (LOOPBACK6, first[2]))
        self.assertEqual(second, (0, *peer))
        self.assertEqual(peer[0], LOOPBACK6)

    @needsIPv6
    async def test_ipv6PeerThroughIPv4Client(self) -> None:
        """A client on 127.0.0.1 expecting a peer from ::1: the listener is on ::1."""
        server = await self.startServer(host=LOOPBACK4)
        first, second, peer, _ = await self.bindAndConnect(server, LOOPBACK6, 0)
        self.assertEqual(first[1], LOOPBACK6)
        self.assertEqual(second, (0, *peer))

    @needsIPv6
    async def test_ipv4PeerThroughIPv6Client(self) -> None:
        """A client on ::1 expecting a peer from 127.0.0.1: the listener is on 127.0.0.1."""
        server = await self.startServer(host=LOOPBACK6)
        first, second, peer, _ = await self.bindAndConnect(server, LOOPBACK4, 0)
        self.assertEqual(first[1], LOOPBACK4)
        self.assertEqual(second, (0, *peer))

    @needsOtherLoopback
    async def test_anyPeerIPv4(self) -> None:
        """
        DST.ADDR 0.0.0.0: any peer (here one from 127.0.0.2) is accepted,
        and the first reply names where the client reached us, not 0.0.0.0.
        """
        server = await self.startServer(host=LOOPBACK4)
        first, second, peer, _ = await self.bindAndConnect(server, "0.0.0.0", 0, source=(OTHER_LOOPBACK4, 0))
        self.assertEqual(first[1], LOOPBACK4)
        self.assertEqual(second, (0, OTHER_LOOPBACK4, peer[1]))

    @needsIPv6
    async def test_anyPeerIPv6(self) -> None:
        """DST.ADDR :: through a server on ::1: the first reply is ::1, not ::."""
        server = await self.startServer(host=LOOPBACK6)
        first, second, peer, _ = await self.bindAndConnect(server, "::", 0)
        self.assertEqual(first[1], LOOPBACK6)
        self.assertEqual(second, (0, *peer))

    async def test_name(self) -> None:
        """DST.ADDR as a name (resolved by the fake resolver, never DNS) to 127.0.0.1."""
        server = await self.startServer()
        first, second, peer, _ = await self.bindAndConnect(server, "target4.test", 0)
        self.assertEqual(first[1], LOOPBACK4)
        self.assertEqual(second, (0, *peer))
        self.assertEqual(server.resolver.lookups, ["target4.test"])

    @needsIPv6
    async def test_nameIPv6(self) -> None:
        """A name that resolves to ::1 only: the listener is on ::1."""
        server = await self.startServer()
        first, second, peer, _ = await self.bindAndConnect(server, "target6.test", 0)
        self.assertEqual(first[1], LOOPBACK6)
        self.assertEqual(second, (0, *peer))

    async def test_unknownName(self) -> None:
        """A name that does not resolve: REP 0x04 (host unreachable), then the server closes."""
        server = await self.startServer()
        recorder = recordListeners(server)

        def run() -> tuple[Reply, bytes]:
            client, first = bindRequest(server.address, "nowhere.test", 21)
            with client:
                return first, recvUntilClosed(client)

        first, rest = await deferToThread(run)
        self.assertEqual(first, (4, "0.0.0.0", 0))
        self.assertEqual(rest, b"")
        self.assertEqual(recorder.ports, [])

    async def test_secondPeerRefused(self) -> None:
        """Once its peer is accepted, the BIND's port is closed: another connection is refused."""
        server = await self.startServer()

        def run() -> bytes:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client, connectPeer((first[1], first[2])) as peer:
                readReply(client)
                assertRefused((first[1], first[2]))
                peer.sendall(b"still connected")
                return recvExactly(client, 15)

        self.assertEqual(await deferToThread(run), b"still connected")

    async def test_twoBindsAtOnce(self) -> None:
        """Two clients BIND at once: two ports, and each peer reaches its own client."""
        server = await self.startServer()

        def run() -> list[bytes]:
            one, first1 = bindRequest(server.address, LOOPBACK4, 0)
            two, first2 = bindRequest(server.address, LOOPBACK4, 0)
            with one, two:
                assert first1[2] != first2[2], (first1, first2)
                with (
                    connectPeer((first2[1], first2[2])) as peer2,
                    connectPeer((first1[1], first1[2])) as peer1,
                ):
                    assert readReply(one)[2] == address(peer1)[1]
                    assert readReply(two)[2] == address(peer2)[1]
                    peer1.sendall(b"to one")
                    peer2.sendall(b"to two")
                    return [recvExactly(one, 6), recvExactly(two, 6)]

        self.assertEqual(await deferToThread(run), [b"to one", b"to two"])


# -- data after the second reply ---------------------------------------------


class BindDataTests(BindTestCase):
    """What flows once the peer is connected: early bytes first, bulk, half-closes."""

    async def test_earlyBytesFirst(self) -> None:
        """
        Bytes the client sent with the request and after the first reply,
        before the peer connected, reach the peer first and in order; then
        data flows both ways.
        """
        server = await self.startServer()

        def run() -> tuple[bytes, bytes]:
            client, first = bindRequest(server.address, LOOPBACK4, 0, early=b"[with the request]")
            with client:
                client.sendall(b"[after the first reply]")
                time.sleep(0.05)  # let the server hold them
                with connectPeer((first[1], first[2])) as peer:
                    readReply(client)
                    client.sendall(b"[after the second reply]")
                    expected = b"[with the request][after the first reply][after the second reply]"
                    toPeer = recvExactly(peer, len(expected))
                    peer.sendall(b"answer")
                    return toPeer, recvExactly(client, 6)

        toPeer, toClient = await deferToThread(run)
        self.assertEqual(toPeer, b"[with the request][after the first reply][after the second reply]")
        self.assertEqual(toClient, b"answer")

    async def test_earlyBytesBeyondHoldLimit(self) -> None:
        """
        A client that sends 1 MiB before its peer connects (more than the
        server holds, so it stops reading for a while) loses none of it:
        the peer gets all of it, in order.
        """
        server = await self.startServer()
        payload = random.Random(5).randbytes(1 << 20)

        def run() -> tuple[str, int]:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client:
                errors: list[BaseException] = []

                def send() -> None:
                    try:
                        client.sendall(payload)
                    except BaseException as e:
                        errors.append(e)

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                time.sleep(0.2)
                with connectPeer((first[1], first[2])) as peer:
                    assert readReply(client)[0] == 0
                    received = recvExactly(peer, len(payload))
                sender.join(TIMEOUT)
                if errors:
                    raise errors[0]
                return hashlib.sha256(received).hexdigest(), len(received)

        digest, count = await deferToThread(run)
        self.assertEqual(count, len(payload))
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())

    async def test_peerSendsAndClosesAtOnce(self) -> None:
        """
        A peer that sends and closes as soon as it connects: the client
        gets the second reply, then the data, then EOF.
        """
        server = await self.startServer()
        data = random.Random(6).randbytes(200 * 1000)

        def run() -> tuple[Reply, bytes, tuple[str, int]]:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client:
                with connectPeer((first[1], first[2])) as peer:
                    peer.sendall(data)
                    peerAddress = address(peer)
                second = readReply(client)
                return second, recvUntilClosed(client, 2 * len(data)), peerAddress

        second, received, peerAddress = await deferToThread(run)
        self.assertEqual(second, (0, *peerAddress))
        self.assertEqual(received, data)

    async def test_largeTransferBothWays(self) -> None:
        """8 MiB each way at the same time, checked with SHA-256 at both ends."""
        server = await self.startServer()
        size = 8 * 1024 * 1024
        up = random.Random(1).randbytes(size)
        down = random.Random(2).randbytes(size)

        def setUp() -> tuple[socket.socket, socket.socket]:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            try:
                peer = connectPeer((first[1], first[2]))
                try:
                    assert readReply(client) == (0, *address(peer))
                except BaseException:
                    peer.close()
                    raise
            except BaseException:
                client.close()
                raise
            return client, peer

        started = time.monotonic()
        client, peer = await deferToThread(setUp)
        with client, peer:
            results = await gatherResults([deferToThread(pump, client, up), deferToThread(pump, peer, down)])
        (clientGot, clientCount), (peerGot, peerCount) = results
        self.assertEqual((clientCount, peerCount), (size, size))
        self.assertEqual(peerGot, hashlib.sha256(up).hexdigest())
        self.assertEqual(clientGot, hashlib.sha256(down).hexdigest())
        self.assertLess(time.monotonic() - started, 30)
        await waitFor(lambda: server.factory.counters.sessions == 1, what="the session to be recorded")
        counters = server.factory.counters
        self.assertEqual((counters.bytesUp, counters.bytesDown), (size, size))

    async def halfCloseFirst(self, clientFirst: bool, seed: int) -> None:
        """
        One side sends a little and then SHUT_WR: the other gets it and EOF,
        and can still send a larger payload back, followed by its own EOF.
        """
        server = await self.startServer()
        payload = random.Random(seed).randbytes(256 * 1024)
        goodbye = b"client says goodbye" if clientFirst else b"peer says goodbye"

        def run() -> tuple[bytes, bytes, bytes]:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client, connectPeer((first[1], first[2])) as peer:
                assert readReply(client)[0] == 0
                closer, other = (client, peer) if clientFirst else (peer, client)
                closer.sendall(goodbye)
                closer.shutdown(socket.SHUT_WR)
                toOther = recvUntilClosed(other)
                other.sendall(payload)
                other.shutdown(socket.SHUT_WR)
                toCloser = recvUntilClosed(closer, 2 * len(payload))
                return toOther, toCloser, recvUntilClosed(other)

        toOther, toCloser, after = await deferToThread(run)
        self.assertEqual(toOther, goodbye)
        self.assertEqual(toCloser, payload)
        self.assertEqual(after, b"")

    async def test_peerHalfClosesFirst(self) -> None:
        """The peer's SHUT_WR reaches the client as EOF; the client can still send to the peer."""
        await self.halfCloseFirst(clientFirst=False, seed=3)

    async def test_clientHalfClosesFirst(self) -> None:
        """The client's SHUT_WR reaches the peer as EOF; the peer can still send to the client."""
        await self.halfCloseFirst(clientFirst=True, seed=4)


# -- who may connect -----------------------------------------------------------


class BindPeerCheckTests(BindTestCase):
    """--bind-check: address (the default), port and none, over real sockets."""

    @needsOtherLoopback
    async def test_unexpectedPeerRefused(self) -> None:
        """
        DST.ADDR 127.0.0.2 and a peer from 127.0.0.1: its connection is
        closed without data and the client gets no second reply; a peer
        from 127.0.0.2 then gets in on the same port.
        """
        server = await self.startServer()

        def run() -> tuple[Reply, bytes, Reply, tuple[str, int]]:
            client, first = bindRequest(server.address, OTHER_LOOPBACK4, 0)
            with client:
                with connectPeer((first[1], first[2])) as stranger:
                    toStranger = recvUntilClosed(stranger)
                assertNoReplyYet(client)
                with connectPeer((first[1], first[2]), source=(OTHER_LOOPBACK4, 0)) as peer:
                    second = readReply(client)
                    peer.sendall(b"hi")
                    assert recvExactly(client, 2) == b"hi"
                    return first, toStranger, second, address(peer)

        first, toStranger, second, peer = await deferToThread(run)
        self.assertEqual(first[:2], (0, LOOPBACK4))
        self.assertEqual(toStranger, b"")
        self.assertEqual(second, (0, *peer))
        self.assertEqual(peer[0], OTHER_LOOPBACK4)

    @needsOtherLoopback
    async def test_checkNoneAcceptsAnyPeer(self) -> None:
        """With bindCheck="none", a peer from 127.0.0.1 is accepted though DST.ADDR is 127.0.0.2."""
        server = await self.startServer(bindCheck=PeerCheck.NONE)

        def run() -> tuple[Reply, tuple[str, int]]:
            client, first = bindRequest(server.address, OTHER_LOOPBACK4, 0)
            with client, connectPeer((first[1], first[2])) as peer:
                return readReply(client), address(peer)

        second, peer = await deferToThread(run)
        self.assertEqual(second, (0, *peer))
        self.assertEqual(peer[0], LOOPBACK4)

    async def test_checkPortMismatchRefused(self) -> None:
        """
        With bindCheck="port", a peer from the right address but another
        port than DST.PORT is refused; the one bound to DST.PORT gets in.
        """
        server = await self.startServer(bindCheck=PeerCheck.PORT)

        def run() -> tuple[bytes, Reply, int]:
            with peerSocket((LOOPBACK4, 0)) as peer:
                expectedPort = address(peer)[1]
                client, first = bindRequest(server.address, LOOPBACK4, expectedPort)
                with client:
                    with connectPeer((first[1], first[2])) as stranger:
                        assert address(stranger)[1] != expectedPort
                        toStranger = recvUntilClosed(stranger)
                    assertNoReplyYet(client)
                    peer.connect((first[1], first[2]))
                    second = readReply(client)
                    client.sendall(b"ok")
                    assert recvExactly(peer, 2) == b"ok"
                    return toStranger, second, expectedPort

        toStranger, second, expectedPort = await deferToThread(run)
        self.assertEqual(toStranger, b"")
        self.assertEqual(second, (0, LOOPBACK4, expectedPort))

    async def test_checkAddressIgnoresPort(self) -> None:
        """With the default check, DST.PORT does not matter: a peer from any port gets in."""
        server = await self.startServer()

        def run() -> tuple[Reply, tuple[str, int]]:
            client, first = bindRequest(server.address, LOOPBACK4, 1)
            with client, connectPeer((first[1], first[2])) as peer:
                return readReply(client), address(peer)

        second, peer = await deferToThread(run)
        self.assertEqual(second, (0, *peer))


# -- the timeout, and clients that leave ---------------------------------------


class BindEndTests(BindTestCase):
    """How a BIND ends without a peer: the timeout, or the client leaving."""

    async def test_timeout(self) -> None:
        """
        bindTimeout=0.5 and no peer: about 0.5 s after the first reply comes
        a second one with REP 0x06 (TTL expired), then EOF, and the
        listening port is closed.
        """
        server = await self.startServer(bindTimeout=0.5)
        recorder = recordListeners(server)

        def run() -> tuple[Reply, Reply, float, bytes]:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client:
                started = time.monotonic()
                second = readReply(client)
                waited = time.monotonic() - started
                return first, second, waited, recvUntilClosed(client)

        first, second, waited, rest = await deferToThread(run)
        self.assertEqual(first[:2], (0, LOOPBACK4))
        self.assertEqual(second, (6, "0.0.0.0", 0))
        self.assertEqual(rest, b"")
        self.assertGreater(waited, 0.3)
        self.assertLess(waited, 5.0)
        # Twisted closes a port's socket a reactor turn after stopListening.
        [port] = recorder.ports
        await waitFor(lambda: not isListening(port), limit=1.0, what="the BIND listener to close")
        await deferToThread(assertRefused, (first[1], first[2]))

    async def test_timeoutSparesTunnel(self) -> None:
        """Once the peer is in, the BIND timeout no longer applies: the tunnel outlives it."""
        server = await self.startServer(bindTimeout=0.5)

        def run() -> bytes:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client, connectPeer((first[1], first[2])) as peer:
                assert readReply(client)[0] == 0
                time.sleep(1.0)
                peer.sendall(b"still here")
                return recvExactly(client, 10)

        self.assertEqual(await deferToThread(run), b"still here")

    async def clientLeaves(self, reset: bool) -> None:
        """
        A client BINDs then leaves before any peer (with a FIN, or a reset
        if C{reset}): its listening port is closed at once, and a connection
        to it is refused.
        """
        server = await self.startServer()
        recorder = recordListeners(server)

        def run() -> Reply:
            client, first = bindRequest(server.address, LOOPBACK4, 0)
            with client:
                if reset:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return first

        first = await deferToThread(run)
        [port] = recorder.ports
        self.assertEqual((recorder.addresses[0].host, recorder.addresses[0].port), first[1:])
        started = time.monotonic()
        await waitFor(lambda: not isListening(port), limit=2.0, what="the BIND listener to close")
        self.assertLess(time.monotonic() - started, 1.0)
        await deferToThread(assertRefused, (first[1], first[2]))
        await waitFor(lambda: server.factory.counters.active == 0, what="the session to end")

    async def test_clientClosesBeforePeer(self) -> None:
        """The client closes (FIN) before its peer connects: the listener goes at once."""
        await self.clientLeaves(reset=False)

    async def test_clientResetsBeforePeer(self) -> None:
        """The client resets before its peer connects: the listener goes at once."""
        await self.clientLeaves(reset=True)


# -- where it listens ------------------------------------------------------------


class BindPortRangeTests(BindTestCase):
    """bindPortRange: BIND listens only on ports within the range."""

    async def test_portsInRange(self) -> None:
        """Three BINDs at once all listen within a 16-port range, on distinct ports that work."""
        low, high = portRangeFrom(16)
        server = await self.startServer(bindPortRange=(low, high))

        def run() -> list[int]:
            ports = []
            clients = [bindRequest(server.address, LOOPBACK4, 0) for _ in range(3)]
            try:
                for client, first in clients:
                    assert first[:2] == (0, LOOPBACK4), first
                    ports.append(first[2])
                    with connectPeer((first[1], first[2])) as peer:
                        assert readReply(client) == (0, *address(peer))
            finally:
                for client, _ in clients:
                    client.close()
            return ports

        ports = await deferToThread(run)
        self.assertEqual(len(set(ports)), 3)
        for port in ports:
            self.assertTrue(low <= port <= high, f"{port} not in {low}-{high}")

    async def test_rangeExhausted(self) -> None:
        """Every port of the range taken: REP 0x01 (general failure), then the server closes."""
        with socket.socket() as holder:
            holder.bind((LOOPBACK4, 0))
            holder.listen(1)
            taken = holder.getsockname()[1]
            server = await self.startServer(bindPortRange=(taken, taken))

            def run() -> tuple[Reply, bytes]:
                client, first = bindRequest(server.address, LOOPBACK4, 0)
                with client:
                    return first, recvUntilClosed(client)

            first, rest = await deferToThread(run)
        self.assertEqual(first, (1, "0.0.0.0", 0))
        self.assertEqual(rest, b"")


# -- twistd, and real programs -----------------------------------------------------


class BindTwistdTests(BindTestCase):
    """BIND through a C{twistd socks5} child process, with its --bind-* options."""

    async def test_bindThroughTwistd(self) -> None:
        """
        A BIND through twistd, listening in --bind-port-range: both replies,
        data both ways, and the session's log line says command=bind and
        names the peer.
        """
        low, high = portRangeFrom(16)
        logFile = str(Path(self.mktemp()).absolute())
        Path(logFile).parent.mkdir(parents=True, exist_ok=True)
        child = await startTwistd(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--bind-timeout",
            "10",
            "--bind-port-range",
            f"{low}-{high}",
            "--bind-check",
            "port",
            logFile=logFile,
        )
        port = await child.listening

        def run() -> tuple[Reply, Reply, tuple[str, int], bytes, bytes]:
            with peerSocket((LOOPBACK4, 0)) as peer:
                peerAddress = address(peer)
                client, first = bindRequest((LOOPBACK4, port), LOOPBACK4, peerAddress[1])
                with client:
                    peer.connect((first[1], first[2]))
                    second = readReply(client)
                    client.sendall(b"up")
                    toPeer = recvExactly(peer, 2)
                    peer.sendall(b"down!")
                    return first, second, peerAddress, toPeer, recvExactly(client, 5)

        first, second, peer, toPeer, toClient = await deferToThread(run)
        self.assertEqual(first[:2], (0, LOOPBACK4))
        self.assertTrue(low <= first[2] <= high, f"{first[2]} not in {low}-{high}")
        self.assertEqual(second, (0, *peer))
        self.assertEqual((toPeer, toClient), (b"up", b"down!"))
        line = re.compile(
            rb"session succeeded: client=127\.0\.0\.1:\d+ user=None command=bind "
            + re.escape(f"destination={peer[0]}:{peer[1]} up=2 down=5".encode())
        )
        await waitFor(
            lambda: line.search(Path(logFile).read_bytes()) is not None,
            limit=10.0,
            what="the BIND session to be logged",
        )
        log = Path(logFile).read_bytes()
        self.assertNotIn(b"Traceback", log)


class SocksifyTests(BindTestCase):
    """
    Dante's C{socksify} (package dante-client) makes C{socat TCP4-LISTEN:0}
    listen through our server: its bind()/listen() become a BIND, its
    accept() waits for the second reply.  This is what active-mode FTP
    clients behind a SOCKS server do.
    """

    def setUp(self) -> None:
        if SOCKSIFY is None or SOCAT is None:
            raise SkipTest("socksify (dante-client) and socat are needed")
        super().setUp()

    def socksConf(self, server: Server) -> str:
        """A Dante client configuration routing everything through C{server}, with no DNS."""
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "logoutput: stderr\n"
            "route {\n"
            f"    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {server.host} port = {server.port}\n"
            "    proxyprotocol: socks_v5\n"
            "    command: bind connect\n"
            "    method: none\n"
            "}\n"
        )
        return str(path)

    async def test_socatListensThroughBind(self) -> None:
        """
        socksify socat TCP4-LISTEN:0 EXEC:cat: socat's listener is our BIND
        listener; a peer connecting there talks to cat through the server,
        and after the peer's FIN socat exits with status 0.
        """
        assert SOCKSIFY is not None and SOCAT is not None
        sessions = watchSessions(self)
        server = await self.startServer(bindTimeout=20)
        recorder = recordListeners(server)
        env = childEnvironment(SOCKS_CONF=self.socksConf(server))
        running = ensureDeferred(
            runProcess([SOCKSIFY, SOCAT, "-d", "-d", "TCP4-LISTEN:0", "EXEC:cat"], timeout=20, env=env)
        )
        outcome: list[Any] = []

        def ended(result: Any) -> Any:
            outcome.append(result)
            return result

        running.addBoth(ended)
        await waitFor(
            lambda: bool(recorder.ports) or bool(outcome), limit=15.0, what="socat to BIND through the server"
        )
        if not recorder.ports:
            self.fail(f"socat ended without a BIND: {outcome!r}")
        [where] = recorder.addresses
        payload = b"hello, active-mode peer\n" * 100

        def peer() -> tuple[bytes, tuple[str, int]]:
            with connectPeer((where.host, where.port)) as sock:
                sock.sendall(payload)
                echoed = recvExactly(sock, len(payload))
                sock.shutdown(socket.SHUT_WR)
                assert recvUntilClosed(sock) == b""
                return echoed, address(sock)

        echoed, peerAddress = await deferToThread(peer)
        self.assertEqual(echoed, payload)
        out, err, code = await running
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-3000:])
        # socat -d -d logs its listening address, which Dante's getsockname() makes the BIND's.
        self.assertIn(f"127.0.0.1:{where.port}", err.decode("utf-8", "replace"))
        await waitFor(lambda: bool(sessions), what="the session to be logged")
        [event] = sessions
        self.assertEqual(event["command"], "bind")
        self.assertEqual(event["destination"], f"{peerAddress[0]}:{peerAddress[1]}")
        self.assertEqual((event["bytesUp"], event["bytesDown"]), (len(payload), len(payload)))
