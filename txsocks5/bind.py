"""
The BIND command (RFC 1928 sections 4 and 6): a one-shot listener that
accepts exactly one connection for a client, from the peer it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from txsocks5 import wire
from txsocks5.ports import describeAddress, listenInRange
from txsocks5.relay import TargetProtocol

__all__ = ["BindListener", "PeerCheck"]

log = Logger()


class PeerCheck:
    """How strictly a BIND checks who connects (C{--bind-check})."""

    NONE = "none"
    """Accept the first connection from anywhere."""
    ADDRESS = "address"
    """The peer's address must be DST.ADDR, unless that is all zeros."""
    PORT = "port"
    """As L{ADDRESS}, and its port must be DST.PORT, unless that is 0."""

    ALL = (NONE, ADDRESS, PORT)


class _PeerProtocol(TargetProtocol):
    """The accepted peer's connection; tells its listener once it is made."""

    listener: BindListener

    def connectionMade(self) -> None:
        self.listener._accepted(self)


class _OneShotFactory(ServerFactory):
    """Builds a protocol for the first acceptable peer, and refuses the rest."""

    noisy = False

    def __init__(self, listener: BindListener) -> None:
        self.listener = listener

    def buildProtocol(self, addr: IAddress | None) -> _PeerProtocol | None:  # type: ignore[override]
        if not self.listener._admits(addr):
            return None
        protocol = _PeerProtocol()
        protocol.factory = self
        protocol.listener = self.listener
        return protocol


class BindListener:
    """
    Listens on one address for the single connection a BIND waits for.

    @param reactor: to listen with, and the clock for the timeout.
    @param expectedHosts: the addresses the peer may come from; empty for
        any.
    @param expectedPort: the port it must come from, or C{None} for any.
    @param timeout: seconds to wait for the peer; then L{peer} fails with
        L{defer.TimeoutError}.
    @param allowPeer: called with a connecting peer's address and port
        (after the checks above); a peer it returns false for is refused
        and the wait goes on.  (The server passes its access rules.)

    @ivar peer: fires with the connected peer's protocol (a
        L{TargetProtocol}), once.
    @ivar port: the listening port, once L{listen} has bound it.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        expectedHosts: Sequence[str] = (),
        expectedPort: int | None = None,
        timeout: float | None = 120.0,
        allowPeer: Callable[[str, int], bool] | None = None,
    ) -> None:
        self._reactor = reactor
        self._allowPeer = allowPeer
        self._expectedHosts = {wire.Address.fromHost(h, 0).host for h in expectedHosts}
        self._expectedPort = expectedPort
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self.peer: Deferred[TargetProtocol] = Deferred(self._cancelled)
        self.port: IListeningPort | None = None
        self.refused = 0

    def listen(self, interface: str, portRange: tuple[int, int] | None = None) -> wire.Address:
        """
        Bind on C{interface} and start the timeout; return the address
        listened on.

        @raise twisted.internet.error.CannotListenError: if no port binds.
        """
        factory = _OneShotFactory(self)
        self.port = listenInRange(
            lambda port: self._reactor.listenTCP(port, factory, backlog=1, interface=interface),
            portRange,
        )
        if self._timeout:
            clock: IReactorTime = self._reactor  # type: ignore[assignment]
            self._timer = clock.callLater(self._timeout, self._timedOut)
        bound = self.port.getHost()
        return wire.Address.fromHost(bound.host, bound.port)  # type: ignore[attr-defined]

    def close(self) -> Deferred[object] | None:
        """
        Stop listening and waiting (the accepted peer, if any, stays); a
        Deferred that fires once the listening socket is closed, or C{None}
        if it was closed already.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        port, self.port = self.port, None
        if port is None:
            return None
        return defer.maybeDeferred(port.stopListening)

    def _cancelled(self, d: Deferred[TargetProtocol]) -> None:
        self.close()

    def _admits(self, addr: IAddress | None) -> bool:
        if self.peer.called or self.port is None:
            return False
        host = getattr(addr, "host", None)
        port = getattr(addr, "port", None)
        if host is not None:
            host = wire.Address.fromHost(host, 0).host
        if (self._expectedHosts and host not in self._expectedHosts) or (
            self._expectedPort is not None and port != self._expectedPort
        ):
            self.refused += 1
            log.info(
                "BIND refused a connection from unexpected peer {peer}",
                peer=describeAddress(addr),
            )
            return False
        if self._allowPeer is not None and host is not None and not self._allowPeer(host, port or 0):
            self.refused += 1  # The rules said why, in their own log line.
            return False
        return True

    def _accepted(self, protocol: _PeerProtocol) -> None:
        # The peer is announced once the listening socket is really closed
        # (Twisted closes it on the next reactor turn): a client that reads
        # the second reply and tries the port again must find it refused.
        closing = self.close()
        if closing is None:
            self._announce(protocol)
        else:
            closing.addBoth(lambda _: self._announce(protocol))

    def _announce(self, protocol: _PeerProtocol) -> None:
        if self.peer.called:  # The client went away meanwhile.
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.peer.callback(protocol)

    def _timedOut(self) -> None:
        self._timer = None
        self.close()
        self.peer.errback(defer.TimeoutError("no peer connected in time"))
