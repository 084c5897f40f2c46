"""
Busy polling: wait for I/O events without sleeping for a short while
first, for lower latency at the cost of CPU time.

A process that sleeps in C{epoll_wait} between a request and its reply has
to be woken up when the reply comes, and on a virtual machine whose idle
CPUs halt at once, that wake-up is most of a relay's latency: 64-byte
ping-pong through C{twistd socks5} on one core took 143 µs at the median
(Dante: 140 µs), against 52 µs when the reactor polled without sleeping
for up to 100 µs first.  The price is the CPU time spent polling: with
round trips every millisecond against a slower target, the server used
13% of a core instead of 9%, for no gain.  So it is off by default
(C{twistd socks5 --busy-poll MICROSECONDS} turns it on), as HAProxy's
C{busy-polling} is.

L{BusyPolling} keeps the cost to where it pays: like Linux's C{haltpoll}
idle governor, it polls only for as long as events have lately come that
soon, and stops polling when the process is idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["BusyPolling", "EventPoller"]


class EventPoller(Protocol):
    """What L{BusyPolling} polls: a C{select.epoll} object, for one."""

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        """Events ready within C{timeout} seconds (0: now; negative: no limit)."""


class BusyPolling:
    """
    Polls for events without sleeping for up to a window of time, then
    waits for them.  The window adapts to how soon events come: after a
    wait that ended within C{limit}, it doubles (starting from a quarter
    of C{limit}, up to C{limit}); after a longer wait, it halves, down to
    nothing once it is below a quarter of C{limit}.

    @param limit: the longest window, in seconds.
    @param clock: a monotonic clock, in nanoseconds.

    @ivar window: the current window, in nanoseconds.
    """

    def __init__(self, limit: float, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if not limit > 0:
            raise ValueError(f"busy polling needs a time limit above 0, not {limit!r}")
        self.limit = int(limit * 1e9)
        self.window = 0
        self._clock = clock

    def poll(self, poller: EventPoller, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        """
        The events C{poller} has ready within C{timeout} seconds (negative:
        no limit), as C{poller.poll(timeout, maxevents)} would return them.
        """
        if timeout == 0:
            return poller.poll(0, maxevents)
        clock = self._clock
        start = clock()
        window = self.window
        if window:
            deadline = start + (window if timeout < 0 else min(window, int(timeout * 1e9)))
            while True:
                events = poller.poll(0, maxevents)
                if events:
                    return events
                if clock() >= deadline:
                    break
            if timeout > 0:
                timeout = max(0.0, timeout - (clock() - start) / 1e9)
        events = poller.poll(timeout, maxevents)
        waited = clock() - start
        limit = self.limit
        if waited <= limit:
            if events:
                self.window = min(limit, max(2 * window, limit // 4))
        elif window:
            window //= 2
            self.window = window if window >= limit // 4 else 0
        return events
