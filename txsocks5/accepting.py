"""
Running out of file descriptors without spinning, flooding the log or
resetting clients: L{guardPort} and L{AcceptGuard}, plus L{raiseFileLimit}
and L{descriptorsInUse}.

What Twisted does by itself when C{accept()} fails for lack of resources:

- C{EMFILE} with its reserved descriptor free: it closes the reserve,
  accepts every client waiting in the listen queue and closes them at once
  (each gets a reset or an EOF), logging three lines per client.
- C{ENFILE}, C{ENOBUFS}, C{ENOMEM}, or C{EMFILE} once the reserve is gone:
  it logs a line and returns.  The listening socket is still readable, so
  an epoll or poll reactor calls it again at once: one CPU at 100% and tens
  of thousands of log lines a second until a descriptor frees up.

L{AcceptGuard} does this instead: the port stops reading for a short
backoff (doubling from L{AcceptGuard.initialDelay} up to
L{AcceptGuard.maxDelay}); clients wait in the kernel's listen queue and are
served as soon as descriptors free up.  One warning is logged per episode
(with the errno's name and how many descriptors are open of the limit) and
one line when it is over.  If accepting keeps failing for longer than
L{AcceptGuard.shedAfter}, each retry that still fails closes the clients
waiting at that moment (with a spare descriptor kept for that), so that
no client waits for ever.

Seeing the error before Twisted's own handling relies on a Twisted
internal: C{tcp.Port.doRead} accepts through the port's C{socket}
attribute, and treats C{EAGAIN} as "nobody is waiting".  L{guardPort} puts
a thin wrapper there, only with the Twisted releases it was checked
against (L{TESTED_TWISTED}) and only where the port looks as expected;
otherwise the port keeps Twisted's default behaviour.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger

from txsocks5.ports import describeAddress

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = [
    "AcceptGuard",
    "RESOURCE_ERRORS",
    "TESTED_TWISTED",
    "descriptorLimit",
    "descriptorsInUse",
    "guardPort",
    "raiseFileLimit",
]

log = Logger()

#: Twisted releases (major.minor) whose C{tcp.Port} accept loop was checked.
TESTED_TWISTED = ("26.10",)

#: The C{accept()} errors that mean "out of resources", not "this client".
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: The errors a spare descriptor helps with (to close waiting clients).
_DESCRIPTOR_ERRORS = frozenset({errno.EMFILE, errno.ENFILE})

#: The most waiting clients closed in one go (more wait for the next retry).
_MAX_SHED = 4096

#: The highest soft limit L{raiseFileLimit} sets.
MAX_FILE_LIMIT = 1 << 20


def _twistedVersion() -> str:
    import twisted

    return ".".join(twisted.__version__.split(".")[:2])


# -- descriptors ------------------------------------------------------------


def descriptorsInUse() -> int | None:
    """
    How many file descriptors this process has open (Linux: from
    C{/proc/self/fd}, not counting the one used to list it), or L{None}
    where that cannot be told, or no descriptor is free to list them.
    """
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


def descriptorLimit() -> int | None:
    """The soft C{RLIMIT_NOFILE} of this process, or L{None} if it has none."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _isPollBased(reactor: object) -> bool:
    """Whether C{reactor} waits with epoll or poll (which take any descriptor number)."""
    kinds: list[type] = []
    with contextlib.suppress(ImportError):  # Not Linux.
        from twisted.internet.epollreactor import EPollReactor

        kinds.append(EPollReactor)
    with contextlib.suppress(ImportError):  # No poll().
        from twisted.internet.pollreactor import PollReactor

        kinds.append(PollReactor)
    return isinstance(reactor, tuple(kinds))


def raiseFileLimit(reactor: object | None = None, cap: int = MAX_FILE_LIMIT) -> int | None:
    """
    Raise the soft limit of open files (C{RLIMIT_NOFILE}) to the hard limit,
    at most C{cap}, if C{reactor} (by default the global one) waits with
    epoll or poll.  A C{select()} reactor is left alone: it cannot wait on
    descriptors numbered C{FD_SETSIZE} (1024) or more.  The limit is never
    lowered.

    @return: the soft limit now in force, or L{None} where there is no such
        limit (not POSIX, or unlimited).
    """
    if resource is None:
        return None
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if not _isPollBased(reactor):
        return soft
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:  # e.g. macOS above OPEN_MAX
        log.info("Could not raise the open file limit to {target}: {error}", target=target, error=str(e))
        return soft
    log.info("Raised the open file limit from {old} to {new}", old=soft, new=target)
    return target


