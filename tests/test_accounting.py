"""
Tests of L{txsocks5.accounting}: the session log event and L{SessionLog},
which logs finished sessions at once or in batches.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import (
    LogLevel,
    eventAsJSON,
    eventAsText,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase

from txsocks5.accounting import Session, SessionLog, logSession


class ClockWithTriggers(Clock):
    """A fake clock that also keeps system event triggers, as a reactor does."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: dict[int, tuple[str, str, Any]] = {}
        self._nextTrigger = 0

    def addSystemEventTrigger(self, phase: str, eventType: str, f: Any) -> int:
        self._nextTrigger += 1
        self.triggers[self._nextTrigger] = (phase, eventType, f)
        return self._nextTrigger

    def removeSystemEventTrigger(self, triggerID: int) -> None:
        del self.triggers[triggerID]  # KeyError, as a reactor's ValueError, if absent

    def shutDown(self) -> None:
        """Fire the shutdown triggers, as a reactor's shutdown does."""
        for phase in ("before", "during", "after"):
            for key, (p, eventType, f) in list(self.triggers.items()):
                if p == phase and eventType == "shutdown":
                    del self.triggers[key]
                    f()


def session(n: int, started: float = 0.0) -> Session:
    """A finished CONNECT session, told apart by its client port C{n}."""
    return Session(
        client=f"127.0.0.1:{n}",
        started=started,
        command="CONNECT",
        destination="192.0.2.1:80",
        bytesUp=16,
        bytesDown=32,
        outcome="succeeded",
    )


class SessionLogTestCase(SynchronousTestCase):
    """Collects the session events logged during each test."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def clients(self) -> list[str]:
        """The clients of the session events logged so far, in order."""
        return [e["client"] for e in self.events if e.get("log_namespace") == "txsocks5.session"]


class LogSessionTests(SessionLogTestCase):
    """L{logSession}: one event per session, every fact a field."""

    def test_event(self) -> None:
        """The event has the session's facts, its end as log_time, and a summary line."""
        logSession(session(1000, started=100.0), 102.5)
        [event] = self.events
        self.assertEqual(event["log_namespace"], "txsocks5.session")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["log_time"], 102.5)
        self.assertEqual(event["duration"], 2.5)
        self.assertEqual(
            (event["client"], event["command"], event["destination"], event["bytesUp"], event["bytesDown"]),
            ("127.0.0.1:1000", "CONNECT", "192.0.2.1:80", 16, 32),
        )
        self.assertEqual(
            formatEvent(event),
            "session succeeded: client=127.0.0.1:1000 user=None command=CONNECT "
            "destination=192.0.2.1:80 up=16 down=32 duration=2.500s",
        )

    def test_textLine(self) -> None:
        """
        A text log shows the summary as it is, braces included (a client
        names the destination), after the namespace and level as Twisted
        shows them for any event.
        """
        braced = session(1000, started=100.0)
        braced.destination = "{0}.example:80"
        logSession(braced, 102.5)
        [event] = self.events
        self.assertEqual(
            eventAsText(event, includeTimestamp=False),
            "[txsocks5.session#info] session succeeded: client=127.0.0.1:1000 user=None "
            "command=CONNECT destination={0}.example:80 up=16 down=32 duration=2.500s",
        )

    def test_jsonLine(self) -> None:
        """
        The event keeps its text through a JSON log (as a worker's events
        reach the parent's log), braces included.
        """
        braced = session(1000, started=100.0)
        braced.destination = "{0}.example:80"
        logSession(braced, 102.5)
        [event] = self.events
        self.assertEqual(formatEvent(eventFromJSON(eventAsJSON(event))), formatEvent(event))
        self.assertIn("destination={0}.example:80", formatEvent(event))


class SessionLogTests(SessionLogTestCase):
    """L{SessionLog}: at once, or in batches bounded in time and size."""

    def test_atOnce(self) -> None:
        """With no delay, each session is logged as it is given."""
        clock = Clock()
        sessions = SessionLog(clock)
        sessions.log(session(1), 5.0)
        self.assertEqual(self.clients(), ["127.0.0.1:1"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_batch(self) -> None:
        """
        With a delay, sessions wait until that long after the first of
        them ended, then are logged in order, each with its own end time.
        """
        clock = ClockWithTriggers()
        sessions = SessionLog(clock, delay=0.5)
        sessions.log(session(1), 1.0)
        clock.advance(0.25)
        sessions.log(session(2), 1.25)
        self.assertEqual(self.clients(), [])
        clock.advance(0.125)
        self.assertEqual(self.clients(), [])
        clock.advance(0.125)
        self.assertEqual(self.clients(), ["127.0.0.1:1", "127.0.0.1:2"])
        self.assertEqual([e["log_time"] for e in self.events], [1.0, 1.25])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.triggers, {}, "the shutdown trigger outlived its batch")

    def test_nextBatch(self) -> None:
        """A session after a batch was logged starts a new batch."""
        clock = ClockWithTriggers()
        sessions = SessionLog(clock, delay=0.5)
        sessions.log(session(1), 1.0)
        clock.advance(0.5)
        sessions.log(session(2), 1.5)
        self.assertEqual(self.clients(), ["127.0.0.1:1"])
        clock.advance(0.5)
        self.assertEqual(self.clients(), ["127.0.0.1:1", "127.0.0.1:2"])

    def test_limit(self) -> None:
        """Once C{limit} sessions wait, they are all logged at once."""
        clock = ClockWithTriggers()
        sessions = SessionLog(clock, delay=10, limit=3)
        sessions.log(session(1), 1.0)
        sessions.log(session(2), 1.0)
        self.assertEqual(self.clients(), [])
        sessions.log(session(3), 1.0)
        self.assertEqual(self.clients(), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.triggers, {})

    def test_flush(self) -> None:
        """L{SessionLog.flush} logs the waiting sessions now, and only once."""
        clock = ClockWithTriggers()
        sessions = SessionLog(clock, delay=10)
        sessions.log(session(1), 1.0)
        sessions.flush()
        self.assertEqual(self.clients(), ["127.0.0.1:1"])
        clock.advance(10)
        sessions.flush()
        self.assertEqual(self.clients(), ["127.0.0.1:1"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_shutdown(self) -> None:
        """
        Sessions still waiting when the reactor shuts down are logged after
        it did, those that end during the shutdown (as the reactor closes
        the tunnels) included.
        """
        clock = ClockWithTriggers()
        sessions = SessionLog(clock, delay=10)
        sessions.log(session(1), 1.0)
        clock.addSystemEventTrigger("during", "shutdown", lambda: sessions.log(session(2), 1.5))
        clock.shutDown()
        self.assertEqual(self.clients(), ["127.0.0.1:1", "127.0.0.1:2"])
        self.assertEqual(clock.triggers, {})

    def test_clockWithoutTriggers(self) -> None:
        """A clock that cannot fire system events still gets its batches logged."""
        clock = Clock()
        sessions = SessionLog(clock, delay=0.5)
        sessions.log(session(1), 1.0)
        clock.advance(0.5)
        self.assertEqual(self.clients(), ["127.0.0.1:1"])

    def test_bad(self) -> None:
        """A negative delay or a limit below 1 is refused."""
        self.assertRaises(ValueError, SessionLog, Clock(), -1)
        self.assertRaises(ValueError, SessionLog, Clock(), 1, 0)
