"""
Shared helpers for the real-socket integration tests.

Everything here listens and connects on loopback addresses only (127.0.0.1
and ::1) and never asks DNS: names a SOCKS client sends are resolved by
L{FakeHostnameResolver}, installed through L{FakeResolverReactor} both on
the server's outbound side and as the server's own reactor (which the UDP
relay resolves names with), and UDP datagrams the server sends anywhere
but to loopback addresses are refused.

Blocking client code (raw sockets, curl-free clients such as python-socks
and PySocks) runs in threads via C{deferToThread}; every socket gets a
timeout and every loop is bounded, so a broken server fails a test instead
of hanging the run.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor as _globalReactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import (
    ConnectionRefusedError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPullProducer,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides, implementer, providedBy

from txsocks5 import wire
from txsocks5.interfaces import IOutbound
from txsocks5.outbound import DirectOutbound
from txsocks5.server import SOCKS5Factory

reactor: Any = _globalReactor

LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"

#: The checkout, for C{PYTHONPATH} of subprocesses (twistd must find both
#: C{txsocks5} and the C{twisted/plugins/txsocks5_plugins.py} dropin).
CHECKOUT = str(Path(__file__).resolve().parent.parent)

#: Seconds any single blocking socket operation in a client thread may take.
SOCKET_TIMEOUT = 10.0

#: Names the fake resolver knows; everything else fails to resolve.
DEFAULT_HOSTS: Mapping[str, Sequence[str]] = {
    "target.test": (LOOPBACK4, LOOPBACK6),
    "target4.test": (LOOPBACK4,),
    "target6.test": (LOOPBACK6,),
    "localhost": (LOOPBACK4, LOOPBACK6),
}


def ipv6Available() -> bool:
    """Whether a TCP socket can be bound on ::1 here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK6, 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = ipv6Available()
SKIP_IPV6 = None if HAVE_IPV6 else "::1 is not available"
CURL = shutil.which("curl")
SKIP_CURL = None if CURL else "curl is not installed"
TIMEOUT_COMMAND = shutil.which("timeout")


def freePort(host: str = LOOPBACK4) -> int:
    """
    A TCP port on C{host} that nothing listens on (right now): bound, then
    released.  Connecting to it is refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def pattern(size: int, seed: int = 0) -> bytes:
    """C{size} deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


# -- name resolution without DNS ------------------------------------------


@implementer(IHostResolution)
class _Resolution:
    """One finished (synchronous) fake resolution."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: it is already over."""