class _SpareDescriptor:
    """
    One descriptor (on C{/dev/null}) held back, to be closed when the table
    is full so that a waiting client can be accepted and closed.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    @property
    def available(self) -> bool:
        """Whether the spare is held."""
        return self._fd is not None

    def reserve(self) -> bool:
        """Hold the spare if it is not held; return whether it is now."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return False
        return True

    def release(self) -> bool:
        """Close the spare; return whether there was one to close."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        os.close(fd)
        return True


#: The spare shared by every guard of this process (created on first use).
_spare = _SpareDescriptor()


# -- the policy -------------------------------------------------------------


class _Pausable(Protocol):
    """What L{AcceptGuard} needs of a port."""

    def startReading(self) -> None: ...

    def stopReading(self) -> None: ...


def _describe(port: object) -> str:
    try:
        address = port.getHost()  # type: ignore[attr-defined]
    except Exception:
        return repr(port)
    return describeAddress(address)


class AcceptGuard:
    """
    Backs a listening port off accepting while the process is out of
    descriptors (or memory), then resumes it.

    Whoever accepts on the port's behalf calls L{acceptFailed} with the
    errno of each failed C{accept()} that is in L{RESOURCE_ERRORS}, and
    L{acceptSucceeded} after each accepted client while L{failing}.

    An episode starts with a failure and ends once L{quietPeriod} seconds
    pass without one: a warning is logged when it starts and a line when it
    ends, however often accepting fails and succeeds in between.

    @ivar initialDelay: seconds the first pause after a successful accept
        lasts.
    @ivar maxDelay: the longest pause; each failure in a row doubles it up
        to this.
    @ivar shedAfter: once accepting has failed without a success for this
        many seconds, each failed retry closes the clients waiting in the
        listen queue (using C{shed}); L{None}: never.
    @ivar quietPeriod: seconds without a failure that end an episode.
    @ivar failing: whether an episode is under way.
    """

    def __init__(
        self,
        port: _Pausable,
        clock: IReactorTime,
        initialDelay: float = 0.05,
        maxDelay: float = 1.6,
        shedAfter: float | None = 2.0,
        quietPeriod: float = 30.0,
        shed: Callable[[int], int] | None = None,
        name: str | None = None,
    ) -> None:
        """
        @param port: the port: C{stopReading} and C{startReading} pause and
            resume its accepting.
        @param clock: schedules the resumption.
        @param shed: given the errno, closes the clients waiting to be
            accepted and returns how many it closed.
        @param name: the listener's address, for the log (by default from
            C{port.getHost()}).
        """
        self.port = port
        self.clock = clock
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.shedAfter = shedAfter
        self.quietPeriod = quietPeriod
        self._shed = shed
        self.name = name if name is not None else _describe(port)
        self.failing = False
        self._nextDelay = initialDelay
        self._failingSince: float | None = None  # The first failure since an accept succeeded.
        self._started = 0.0
        self._lastFailure = 0.0
        self._failures = 0
        self._closed = 0
        self._resumeCall: IDelayedCall | None = None
        self._endCall: IDelayedCall | None = None
        self._stopped = False

    @property
    def paused(self) -> bool:
        """Whether the port is waiting out a backoff."""
        return self._resumeCall is not None

    def acceptFailed(self, error: int) -> None:
        """
        C{accept()} failed with C{error}: pause the port for the next
        backoff, warn if this starts an episode, and close the waiting
        clients if accepting has failed for L{shedAfter}.
        """
        now = self.clock.seconds()
        if not self.failing:
            self.failing = True
            self._started = now
            self._failures = self._closed = 0
            self._warn(error)
        self._lastFailure = now
        self._failures += 1
        if self._failingSince is None:
            self._failingSince = now
        delay = self._nextDelay
        self._nextDelay = min(delay * 2, self.maxDelay)
        if (
            self._shed is not None
            and self.shedAfter is not None
            and now - self._failingSince >= self.shedAfter
        ):
            self._closed += self._shed(error)
        if self._resumeCall is None and not self._stopped:
            self.port.stopReading()
            self._resumeCall = self.clock.callLater(delay, self._resume)

    def acceptSucceeded(self) -> None:
        """A client was accepted: back to the shortest backoff; the episode ends if it stays so."""
        self._failingSince = None
        self._nextDelay = self.initialDelay
        if not _spare.available:
            _spare.reserve()
        if self.failing and self._endCall is None and not self._stopped:
            self._endCall = self.clock.callLater(self.quietPeriod, self._checkEnd)

    def stop(self) -> None:
        """The port is closing: cancel what is scheduled."""
        self._stopped = True
        for call in (self._resumeCall, self._endCall):
            if call is not None and call.active():
                call.cancel()
        self._resumeCall = self._endCall = None

    def _resume(self) -> None:
        self._resumeCall = None
        if not self._stopped:
            self.port.startReading()

    def _checkEnd(self) -> None:
        self._endCall = None
        if self._failingSince is not None:
            return  # Failing again; the next success checks again.
        quietFor = self.clock.seconds() - self._lastFailure
        if quietFor < self.quietPeriod:
            self._endCall = self.clock.callLater(self.quietPeriod - quietFor, self._checkEnd)
            return
        self.failing = False
        log.info(
            "Accepting on {listener} normally again: {failures} accepts failed over {duration:.1f}s;"
            " {closed} waiting clients closed",
            listener=self.name,
            failures=self._failures,
            duration=self._lastFailure - self._started,
            closed=self._closed,
        )

    def _warn(self, error: int) -> None:
        # Listing /proc/self/fd needs a descriptor: lend it the spare's.
        lent = _spare.release()
        inUse = descriptorsInUse()
        if lent:
            _spare.reserve()
            if inUse is not None:
                inUse += 1  # the spare, held again
        log.warn(
            "Out of resources accepting on {listener} ({errno}): {inUse} of {limit} file descriptors"
            " in use. New clients wait in the listen queue; retrying with backoff up to {maxDelay}s"
            "{shedding}.",
            listener=self.name,
            errno=errno.errorcode.get(error, str(error)),
            inUse="?" if inUse is None else inUse,
            limit=descriptorLimit() or "no limit",
            maxDelay=self.maxDelay,
            shedding=""
            if self.shedAfter is None
            else f", closing those still waiting after {self.shedAfter:g}s",
        )


# -- the Twisted internals --------------------------------------------------


class _GuardedListener:
    """
    Stands in for a C{tcp.Port}'s listening socket: C{accept()} reports to
    an L{AcceptGuard}, and turns a resource error into C{EAGAIN} so that
    Twisted's accept loop just stops (no log line, no closing of clients).
    Everything else goes to the real socket.
    """

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._guard: AcceptGuard | None = None

    def guardWith(self, guard: AcceptGuard) -> None:
        """Report to C{guard} from now on."""
        self._guard = guard

    def accept(self) -> tuple[socket.socket, Any]:
        """Accept a client, telling the guard how it went."""
        guard = self._guard
        try:
            accepted = self._listener.accept()
        except OSError as e:
            if guard is None or e.errno not in RESOURCE_ERRORS:
                raise
            guard.acceptFailed(e.errno)
            raise BlockingIOError(errno.EAGAIN, "accepting paused") from e
        if guard is not None and guard.failing:
            guard.acceptSucceeded()
        return accepted

    def shed(self, error: int) -> int:
        """Accept and close every client waiting now, with the spare's help."""
        if error not in _DESCRIPTOR_ERRORS or not _spare.release():
            return 0
        closed = 0
        try:
            for _ in range(_MAX_SHED):
                try:
                    client, _address = self._listener.accept()
                except OSError:
                    break
                client.close()
                closed += 1
        finally:
            _spare.reserve()
        return closed

    def close(self) -> None:
        """The port is closing: stop the guard too."""
        if self._guard is not None:
            self._guard.stop()
        self._listener.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def _canGuard(port: object) -> bool:
    """Whether C{port} is a Twisted stream port whose accept loop was checked."""
    return (
        _twistedVersion() in TESTED_TWISTED
        and isinstance(port, tcp.Port)
        and hasattr(tcp, "_accept")
        and type(port).doRead is tcp.Port.doRead
        and isinstance(getattr(port, "socket", None), socket.socket)
        and getattr(port, "connected", False)
    )


