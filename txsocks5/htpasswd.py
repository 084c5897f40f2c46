"""
Username/password logins checked against an Apache C{htpasswd} file of
bcrypt hashes (as C{htpasswd -B} writes them): L{HtpasswdChecker}, a
C{twisted.cred} checker, and L{HtpasswdCheckerFactory}, the strcred plugin
behind C{--auth htpasswd:PATH}.

The file is read again whenever it changes on disk (or when L{reload} is
called, e.g. on SIGHUP); a changed file that cannot be used leaves the users
loaded before in place.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = [
    "HtpasswdError",
    "HtpasswdChecker",
    "HtpasswdCheckerFactory",
    "parseHtpasswd",
]

log = Logger()

#: The bcrypt cost assumed for the dummy check of unknown users when the
#: file lists nobody (C{htpasswd -B}'s default).
DEFAULT_COST = 5

#: bcrypt uses at most this many bytes of a password; longer ones are cut
#: here, as the C{htpasswd} tool and C{crypt(3)} do when hashing.
BCRYPT_MAX_PASSWORD = 72

_BCRYPT = re.compile(
    rb"\$2[aby]\$(?P<cost>0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}\Z"
)

#: Other hash formats C{htpasswd} can write, by how they start.
_OTHER_SCHEMES = [
    (b"$apr1$", "an $apr1$ (Apache MD5) hash"),
    (b"{SHA}", "a {SHA} hash"),
    (b"$5$", "a $5$ (SHA-256 crypt) hash"),
    (b"$6$", "a $6$ (SHA-512 crypt) hash"),
    (b"$1$", "a $1$ (MD5 crypt) hash"),
    (b"$2", "a malformed bcrypt hash"),
]

_FAILED = "wrong username or password"


class HtpasswdError(ValueError):
    """An htpasswd file that cannot be used: unreadable, or not in the format."""


def _describe(hashed: bytes) -> str:
    """What kind of (unsupported) password field C{hashed} looks like."""
    for prefix, description in _OTHER_SCHEMES:
        if hashed.startswith(prefix):
            return description
    if re.fullmatch(rb"[./A-Za-z0-9]{13}", hashed):
        return "a crypt (DES) hash or a plain-text password"
    return "a plain-text password or an unknown hash"


def _show(username: bytes) -> str:
    """A username as it may appear in a message."""
    return repr(username.decode("utf-8", "backslashreplace"))


def parseHtpasswd(data: bytes, filename: str = "<htpasswd>") -> dict[bytes, bytes]:
    """
    The users of an htpasswd file and their bcrypt hashes.

    Lines are C{user:hash}; blank lines and lines starting with C{#} are
    skipped.  Every hash must be bcrypt (C{$2y$}, C{$2b$} or C{$2a$}).

    @param filename: how to name the file in errors.
    @raise HtpasswdError: naming the file and line of the first problem.
    """
    entries: dict[bytes, bytes] = {}
    firstSeen: dict[bytes, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.rstrip(b"\r")
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        where = f"{filename}, line {number}"
        username, colon, hashed = line.partition(b":")
        if not colon or not username:
            raise HtpasswdError(f"{where}: expected user:hash")
        if not _BCRYPT.match(hashed):
            raise HtpasswdError(
                f"{where}: user {_show(username)} has {_describe(hashed)}; only bcrypt hashes"
                " are supported: set the password again with htpasswd -B"
            )
        if username in entries:
            raise HtpasswdError(
                f"{where}: user {_show(username)} is listed again (first on line {firstSeen[username]})"
            )
        entries[username] = hashed
        firstSeen[username] = number
    return entries


def _dummyHash(entries: Mapping[bytes, bytes]) -> bytes:
    """
    A well-formed bcrypt hash no password matches, of the cost most users
    have: checked for unknown users, so they cost as much as known ones.
    """
    costs = Counter(int(hashed[4:6]) for hashed in entries.values())
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
    return b"$2b$%02d$%s" % (cost, b"." * 53)


#: What identifies one version of the file on disk: (st_mtime_ns, st_size,
#: st_ino), or ("error", errno) when it could not be looked at.
_Fingerprint = tuple[Any, ...]


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    """The fingerprint of a file from its C{stat}."""
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _look(filename: str) -> _Fingerprint:
    """The fingerprint of the file as it is on disk now (blocking)."""
    try:
        return _fingerprint(os.stat(filename))
    except OSError as e:
        return ("error", e.errno)


@dataclass(frozen=True)
class _Snapshot:
    """The users of one version of the file."""

    fingerprint: _Fingerprint
    entries: Mapping[bytes, bytes]
    dummy: bytes


@dataclass(frozen=True)
class _Problem:
    """A version of the file that could not be loaded."""

    fingerprint: _Fingerprint
    error: str


@dataclass(frozen=True)
class _CheckResult:
    """What a check found, in the thread, for the reactor thread to act on."""

    accepted: bool
    seen: _Fingerprint
    loaded: _Snapshot | None = None
    problem: _Problem | None = None


def _load(filename: str) -> _Snapshot:
    """Read and parse the file (blocking)."""
    try:
        with open(filename, "rb") as f:
            fingerprint = _fingerprint(os.fstat(f.fileno()))
            data = f.read()
    except OSError as e:
        raise HtpasswdError(f"{filename}: cannot read the file: {e.strerror or e}") from None
    entries = parseHtpasswd(data, filename)
    return _Snapshot(fingerprint, entries, _dummyHash(entries))


def _password(value: bytes | str) -> bytes:
    """The bytes of a password that bcrypt looks at."""
    password = value.encode("utf-8") if isinstance(value, str) else value
    return password[:BCRYPT_MAX_PASSWORD]


def _bcryptMatches(password: bytes, hashed: bytes) -> bool:
    """Whether C{password} matches C{hashed} (blocking; a hash bcrypt refuses matches nothing)."""
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Checks usernames and passwords against an htpasswd file of bcrypt
    hashes; the avatar ID is the username, as bytes.

    bcrypt runs in the reactor's thread pool.  Before each check the file is
    looked at, and read again if it changed (modification time, size or
    inode); a changed file that cannot be loaded is logged and the users
    loaded before stay.

    @ivar filename: the htpasswd file.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, filename: str, reactor: IReactorThreads | None = None) -> None:
        """
        Load C{filename} now.

        @raise HtpasswdError: if it cannot be read or is not in the format.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor  # type: ignore[assignment]
        self.filename = filename
        self._reactor: Any = reactor
        self._snapshot = _load(filename)
        self._failed: _Fingerprint | None = None
        if not self._snapshot.entries:
            log.warn("{path} lists no users: every login will be refused", path=filename)

    @property
    def usernames(self) -> frozenset[bytes]:
        """The users currently loaded."""
        return frozenset(self._snapshot.entries)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        """
        Check C{credentials}; fire with the username (bytes), or fail with
        L{UnauthorizedLogin}.
        """
        username = credentials.username
        if isinstance(username, str):
            username = username.encode("utf-8")
        d = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            self._checkInThread,
            username,
            _password(credentials.password),
            self._snapshot,
            self._failed,
        )

        def checked(result: _CheckResult) -> bytes | tuple[()]:
            self._update(result.seen, result.loaded, result.problem)
            if not result.accepted:
                raise UnauthorizedLogin(_FAILED)
            return username

        return d.addCallback(checked)

    def _checkInThread(
        self, username: bytes, password: bytes, snapshot: _Snapshot, failed: _Fingerprint | None
    ) -> _CheckResult:
        """Look at the file, load it if it changed, and run bcrypt (blocking)."""
        loaded: _Snapshot | None = None
        problem: _Problem | None = None
        seen = _look(self.filename)
        if seen != snapshot.fingerprint and seen != failed:
            try:
                loaded = _load(self.filename)
            except HtpasswdError as e:
                problem = _Problem(seen, str(e))
        current = loaded or snapshot
        hashed = current.entries.get(username)
        matches = _bcryptMatches(password, hashed if hashed is not None else current.dummy)
        return _CheckResult(matches and hashed is not None, seen, loaded, problem)

    def _update(
        self,
        seen: _Fingerprint,
        loaded: _Snapshot | None,
        problem: _Problem | None,
        announce: bool = False,
    ) -> None:
        """
        Take in what a look at the file found (in the reactor thread).

        Logins that ran at once may each have found the same change: it is
        logged once, unless C{announce} (an explicit reload) says to log it
        anyway.
        """
        if loaded is not None:
            if announce or loaded.fingerprint != self._snapshot.fingerprint:
                log.info("Reloaded {path} ({users} user(s))", path=self.filename, users=len(loaded.entries))
            self._snapshot = loaded
            self._failed = None
        elif problem is not None:
            if problem.fingerprint == self._failed and not announce:
                return
            self._failed = problem.fingerprint
            log.error(
                "Not reloaded: {error}; still using the {users} user(s) loaded before",
                path=self.filename,
                users=len(self._snapshot.entries),
                error=problem.error,
            )
        elif seen == self._snapshot.fingerprint:
            self._failed = None

    def reload(self) -> Deferred[bool]:
        """
        Read the file again now, whether or not it looks changed (for
        SIGHUP).  Fires with C{True} once the new users are in place, or
        with C{False} if the file could not be loaded (which is logged, and
        the users loaded before stay); it never fails.
        """

        def load() -> _Snapshot | _Problem:
            try:
                return _load(self.filename)
            except HtpasswdError as e:
                return _Problem(_look(self.filename), str(e))

        def loadedOrNot(result: _Snapshot | _Problem) -> bool:
            if isinstance(result, _Snapshot):
                self._update(result.fingerprint, result, None, announce=True)
                return True
            self._update(result.fingerprint, None, result, announce=True)
            return False

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), load)
        return d.addCallback(loadedOrNot)

    def __repr__(self) -> str:
        return f"<HtpasswdChecker {self.filename!r}>"


_HELP = """
Checks usernames and passwords against an Apache htpasswd file of bcrypt
hashes, as written by 'htpasswd -B' ($2y$, $2b$ or $2a$); create it with
'htpasswd -B -c FILE USER' and add users with 'htpasswd -B FILE USER'.
Other hash formats ($apr1$, {SHA}, crypt, plain text) are refused.
The file is read again when it changes, before the next login; if the
changed file cannot be used, the error is logged and the users loaded
before stay.
"""


@implementer(ICheckerFactory, IPlugin)
class HtpasswdCheckerFactory:
    """The strcred plugin for C{--auth htpasswd:PATH}: makes L{HtpasswdChecker}s."""

    authType = "htpasswd"
    authHelp = _HELP
    argStringFormat = "Path of an htpasswd file of bcrypt hashes (htpasswd -B)."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring: str) -> HtpasswdChecker:
        """
        A checker for the file named by C{argstring}.

        @raise HtpasswdError: if no file is named, or it cannot be used.
        """
        if not argstring.strip():
            raise HtpasswdError("htpasswd needs a file: --auth htpasswd:PATH")
        return HtpasswdChecker(argstring)