@implementer(IHostnameResolver)
class FakeHostnameResolver:
    """
    A deterministic L{IHostnameResolver}: names in C{hosts} resolve to the
    given IP literals, in order; every other name resolves to nothing
    (which L{HostnameEndpoint} turns into a C{DNSLookupError}).

    @ivar lookups: every name asked for, in order.
    """

    def __init__(self, hosts: Mapping[str, Sequence[str]] = DEFAULT_HOSTS) -> None:
        self.hosts = {name.lower(): tuple(ips) for name, ips in hosts.items()}
        self.lookups: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Report the addresses of C{hostName} to C{resolutionReceiver} at once."""
        self.lookups.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for ip in self.hosts.get(hostName.lower().rstrip("."), ()):
            kind = IPv6Address if ":" in ip else IPv4Address
            if addressTypes is None or kind in addressTypes:
                resolutionReceiver.addressResolved(kind(transportSemantics, ip, portNumber))  # type: ignore[arg-type]
        resolutionReceiver.resolutionComplete()
        return resolution


class FakeResolverReactor:
    """
    The real reactor with only C{nameResolver} replaced.

    It declares every interface the real reactor provides (so
    L{HostnameEndpoint} sees an L{IReactorPluggableNameResolver} and uses
    our resolver instead of warning and calling C{getaddrinfo}), and hands
    every other attribute (C{connectTCP}, C{callLater}, ...) to the real
    reactor.
    """

    def __init__(self, resolver: IHostnameResolver, realReactor: Any = None) -> None:
        self._reactor = realReactor if realReactor is not None else reactor
        self.nameResolver = resolver
        #: Destinations a UDP write was refused for (see L{listenUDP}).
        self.udpRefused: list[tuple[str, int]] = []
        directlyProvides(self, providedBy(self._reactor), IReactorPluggableNameResolver)

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        """Replace the resolver of this wrapper only (never the real reactor's)."""
        old, self.nameResolver = self.nameResolver, resolver
        return old

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        """
        The real reactor's C{listenUDP}, with a guard on the port it returns:
        a C{write} to anything but a loopback address raises C{OSError}
        (EPERM) instead of sending, and is recorded in C{udpRefused}.
        """
        real = self._reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=maxPacketSize)
        return LoopbackOnlyUDPPort(real, self.udpRefused)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def isLoopback(host: str) -> bool:
    """Whether C{host} is a loopback IP literal (IPv4-mapped ones included)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class LoopbackOnlyUDPPort:
    """
    A UDP port whose C{write} refuses (with C{OSError}) any destination that
    is not a loopback IP literal; everything else goes to the real port.
    """

    def __init__(self, port: Any, refused: list[tuple[str, int]]) -> None:
        self._port = port
        self._refused = refused
        directlyProvides(self, providedBy(port))

    def write(self, datagram: bytes, addr: Any = None) -> Any:
        """Send C{datagram} to C{addr} if it is a loopback address."""
        if addr is not None and not isLoopback(addr[0]):
            self._refused.append((addr[0], addr[1]))
            raise OSError(errno.EPERM, f"test guard: {addr[0]} is not loopback")
        return self._port.write(datagram, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


@implementer(IOutbound)
class LoopbackOnlyOutbound:
    """
    A safety net around a real L{IOutbound}: IP literals that are not
    loopback are refused without touching the network (a test must never
    reach another host), names go on to the wrapped outbound (whose reactor
    resolves them with L{FakeHostnameResolver}).

    @ivar attempts: every destination asked for.
    """

    def __init__(self, inner: IOutbound) -> None:
        self.inner = inner
        self.attempts: list[wire.Address] = []

    def connect(
        self,
        address: wire.Address,
        protocolFactory: IProtocolFactory,
        allowAddress: Callable[[str], bool] | None = None,
    ) -> Deferred[IProtocol]:
        """Connect through the wrapped outbound if C{address} is safe."""
        self.attempts.append(address)
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_loopback:
            return fail(ConnectionRefusedError(f"test guard: {address} is not loopback"))
        if allowAddress is None:
            return self.inner.connect(address, protocolFactory)
        return self.inner.connect(address, protocolFactory, allowAddress=allowAddress)


# -- loopback target servers ----------------------------------------------


class TrackingFactory(Factory):
    """
    A server factory that remembers its protocols, so a test can wait for
    the N-th connection and for each one to end.

    Protocols built here get C{done}, a Deferred fired with the protocol on
    C{connectionLost}, and C{peer}, the address they were connected from.
    """

    noisy = False

    def __init__(self, protocolFactory: Callable[[], Protocol]) -> None:
        self._protocolFactory = protocolFactory
        self.instances: list[Any] = []
        self._waiters: list[tuple[int, Deferred[Any]]] = []

    def buildProtocol(self, addr: IAddress) -> Protocol:  # type: ignore[override]
        p: Any = self._protocolFactory()
        p.factory = self
        p.peer = addr
        p.done = Deferred()
        self.instances.append(p)
        return p  # type: ignore[no-any-return]

    def connectionMade(self, p: Protocol) -> None:
        """Called by the protocols: wake whoever waits for it."""
        index = self.instances.index(p)
        waiting, self._waiters = self._waiters, []
        for wanted, d in waiting:
            if wanted == index:
                d.callback(p)
            else:
                self._waiters.append((wanted, d))

    def whenConnected(self, index: int = 0) -> Deferred[Any]:
        """A Deferred firing with the C{index}-th protocol once it is connected."""
        if index < len(self.instances) and getattr(self.instances[index], "connected", False):
            d: Deferred[Any] = Deferred()
            d.callback(self.instances[index])
            return d
        d = Deferred()
        self._waiters.append((index, d))
        return d


class TrackedProtocol(Protocol):
    """Base of the target protocols: reports to its L{TrackingFactory}."""

    factory: TrackingFactory
    done: Deferred[Any]
    peer: IAddress

    def connectionMade(self) -> None:
        self.factory.connectionMade(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostReason = reason
        done = self.done
        if not done.called:
            done.callback(self)


@implementer(IHalfCloseableProtocol)
class EchoProtocol(TrackedProtocol):
    """
    Writes back what it reads, with backpressure (its own transport is its
    producer), hashing what it received.  A FIN from the peer is answered
    with a close once everything is written back.
    """

    def connectionMade(self) -> None:
        self.received = 0
        self.hash = hashlib.sha256()
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.hash.update(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """Our FIN went out; nothing more to do."""


@implementer(IHalfCloseableProtocol)
class SinkProtocol(TrackedProtocol):
    """
    Reads everything, hashing it; when the peer half-closes, answers with
    one line C{b"<count> <sha256 hex>\\n"} and closes.  Shows that data
    sent after a client's FIN still reaches the client.
    """

    def connectionMade(self) -> None:
        self.received = 0
        self.hash = hashlib.sha256()
        self.gotEOF = False
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.hash.update(data)

    def readConnectionLost(self) -> None:
        self.gotEOF = True
        self.transport.write(b"%d %s\n" % (self.received, self.hash.hexdigest().encode()))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """Our FIN went out; nothing more to do."""


@implementer(IPullProducer)
class SourceProtocol(TrackedProtocol):
    """
    Sends C{size} bytes of L{pattern} data, as fast as the connection takes
    them (a pull producer: a chunk each time the write buffer empties), then
    closes.  With C{waitForTrigger}, it starts when the first byte arrives.

    @ivar sent: bytes handed to the transport so far.
    """

    chunk = 64 * 1024

    def __init__(self, size: int, waitForTrigger: bool = False) -> None:
        self.size = size
        self.waitForTrigger = waitForTrigger
        self.sent = 0
        self.started = False
        self._block = pattern(self.chunk, seed=7)

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.waitForTrigger:
            self._start()

    def dataReceived(self, data: bytes) -> None:
        if not self.started:
            self._start()

    def _start(self) -> None:
        self.started = True
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        left = self.size - self.sent
        if left <= 0:
            return
        data = self._block if left >= self.chunk else self._block[:left]
        self.sent += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        if self.sent >= self.size:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        """The connection is closing; the next chunk will not be sent."""


@implementer(IHalfCloseableProtocol)
class HalfCloseFirstProtocol(TrackedProtocol):
    """
    Sends C{greeting} then half-closes at once, and keeps reading: the test
    checks it still receives everything the client sends afterwards.
    """

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.received = bytearray()
        self.gotEOF = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.greeting)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.gotEOF = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """Our FIN went out; nothing more to do."""


def listenTCP(
    testCase: TestCase, factory: IProtocolFactory, host: str = LOOPBACK4, port: int = 0
) -> Deferred[IListeningPort]:
    """
    Listen with C{factory} on C{host} (port 0: any free port) through a
    TCP endpoint; the port is closed when the test ends.
    """
    endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint
    if ":" in host:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    d = endpoint.listen(factory)

    def listening(p: IListeningPort) -> IListeningPort:
        testCase.addCleanup(p.stopListening)
        return p

    return d.addCallback(listening)


async def listenDualStack(testCase: TestCase, factory: IProtocolFactory) -> int:
    """
    Listen with C{factory} on the same port number on 127.0.0.1 and (when
    available) ::1, so that a client may reach C{localhost} over either.
    """
    last: Exception | None = None
    for _ in range(20):
        p4 = await listenTCP(testCase, factory, LOOPBACK4)
        number: int = p4.getHost().port  # type: ignore[attr-defined]
        if not HAVE_IPV6:
            return number
        try:
            await listenTCP(testCase, factory, LOOPBACK6, number)
        except Exception as e:  # the port is taken on ::1: try another
            last = e
            await maybeDeferred(p4.stopListening)
            continue
        return number
    raise RuntimeError(f"no port free on both 127.0.0.1 and ::1: {last}")


async def startTarget(
    testCase: TestCase, protocolFactory: Callable[[], Protocol], host: str = LOOPBACK4
) -> tuple[TrackingFactory, int]:
    """Start a loopback target server; return its factory and port number."""
    factory = TrackingFactory(protocolFactory)
    port = await listenTCP(testCase, factory, host)
    return factory, port.getHost().port  # type: ignore[attr-defined]


# -- the SOCKS5 server under test -----------------------------------------


class Server:
    """
    A running in-process L{SOCKS5Factory}.

    @ivar factory: the factory.
    @ivar host: the address it listens on.
    @ivar port: its port number.
    @ivar resolver: the fake resolver its outbound side uses.
    @ivar outbound: the loopback-only outbound guard (its C{attempts} lists
        every destination asked for).
    @ivar reactor: the L{FakeResolverReactor} the factory runs on (its
        C{udpRefused} lists UDP destinations the guard refused).
    """

    def __init__(
        self,
        factory: SOCKS5Factory,
        host: str,
        port: int,
        resolver: FakeHostnameResolver,
        outbound: LoopbackOnlyOutbound,
        reactor: FakeResolverReactor | None = None,
    ) -> None:
        self.factory = factory
        self.host = host
        self.port = port
        self.resolver = resolver
        self.outbound = outbound
        self.reactor = reactor

    @property
    def address(self) -> tuple[str, int]:
        """C{(host, port)} for C{socket.create_connection}."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """C{host:port}, with IPv6 in brackets (curl's proxy syntax)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class IntegrationTestCase(TestCase):
    """
    Base class: starts servers for a test and, when it ends, waits until
    every connection the test opened is closed (so a server that forgets a
    socket or a timer fails the test rather than leaking into the next).
    """

    timeout = 60

    def setUp(self) -> None:
        self._baseline = self._selectables()
        self._socksFactories: list[SOCKS5Factory] = []
        self.addCleanup(self._settle)

    @staticmethod
    def _selectables() -> set[Any]:
        """The reactor's readers and writers, except its own (wakers)."""
        internal = set(getattr(reactor, "_internalReaders", ()))
        return (set(reactor.getReaders()) | set(reactor.getWriters())) - internal

    async def _settle(self, limit: float = 10.0) -> None:
        deadline = reactor.seconds() + limit
        for _ in range(int(limit / 0.01) + 10):
            extra = self._selectables() - self._baseline
            active = [f.counters.active for f in self._socksFactories if f.counters.active]
            if not extra and not active:
                return
            if reactor.seconds() > deadline:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"still open {limit}s after the test: selectables={extra!r} socks sessions={active!r}")

    async def startServer(
        self,
        host: str = LOOPBACK4,
        hosts: Mapping[str, Sequence[str]] = DEFAULT_HOSTS,
        connectTimeout: float = 10.0,
        **factoryArgs: Any,
    ) -> Server:
        """
        Listen with a L{SOCKS5Factory} on C{host}, port 0.

        Its outbound connections go through L{DirectOutbound} on a
        L{FakeResolverReactor} (names from C{hosts} only), behind
        L{LoopbackOnlyOutbound}.  The factory itself runs on a
        L{FakeResolverReactor} with the same resolver too, so that what it
        resolves on its own (names in UDP datagrams) never reaches DNS, and
        its UDP sockets send to loopback addresses only.  C{factoryArgs} go
        to the factory.
        """
        resolver = FakeHostnameResolver(hosts)
        outbound = LoopbackOnlyOutbound(DirectOutbound(FakeResolverReactor(resolver), connectTimeout))  # type: ignore[arg-type]
        serverReactor = FakeResolverReactor(resolver)
        factory = SOCKS5Factory(outbound=outbound, reactor=serverReactor, **factoryArgs)
        self._socksFactories.append(factory)
        port = await listenTCP(self, factory, host)
        return Server(factory, host, port.getHost().port, resolver, outbound, serverReactor)  # type: ignore[attr-defined]


