"""
C{--workers N}: several processes serve the same listening sockets.

The parent (the C{twistd socks5} the user started) binds every TCP port,
never accepts on them itself, and runs N worker processes, each a
C{twistd socks5} of its own that adopts the parent's sockets and serves
clients completely: CONNECT, BIND and UDP ASSOCIATE all live in the worker
that accepted the client.  The kernel spreads new connections over the
workers.  A worker that dies is started again; stopping the parent
(SIGTERM) stops every worker; a worker whose parent is gone (its stdin
closes) stops too.  SIGHUP to the parent is passed on to every worker.

A worker logs every event as JSON on its standard output
(L{workerLogObserver}); the parent reads them (L{WorkerLogReader}) and
logs them through its own observers, so that one log (the parent's
C{--logfile}, with its rotation, C{--syslog}, or its stdout) holds every
process's events, each marked with its worker.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.logger import (
    ILogObserver,
    InvalidLogLevelError,
    Logger,
    LogLevel,
    eventFromJSON,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.reflect import fullyQualifiedName

from txsocks5.server import describeAddress

__all__ = ["WorkerPool", "WorkerLifetime", "WorkerLogReader", "workerArguments", "workerLogObserver"]

log = Logger()

#: Seconds before a worker that exited on its own is started again.
RESTART_DELAY = 1.0

#: Seconds stopping workers may take before they are killed.
STOP_TIMEOUT = 10.0

_TWISTD = "from twisted.scripts.twistd import run; run()"

#: The most bytes of a worker's output kept while no line end comes.
MAX_LOG_LINE = 1 << 20


def workerArguments(arguments: Sequence[str]) -> list[str]:
    """
    The C{socks5} arguments a worker gets: the parent's, less the ports and
    the worker count (a worker is told which sockets to adopt instead).
    """
    result: list[str] = []
    skip = False
    for arg in arguments:
        if skip:
            skip = False
        elif arg in ("--port", "-p", "--workers"):
            skip = True  # Its value is the next argument.
        elif not (arg.startswith(("--port=", "--workers=")) or (arg.startswith("-p") and arg[:2] != "--")):
            result.append(arg)
    return result


class _Unused(Factory):
    """The factory of the parent's own ports, which never accept."""

    noisy = False

    def buildProtocol(self, addr: object) -> Protocol | None:  # type: ignore[override]
        return None


def workerLogObserver() -> ILogObserver:
    """
    The log observer of a worker of C{--workers} (its twistd's C{--logger}):
    each event as a JSON record on the worker's standard output, for its
    parent's L{WorkerLogReader}.
    """
    return jsonFileLogObserver(sys.stdout)


class WorkerLogReader:
    """
    Logs, through the parent's observers, what one worker writes on its
    standard output: its JSON log records as the events they were, and any
    other line (a usage error before the worker's logging began) as text.
    Each event's C{log_system} gains C{",worker N"}, and its field
    C{worker} says N.

    @param index: the worker's number.
    @param publish: where the events go (the global log publisher).
    """

    def __init__(self, index: int, publish: ILogObserver = globalLogPublisher) -> None:
        self.index = index
        self.publish = publish
        self._suffix = f",worker {index}"
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        """Log every complete line of C{data} (with what came before it)."""
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > MAX_LOG_LINE:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._logLine(line)

    def finish(self) -> None:
        """Log what is left of an unfinished last line (the worker ended)."""
        if self._buffer:
            self._logLine(self._buffer)
            self._buffer = b""

    def _logLine(self, line: bytes) -> None:
        event = _eventFromRecord(line[1:]) if line.startswith(b"\x1e") else None
        if event is None:
            text = line.decode("utf-8", "replace").rstrip()
            if not text:
                return
            event = {
                "log_format": "{text}",
                "text": text,
                "log_level": LogLevel.info,
                "log_namespace": "txsocks5.worker",
                "log_system": "txsocks5.worker",
                "log_time": time.time(),
            }
        else:
            event["log_system"] = _system(event) + self._suffix
        event.setdefault("worker", self.index)
        self.publish(event)


