"""
Bookkeeping for the server's limits: failed-login throttling per client
address (L{LoginThrottle}), and keeping repeated refusals from flooding the
log (L{LogThrottle}).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["LoginThrottle", "LogThrottle", "ThrottledCheckers"]

log = Logger()


@dataclass
class _Failures:
    count: int = 0
    lockouts: int = 0
    lockedUntil: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """
    Slows password guessing: after C{maxFailures} failed logins in a row
    from one client address, logins from it are refused unchecked for
    C{lockout} seconds; each further lockout of the same address lasts
    twice as long as the one before, up to C{maxLockout}.  A successful
    login forgets the address's failures.

    @param clock: what time it is.
    @param maxFailures: failed logins that start a lockout; 0 turns the
        throttle off.
    @param lockout: seconds the first lockout lasts.
    @param maxLockout: seconds no lockout exceeds.
    @param maxTracked: client addresses remembered at most (the oldest
        are forgotten first).
    """

    def __init__(
        self,
        clock: IReactorTime,
        maxFailures: int = 5,
        lockout: float = 60.0,
        maxLockout: float = 3600.0,
        maxTracked: int = 65536,
    ) -> None:
        self.clock = clock
        self.maxFailures = maxFailures
        self.lockout = lockout
        self.maxLockout = maxLockout
        self.maxTracked = maxTracked
        self._failures: dict[str, _Failures] = {}

    def locked(self, client: str) -> bool:
        """Whether logins from C{client} are refused without a check now."""
        failures = self._failures.get(client)
        return failures is not None and failures.lockedUntil > self.clock.seconds()

    def failed(self, client: str) -> None:
        """Count a failed login from C{client}; start a lockout if that was one too many."""
        if not self.maxFailures:
            return
        now = self.clock.seconds()
        failures = self._failures.pop(client, None)
        if failures is None:
            if len(self._failures) >= self.maxTracked:
                self._forgetOldest()
            failures = _Failures()
        elif now - failures.last > self.maxLockout:
            failures = _Failures()  # So long ago that it starts over.
        self._failures[client] = failures  # Most recent last.
        failures.last = now
        failures.count += 1
        if failures.count >= self.maxFailures:
            seconds = min(self.lockout * 2**failures.lockouts, self.maxLockout)
            failures.lockouts += 1
            failures.count = 0
            failures.lockedUntil = now + seconds
            log.warn(
                "Refusing logins from {client} for {seconds:.0f} s after {failed} failed logins",
                client=client,
                seconds=seconds,
                failed=self.maxFailures,
            )

    def guard(self, checkers: Sequence[ICredentialsChecker], client: str) -> ThrottledCheckers:
        """C{checkers} for one login from C{client}, refusing unchecked while it is locked out."""
        return ThrottledCheckers(self, client, checkers)

    def succeeded(self, client: str) -> None:
        """Forget C{client}'s failed logins."""
        self._failures.pop(client, None)

    def _forgetOldest(self) -> None:
        for client in list(self._failures)[: max(1, self.maxTracked // 16)]:
            del self._failures[client]


@implementer(ICredentialsChecker)
class _ThrottledChecker:
    """A checker that is not asked while its client is locked out."""

    def __init__(self, checker: ICredentialsChecker, owner: ThrottledCheckers) -> None:
        self._checker = checker
        self._owner = owner
        self.credentialInterfaces = checker.credentialInterfaces

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        owner = self._owner
        if owner.throttle.locked(owner.client):
            owner.refused = True
            return fail(UnauthorizedLogin("logins from this address are paused"))
        return self._checker.requestAvatarId(credentials)  # type: ignore[no-any-return]


class ThrottledCheckers:
    """
    The checkers one login from C{client} is checked by: each refuses,
    without asking the real one, if C{client} is locked out when the
    credentials arrive (not only when the client connected).

    @ivar checkers: the guarded checkers, in order.
    @ivar refused: whether a check was refused because of a lockout.
    """

    def __init__(self, throttle: LoginThrottle, client: str, checkers: Sequence[ICredentialsChecker]) -> None:
        self.throttle = throttle
        self.client = client
        self.refused = False
        self.checkers: list[ICredentialsChecker] = [_ThrottledChecker(c, self) for c in checkers]


class LogThrottle:
    """
    Lets a repeated event be logged once per C{interval} seconds per kind,
    and says how many were not logged in between.
    """

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """
        C{None} if an event of C{kind} should not be logged now; otherwise
        how many were suppressed since the last one that was.
        """
        now = self.clock.seconds()
        if self._next.get(kind, 0.0) > now:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        if len(self._next) > 1024:
            self._next.clear()
        self._next[kind] = now + self.interval
        return self._suppressed.pop(kind, 0)