# -- a minimal, independent SOCKS5 client (blocking; run it in threads) ----


def connectTo(
    address: tuple[str, int],
    timeout: float = SOCKET_TIMEOUT,
    source: tuple[str, int] | None = None,
) -> socket.socket:
    """
    A blocking TCP connection to a loopback C{address}, with a timeout,
    from C{source} if given.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind(source)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def recvExactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly C{n} bytes, or raise C{EOFError} if the peer closes first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes: {bytes(data)!r}")
        data += chunk
    return bytes(data)


def recvUntilClosed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """
    Read until the peer closes (EOF), up to C{limit} bytes; a reset counts as
    a close.  Bounded in time by the socket's timeout per read.
    """
    data = bytearray()
    while len(data) <= limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def encodeAddress(host: str, port: int) -> bytes:
    """ATYP + DST.ADDR + DST.PORT for an IP literal or a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        return bytes([3, len(name)]) + name + struct.pack("!H", port)
    atyp = 1 if ip.version == 4 else 4
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def encodeRequest(host: str, port: int, command: int = 1) -> bytes:
    """A SOCKS5 request."""
    return bytes([5, command, 0]) + encodeAddress(host, port)


def encodeAuth(username: bytes, password: bytes) -> bytes:
    """An RFC 1929 username/password request."""
    return bytes([1, len(username)]) + username + bytes([len(password)]) + password