def _eventFromRecord(record: bytes) -> dict[str, Any] | None:
    """
    The event in a JSON record of L{jsonFileLogObserver}, or C{None} if
    C{record} is not one.  Twisted's L{eventFromJSON} decodes the records
    that need it (a failure's); the common ones, whose only encoded object
    is their level, are decoded here in half its time.
    """
    try:
        event = json.loads(record)
        if isinstance(event, dict) and any(
            isinstance(v, dict) and "__class_uuid__" in v for k, v in event.items() if k != "log_level"
        ):
            event = eventFromJSON(record.decode("utf-8"))
    except (ValueError, TypeError, AttributeError, KeyError):  # Not JSON, not UTF-8, or not Twisted's
        return None
    if not isinstance(event, dict):
        return None
    if "log_level" in event:
        level = _level(event["log_level"])
        if level is None:
            return None
        event["log_level"] = level
    return event


def _level(value: object) -> object | None:
    """The L{LogLevel} that C{value} is or (as JSON) names, if any."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if not isinstance(name, str):
        return None
    try:
        level = LogLevel.levelWithName(name)
    except InvalidLogLevelError:
        return None
    return level if isinstance(value, dict) or level is value else None


def _system(event: dict[str, object]) -> str:
    """The system a text log shows for C{event}, as Twisted's would make it."""
    system = event.get("log_system")
    if system is not None:
        return str(system)
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"


