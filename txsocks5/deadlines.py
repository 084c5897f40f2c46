"""
Many timeouts of one length, on one reactor timer.

Every negotiating client and every half-closed tunnel has a deadline, and
nearly all of them are cancelled long before they pass.  A C{DelayedCall}
each costs a heap push, a cancel and the heap's later clean-up, several
percent of a short session's CPU.  L{Deadlines} keeps its keys in a dict in
the order their timeouts started, which (all timeouts being the same length)
is the order they pass in, with one C{DelayedCall} for the earliest: starting
and cancelling a timeout are a dict insert and a dict delete.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines", "DeadlinesByLength"]

log = Logger()

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """
    Timeouts of C{timeout} seconds for any number of keys: C{expired(key)}
    is called for a key whose timeout passes before it is cancelled.

    Deadlines are kept in the order they were set, so if the clock steps
    back a key may expire late by that step (never early).

    @ivar timeout: the length of every timeout, in seconds.
    """

    def __init__(self, clock: IReactorTime, timeout: float, expired: Callable[[K], object]) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self._clock = clock
        self._expired = expired
        self._deadlines: dict[K, float] = {}
        self._call: IDelayedCall | None = None
        self._firing = False

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def start(self, key: K) -> None:
        """Start C{key}'s timeout (again, from now, if it has one)."""
        deadlines = self._deadlines
        deadlines.pop(key, None)
        deadlines[key] = self._clock.seconds() + self.timeout
        if self._call is None and not self._firing:
            self._call = self._clock.callLater(self.timeout, self._fire)

    def cancel(self, key: K) -> None:
        """Forget C{key}'s timeout, if it has one."""
        deadlines = self._deadlines
        if deadlines.pop(key, None) is not None and not deadlines:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()  # Nothing left to wait for: no timer left behind.

    def _fire(self) -> None:
        self._call = None
        self._firing = True
        deadlines = self._deadlines
        try:
            now = self._clock.seconds()
            while deadlines:
                key = next(iter(deadlines))
                deadline = deadlines[key]
                if deadline > now:
                    self._call = self._clock.callLater(deadline - now, self._fire)
                    return
                del deadlines[key]
                try:
                    self._expired(key)
                except Exception:
                    log.failure("Error handling an expired timeout of {key!r}", key=key)
        finally:
            self._firing = False


class DeadlinesByLength(Generic[K]):
    """
    One L{Deadlines} per timeout length, made when first asked for, for
    callers whose timeout is a setting that may change (or that each name
    their own).  At most C{limit} lengths get one; past that, L{get} says
    C{None} and the caller keeps a C{DelayedCall} of its own.
    """

    def __init__(self, clock: IReactorTime, expired: Callable[[K], object], limit: int = 8) -> None:
        self._clock = clock
        self._expired = expired
        self._limit = limit
        self._byLength: dict[float, Deadlines[K]] = {}

    def get(self, timeout: float | None) -> Deadlines[K] | None:
        """The L{Deadlines} for C{timeout} seconds, or C{None} (no timeout, or too many lengths)."""
        if not timeout or timeout <= 0:
            return None
        deadlines = self._byLength.get(timeout)
        if deadlines is None and len(self._byLength) < self._limit:
            deadlines = self._byLength[timeout] = Deadlines(self._clock, timeout, self._expired)
        return deadlines