def readReply(sock: socket.socket) -> tuple[int, str, int]:
    """Read a SOCKS5 reply; return (REP, BND.ADDR, BND.PORT)."""
    head = recvExactly(sock, 4)
    if head[0] != 5 or head[2] != 0:
        raise ValueError(f"bad reply header {head!r}")
    atyp = head[3]
    if atyp == 1:
        host = str(ipaddress.IPv4Address(recvExactly(sock, 4)))
    elif atyp == 4:
        host = str(ipaddress.IPv6Address(recvExactly(sock, 16)))
    elif atyp == 3:
        host = recvExactly(sock, recvExactly(sock, 1)[0]).decode("ascii", "replace")
    else:
        raise ValueError(f"bad ATYP {atyp} in reply")
    (port,) = struct.unpack("!H", recvExactly(sock, 2))
    return head[1], host, port


def socksConnect(
    proxy: tuple[str, int],
    host: str,
    port: int,
    credentials: tuple[bytes, bytes] | None = None,
) -> tuple[socket.socket, tuple[int, str, int]]:
    """
    Connect through the SOCKS5 server at C{proxy} to C{host}:C{port}; return
    the socket and the reply.  Raises if negotiation fails before a reply.
    """
    sock = connectTo(proxy)
    try:
        if credentials is None:
            sock.sendall(b"\x05\x01\x00")
            if recvExactly(sock, 2) != b"\x05\x00":
                raise ValueError("no-authentication was not accepted")
        else:
            sock.sendall(b"\x05\x01\x02")
            if recvExactly(sock, 2) != b"\x05\x02":
                raise ValueError("username/password was not selected")
            sock.sendall(encodeAuth(*credentials))
            status = recvExactly(sock, 2)
            if status != b"\x01\x00":
                raise ValueError(f"login refused: {status!r}")
        sock.sendall(encodeRequest(host, port))
        return sock, readReply(sock)
    except BaseException:
        sock.close()
        raise


