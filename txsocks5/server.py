"""
The SOCKS5 server: L{SOCKS5ServerProtocol} runs one client's negotiation
(greeting, sub-negotiation, request) and L{SOCKS5Factory} holds the
configuration every client shares.

The protocol is thin glue: bytes go through L{txsocks5.wire}, methods are
L{IAuthenticator}s, destinations are reached through an L{IOutbound}, and a
successful CONNECT is handed to a L{TCPRelay}.

Embedding it in another Twisted program::

    from twisted.internet import endpoints, reactor
    from txsocks5.server import SOCKS5Factory

    endpoints.serverFromString(reactor, "tcp:1080:interface=127.0.0.1").listen(
        SOCKS5Factory(reactor=reactor)
    )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocks5 import wire
from txsocks5._fastpath import canWriteDirectly, writeDirectly
from txsocks5.accounting import Counters, Session, SessionLog
from txsocks5.auth import NoAuthentication, checkersForRFC1929
from txsocks5.bind import BindListener, PeerCheck
from txsocks5.deadlines import Deadlines, DeadlinesByLength
from txsocks5.interfaces import (
    AccessRequest,
    AddressNotAllowed,
    AuthOutcome,
    IAuthenticator,
    IAuthNegotiation,
    IOutbound,
    IRuleSet,
)
from txsocks5.limits import LoginThrottle, LogThrottle, ThrottledCheckers
from txsocks5.outbound import DirectOutbound, replyForFailure
from txsocks5.ports import describeAddress, localAddressFacing, resolveName
from txsocks5.relay import TargetFactory, TargetProtocol, TCPRelay
from txsocks5.rules import RuleSet
from txsocks5.udp import UDPRelay, listenUDPRelay

__all__ = ["SOCKS5ServerProtocol", "SOCKS5Factory", "describeAddress"]

log = Logger()

#: Seconds a client has to read an error reply before the connection is cut
#: (RFC 1928 section 6: no more than 10 seconds).
ERROR_LINGER = 10.0

#: Bytes kept from a client while a BIND waits for its peer before reading
#: pauses.
HOLD_LIMIT = 65536

_UNSPECIFIED = wire.Address(wire.AddressType.IPV4, "0.0.0.0", 0)

_COMMAND_NAMES = {
    wire.Command.CONNECT: "connect",
    wire.Command.BIND: "bind",
    wire.Command.UDP_ASSOCIATE: "udp",
}

_OUTCOMES = {
    wire.Reply.GENERAL_FAILURE: "general failure",
    wire.Reply.NOT_ALLOWED: "not allowed",
    wire.Reply.NETWORK_UNREACHABLE: "network unreachable",
    wire.Reply.HOST_UNREACHABLE: "host unreachable",
    wire.Reply.CONNECTION_REFUSED: "connection refused",
    wire.Reply.TTL_EXPIRED: "timed out",
    wire.Reply.COMMAND_NOT_SUPPORTED: "command not supported",
    wire.Reply.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}


def clientHost(address: IAddress | None) -> str | None:
    """The IP address of a client (IPv4-mapped shown as IPv4), or C{None} if it has none."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    return wire.Address.fromHost(host, 0).host


