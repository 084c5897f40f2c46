"""
L{SOCKS5Service}: an C{IService} that serves one L{SOCKS5Factory} on any
number of listening endpoints.

Adding txsocks5 to another Twisted application::

    from twisted.application.service import MultiService
    from twisted.internet import endpoints, reactor
    from txsocks5.server import SOCKS5Factory
    from txsocks5.service import SOCKS5Service

    top = MultiService()
    SOCKS5Service(
        SOCKS5Factory(reactor=reactor),
        [endpoints.serverFromString(reactor, "tcp:1080:interface=127.0.0.1")],
    ).setServiceParent(top)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsocks5.accepting import guardPort
from txsocks5.interfaces import IAuthenticator, IRuleSet
from txsocks5.proxyprotocol import ProxyProtocolEndpoint
from txsocks5.rules import RuleSet, isLoopback
from txsocks5.server import SOCKS5Factory, describeAddress

__all__ = ["SOCKS5Service", "OpenProxyError", "openProxyProblem"]

log = Logger()


class OpenProxyError(Exception):
    """The server would serve anyone who can reach it, without authentication."""


def openProxyProblem(
    authenticators: Sequence[IAuthenticator],
    rules: IRuleSet,
    ports: Sequence[IListeningPort],
    behindBalancer: Sequence[IListeningPort] = (),
) -> str | None:
    """
    Why serving on C{ports} would make an open proxy, or C{None} if it
    would not: it does when a method without credentials is offered, no
    client rules say who may connect, and a port listens on an address
    other than loopback (the wildcard addresses included), or is one of
    C{behindBalancer}, whose clients come through a PROXY-protocol load
    balancer from wherever it takes them.  Rule sets other than
    L{RuleSet} are taken to say who may connect.
    """
    if all(a.usesCredentials for a in authenticators):
        return None
    if not isinstance(rules, RuleSet) or rules.clientRules:
        return None
    public = []
    for port in ports:
        address = port.getHost()
        if port in behindBalancer:
            public.append(f"{describeAddress(address)} (behind a PROXY-protocol balancer)")
        elif isinstance(getattr(address, "host", None), str) and not isLoopback(address.host):  # type: ignore[attr-defined]
            public.append(describeAddress(address))
    if not public:
        return None
    return (
        f"refusing to serve {', '.join(public)} without authentication to anyone who can reach it;"
        " add --auth, or say who may use it with --allow-client NETWORK"
        " (--allow-client any to serve everyone)"
    )


class SOCKS5Service(Service):
    """
    Listens on C{endpoints} with C{factory} while running.

    Binding happens in C{privilegedStartService}, so twistd can bind a
    privileged port before it drops privileges.  Each TCP port backs off
    accepting while the process is out of file descriptors (see
    L{txsocks5.accepting.guardPort}).

    @param factory: the server to run.
    @param endpoints: where to listen.
    @param exitOnListenFailure: exit the process with a message (rather
        than raise) when a port cannot be bound; what twistd wants.
    @param refuseOpenProxy: fail (with L{OpenProxyError}) rather than serve
        without authentication on an address other than loopback when no
        client rules say who may connect (see L{openProxyProblem}).
    """

    name = "socks5"

    def __init__(
        self,
        factory: SOCKS5Factory,
        endpoints: Sequence[IStreamServerEndpoint],
        exitOnListenFailure: bool = False,
        refuseOpenProxy: bool = True,
    ) -> None:
        self.factory = factory
        self._refuseOpenProxy = refuseOpenProxy
        self.endpoints = list(endpoints)
        self.ports: list[IListeningPort] = []
        self._exitOnListenFailure = exitOnListenFailure
        self._started = False
        self._result: list[IListeningPort] | Failure | None = None
        self._waiters: list[Deferred[list[IListeningPort]]] = []

    def privilegedStartService(self) -> None:
        """Bind every endpoint."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Start serving (binding first, if that has not happened)."""
        super().startService()
        self._listen()

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        A Deferred that fires with the listening ports once all are bound,
        or fails with the reason one could not be.
        """
        d: Deferred[list[IListeningPort]] = Deferred()
        if self._result is None:
            self._waiters.append(d)
        else:
            d.callback(self._result)  # type: ignore[arg-type]
        return d

    def stopService(self) -> Deferred[object]:
        """Stop listening; tunnels already open are left to finish."""
        super().stopService()
        self._started = False
        self._result = None
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])  # type: ignore[return-value]

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        attempts = [endpoint.listen(self.factory) for endpoint in self.endpoints]
        for attempt in attempts:
            attempt.addCallback(self._bound)
        gatherResults(attempts, consumeErrors=True).addCallback(self._refuseIfOpen).addCallbacks(
            self._listened, self._listenFailed
        )
        if isinstance(self._result, Failure):
            # Bound synchronously (as TCP does) and failed: say so at once.
            error = self._result.value
            if self._exitOnListenFailure:
                sys.exit(f"txsocks5: {error}")
            self._result.raiseException()

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        guardPort(port)  # Out of descriptors: back off accepting (TCP ports; others as they are).
        return port

    def _refuseIfOpen(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        if self._refuseOpenProxy:
            factory = self.factory
            behindBalancer = [
                port
                for endpoint, port in zip(self.endpoints, ports, strict=True)
                if isinstance(endpoint, ProxyProtocolEndpoint)
            ]
            problem = openProxyProblem(factory.authenticators, factory.rules, ports, behindBalancer)
            if problem is not None:
                raise OpenProxyError(problem)
        return ports

    def _listened(self, ports: list[IListeningPort]) -> None:
        rules = self.factory.rules
        log.info(
            "txsocks5 serving SOCKS5 on {listeners}; methods: {methods}; rules: {rules}",
            listeners=", ".join(describeAddress(p.getHost()) for p in ports),
            methods=", ".join(a.name for a in self.factory.authenticators),
            rules=rules.describe() if isinstance(rules, RuleSet) else repr(rules),
        )
        self._settle(ports)

    def _listenFailed(self, failure: Failure) -> None:
        cause: Failure = getattr(failure.value, "subFailure", failure)  # gatherResults wraps it in FirstError
        if cause.check(OpenProxyError):
            log.critical("txsocks5 {error}", error=cause.getErrorMessage())
        else:
            log.critical("txsocks5 could not listen: {error}", error=cause.getErrorMessage())
        for port in self.ports:
            port.stopListening()
        self.ports = []
        self._started = False
        self._settle(cause)
        if self._exitOnListenFailure and self.running:
            from twisted.internet import reactor

            reactor.stop()  # type: ignore[attr-defined]

    def _settle(self, result: list[IListeningPort] | Failure) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)  # type: ignore[arg-type]
