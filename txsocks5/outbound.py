"""
How the server reaches destinations, and how connection failures map to
RFC 1928 REP codes.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  # Imported now: importing it needs a file descriptor.
import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocks5 import wire
from txsocks5.interfaces import AddressNotAllowed, IConnectingFactory, IOutbound

__all__ = ["DirectOutbound", "replyForFailure"]


_TIMEOUTS = (
    error.TimeoutError,
    error.TCPTimedOutError,  # ETIMEDOUT
    defer.TimeoutError,
    error.ConnectingCancelledError,  # what Deferred.addTimeout really fails with
)

_ERRNO_REPLIES = {
    errno.ECONNREFUSED: wire.Reply.CONNECTION_REFUSED,
    errno.EHOSTUNREACH: wire.Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: wire.Reply.HOST_UNREACHABLE,
    errno.ENETUNREACH: wire.Reply.NETWORK_UNREACHABLE,
    errno.ENETDOWN: wire.Reply.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: wire.Reply.TTL_EXPIRED,
}


def replyForFailure(failure: Failure) -> wire.Reply:
    """
    The REP code that tells a client why its connection attempt failed:
    denied by the rules → 0x02, refused → 0x05, unresolvable or host unreachable → 0x04, network
    unreachable → 0x03, timed out → 0x06, anything else → 0x01.
    """
    value = failure.value
    if isinstance(value, AddressNotAllowed):
        return wire.Reply.NOT_ALLOWED
    if isinstance(value, error.ConnectionRefusedError):
        return wire.Reply.CONNECTION_REFUSED
    if isinstance(value, (error.DNSLookupError, error.UnknownHostError)):
        return wire.Reply.HOST_UNREACHABLE
    if isinstance(value, error.NoRouteError):
        return wire.Reply.NETWORK_UNREACHABLE
    if isinstance(value, _TIMEOUTS):
        return wire.Reply.TTL_EXPIRED
    if isinstance(value, error.ConnectError) and isinstance(value.osError, int):
        return _ERRNO_REPLIES.get(value.osError, wire.Reply.GENERAL_FAILURE)
    if isinstance(value, OSError) and value.errno is not None:
        return _ERRNO_REPLIES.get(value.errno, wire.Reply.GENERAL_FAILURE)
    return wire.Reply.GENERAL_FAILURE


@implementer(IOutbound)
class DirectOutbound:
    """
    Connect straight to destinations from this host.

    IP literals are connected to directly; names go through
    L{HostnameEndpoint}, which resolves them with the reactor's resolver
    without blocking and races IPv6 and IPv4 addresses (happy eyeballs).

    @param reactor: the reactor to connect with.
    @param timeout: seconds a whole connection attempt (resolution included)
        may take.
    @param bindAddress: an optional C{(host, port)} to connect from.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._bindAddress = bindAddress

    def connect(
        self,
        address: wire.Address,
        protocolFactory: IProtocolFactory,
        allowAddress: Callable[[str], bool] | None = None,
    ) -> Deferred[IProtocol]:
        """Connect to C{address}; see L{IOutbound.connect}."""
        if address.type == wire.AddressType.DOMAIN:
            # An IP literal sent as a name (curl does this) is not resolved.
            address = wire.Address.fromHost(address.host, address.port)
        host = address.host
        if allowAddress is not None and address.type != wire.AddressType.DOMAIN and not allowAddress(host):
            return fail(AddressNotAllowed(f"{host} is not allowed"))
        if address.type != wire.AddressType.DOMAIN and IConnectingFactory.providedBy(protocolFactory):
            # A literal, and a factory that says when it is connected: connect
            # without an endpoint's wrapping protocol between us and the data.
            d = protocolFactory.whenConnected()
            self._reactor.connectTCP(host, address.port, protocolFactory, self._timeout, self._bindAddress)  # type: ignore[arg-type]
            return d
        endpoint: IStreamClientEndpoint
        if address.type == wire.AddressType.IPV4:
            endpoint = TCP4ClientEndpoint(self._reactor, host, address.port, self._timeout, self._bindAddress)
        elif address.type == wire.AddressType.IPV6:
            endpoint = TCP6ClientEndpoint(self._reactor, host, address.port, self._timeout, self._bindAddress)
        else:
            reactor: Any = self._reactor
            filtering = None
            if allowAddress is not None:
                filtering = _FilteringResolver(reactor.nameResolver, allowAddress)
                reactor = _ResolvingWith(reactor, filtering)
            try:
                host.encode("idna")
                endpoint = HostnameEndpoint(
                    reactor,
                    host,
                    address.port,
                    timeout=self._timeout,
                    bindAddress=self._bindAddress,
                )
            except (UnicodeError, ValueError) as e:
                return fail(error.DNSLookupError(f"invalid host name: {e}"))
        d = endpoint.connect(protocolFactory)
        if address.type == wire.AddressType.DOMAIN:
            # HostnameEndpoint's timeout is per attempt: bound the whole of it.
            # (For a literal, the connect's own timeout is the whole attempt.)
            clock: IReactorTime = self._reactor  # type: ignore[assignment]
            d.addTimeout(self._timeout, clock)
            if filtering is not None:
                d.addErrback(filtering.explain, host)
        return d


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    """Passes on only the resolved addresses its resolver's check allows."""

    def __init__(self, inner: IResolutionReceiver, resolver: _FilteringResolver) -> None:
        self._inner = inner
        self._resolver = resolver

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self._inner.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        if self._resolver.allowAddress(address.host):  # type: ignore[attr-defined]
            self._resolver.allowed += 1
            self._inner.addressResolved(address)
        else:
            self._resolver.denied += 1

    def resolutionComplete(self) -> None:
        self._inner.resolutionComplete()


@implementer(IHostnameResolver)
class _FilteringResolver:
    """A resolver that hides the addresses C{allowAddress} denies, and counts them."""

    def __init__(self, resolver: IHostnameResolver, allowAddress: Callable[[str], bool]) -> None:
        self._resolver = resolver
        self.allowAddress = allowAddress
        self.allowed = 0
        self.denied = 0

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        receiver = _FilteringReceiver(resolutionReceiver, self)
        resolver = self._resolver
        return resolver.resolveHostName(receiver, hostName, portNumber, addressTypes, transportSemantics)

    def explain(self, failure: Failure, host: str) -> Failure:
        """A failure because every address was denied becomes L{AddressNotAllowed}."""
        if self.denied and not self.allowed:
            return Failure(AddressNotAllowed(f"every address of {host} is denied"))
        return failure


@implementer(IReactorPluggableNameResolver)
class _ResolvingWith:
    """A reactor, as seen by one L{HostnameEndpoint}, with another name resolver."""

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