@implementer(IHalfCloseableProtocol)
class SOCKS5ServerProtocol(Protocol):
    """
    One client connection: negotiates, runs the request, then relays.

    @ivar session: the accounting record of this client's session.
    @ivar clientHost: the client's IP address, or C{None} (a UNIX socket).
    """

    factory: SOCKS5Factory
    session: Session
    clientHost: str | None = None

    def __init__(self) -> None:
        self._buffer = b""
        self._step: Callable[[], bool] | None = self._readGreeting
        self._advancing = False
        self._negotiation: IAuthNegotiation | None = None
        self._pending: Deferred[Any] | None = None
        self._relay: TCPRelay | None = None
        self._association: UDPRelay | None = None
        self._bindExpected: wire.Address | None = None
        self._bindListener: BindListener | None = None
        self._holding = False  # Reading (and keeping) bytes while a wait goes on.
        self._timer: IDelayedCall | None = None
        self._negotiationTimer: Deadlines[SOCKS5ServerProtocol] | None = None
        self._loginGuard: ThrottledCheckers | None = None
        self._access: AccessRequest | None = None
        self._paused = False
        self._direct = False
        self._clientEnded = False
        self._closed = False
        # Behind a PROXY-protocol endpoint (L{txsocks5.proxyprotocol.ProxyProtocolEndpoint}): the
        # client is admitted once the header has named it, which is before
        # its first byte reaches this protocol.
        self._awaitingProxyHeader = False

    # -- connection events ------------------------------------------------

    def connectionMade(self) -> None:
        self._direct = canWriteDirectly(self.transport)
        factory = self.factory
        factory.counters.active += 1
        self.session = Session(
            client=describeAddress(self.transport.getPeer()),  # type: ignore[union-attr]
            started=factory.clock.seconds(),
        )
        deadlines = factory._negotiationTimers.get(factory.negotiateTimeout)
        if deadlines is not None:
            self._negotiationTimer = deadlines
            deadlines.start(self)
        else:  # No timeout, or more timeout lengths than are shared.
            self._setDeadline(factory.negotiateTimeout, "negotiation timeout")

    def dataReceived(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.clientData(data)
            return
        if self._awaitingProxyHeader:
            self._awaitingProxyHeader = False
            if not self._admitProxiedClient():
                return
        if self._step is None:
            if self._holding:
                # Bytes sent ahead while a wait goes on: keep them, within limits.
                self._buffer += data
                if len(self._buffer) > HOLD_LIMIT and not self._paused:
                    self._paused = True
                    self.transport.pauseProducing()  # type: ignore[union-attr]
            # Otherwise nothing more is read: closing, or a UDP association's control connection.
            return
        self._buffer += data
        self._advance()

    def readConnectionLost(self) -> None:
        if self._relay is not None:
            self._relay.clientReadClosed()
            return
        self._clientEnded = True
        if self._association is not None:
            # The client is done with the association (RFC 1928 section 7).
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self._bindListener is not None:
            self._close("client closed before the peer connected")
        elif self._step is not None:
            # Waiting for bytes that can no longer come.
            self._close("client closed during negotiation")

    def writeConnectionLost(self) -> None:
        """Our FIN to the client was sent; the relay already knows."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._step = None
        self._cancelDeadline()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._bindListener is not None:
            self._bindListener.close()
        session = self.session
        relay = self._relay
        if relay is not None:
            relay.clientLost()
            session.bytesUp = relay.bytesUp
            session.bytesDown = relay.bytesDown
            session.outcome = relay.closeReason or "succeeded"
        association = self._association
        if association is not None:
            association.close()
            self.factory.releaseAssociation(association.clientHost, session.user)
            counters = association.counters
            session.bytesUp = counters.bytesUp
            session.bytesDown = counters.bytesDown
            session.datagramsUp = counters.datagramsUp
            session.datagramsDown = counters.datagramsDown
            session.dropped = sum(counters.dropped.values())
        factory = self.factory
        factory.counters.active -= 1
        factory.clientLeft(self.clientHost)
        factory.counters.record(session)
        if factory.logSessions:
            factory.sessionLog.log(session, factory.clock.seconds())

    def _admitProxiedClient(self) -> bool:
        """Admit the client a PROXY header named, or close; return whether it was admitted."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.session.client = describeAddress(peer)
        admitted, host = self.factory._admit(peer)
        if not admitted:
            self.session.outcome = "client refused"
            self._step = None
            self.transport.loseConnection()  # type: ignore[union-attr]
            return False
        self.clientHost = host
        return True

    # -- negotiation --------------------------------------------------------

    def _advance(self) -> None:
        """Run negotiation steps while they make progress."""
        if self._advancing:
            return
        self._advancing = True
        try:
            progressing = True
            while progressing and self._step is not None:
                progressing = self._step()
        except wire.ProtocolError as e:
            self._protocolError(e)
        finally:
            self._advancing = False

    def _readGreeting(self) -> bool:
        parsed = wire.parseGreeting(self._buffer)
        if parsed is None:
            return False
        self._buffer = self._buffer[parsed.consumed :]
        offered = parsed.message.methods
        for authenticator in self.factory.authenticators:
            if authenticator.method in offered:
                break
        else:
            self._write(wire.MethodSelection(wire.Method.NO_ACCEPTABLE).encode())
            self._close("no acceptable method")
            return False
        self.session.outcome = "closed during authentication"
        self._write(wire.MethodSelection(authenticator.method).encode())
        checkers = self.factory.checkers
        if authenticator.usesCredentials and self.clientHost is not None:
            # Refused without a check while the address is locked out.
            self._loginGuard = self.factory.loginThrottle.guard(checkers, self.clientHost)
            checkers = self._loginGuard.checkers
        self._negotiation = authenticator.negotiate(
            checkers,
            self.transport.getPeer(),  # type: ignore[union-attr]
        )
        self._step = self._readAuthentication
        return True

    def _readAuthentication(self) -> bool:
        assert self._negotiation is not None
        result = self._negotiation.dataReceived(self._buffer)
        if result is None:
            return False
        outcome, consumed = result
        self._buffer = self._buffer[consumed:]
        self._step = None
        self._negotiation = None
        if isinstance(outcome, AuthOutcome):
            self._authenticated(outcome)  # Known at once (no authentication).
        else:
            self._wait(outcome, self._authenticated)
        return self._step is not None

    def _authenticated(self, outcome: AuthOutcome) -> None:
        if outcome.reply:
            self._write(outcome.reply)
        guard = self._loginGuard
        if guard is not None:
            if guard.refused and not outcome.accepted:
                self._close("login throttled")
                return
            if outcome.accepted:
                guard.throttle.succeeded(guard.client)
            else:
                guard.throttle.failed(guard.client)
        if not outcome.accepted:
            self._close("authentication failed")
            return
        self.session.user = outcome.user
        self.session.outcome = "closed before request"
        self._step = self._readRequest
        self._continue()

    def _readRequest(self) -> bool:
        parsed = wire.parseRequest(self._buffer)
        if parsed is None:
            return False
        self._buffer = self._buffer[parsed.consumed :]
        self._step = None
        self._cancelDeadline()
        request = parsed.message
        address = request.address
        session = self.session
        session.destination = str(address)
        command = _COMMAND_NAMES.get(request.command)  # type: ignore[call-overload]
        if command is None:
            session.command = f"{request.command:#04x}"
            self._replyError(wire.Reply.COMMAND_NOT_SUPPORTED)
            return False
        session.command = "udp_associate" if command == "udp" else command
        if command == "udp":
            # DST is where the client will send from, not a destination.
            access = AccessRequest(self.clientHost, session.user, command)
        else:
            if address.type == wire.AddressType.DOMAIN:
                address = wire.Address.fromHost(address.host, address.port)  # An IP literal sent as a name.
            named = address.type == wire.AddressType.DOMAIN
            access = AccessRequest(
                self.clientHost,
                session.user,
                command,
                name=address.host if named else None,
                address=None if named else address.host,
                port=address.port,
            )
        self._access = access
        if not self._check(access, undecided=True):  # Undecided: each address is checked later.
            self._replyError(wire.Reply.NOT_ALLOWED)
            return False
        if command == "connect":
            outbound = self.factory.outbound
            try:
                if access.name is None:
                    connecting = outbound.connect(address, TargetFactory())
                else:
                    connecting = outbound.connect(address, TargetFactory(), allowAddress=self._allowAddress)
            except Exception:
                connecting = fail()  # E.g. out of file descriptors: answered like a failed connect.
            self._wait(connecting, self._connected, self._connectFailed)
        elif command == "bind":
            self._bind(address)
        else:
            self._associate(address)
        return False

    def _check(self, access: AccessRequest, undecided: bool) -> bool:
        """
        Whether the rules allow C{access} (C{undecided} if they cannot tell
        yet); a denial is logged, and so is an allow whose rule asks to be.
        """
        verdict = self.factory.rules.checkRequest(access)
        if verdict is None:
            return undecided
        if not verdict.allowed or verdict.log:
            log.info(
                "{verdict} {command} {destination} for {client}{user}: {reason}",
                verdict="Allowed" if verdict.allowed else "Denied",
                command=access.command.upper(),
                destination=_describeAccess(access),
                client=self.session.client,
                user=f" (user {access.user})" if access.user is not None else "",
                reason=verdict.reason,
            )
        return verdict.allowed

    def _allowAddress(self, ip: str) -> bool:
        """Whether the rules let this request reach C{ip}, one of its name's addresses."""
        assert self._access is not None
        return self._check(replace(self._access, address=ip), undecided=False)

    def _allowBindPeer(self, host: str, port: int) -> bool:
        """Whether the rules let the peer at C{host}:C{port} be this BIND's connection."""
        access = AccessRequest(self.clientHost, self.session.user, "bind", None, host, port)
        return self._check(access, undecided=False)

    def _allowDatagram(self, name: str | None, ip: str | None, port: int) -> bool:
        """Whether the rules let this UDP association send to C{name}/C{ip} port C{port}."""
        access = AccessRequest(self.clientHost, self.session.user, "udp", name, ip, port)
        return self._check(access, undecided=ip is None)  # A name: decided once resolved.

    def _bind(self, expected: wire.Address) -> None:
        """
        Listen for the one connection the client expects (RFC 1928 section
        4): reply with the listening address, then with the peer's.
        """
        self._bindExpected = expected
        if expected.type == wire.AddressType.DOMAIN:
            factory = self.factory
            resolving = resolveName(
                factory.resolver, expected.host, clock=factory.clock, timeout=factory.connectTimeout
            )
            self._wait(resolving, self._bindListen, self._bindFailed)
        else:
            self._bindListen([expected.host])

    def _bindListen(self, expectedHosts: list[str]) -> None:
        factory = self.factory
        transport = self.transport
        assert transport is not None
        if self._access is not None and self._access.name is not None:
            expectedHosts = [host for host in expectedHosts if self._allowAddress(host)]
            if not expectedHosts:
                self._replyError(wire.Reply.NOT_ALLOWED)
                return
        check = factory.bindCheck
        anyHost = expectedHosts[0] in ("0.0.0.0", "::")
        try:
            if anyHost:
                # Any peer: listen where the client reached us.
                interface = wire.Address.fromHost(transport.getHost().host, 0).host  # type: ignore[attr-defined]
            else:
                interface = localAddressFacing(expectedHosts[0])
        except OSError as e:
            self._bindFailed(Failure(e))
            return
        port = self._bindExpected.port if self._bindExpected is not None else 0
        listener = BindListener(
            factory.reactor,
            expectedHosts=() if anyHost or check == PeerCheck.NONE else expectedHosts,
            expectedPort=port if check == PeerCheck.PORT and port else None,
            timeout=factory.bindTimeout,
            allowPeer=self._allowBindPeer,
        )
        try:
            bound = listener.listen(interface, factory.bindPortRange)
        except CannotListenError as e:
            log.warn("BIND for {client} failed: {error}", client=self.session.client, error=str(e))
            self._replyError(wire.Reply.GENERAL_FAILURE)
            return
        self._bindListener = listener
        self._write(wire.Response(wire.Reply.SUCCEEDED, bound).encode())
        self._wait(listener.peer, self._peerArrived, self._bindFailed)

    def _peerArrived(self, peer: TargetProtocol) -> None:
        self._bindListener = None
        assert peer.transport is not None
        self.session.destination = describeAddress(peer.transport.getPeer())
        self._relayTo(peer, peer.transport.getPeer())

    def _bindFailed(self, failure: Failure) -> None:
        log.debug(
            "BIND for {client} failed: {error}", client=self.session.client, error=failure.getErrorMessage()
        )
        self._replyError(replyForFailure(failure))

    def _associate(self, requested: wire.Address) -> None:
        """Set up a UDP relay for the client (RFC 1928 section 7)."""
        factory = self.factory
        transport = self.transport
        assert transport is not None
        clientHost = self.clientHost
        if clientHost is None:
            self._replyError(wire.Reply.COMMAND_NOT_SUPPORTED)  # e.g. a UNIX socket client
            return
        local = transport.getHost()
        localHost = wire.Address.fromHost(local.host, 0).host  # type: ignore[attr-defined]
        refusal = factory.admitAssociation(clientHost, self.session.user)
        if refusal is not None:
            log.info(
                "Refused UDP ASSOCIATE from {client}: {reason}", client=self.session.client, reason=refusal
            )
            self._replyError(wire.Reply.GENERAL_FAILURE)
            return
        relay = UDPRelay(
            factory.reactor,
            clientHost,
            _expectedClientPort(requested, clientHost),
            idleTimeout=factory.udpIdleTimeout,
            onIdle=self._associationIdle,
            resolver=factory.resolver,
            allowDestination=self._allowDatagram,
        )
        try:
            port = listenUDPRelay(factory.reactor, relay, localHost, factory.udpPortRange)
        except CannotListenError as e:
            factory.releaseAssociation(clientHost, self.session.user)
            log.warn("UDP ASSOCIATE for {client} failed: {error}", client=self.session.client, error=str(e))
            self._replyError(wire.Reply.GENERAL_FAILURE)
            return
        self._association = relay
        self.session.outcome = "succeeded"
        bound = wire.Address.fromHost(factory.udpAdvertise or localHost, port.getHost().port)  # type: ignore[attr-defined]
        self.session.destination = str(bound)
        self._write(wire.Response(wire.Reply.SUCCEEDED, bound).encode())
        if self._clientEnded:
            transport.loseConnection()

    def _associationIdle(self) -> None:
        self.session.outcome = "idle timeout"
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _connected(self, target: TargetProtocol) -> None:
        assert target.transport is not None
        self._relayTo(target, target.transport.getHost())

    def _relayTo(self, target: TargetProtocol, replyAddress: IAddress) -> None:
        """Send the success reply naming C{replyAddress}, then relay with C{target}."""
        factory = self.factory
        transport = self.transport
        assert transport is not None and target.transport is not None
        self._write(
            wire.Response(
                wire.Reply.SUCCEEDED,
                wire.Address.fromHost(replyAddress.host, replyAddress.port),  # type: ignore[attr-defined]
            ).encode()
        )
        relay = TCPRelay(
            transport,
            target.transport,
            factory.clock,
            idleTimeout=factory.idleTimeout,
            finWaitTimeout=factory.finWaitTimeout,
            finWaitDeadlines=factory._finWaitTimers.get(factory.finWaitTimeout),
        )
        self._relay = relay
        pending, self._buffer = self._buffer, b""
        relay.start(pending, clientEnded=self._clientEnded)
        target.attach(relay)
        self._continue()

    def _connectFailed(self, failure: Failure) -> None:
        reply = replyForFailure(failure)
        if failure.check(AddressNotAllowed):
            # Every address of the name was denied, and each was logged.
            self._replyError(reply)
            return
        log.debug(
            "CONNECT {destination} for {client} failed: {error}",
            destination=self.session.destination,
            client=self.session.client,
            error=failure.getErrorMessage(),
        )
        self._replyError(reply)

    # -- helpers ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Send negotiation bytes: straight to the socket when it can take them."""
        if self._direct:
            writeDirectly(self.transport, data)  # type: ignore[arg-type]
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def _wait(
        self,
        d: Deferred[Any],
        callback: Callable[[Any], None],
        errback: Callable[[Failure], None] | None = None,
    ) -> None:
        """
        Run C{callback} (or C{errback}) when C{d} fires; nothing runs if the
        client has gone.  Meanwhile what the client sends is kept (reading
        pauses past L{HOLD_LIMIT} bytes) for the next step.
        """
        self._pending = d

        def done(result: Any) -> None:
            if self._pending is not d:
                return  # The client went away and cancelled this.
            self._pending = None
            self._holding = False
            if isinstance(result, Failure):
                if errback is None:
                    result.raiseException()
                errback(result)
            else:
                callback(result)

        d.addBoth(done).addErrback(self._internalError)
        if self._pending is d:
            # Not done yet.  Reading goes on (pausing and resuming would cost
            # two system calls), keeping what arrives.
            self._holding = True

    def _continue(self) -> None:
        """Go on reading after a wait."""
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._advance()

    def _protocolError(self, error: wire.ProtocolError) -> None:
        log.debug("Protocol error from {client}: {error}", client=self.session.client, error=str(error))
        if self._step == self._readRequest and error.reply is not None:
            self._replyError(error.reply)
        else:
            self._close("protocol error")

    def _replyError(self, reply: wire.Reply) -> None:
        self._write(wire.Response(reply, _UNSPECIFIED).encode())
        self._close(_OUTCOMES.get(reply, f"reply {reply:#04x}"))

    def _close(self, outcome: str) -> None:
        """Close after what was written is sent, giving up after L{ERROR_LINGER}."""
        self.session.outcome = outcome
        self._step = None
        self._holding = False
        transport = self.transport
        assert transport is not None
        if self._paused:
            self._paused = False
            transport.resumeProducing()  # type: ignore[attr-defined]
        transport.loseConnection()
        self._setDeadline(ERROR_LINGER, outcome)

    def _internalError(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self._closed:
            return
        log.failure("Internal error serving {client}", failure, client=self.session.client)
        self.session.outcome = "internal error"
        if not self._closed:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _setDeadline(self, seconds: float | None, outcome: str) -> None:
        self._cancelDeadline()
        if seconds:
            self._timer = self.factory.clock.callLater(seconds, self._deadlinePassed, outcome)

    def _cancelDeadline(self) -> None:
        deadlines, self._negotiationTimer = self._negotiationTimer, None
        if deadlines is not None:
            deadlines.cancel(self)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _negotiationTimedOut(self) -> None:
        self._negotiationTimer = None
        self._deadlinePassed("negotiation timeout")

    def _deadlinePassed(self, outcome: str) -> None:
        self._timer = None
        self.session.outcome = outcome
        self._step = None
        self.transport.abortConnection()  # type: ignore[union-attr]


def _describeAccess(access: AccessRequest) -> str:
    """A request's destination for log lines: the name, and the address when known."""
    if access.port is None:
        return "(destinations checked per datagram)"
    if access.name is not None:
        named = str(wire.Address.fromHost(access.name, access.port))
        return named if access.address is None else f"{named} ({access.address})"
    return str(wire.Address.fromHost(access.address or "0.0.0.0", access.port))


def _expectedClientPort(requested: wire.Address, clientHost: str) -> int | None:
    """
    The port a UDP ASSOCIATE client said it will send from, when that can
    be trusted: a non-zero DST.PORT with DST.ADDR either all zeros or the
    client's own address.  A client behind NAT names an address we never
    see; then the port is learned from its first datagram.
    """
    if not requested.port or requested.type == wire.AddressType.DOMAIN:
        return None
    host = requested.host
    if host in ("0.0.0.0", "::") or wire.Address.fromHost(host, 0).host == clientHost:
        return requested.port
    return None


def _release(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class SOCKS5Factory(Factory):
    """
    Serves SOCKS5 clients.

    @param authenticators: the methods offered, in order of preference
        (the first one the client also offers is chosen).  By default only
        "no authentication".
    @param checkers: C{twisted.cred} checkers that username/password logins
        are checked against (the first that accepts wins).
    @param outbound: how destinations are reached; by default directly,
        with C{connectTimeout}.
    @param reactor: the reactor, also used as the clock for every timeout.
    @param negotiateTimeout: seconds from accept until the request must be
        complete.
    @param connectTimeout: seconds a CONNECT may take (resolution included).
    @param idleTimeout: seconds a tunnel may pass no data before it is cut;
        C{None} for never.
    @param finWaitTimeout: seconds a tunnel may stay half-closed; C{None}
        for ever.
    @param maxConnections: clients served at once; more are closed at
        accept.  C{None} for no limit.
    @param bindTimeout: seconds a BIND waits for its peer; C{None} for ever.
    @param bindCheck: how a BIND checks its peer against DST.ADDR/DST.PORT:
        one of L{PeerCheck.ALL}.
    @param bindPortRange: the inclusive C{(low, high)} range BIND listens
        in; any free port if C{None}.
    @param udpAdvertise: the address put in UDP ASSOCIATE replies instead of
        the one the relay is bound on (for a server behind NAT).
    @param udpPortRange: the inclusive C{(low, high)} range UDP relay ports
        are taken from; any free port if C{None}.
    @param udpIdleTimeout: seconds an association may relay no datagram
        before it (and its control connection) is closed; C{None} for never.
    @param maxUDPAssociations: associations open at once; C{None} for no limit.
    @param maxUDPAssociationsPerClient: associations open at once per client
        address; C{None} for no limit.
    @param maxUDPAssociationsPerUser: associations open at once per logged-in
        user; C{None} for no limit.
    @param maxConnectionsPerClient: clients served at once from one
        address; more are closed at accept.  C{None} for no limit.
    @param rules: which clients are served and what they may ask for; by
        default a L{RuleSet} with no rules, which still denies the
        protected destinations (see L{txsocks5.rules.PROTECTED}).
    @param maxLoginFailures: failed logins in a row from one address after
        which its logins are refused unchecked for a while (see
        L{LoginThrottle}); 0 for never.
    @param loginLockout: seconds the first such lockout lasts.
    @param logSessions: log one event per finished session (the counters
        are kept either way).
    @param sessionLogDelay: log finished sessions in batches, each at most
        this many seconds after it ended (see L{SessionLog}); 0 logs each
        one as it ends.

    @ivar counters: totals for metrics (sessions, bytes, outcomes).
    @ivar sessionLog: what logs finished sessions (L{SessionLog.flush} logs
        those still waiting in a batch).
    @ivar loginThrottle: the failed-login bookkeeping.
    """

    protocol = SOCKS5ServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        authenticators: Sequence[IAuthenticator] | None = None,
        checkers: Sequence[ICredentialsChecker] = (),
        outbound: IOutbound | None = None,
        reactor: Any = None,
        negotiateTimeout: float | None = 30.0,
        connectTimeout: float = 30.0,
        idleTimeout: float | None = None,
        finWaitTimeout: float | None = 120.0,
        maxConnections: int | None = None,
        bindTimeout: float | None = 120.0,
        bindCheck: str = PeerCheck.ADDRESS,
        bindPortRange: tuple[int, int] | None = None,
        udpAdvertise: str | None = None,
        udpPortRange: tuple[int, int] | None = None,
        udpIdleTimeout: float | None = 300.0,
        maxUDPAssociations: int | None = 1024,
        maxUDPAssociationsPerClient: int | None = 16,
        maxUDPAssociationsPerUser: int | None = None,
        maxConnectionsPerClient: int | None = None,
        rules: IRuleSet | None = None,
        maxLoginFailures: int = 5,
        loginLockout: float = 60.0,
        logSessions: bool = True,
        sessionLogDelay: float = 0.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if authenticators is None:
            authenticators = [NoAuthentication()]
        if not authenticators:
            raise ValueError("at least one authenticator is needed")
        self.authenticators = list(authenticators)
        self.checkers = checkersForRFC1929(checkers)
        if any(a.usesCredentials for a in self.authenticators) and not self.checkers:
            raise ValueError("username/password authentication needs at least one checker")
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.connectTimeout = connectTimeout
        if outbound is None:
            outbound = DirectOutbound(reactor, connectTimeout)
        self.outbound = outbound
        self.negotiateTimeout = negotiateTimeout
        self.idleTimeout = idleTimeout
        self.finWaitTimeout = finWaitTimeout
        self.maxConnections = maxConnections
        if bindCheck not in PeerCheck.ALL:
            raise ValueError(f"bindCheck must be one of {PeerCheck.ALL}")
        self.bindTimeout = bindTimeout
        self.bindCheck = bindCheck
        self.bindPortRange = bindPortRange
        self.resolver = reactor.nameResolver
        self.udpAdvertise = udpAdvertise
        self.udpPortRange = udpPortRange
        self.udpIdleTimeout = udpIdleTimeout
        self.maxUDPAssociations = maxUDPAssociations
        self.maxUDPAssociationsPerClient = maxUDPAssociationsPerClient
        self.maxUDPAssociationsPerUser = maxUDPAssociationsPerUser
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.rules: IRuleSet = rules if rules is not None else RuleSet()
        self.loginThrottle = LoginThrottle(reactor, maxLoginFailures, loginLockout)
        self.logSessions = logSessions
        self.sessionLog = SessionLog(reactor, sessionLogDelay)
        self.counters = Counters()
        self._associations: dict[str, int] = {}
        self._userAssociations: dict[str, int] = {}
        self._perClient: dict[str | None, int] = {}
        self._refusals = LogThrottle(reactor)
        # Timers the clients' negotiations, and half-closed tunnels, share.
        self._negotiationTimers: DeadlinesByLength[SOCKS5ServerProtocol] = DeadlinesByLength(
            reactor, SOCKS5ServerProtocol._negotiationTimedOut
        )
        self._finWaitTimers: DeadlinesByLength[TCPRelay] = DeadlinesByLength(
            reactor, TCPRelay._finWaitTimedOut
        )

    def admitAssociation(self, clientHost: str, user: str | None = None) -> str | None:
        """
        Count a new UDP association for C{clientHost} (logged in as
        C{user}), or say why it is refused (a limit is reached).
        """
        total = sum(self._associations.values())
        if self.maxUDPAssociations is not None and total >= self.maxUDPAssociations:
            return f"{total} UDP associations open"
        mine = self._associations.get(clientHost, 0)
        if self.maxUDPAssociationsPerClient is not None and mine >= self.maxUDPAssociationsPerClient:
            return f"{mine} UDP associations open for this client"
        if user is not None:
            theirs = self._userAssociations.get(user, 0)
            if self.maxUDPAssociationsPerUser is not None and theirs >= self.maxUDPAssociationsPerUser:
                return f"{theirs} UDP associations open for user {user}"
            self._userAssociations[user] = theirs + 1
        self._associations[clientHost] = mine + 1
        return None

    def releaseAssociation(self, clientHost: str, user: str | None = None) -> None:
        """Forget one of C{clientHost}'s (and C{user}'s) associations."""
        _release(self._associations, clientHost)
        if user is not None:
            _release(self._userAssociations, user)

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None, admitByProxyHeader: bool = False
    ) -> SOCKS5ServerProtocol | None:
        """
        A protocol for a new client, or C{None} (close at once) if a limit
        is reached or the client rules refuse it.  With
        C{admitByProxyHeader}, C{addr} is a load balancer's, and the client
        is admitted (client rules, per-client limit) once its PROXY header
        has named it (see L{txsocks5.proxyprotocol.ProxyProtocolEndpoint}).
        """
        if self.maxConnections is not None and self.counters.active >= self.maxConnections:
            self._refuse(addr, "limit", f"{self.maxConnections} connections already open")
            return None
        host = None
        if not admitByProxyHeader:
            admitted, host = self._admit(addr)
            if not admitted:
                return None
        protocol = self.protocol()
        protocol.factory = self
        protocol.clientHost = host
        if admitByProxyHeader:
            protocol._awaitingProxyHeader = True
        return protocol  # type: ignore[return-value]

    def _admit(self, addr: IAddress | None) -> tuple[bool, str | None]:
        """
        Apply the per-client limit and the client rules to a client at
        C{addr}, counting it if it is admitted; return whether it is, and
        its IP address.
        """
        host = clientHost(addr)
        if self.maxConnectionsPerClient is not None:
            mine = self._perClient.get(host, 0)
            if mine >= self.maxConnectionsPerClient:
                self._refuse(addr, f"limit {host}", f"{mine} connections already open from this address")
                return False, host
            self._perClient[host] = mine + 1
        verdict = self.rules.admitClient(host)
        if not verdict.allowed or verdict.log:
            if not verdict.allowed:
                self.clientLeft(host)
                self._refuse(addr, f"rules {host}", verdict.reason)
                return False, host
            log.info("Admitted {client}: {reason}", client=host, reason=verdict.reason)
        return True, host

    def clientLeft(self, host: str | None) -> None:
        """A client from C{host} that was admitted has gone."""
        if self.maxConnectionsPerClient is not None:
            _release(self._perClient, host)

    def _refuse(self, addr: IAddress | None, kind: str, reason: str) -> None:
        suppressed = self._refusals.allow(kind)
        if suppressed is None:
            return
        log.warn(
            "Refused {client}: {reason}{more}",
            client=describeAddress(addr),
            reason=reason,
            more=f" ({suppressed} more refused like it, not logged)" if suppressed else "",
        )
