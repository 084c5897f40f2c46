"""
Session accounting: one structured log event per finished client session,
and running counters for metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger, LogLevel

__all__ = ["Session", "Counters", "logSession"]

log = Logger(namespace="txsocks5.session")


@dataclass
class Session:
    """
    What is known about one client session, filled in as it goes.

    @ivar outcome: how it ended: C{"succeeded"} for a tunnel that ran, the
        name of the REP code sent for a refused request (C{"connection
        refused"}), or what cut negotiation short (C{"negotiation
        timeout"}, C{"authentication failed"}, C{"protocol error"}, ...).
    """

    client: str
    started: float
    user: str | None = None
    command: str | None = None
    destination: str | None = None
    bytesUp: int = 0
    bytesDown: int = 0
    datagramsUp: int | None = None
    datagramsDown: int | None = None
    dropped: int | None = None
    outcome: str = "closed during negotiation"


@dataclass
class Counters:
    """Totals since the server started, for metrics."""

    sessions: int = 0
    active: int = 0
    bytesUp: int = 0
    bytesDown: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def record(self, session: Session) -> None:
        """Add a finished session to the totals."""
        self.sessions += 1
        self.bytesUp += session.bytesUp
        self.bytesDown += session.bytesDown
        self.outcomes[session.outcome] = self.outcomes.get(session.outcome, 0) + 1


def logSession(session: Session, ended: float) -> None:
    """
    Emit the one log event that describes a finished session: every fact is
    a field of the event, and C{summary} is the line a text log shows.
    """
    # The line is made here, once, with an f-string: cheaper than a format
    # string with a field per fact that a text observer would fill in (this
    # runs once per connection, which is where a short session's time goes).
    duration = ended - session.started
    if session.datagramsUp is None:
        summary = (
            f"session {session.outcome}: client={session.client} user={session.user} "
            f"command={session.command} destination={session.destination} "
            f"up={session.bytesUp} down={session.bytesDown} duration={duration:.3f}s"
        )
    else:
        summary = (
            f"session {session.outcome}: client={session.client} user={session.user} "
            f"command={session.command} relay={session.destination} "
            f"datagrams up={session.datagramsUp} down={session.datagramsDown} dropped={session.dropped} "
            f"bytes up={session.bytesUp} down={session.bytesDown} duration={duration:.3f}s"
        )
    log.emit(
        LogLevel.info,
        "{summary}",
        summary=summary,
        outcome=session.outcome,
        client=session.client,
        user=session.user,
        command=session.command,
        destination=session.destination,
        bytesUp=session.bytesUp,
        bytesDown=session.bytesDown,
        datagramsUp=session.datagramsUp,
        datagramsDown=session.datagramsDown,
        dropped=session.dropped,
        duration=duration,
    )
