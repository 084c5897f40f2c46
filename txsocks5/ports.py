"""
Small helpers shared by the commands that open sockets for a client
(BIND and UDP ASSOCIATE): binding within a port range, finding the local
address that faces a destination, and resolving a name to addresses.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHostnameResolver, IReactorTime, IResolutionReceiver
from zope.interface import implementer

from txsocks5 import wire

__all__ = ["describeAddress", "listenInRange", "localAddressFacing", "resolveName"]

P = TypeVar("P")


def describeAddress(address: IAddress | None) -> str:
    """
    A client, server or listening address as C{host:port} (C{[v6]:port}),
    with IPv4-mapped IPv6 shown as plain IPv4; a UNIX socket as its path;
    C{"?"} for no address.
    """
    if address is None:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return str(wire.Address.fromHost(host, port))
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name or address)


def listenInRange(
    listen: Callable[[int], P],
    portRange: tuple[int, int] | None,
    attempts: int = 64,
) -> P:
    """
    Call C{listen(port)} with port 0 (the OS picks), or with free ports
    taken at random from the inclusive C{portRange}, at most C{attempts}
    of them, until one binds.

    @raise error.CannotListenError: if none could be bound.
    """
    if portRange is None:
        return listen(0)
    low, high = portRange
    candidates = range(low, high + 1)
    failure: error.CannotListenError | None = None
    for port in random.sample(candidates, min(attempts, len(candidates))):
        try:
            return listen(port)
        except error.CannotListenError as e:
            failure = e
    raise failure or error.CannotListenError("", 0, OSError("empty port range"))


def localAddressFacing(ip: str) -> str:
    """
    The local address this host would use to reach C{ip}, as the routing
    table says.  (Connecting a UDP socket sends nothing.)

    @raise OSError: if there is no route to C{ip}.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))
        host: str = probe.getsockname()[0]
    return host.split("%", 1)[0]


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses a name resolves to and fires a Deferred with them."""

    def __init__(self) -> None:
        self.result: Deferred[list[str]] = Deferred()
        self._addresses: list[str] = []

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        """Nothing to do until addresses arrive."""

    def addressResolved(self, address: IAddress) -> None:
        host = address.host  # type: ignore[attr-defined]
        if host not in self._addresses:
            self._addresses.append(host)

    def resolutionComplete(self) -> None:
        self.result.callback(self._addresses)


def resolveName(
    resolver: IHostnameResolver,
    name: str,
    transport: str = "TCP",
    clock: IReactorTime | None = None,
    timeout: float | None = None,
) -> Deferred[list[str]]:
    """
    Resolve C{name} without blocking: a Deferred that fires with its
    addresses (IPv4 and IPv6, in the resolver's order), or fails with
    L{error.DNSLookupError} if there are none or C{name} cannot be a host
    name, or with L{defer.TimeoutError} after C{timeout} seconds on
    C{clock}.
    """
    receiver = _Addresses()
    try:
        name.encode("idna")  # What the resolver would choke on, perhaps in a thread.
        resolver.resolveHostName(receiver, name, 0, None, transport)
    except (UnicodeError, ValueError) as e:
        receiver.result.callback([])
        name = f"{name.encode('utf-8', 'surrogateescape')!r} ({e})"
    if timeout is not None and clock is not None and not receiver.result.called:
        receiver.result.addTimeout(timeout, clock)

    def check(addresses: list[str]) -> list[str]:
        if not addresses:
            raise error.DNSLookupError(f"no address for {name}")
        return addresses

    return receiver.result.addCallback(check)