# -- subprocesses ---------------------------------------------------------


def childEnvironment(**extra: str) -> dict[str, str]:
    """
    A small, proxy-free environment for subprocesses, with the checkout on
    C{PYTHONPATH}.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": CHECKOUT,
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    env.update(extra)
    return env


async def runProcess(
    argv: Sequence[str],
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    path: str | None = None,
) -> tuple[bytes, bytes, int]:
    """
    Run C{argv} to completion without blocking the reactor
    (C{getProcessOutputAndValue}); return C{(stdout, stderr, code)}, with
    C{-signal} as the code if a signal killed it.

    C{timeout} is enforced twice: by coreutils C{timeout} around the child
    (which kills it, exit code 124) and on the Deferred itself.
    """
    executable, args = argv[0], list(argv[1:])
    if TIMEOUT_COMMAND is not None:
        args = ["-k", "2", str(timeout), executable, *args]
        executable = TIMEOUT_COMMAND
    d = getProcessOutputAndValue(
        executable, args, env=dict(env if env is not None else childEnvironment()), path=path, reactor=reactor
    )

    def signalled(failure: Failure) -> tuple[bytes, bytes, int] | Failure:
        # Killed by a signal: the Deferred fails with (out, err, signal).
        if isinstance(failure.value, tuple):
            out, err, sig = failure.value
            return out, err, -sig
        return failure

    d.addErrback(signalled)
    d.addTimeout(timeout + 10, reactor)
    out, err, code = await d
    return out, err, code


async def runCurl(*args: str) -> tuple[bytes, bytes, int]:
    """Run curl with C{args} (no config file, no proxy from the environment, 15 s at most)."""
    assert CURL is not None
    return await runProcess([CURL, "-q", "-sS", "--max-time", "15", *args], timeout=25)


def twistdCommand(*args: str) -> list[str]:
    """The command line running C{twistd} with this Python."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [sys.executable, str(script), *args]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


#: twistd's log line once it listens on 127.0.0.1 (group 1: the port).
SERVING_IPV4 = re.compile(rb"txsocks5 serving SOCKS5 on 127\.0\.0\.1:(\d+)")
#: twistd's log line once it listens on ::1 (group 1: the port).
SERVING_IPV6 = re.compile(rb"txsocks5 serving SOCKS5 on \[::1\]:(\d+)")


class TwistdProtocol(ProcessProtocol):
    """
    Watches a C{twistd -n socks5} child: fires C{listening} with the port
    from its "serving" log line (matched by C{serving}), and C{ended} (with
    the exit reason, a L{Failure}, as a plain value) when it has exited.
    """

    def __init__(self, serving: re.Pattern[bytes] = SERVING_IPV4) -> None:
        self.serving = serving
        self.output = bytearray()
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[list[Failure]] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.listening.called:
            match = self.serving.search(self.output)
            if match:
                self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd ended before listening: {bytes(self.output)!r}"))
        self.ended.callback([reason])  # in a list: a Failure would errback

    @property
    def running(self) -> bool:
        """Whether the child has not ended yet."""
        return not self.ended.called


