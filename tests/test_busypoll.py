"""Tests for L{txsocks5.busypoll}: when L{BusyPolling} polls without sleeping."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txsocks5.busypoll import BusyPolling

#: The limit used in these tests: 100 µs, in seconds and in nanoseconds.
LIMIT = 100e-6
LIMIT_NS = 100_000

EVENTS = [(5, 1)]


class ScriptedPoller:
    """
    An epoll stand-in: each call to C{poll} takes the next scripted step,
    C{(nanoseconds it takes, events it returns)}, on a shared fake clock,
    and is recorded as C{(timeout, maxevents)}.  Once the script is done,
    a call with a timeout of 0 returns nothing at once.
    """

    def __init__(self, steps: list[tuple[int, list[tuple[int, int]]]]) -> None:
        self.now = 1_000_000_000
        self.steps = list(steps)
        self.calls: list[tuple[float, int]] = []

    def clock(self) -> int:
        return self.now

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.calls.append((timeout, maxevents))
        if not self.steps:
            assert timeout == 0, f"unscripted wait (timeout {timeout})"
            self.now += 1_000
            return []
        took, events = self.steps.pop(0)
        self.now += took
        return events


def polling(poller: ScriptedPoller, window: int = 0) -> BusyPolling:
    """A L{BusyPolling} on C{poller}'s clock, its window set to C{window} ns."""
    busy = BusyPolling(LIMIT, clock=poller.clock)
    busy.window = window
    return busy


class WindowTests(SynchronousTestCase):
    """How the window grows and shrinks."""

    def test_startsOff(self) -> None:
        """With no window yet, a poll waits at once, with the timeout given."""
        poller = ScriptedPoller([(500_000, EVENTS)])
        busy = polling(poller)
        self.assertEqual(busy.poll(poller, 2.5, 10), EVENTS)
        self.assertEqual(poller.calls, [(2.5, 10)])

    def test_grows(self) -> None:
        """
        Each wait that ends with events within the limit doubles the window,
        from a quarter of the limit up to the limit.
        """
        poller = ScriptedPoller([])
        busy = polling(poller)
        windows = []
        for spun, timeout in ((0, -1.0), (30_000, -1.0), (60_000, -1.0), (60_000, 60e-6)):
            # Polls that do not wait find nothing for SPUN ns; then a wait ends with events.
            poller.steps = [(spun, [])] if spun else []
            poller.steps.append((10_000, EVENTS))
            self.assertEqual(busy.poll(poller, timeout, 10), EVENTS)
            self.assertEqual(poller.steps, [])
            windows.append(busy.window)
        self.assertEqual(windows, [LIMIT_NS // 4, LIMIT_NS // 2, LIMIT_NS, LIMIT_NS])

    def test_spinCatchesEvents(self) -> None:
        """
        With a window, polls that do not wait (timeout 0) come first, and
        events they find are returned without waiting; the window stays.
        """
        poller = ScriptedPoller([(1_000, []), (1_000, []), (1_000, EVENTS)])
        busy = polling(poller, window=LIMIT_NS)
        self.assertEqual(busy.poll(poller, -1, 10), EVENTS)
        self.assertEqual(poller.calls, [(0, 10)] * 3)
        self.assertEqual(busy.window, LIMIT_NS)

    def test_spinEndsAtWindow(self) -> None:
        """Past the window, the poll waits, with no limit if none was given."""
        poller = ScriptedPoller([(30_000, []), (30_000, []), (10_000, EVENTS)])
        busy = polling(poller, window=LIMIT_NS // 2)
        self.assertEqual(busy.poll(poller, -1, 10), EVENTS)
        self.assertEqual(poller.calls, [(0, 10), (0, 10), (-1, 10)])

    def test_shrinks(self) -> None:
        """
        A wait longer than the limit halves the window; below a quarter
        of the limit it is gone, and the next poll waits at once.
        """
        poller = ScriptedPoller([(LIMIT_NS, []), (5_000_000, EVENTS)])
        busy = polling(poller, window=LIMIT_NS)
        busy.poll(poller, -1, 10)
        self.assertEqual(busy.window, LIMIT_NS // 2)
        poller.steps = [(LIMIT_NS // 2, []), (5_000_000, EVENTS)]
        busy.poll(poller, -1, 10)
        self.assertEqual(busy.window, LIMIT_NS // 4)
        poller.steps = [(LIMIT_NS // 4, []), (5_000_000, EVENTS)]
        busy.poll(poller, -1, 10)
        self.assertEqual(busy.window, 0)
        poller.calls.clear()
        poller.steps = [(5_000_000, EVENTS)]
        busy.poll(poller, -1, 10)
        self.assertEqual(poller.calls, [(-1, 10)])

    def test_timerWithoutEvents(self) -> None:
        """A wait that a timer ends within the limit, with no events, leaves the window alone."""
        poller = ScriptedPoller([(50_000, [])])
        busy = polling(poller)
        self.assertEqual(busy.poll(poller, 50e-6, 10), [])
        self.assertEqual(busy.window, 0)


class TimeoutTests(SynchronousTestCase):
    """Busy polling keeps the reactor's timers on time."""

    def test_dueNow(self) -> None:
        """With a timer due (timeout 0), one poll that does not wait, whatever the window."""
        poller = ScriptedPoller([(1_000, [])])
        busy = polling(poller, window=LIMIT_NS)
        self.assertEqual(busy.poll(poller, 0, 10), [])
        self.assertEqual(poller.calls, [(0, 10)])
        self.assertEqual(busy.window, LIMIT_NS)

    def test_timerDueWithinWindow(self) -> None:
        """
        A timer due before the window ends cuts the spin short, and the
        wait after it is only for what is left of the timeout.
        """
        poller = ScriptedPoller([(20_000, []), (20_000, []), (10_000, [])])
        busy = polling(poller, window=LIMIT_NS)
        self.assertEqual(busy.poll(poller, 30e-6, 10), [])
        self.assertEqual([timeout for timeout, _ in poller.calls[:2]], [0, 0])
        self.assertEqual(poller.calls[2][0], 0.0)  # 40 µs spun, past the 30 µs timeout

    def test_remainingTimeout(self) -> None:
        """After the spin, the wait lasts what is left of a longer timeout."""
        poller = ScriptedPoller([(LIMIT_NS, []), (1_000_000, [])])
        busy = polling(poller, window=LIMIT_NS)
        busy.poll(poller, 0.5, 10)
        self.assertAlmostEqual(poller.calls[1][0], 0.5 - LIMIT, places=9)

    def test_limitAboveZero(self) -> None:
        """A limit of 0 or less is refused: it would never poll busily."""
        for limit in (0, -1e-6):
            self.assertRaises(ValueError, BusyPolling, limit)
