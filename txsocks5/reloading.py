"""
L{HangupService}: what C{twistd socks5} does on SIGHUP (read its
credentials again), as an C{IService} that handles the signal only while it
runs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["HangupService", "reloaders"]

log = Logger()


def reloaders(checkers: Sequence[object]) -> list[Callable[[], object]]:
    """The C{reload} methods of those C{checkers} that can read their data again."""
    found: list[Callable[[], object]] = []
    for checker in checkers:
        reload = getattr(checker, "reload", None)
        if callable(reload):
            found.append(reload)
    return found


class HangupService(Service):
    """
    Calls C{callbacks} (in the reactor thread) each time the process gets
    SIGHUP while this service runs; the handler that was there before is
    put back when it stops.

    @param reactor: the reactor the callbacks run in.
    @param callbacks: what to call; each may return a Deferred.
    @param what: what the callbacks do, for the log line.
    """

    name = "hangup"

    def __init__(self, reactor: Any, callbacks: Sequence[Callable[[], object]], what: str) -> None:
        self._reactor = reactor
        self.callbacks = list(callbacks)
        self.what = what
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        """Handle SIGHUP from now on (before the services after it log that they serve)."""
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        """Handle SIGHUP."""
        super().startService()
        self._install()

    def _install(self) -> None:
        if self._previous is None:
            self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> None:
        """Leave SIGHUP as it was."""
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, number: int, frame: object) -> None:
        self._reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        """Do what SIGHUP does: run every callback."""
        log.info("SIGHUP: {what}", what=self.what)
        for callback in self.callbacks:
            maybeDeferred(callback).addErrback(self._failed, callback)

    def _failed(self, failure: Failure, callback: Callable[[], object]) -> None:
        log.failure("SIGHUP: {callback!r} failed", failure, callback=callback)