class _Worker(ProcessProtocol):
    """One worker process, as the parent sees it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self.log = WorkerLogReader(index)

    def connectionMade(self) -> None:
        log.info("txsocks5 worker {index} started (pid {pid})", index=self.index, pid=self.transport.pid)  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.log.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.log.finish()
        self.ended.callback(None)
        self.pool._workerEnded(self, reason)


class WorkerPool(Service):
    """
    Binds C{endpoints} and keeps C{count} worker processes serving them.

    @param endpoints: TCP server endpoints (IPv4 or IPv6).
    @param count: how many workers.
    @param arguments: the C{socks5} arguments each worker gets (see
        L{workerArguments}).
    @param check: given the bound ports, says why the workers must not
        serve them (the process exits with that message), or C{None}.
    """

    name = "socks5-workers"

    def __init__(
        self,
        endpoints: Sequence[IStreamServerEndpoint],
        count: int,
        arguments: Sequence[str],
        reactor: object = None,
        check: Callable[[list[IListeningPort]], str | None] | None = None,
    ) -> None:
        self._check = check
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.endpoints = list(endpoints)
        self.count = count
        self.arguments = list(arguments)
        self.ports: list[IListeningPort] = []
        self.workers: dict[int, _Worker] = {}
        self._stopping = False

    def privilegedStartService(self) -> None:
        """Bind every port (before twistd drops privileges)."""
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        """Start the workers."""
        super().startService()
        self._bind()
        self._stopping = False
        log.info(
            "txsocks5 serving SOCKS5 on {listeners} with {count} workers",
            listeners=", ".join(describeAddress(p.getHost()) for p in self.ports),
            count=self.count,
        )
        for index in range(self.count):
            self._spawn(index)

    def stopService(self) -> Deferred[object]:
        """Stop every worker (SIGTERM, then SIGKILL), then stop listening."""
        super().stopService()
        self._stopping = True
        waits = []
        for worker in list(self.workers.values()):
            waits.append(worker.ended)
            _signal(worker, "TERM")
            kill = self._reactor.callLater(STOP_TIMEOUT, _signal, worker, "KILL")  # type: ignore[attr-defined]
            worker.ended.addBoth(_cancel, kill)
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()
        return gatherResults(waits)  # type: ignore[return-value]

    def signalWorkers(self, name: str) -> None:
        """Send every worker the signal C{name} (e.g. C{"HUP"})."""
        for worker in list(self.workers.values()):
            _signal(worker, name)

    def _bind(self) -> None:
        if self.ports:
            return
        for endpoint in self.endpoints:
            d = endpoint.listen(_Unused())
            bound: list[IListeningPort] = []
            failed: list[Failure] = []
            d.addCallbacks(bound.append, failed.append)
            if failed:
                sys.exit(f"txsocks5: {failed[0].getErrorMessage()}")
            port = bound[0]
            port.stopReading()  # type: ignore[attr-defined]  # The workers accept.
            self.ports.append(port)
        problem = self._check(self.ports) if self._check is not None else None
        if problem is not None:
            sys.exit(f"txsocks5: {problem}")

    def _spawn(self, index: int) -> None:
        worker = _Worker(self, index)
        # Its stdout carries its log (for the parent to log); its stderr is
        # the parent's, for what a worker says before its logging begins.
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: 2}
        # No pid file, no daemon, and its log for the parent (workerLogObserver).
        twistdOptions = ["--pidfile=", "-n", f"--logger={fullyQualifiedName(workerLogObserver)}"]
        arguments = [sys.executable, "-c", _TWISTD, *twistdOptions, "socks5", *self.arguments]
        for fd, port in enumerate(self.ports, start=3):
            childFDs[fd] = port.fileno()  # type: ignore[attr-defined]
            family = socket.AF_INET6 if ":" in port.getHost().host else socket.AF_INET  # type: ignore[attr-defined]
            arguments += ["--inherited-port", f"{fd}:{int(family)}"]
        self.workers[index] = worker
        self._reactor.spawnProcess(  # type: ignore[attr-defined]
            worker, sys.executable, arguments, env=None, childFDs=childFDs
        )

    def _workerEnded(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping or not self.running:
            return
        log.warn(
            "txsocks5 worker {index} exited ({reason}); starting it again",
            index=worker.index,
            reason=reason.getErrorMessage(),
        )
        self._reactor.callLater(RESTART_DELAY, self._restart, worker.index)  # type: ignore[attr-defined]

    def _restart(self, index: int) -> None:
        if self.running and not self._stopping and index not in self.workers:
            self._spawn(index)


def _cancel(result: object, call: IDelayedCall) -> object:
    if call.active():
        call.cancel()
    return result


def _signal(worker: _Worker, name: str) -> None:
    with suppress(error.ProcessExitedAlready):
        worker.transport.signalProcess(name)  # type: ignore[union-attr]


class WorkerLifetime:
    """
    How a worker ends: once, on the first of SIGTERM, SIGINT or its parent
    going away (its stdin closes).  A worker often gets the same signal
    twice (from its parent, and from a terminal or a service manager that
    signals the whole process group); Twisted's own handlers would then
    try to stop a stopped reactor.
    """

    def __init__(self, reactor: object) -> None:
        self._reactor = reactor
        self._stopping = False

    def start(self) -> None:
        """Watch stdin and take over SIGTERM and SIGINT once the reactor runs."""
        from twisted.internet.stdio import StandardIO

        StandardIO(_ParentWatch(self))
        self._reactor.callWhenRunning(self._installHandlers)  # type: ignore[attr-defined]

    def _installHandlers(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._signalled)

    def _signalled(self, number: int, frame: object) -> None:
        self._reactor.callFromThread(self.stop, f"signal {signal.Signals(number).name}")  # type: ignore[attr-defined]

    def stop(self, why: str) -> None:
        """Stop the worker's reactor, unless that is under way already."""
        if self._stopping:
            return
        self._stopping = True
        log.info("txsocks5 worker stopping: {why}", why=why)
        self._reactor.stop()  # type: ignore[attr-defined]


class _ParentWatch(Protocol):
    """Tells a worker's lifetime when the parent's end of stdin closes."""

    def __init__(self, lifetime: WorkerLifetime) -> None:
        self.lifetime = lifetime

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lifetime.stop("parent gone")