def guardPort(
    port: IListeningPort,
    clock: IReactorTime | None = None,
    **options: Any,
) -> AcceptGuard | None:
    """
    Keep C{port} calm when the process runs out of descriptors: see
    L{AcceptGuard}.  Works on the TCP (and UNIX) ports Twisted's reactors
    make, which C{endpoint.listen()} returns for C{tcp:}, C{tcp6:},
    C{ssl:}, C{unix:}, C{systemd:} and the like; anything else, or a
    Twisted release not in L{TESTED_TWISTED}, is left with Twisted's
    default behaviour.

    @param port: a listening port, as C{endpoint.listen()} gives it.
    @param clock: for the backoff; by default the port's reactor.
    @param options: for L{AcceptGuard} (C{initialDelay}, C{maxDelay},
        C{shedAfter}, C{quietPeriod}).
    @return: the guard, or L{None} if C{port} was left as it was.
    """
    if not _canGuard(port):
        log.debug("Not guarding {port!r} against running out of descriptors", port=port)
        return None
    tcpPort: tcp.Port = port  # type: ignore[assignment]
    if clock is None:
        clock = tcpPort.reactor  # type: ignore[assignment]
    assert clock is not None
    _spare.reserve()
    listener = _GuardedListener(tcpPort.socket)
    guard = AcceptGuard(tcpPort, clock, shed=listener.shed, **options)
    listener.guardWith(guard)
    tcpPort.socket = listener  # type: ignore[assignment]
    return guard
