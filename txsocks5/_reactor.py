"""
An epoll reactor with a cheaper event dispatch, used by C{twistd socks5}
when no reactor was chosen with C{twistd --reactor}.

Twisted's poll loop wraps every I/O event in C{log.callWithLogger}, which
looks up the selectable's log prefix and pushes a logging context: several
microseconds per event, which a proxy pays many times per connection.
L{FastEPollReactor} dispatches straight to C{_doReadOrWrite}, which already
catches and logs what application code raises.

This relies on Twisted internals (C{EPollReactor._poller},
C{_selectables}, C{_doReadOrWrite}), so it is used only with the Twisted
versions it was tested against (L{TESTED_TWISTED}) and only where they
look as expected; otherwise the stock reactor is used.  The only visible
difference: legacy C{log.msg} lines from Twisted's own transports show
C{-} instead of the protocol's log prefix.
"""

from __future__ import annotations

import errno
import sys

from twisted.logger import Logger
from twisted.python.log import err

__all__ = ["FastEPollReactor", "TESTED_TWISTED", "fastReactorAvailable", "installFastReactor"]

log = Logger()

#: Twisted releases (major.minor) whose epoll reactor internals were checked.
TESTED_TWISTED = ("26.10",)

try:
    from twisted.internet import epollreactor
except ImportError:  # Not Linux.
    epollreactor = None  # type: ignore[assignment]


def _twistedVersion() -> str:
    import twisted

    return ".".join(twisted.__version__.split(".")[:2])


def fastReactorAvailable() -> bool:
    """Whether L{FastEPollReactor} can be used with this Twisted."""
    if epollreactor is None or _twistedVersion() not in TESTED_TWISTED:
        return False
    base = epollreactor.EPollReactor
    return all(hasattr(base, name) for name in ("_doReadOrWrite", "doPoll"))


if epollreactor is not None:

    class FastEPollReactor(epollreactor.EPollReactor):
        """L{epollreactor.EPollReactor} without the per-event logging context."""

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and dispatch each to its selectable."""
            if timeout is None:
                timeout = -1  # Wait indefinitely.
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as e:
                if e.errno == errno.EINTR:
                    return
                raise
            dispatch = self._doReadOrWrite
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        dispatch(selectable, fd, event)
                    except Exception:
                        err(None, "Unhandled error dispatching an I/O event")

        doIteration = doPoll

else:  # pragma: no cover - only without epoll
    FastEPollReactor = None  # type: ignore[assignment,misc]


def installFastReactor() -> bool:
    """
    Install L{FastEPollReactor} as the global reactor, unless a reactor is
    installed already or it is not available; return whether it was.
    """
    if "twisted.internet.reactor" in sys.modules or not fastReactorAvailable():
        return False
    from twisted.internet.main import installReactor

    installReactor(FastEPollReactor())
    return True
