"""Unit tests of L{txsocks5.deadlines}: many same-length timeouts on one timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txsocks5.deadlines import Deadlines, DeadlinesByLength


class DeadlinesTests(SynchronousTestCase):
    """L{Deadlines} driven by a L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadlines: Deadlines[str] = Deadlines(self.clock, 10.0, self.expired.append)

    def test_expires(self) -> None:
        """A key's timeout passes C{timeout} seconds after it started, not before."""
        self.deadlines.start("a")
        self.clock.advance(9.999)
        self.assertEqual(self.expired, [])
        self.assertIn("a", self.deadlines)
        self.clock.advance(0.001)
        self.assertEqual(self.expired, ["a"])
        self.assertNotIn("a", self.deadlines)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """A cancelled timeout never passes, and no timer is left behind once none is left."""
        self.deadlines.start("a")
        self.deadlines.cancel("a")
        self.deadlines.cancel("a")  # Twice, or never started: nothing happens.
        self.deadlines.cancel("never")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.expired, [])

    def test_oneTimerForMany(self) -> None:
        """
        Many keys share one DelayedCall; each expires at its own deadline,
        in order, and the timer follows the earliest one left.
        """
        for key in "abc":
            self.deadlines.start(key)
            self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 3)
        self.deadlines.cancel("a")
        self.clock.advance(7)  # t=10: a was cancelled, b is due at 11.
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["b"])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sameTime(self) -> None:
        """Keys due at the same time all expire at once."""
        for key in "abc":
            self.deadlines.start(key)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a", "b", "c"])

    def test_restart(self) -> None:
        """Starting a key again starts its timeout over, behind keys started since."""
        self.deadlines.start("a")
        self.clock.advance(5)
        self.deadlines.start("b")
        self.deadlines.start("a")
        self.clock.advance(5)
        self.assertEqual(self.expired, [])
        self.clock.advance(5)
        self.assertEqual(self.expired, ["b", "a"])

    def test_startWhileExpiring(self) -> None:
        """A key started by an expiry callback gets its full timeout, on a single timer."""

        def expired(key: str) -> None:
            self.expired.append(key)
            if key == "a":
                self.deadlines.start("b")

        self.deadlines = Deadlines(self.clock, 10.0, expired)
        self.deadlines.start("a")
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_errorInCallback(self) -> None:
        """An expiry callback that raises is logged; the other keys still expire."""

        def expired(key: str) -> None:
            if key == "a":
                raise RuntimeError("broken")
            self.expired.append(key)

        self.deadlines = Deadlines(self.clock, 10.0, expired)
        self.deadlines.start("a")
        self.deadlines.start("b")
        self.clock.advance(10)
        self.assertEqual(self.expired, ["b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_positiveTimeout(self) -> None:
        for timeout in (0, -1.0):
            self.assertRaises(ValueError, Deadlines, self.clock, timeout, self.expired.append)


class DeadlinesByLengthTests(SynchronousTestCase):
    """L{DeadlinesByLength}: one L{Deadlines} per timeout length, up to a limit."""

    def test_onePerLength(self) -> None:
        expired: list[str] = []
        timers: DeadlinesByLength[str] = DeadlinesByLength(Clock(), expired.append, limit=2)
        five = timers.get(5.0)
        assert five is not None
        self.assertEqual(five.timeout, 5.0)
        self.assertIs(timers.get(5.0), five)
        self.assertIsNotNone(timers.get(7.0))
        self.assertIsNone(timers.get(9.0))  # Past the limit: the caller keeps its own timer.
        self.assertIs(timers.get(5.0), five)

    def test_noTimeout(self) -> None:
        timers: DeadlinesByLength[str] = DeadlinesByLength(Clock(), lambda key: None)
        for timeout in (None, 0, 0.0, -1.0):
            self.assertIsNone(timers.get(timeout))
