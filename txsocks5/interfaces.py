"""
The contracts between txsocks5's parts, declared with zope.interface.

Authentication methods are L{IAuthenticator} plugins: an object that
provides it and lives in a C{twisted/plugins/} dropin is found with
C{twisted.plugin.getPlugins(IAuthenticator)}.  How a destination is reached
is an L{IOutbound}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from zope.interface import Attribute, Interface

from txsocks5.wire import Address

__all__ = [
    "AccessRequest",
    "AddressNotAllowed",
    "AuthOutcome",
    "IAuthNegotiation",
    "IAuthenticator",
    "IConnectingFactory",
    "IOutbound",
    "IRuleSet",
    "Verdict",
]


@dataclass(frozen=True)
class AuthOutcome:
    """
    The end of a sub-negotiation.

    @ivar accepted: whether the client may go on to send a request.
    @ivar user: the authenticated user name, or C{None} for anonymous use.
    @ivar reply: bytes to send the client before going on (or closing).
    """

    accepted: bool
    user: str | None = None
    reply: bytes = b""


@dataclass(frozen=True)
class AccessRequest:
    """
    What request rules decide on: who asks, for what, and where to.

    @ivar client: the client's IP address (IPv4-mapped shown as IPv4), or
        C{None} for a client on a UNIX socket.
    @ivar user: the name the client logged in as, or C{None}.
    @ivar command: C{"connect"}, C{"bind"} or C{"udp"}.
    @ivar name: the destination host name, if the client gave one.
    @ivar address: the destination IP address: the literal the client gave,
        or one its name resolved to; C{None} while not known.
    @ivar port: the destination port; C{None} while not known (a UDP
        association before its first datagram).
    """

    client: str | None
    user: str | None
    command: str
    name: str | None = None
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Verdict:
    """
    A rule set's decision.

    @ivar allowed: whether it is allowed.
    @ivar reason: which rule (or default) decided, for log lines.
    @ivar log: whether the deciding rule asks for a log line even when it
        allows.
    """

    allowed: bool
    reason: str
    log: bool = False


class IRuleSet(Interface):
    """
    Access control: which clients may use the server (checked at accept)
    and what they may ask for (checked per request, per destination
    address a name resolves to, and per UDP datagram destination).
    """

    def admitClient(client: str | None) -> Verdict:
        """
        Whether the client at IP address C{client} (C{None}: a UNIX socket)
        may talk to the server at all.
        """

    def checkRequest(request: AccessRequest) -> Verdict | None:
        """
        Whether C{request} is allowed, or C{None} when that depends on what
        is not known yet (the address a name resolves to, or a UDP
        association's destinations): then each address is checked again
        once known.
        """


class IAuthNegotiation(Interface):
    """
    One client's run of a method-specific sub-negotiation (RFC 1928 section
    3), from the method selection until the client is accepted or refused.
    """

    def dataReceived(data: bytes) -> tuple[AuthOutcome | Deferred[AuthOutcome], int] | None:
        """
        Offer the bytes the client sent since the method selection.

        @return: C{None} if more bytes are needed; otherwise a pair of the
            outcome and the number of bytes of C{data} the sub-negotiation
            used (bytes after them belong to the request).  The outcome is
            an L{AuthOutcome}, or a L{twisted.internet.defer.Deferred}
            that fires with one when it is not known at once (a checker
            that asks a database, say).
        """


class IAuthenticator(Interface):
    """
    A SOCKS5 authentication method, such as "no authentication" (0x00) or
    username/password (0x02).
    """

    method = Attribute("The METHOD code (an int from 0 to 254) this negotiates.")
    name = Attribute("A short name for logs and the command line, e.g. 'username'.")
    usesCredentials = Attribute("True if the method checks credentials against twisted.cred checkers.")

    def negotiate(checkers: Sequence[ICredentialsChecker], peer: IAddress) -> IAuthNegotiation:
        """
        Begin the sub-negotiation with one client.

        @param checkers: a sequence of
            L{twisted.cred.checkers.ICredentialsChecker} configured on the
            server (an empty sequence if none are).
        @param peer: the client's L{twisted.internet.interfaces.IAddress}.
        """


class IOutbound(Interface):
    """How the server reaches a destination for CONNECT."""

    def connect(
        address: Address,
        protocolFactory: IProtocolFactory,
        allowAddress: Callable[[str], bool] | None = None,
    ) -> Deferred[IProtocol]:
        """
        Open a stream connection to a destination.

        @param address: a L{txsocks5.wire.Address} (IP literal or domain name).
        @param protocolFactory: the
            L{twisted.internet.interfaces.IProtocolFactory} for the connection.
        @param allowAddress: if given, called with each IP address a name
            resolves to; only addresses it returns true for may be
            connected to.  When it allows none, the result fails with
            L{txsocks5.interfaces.AddressNotAllowed}.
        @return: a L{twisted.internet.defer.Deferred} that fires with the
            connected protocol, or fails with the connection error (see
            L{txsocks5.outbound.replyForFailure} for how errors map to REP codes).
        """


class AddressNotAllowed(Exception):
    """Every address a destination name resolved to was denied by the rules."""


class IConnectingFactory(IProtocolFactory):
    """
    A client protocol factory for a single connection that says itself when
    that connection is made, so an L{IOutbound} can use it with
    C{IReactorTCP.connectTCP} directly, without an endpoint's wrapping
    protocol in the data path.  (Twisted's connectors also call its
    C{startedConnecting} and C{clientConnectionFailed}.)
    """

    def whenConnected() -> Deferred[IProtocol]:
        """
        A Deferred that fires with the protocol once it is connected, or
        fails with the reason the connection attempt failed.  Cancelling it
        stops the attempt.
        """