async def killTwistd(proto: TwistdProtocol) -> None:
    """Kill the child twistd of C{proto}, if it still runs, and wait until it has ended."""
    if not proto.running:
        return
    with suppress(ProcessExitedAlready):  # Reaped already, but not yet reported to proto.
        proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
    await proto.ended.addTimeout(10, reactor)


async def startTwistd(
    testCase: TestCase,
    *socks5Args: str,
    twistdArgs: Sequence[str] = (),
    logFile: str | None = None,
    serving: re.Pattern[bytes] = SERVING_IPV4,
    startTimeout: float = 20.0,
) -> TwistdProtocol:
    """
    Run C{twistd --pidfile= -n [TWISTDARGS] socks5 ARGS} as a child process
    (killed when the test ends, if still running) and wait until it logs
    that it listens.

    @param logFile: if given, twistd logs there (C{--logfile}) instead of
        to its stdout, and the "serving" line is looked for in that file.
    """
    proto = TwistdProtocol(serving)
    workdir = testCase.mktemp()
    os.makedirs(workdir)
    options = ["--pidfile=", "-n", *twistdArgs]
    if logFile is not None:
        options.append(f"--logfile={logFile}")
    argv = twistdCommand(*options, "socks5", *socks5Args)
    reactor.spawnProcess(proto, argv[0], argv, env=childEnvironment(), path=workdir)

    testCase.addCleanup(killTwistd, proto)
    if logFile is not None:
        for _ in range(int(startTimeout / 0.05)):
            if not proto.running or proto.listening.called:
                break
            with suppress(FileNotFoundError):  # twistd has not created it yet
                proto.outReceived(Path(logFile).read_bytes())
                proto.output.clear()
            await deferLater(reactor, 0.05, lambda: None)
    await proto.listening.addTimeout(startTimeout, reactor)
    return proto


def processExitedCleanly(reason: Failure) -> bool:
    """Whether a child ended with exit code 0 or by the SIGTERM it was sent."""
    if reason.check(ProcessDone):
        return True
    value = reason.value
    return isinstance(value, ProcessTerminated) and (
        value.signal == signal.SIGTERM or value.exitCode in (0, 128 + signal.SIGTERM)
    )


def vmRSS(pid: int) -> int:
    """The resident set size of process C{pid}, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


def canBind(host: str, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether a socket of C{kind} can be bound on C{host} here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


F = TypeVar("F", bound=Callable[..., Any])


def needsIPv6(f: F) -> F:
    """Skip a test when ::1 cannot be used."""
    if not HAVE_IPV6:
        f.skip = SKIP_IPV6  # type: ignore[attr-defined]
    return f


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await deferLater(reactor, seconds, lambda: None)


async def waitFor(condition: Callable[[], bool], limit: float = 5.0, what: str = "condition") -> None:
    """Poll C{condition} until true; fail after C{limit} seconds."""
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.01) + 10):
        if condition():
            return
        if time.monotonic() > deadline:
            break
        await sleep(0.01)
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


def watchSessions(testCase: TestCase) -> list[dict[str, Any]]:
    """The session log events (namespace C{txsocks5.session}) of the rest of the test."""
    events: list[dict[str, Any]] = []

    @implementer(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "txsocks5.session":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def pump(sock: socket.socket, data: bytes, limit: float = 40.0) -> tuple[str, int]:
    """
    Send C{data} then SHUT_WR (from a second thread) while reading until
    EOF; return the SHA-256 (hex) and length of what was read.  Bounded by
    C{limit} seconds overall and the socket's timeout per read.
    """
    errors: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(data)
            for offset in range(0, len(data), 256 * 1024):
                sock.sendall(view[offset : offset + 256 * 1024])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = hashlib.sha256()
    count = 0
    deadline = time.monotonic() + limit
    for _ in range(64 * 1024 * 1024):  # bounded; each pass reads at least a byte
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        count += len(chunk)
        received.update(chunk)
        if time.monotonic() > deadline:
            raise AssertionError(f"still reading after {limit}s ({count} bytes)")
    sender.join(max(0.1, deadline - time.monotonic()))
    if sender.is_alive():
        raise AssertionError("the sender did not finish")
    if errors:
        raise errors[0]
    return received.hexdigest(), count
