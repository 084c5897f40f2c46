"""
The built-in authentication methods: no authentication (0x00) and RFC 1929
username/password (0x02).

Username/password logins are checked by any C{twisted.cred}
L{ICredentialsChecker} for L{IUsernamePassword}, so every strcred backend
(C{--auth memory:…}, C{--auth file:…}, third-party plugins) works.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from twisted.cred.checkers import (
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocks5 import wire
from txsocks5.interfaces import AuthOutcome, IAuthenticator, IAuthNegotiation
from txsocks5.ports import describeAddress

__all__ = [
    "AuthOutcome",
    "NoAuthentication",
    "UsernamePasswordAuthentication",
    "UsernamePassword",
    "checkersForRFC1929",
    "availableAuthenticators",
]

log = Logger()


@implementer(IAuthNegotiation)
class _Accepted:
    """A sub-negotiation that is over before it starts: everyone is let in."""

    _outcome = (AuthOutcome(accepted=True), 0)

    def dataReceived(self, data: bytes) -> tuple[AuthOutcome, int]:
        return self._outcome


#: Holds no state: one serves every client.
_ACCEPTED = _Accepted()


@implementer(IPlugin, IAuthenticator)
class NoAuthentication:
    """METHOD 0x00: no authentication required."""

    method = wire.Method.NO_AUTHENTICATION
    name = "none"
    usesCredentials = False

    def negotiate(self, checkers: Sequence[ICredentialsChecker], peer: IAddress) -> IAuthNegotiation:
        """Let the client straight through."""
        return _ACCEPTED


@implementer(IUsernamePassword)
class UsernamePassword:
    """
    RFC 1929 credentials: the username and password bytes a client sent.

    L{checkPassword} compares in constant time.
    """

    def __init__(self, username: bytes, password: bytes) -> None:
        self.username = username
        self.password = password

    def checkPassword(self, password: bytes | str) -> bool:
        """Whether C{password} is this client's password."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        return hmac.compare_digest(self.password, password)

    def __repr__(self) -> str:
        return f"UsernamePassword({self.username!r}, <hidden>)"


_FAILED = AuthOutcome(False, None, wire.AuthResponse(wire.AuthStatus.FAILURE).encode())


@implementer(IAuthNegotiation)
class _UsernamePasswordNegotiation:
    """One client's RFC 1929 exchange."""

    def __init__(self, checkers: Sequence[ICredentialsChecker], peer: IAddress) -> None:
        self._checkers = [c for c in checkers if IUsernamePassword in c.credentialInterfaces]
        self._peer = peer

    def dataReceived(self, data: bytes) -> tuple[AuthOutcome | Deferred[AuthOutcome], int] | None:
        try:
            parsed = wire.parseAuthRequest(data)
        except wire.ProtocolError as e:
            log.info(
                "Bad username/password request from {peer}: {error}",
                peer=describeAddress(self._peer),
                error=str(e),
            )
            return _FAILED, len(data)
        if parsed is None:
            return None
        request = parsed.message
        credentials = UsernamePassword(request.username, request.password)
        return self._check(credentials, 0), parsed.consumed

    def _check(self, credentials: UsernamePassword, index: int) -> Deferred[AuthOutcome]:
        """Try the checkers in order; the first that accepts wins."""
        if index >= len(self._checkers):
            return succeed(_FAILED)
        d = maybeDeferred(self._checkers[index].requestAvatarId, credentials)

        def accepted(avatarId: object) -> AuthOutcome:
            if isinstance(avatarId, bytes):
                user = avatarId.decode("utf-8", "backslashreplace")
            else:
                user = str(avatarId)
            return AuthOutcome(True, user, wire.AuthResponse(wire.AuthStatus.SUCCESS).encode())

        def refused(failure: Failure) -> Deferred[AuthOutcome]:
            if not failure.check(UnauthorizedLogin):
                log.failure(
                    "Credentials checker {checker!r} failed",
                    failure,
                    checker=self._checkers[index],
                )
            return self._check(credentials, index + 1)

        return d.addCallbacks(accepted, refused)


@implementer(IPlugin, IAuthenticator)
class UsernamePasswordAuthentication:
    """METHOD 0x02: RFC 1929 username/password, checked by twisted.cred checkers."""

    method = wire.Method.USERNAME_PASSWORD
    name = "username"
    usesCredentials = True

    def negotiate(self, checkers: Sequence[ICredentialsChecker], peer: IAddress) -> IAuthNegotiation:
        """Start one client's RFC 1929 exchange."""
        return _UsernamePasswordNegotiation(checkers, peer)


def _asBytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def checkersForRFC1929(checkers: Iterable[ICredentialsChecker]) -> list[ICredentialsChecker]:
    """
    Adapt configured checkers to RFC 1929, which hands usernames over as
    bytes.

    strcred's C{memory:} checker stores C{str} names and passwords, so a
    bytes lookup never matches; it is copied into one keyed by bytes.
    Checkers that already use bytes (C{file:}, and twisted.cred's convention)
    are returned as they are.
    """
    adapted: list[ICredentialsChecker] = []
    for checker in checkers:
        if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
            copy = InMemoryUsernamePasswordDatabaseDontUse()
            for username, password in checker.users.items():
                copy.addUser(_asBytes(username), _asBytes(password))
            checker = copy
        adapted.append(checker)
    return adapted


def availableAuthenticators() -> dict[str, IAuthenticator]:
    """
    Every authentication method by name: the built-in ones, and any
    L{IAuthenticator} plugin installed in C{twisted/plugins/}.
    """
    found: dict[str, IAuthenticator] = {
        a.name: a for a in (NoAuthentication(), UsernamePasswordAuthentication())
    }
    for plugin in getPlugins(IAuthenticator):
        found.setdefault(plugin.name, plugin)
    return found
