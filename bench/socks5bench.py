#!/usr/bin/env python3
"""
socks5bench: a by-hand benchmark for txsocks5, or for any SOCKS5 server that
accepts clients without authentication.

It starts its own TCP and UDP target server (in a separate process) and
measures, through the proxy:

* bulk upload and download throughput in one tunnel (every byte is compared
  with the expected stream, and the byte count must match),
* connections per second (64 clients doing greeting, CONNECT, a 16-byte
  echo and close, over and over),
* round-trip latency of a 64-byte ping-pong in one tunnel,
* the proxy's memory when idle and with many idle tunnels (RSS and PSS of
  its whole process tree),
* peak memory growth while a client reads a large download very slowly
  (backpressure),
* UDP ASSOCIATE: datagram round trips per second through the relay, with a
  window of datagrams in flight, counting losses,
* start-up: seconds from starting the server until it serves a CONNECT
  (only for a server the script starts).

Standard library only, Linux only (it reads /proc).  All traffic goes to
127.0.0.1.  See bench/README.md.

    python3 bench/socks5bench.py                      # starts `twistd socks5` itself
    python3 bench/socks5bench.py --quick              # smaller sizes, about 10 s
    python3 bench/socks5bench.py --proxy 127.0.0.1:1080 [--proxy-pid PID]
    python3 bench/socks5bench.py --server-cmd 'microsocks -i {host} -p {port}'
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import platform
import random
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

#: Target modes, chosen by the first byte a client sends through the tunnel.
MODE_ECHO = ord("E")  # echo everything (the mode byte included) until EOF
MODE_QUICK = ord("Q")  # read 16 bytes (the mode byte included), echo them, close
MODE_SINK = ord("S")  # "S" + u64 N: read N bytes, reply count + first bad offset
MODE_SOURCE = ord("D")  # "D" + u64 N: send N bytes of the pattern, then close

HEADER = struct.Struct("!BQ")  # mode byte, byte count
TRAILER = struct.Struct("!QQ")  # bytes received, offset of the first bad chunk
NO_MISMATCH = 2**64 - 1

CHUNK = 1 << 20  # largest send / recv_into in bulk transfers
PATTERN_PERIOD = CHUNK + 13  # not a power of two, so chunk boundaries drift
PATTERN_SEED = 1928

SOCKS_GREETING = b"\x05\x01\x00"  # version 5, one method: no authentication
ECHO_SIZE = 16
PING_SIZE = 64
UDP_SEQ = struct.Struct("!Q")  # the sequence number that starts every UDP payload

MiB = 1 << 20


class BenchError(Exception):
    """A test could not run or its result failed verification."""


# -- small helpers -----------------------------------------------------------


def parse_cpus(text: str) -> set[int]:
    """Parse a CPU list such as C{"1"}, C{"0,2"} or C{"1-3"}."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    if not cpus:
        raise ValueError(f"empty CPU list: {text!r}")
    return cpus


def cpu_list(cpus: set[int]) -> str:
    """Format a CPU set for taskset -c."""
    return ",".join(str(c) for c in sorted(cpus))


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards C{wanted} (never past the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    new = max(soft, min(wanted, limit))
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether C{host} is an IPv4 127/8 address or ::1."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return packed[0] == 127
    except OSError:
        return host == "::1"


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The C{p}-th percentile (nearest rank) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def errno_name(error: OSError) -> str:
    """A short name for an OSError: C{ECONNRESET}, C{timeout}, ..."""
    if isinstance(error, TimeoutError) and error.errno is None:
        return "timeout"
    if error.errno is not None:
        return errno.errorcode.get(error.errno, str(error.errno))
    return type(error).__name__


# -- the byte pattern for bulk transfers --------------------------------------


class Pattern:
    """
    The endless stream that bulk transfers carry: one pseudo-random block
    of L{PATTERN_PERIOD} bytes, repeated.  The block is stored twice in a
    row so that any slice of up to one period is contiguous.
    """

    def __init__(self, seed: int = PATTERN_SEED, period: int = PATTERN_PERIOD) -> None:
        block = random.Random(seed).randbytes(period)
        self.period = period
        self.data = memoryview(block + block)

    def at(self, position: int, length: int) -> memoryview:
        """The C{length} bytes (at most one period) at stream offset C{position}."""
        offset = position % self.period
        return self.data[offset : offset + length]


# -- /proc: process trees, memory, CPU ----------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat split into fields after the command name (field 3 first)."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """C{root} and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def _kib_field(text: str | None, name: str) -> int:
    """The value in KiB of a C{Name:   123 kB} line, or 0."""
    for line in (text or "").splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Memory:
    """Memory of a process tree, in KiB."""

    rss: int
    pss: int
    hwm: int
    processes: int


def tree_memory(pids: list[int]) -> Memory:
    """Sum VmRSS, VmHWM (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) over C{pids}."""
    rss = pss = hwm = alive = 0
    for pid in pids:
        status = _read(f"/proc/{pid}/status")
        if status is None:
            continue
        alive += 1
        rss += _kib_field(status, "VmRSS")
        hwm += _kib_field(status, "VmHWM")
        pss += _kib_field(_read(f"/proc/{pid}/smaps_rollup"), "Pss")
    return Memory(rss, pss, hwm, alive)


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM of each process (write 5 to /proc/PID/clear_refs); whether all worked."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def process_cpu(pid: int, with_children: bool = False) -> float:
    """CPU seconds (user + system) used by C{pid}, plus its reaped children if asked."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of a process tree, counting children it has already reaped."""
    return sum(process_cpu(pid, with_children=True) for pid in pids)


def core_times() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    result = {}
    for line in (_read("/proc/stat") or "").splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in rest.split()]
            idle = values[3] + values[4]  # idle + iowait
            total = sum(values[:8])  # up to steal; guest time is already in user
            result[int(name[3:])] = (total - idle, total)
    return result


def listen_overflows() -> int:
    """
    The kernel's count of connections dropped because a listen queue was
    full (TcpExt ListenOverflows, all sockets on this machine).
    """
    lines = [line.split() for line in (_read("/proc/net/netstat") or "").splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names and names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def listener_pid(port: int) -> int | None:
    """The (topmost) process that holds a TCP socket listening on C{port}, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    owners.add(int(entry))
                    break
        except OSError:
            continue
    for pid in owners:  # prefer the one whose parent does not hold the socket too
        stat = _stat_fields(pid)
        if stat is not None and int(stat[1]) not in owners:
            return pid
    return min(owners) if owners else None


# -- the target server (runs in its own process) -------------------------------


class _TargetConn:
    """One connection to the target server."""

    __slots__ = ("sock", "mode", "head", "total", "done", "mismatch", "out")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.mode = 0
        self.head = b""
        self.total = 0  # bytes to sink or source
        self.done = 0  # bytes sunk or sourced so far
        self.mismatch = NO_MISMATCH
        self.out = b""  # echo bytes not yet sent


class TargetServer:
    """
    A single-threaded epoll server for echo, sink and source connections
    (see the C{MODE_*} constants).  Sink and source data is the L{Pattern}
    stream; the sink compares every byte with it.
    """

    def __init__(self, listener: socket.socket, pattern: Pattern, udp: socket.socket | None = None) -> None:
        self.listener = listener
        self.pattern = pattern
        self.udp = udp
        self.epoll = select.epoll()
        self.conns: dict[int, _TargetConn] = {}
        self.buffer = bytearray(CHUNK)

    def serve(self, parent: int) -> None:
        """Serve until the parent process goes away or SIGTERM arrives."""
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        lfd = self.listener.fileno()
        ufd = -1
        if self.udp is not None:
            self.udp.setblocking(False)
            ufd = self.udp.fileno()
            self.epoll.register(ufd, select.EPOLLIN)
        while True:
            events = self.epoll.poll(1.0)
            if not events and os.getppid() != parent:
                return
            for fd, mask in events:
                if fd == lfd:
                    self._accept()
                    continue
                if fd == ufd:
                    self._udp_echo()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                try:
                    if mask & select.EPOLLOUT:
                        self._writable(conn)
                    elif mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self._readable(conn)
                except OSError:
                    self._close(conn)

    def _accept(self) -> None:
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:  # EMFILE and friends: try again on the next event
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = _TargetConn(sock)
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _udp_echo(self) -> None:
        """Send every waiting datagram back where it came from."""
        assert self.udp is not None
        for _ in range(256):
            try:
                data, address = self.udp.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError:  # e.g. ECONNREFUSED left by an earlier answer
                continue
            try:
                self.udp.sendto(data, address)
            except OSError:
                pass  # a full buffer: the client counts the datagram as lost

    def _close(self, conn: _TargetConn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()  # also removes it from the epoll set

    def _readable(self, conn: _TargetConn) -> None:
        if conn.mode == MODE_SINK:
            self._sink(conn)
            return
        data = conn.sock.recv(65536)
        if not data:
            self._close(conn)
        elif conn.mode == MODE_ECHO:
            self._echo(conn, data)
        elif conn.mode:
            self._close(conn)  # a source or quick client is not meant to talk
        else:
            self._head(conn, conn.head + data)

    def _head(self, conn: _TargetConn, head: bytes) -> None:
        """Dispatch on the first byte once enough of the header is there."""
        mode = head[0]
        if mode == MODE_ECHO:
            conn.mode = mode
            self._echo(conn, head)
        elif mode == MODE_QUICK:
            if len(head) < ECHO_SIZE:
                conn.head = head
                return
            conn.sock.send(head[:ECHO_SIZE])
            self._close(conn)  # the target closes first: TIME_WAIT lands here
        elif mode in (MODE_SINK, MODE_SOURCE):
            if len(head) < HEADER.size:
                conn.head = head
                return
            conn.mode, conn.total = HEADER.unpack_from(head)
            if mode == MODE_SINK:
                rest = head[HEADER.size :]
                self._sunk(conn, rest, len(rest))
            else:
                self.epoll.modify(conn.sock.fileno(), select.EPOLLOUT)
        else:
            self._close(conn)

    def _echo(self, conn: _TargetConn, data: bytes) -> None:
        sent = conn.sock.send(data)
        if sent < len(data):  # stop reading until the rest is out
            conn.out = data[sent:]
            self.epoll.modify(conn.sock.fileno(), select.EPOLLOUT)

    def _sink(self, conn: _TargetConn) -> None:
        for _ in range(16):
            try:
                n = conn.sock.recv_into(self.buffer)
            except BlockingIOError:
                return
            if n == 0:
                self._close(conn)
                return
            if self._sunk(conn, self.buffer, n):
                return

    def _sunk(self, conn: _TargetConn, data: bytes | bytearray, n: int) -> bool:
        """
        Check and count the C{n} sunk bytes at the start of C{data}; reply
        and close at the end.  Whether it ended.
        """
        if n and conn.mismatch == NO_MISMATCH and not data.startswith(self.pattern.at(conn.done, n)):
            conn.mismatch = conn.done
        conn.done += n
        if conn.done >= conn.total:
            conn.sock.send(TRAILER.pack(conn.done, conn.mismatch))
            self._close(conn)
            return True
        return False

    def _writable(self, conn: _TargetConn) -> None:
        if conn.mode == MODE_ECHO:
            sent = conn.sock.send(conn.out)
            conn.out = conn.out[sent:]
            if not conn.out:
                self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
            return
        for _ in range(16):  # source
            length = min(CHUNK, conn.total - conn.done)
            if length <= 0:
                self._close(conn)  # all sent: the FIN follows the data
                return
            try:
                conn.done += conn.sock.send(self.pattern.at(conn.done, length))
            except BlockingIOError:
                return


def _target_main(listener: socket.socket, udp: socket.socket) -> None:
    """Entry point of the target process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    TargetServer(listener, Pattern(), udp).serve(os.getppid())


def start_target() -> tuple[multiprocessing.process.BaseProcess, tuple[str, int], tuple[str, int]]:
    """
    Start the target server in a child process; return it, its TCP address
    and the address of its UDP echo socket.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(4096)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((HOST, 0))
    process = multiprocessing.get_context("fork").Process(
        target=_target_main, args=(listener, udp), name="socks5bench-target", daemon=True
    )
    process.start()
    address = listener.getsockname()
    udp_address = udp.getsockname()
    listener.close()
    udp.close()
    return process, address, udp_address


# -- blocking SOCKS5 client ---------------------------------------------------


def connect_request(target: tuple[str, int]) -> bytes:
    """A SOCKS5 CONNECT request for an IPv4 C{target}."""
    return b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1])


def reply_length(head: bytes) -> int | None:
    """The length of the SOCKS5 reply that starts with C{head}, or None if unknown yet."""
    if len(head) < 5:
        return None
    atyp = head[3]
    if atyp == 1:
        return 10
    if atyp == 4:
        return 22
    if atyp == 3:
        return 7 + head[4]
    return -1


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly C{n} bytes or raise L{BenchError} on EOF."""
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise BenchError(f"EOF after {len(data)} of {n} bytes")
        data += more
    return data


def open_tunnel(
    proxy: tuple[str, int] | None, target: tuple[str, int], timeout: float = 10.0, rcvbuf: int | None = None
) -> socket.socket:
    """
    Connect to C{proxy}, negotiate no-auth and CONNECT to C{target}; return
    the socket.  With no proxy, connect straight to the target.
    """
    address = proxy or target
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address)
        if proxy is None:
            return sock
        sock.sendall(SOCKS_GREETING)
        method = recv_exact(sock, 2)
        if method != b"\x05\x00":
            raise BenchError(f"proxy refused no-auth: method reply {method.hex()}")
        sock.sendall(connect_request(target))
        head = recv_exact(sock, 5)
        length = reply_length(head)
        if head[0] != 5 or length is None or length < 0:
            raise BenchError(f"malformed CONNECT reply {head.hex()}")
        recv_exact(sock, length - 5)
        if head[1] != 0:
            raise BenchError(f"CONNECT refused with REP={head[1]}")
        return sock
    except BaseException:
        sock.close()
        raise


def udp_header(target: tuple[str, int]) -> bytes:
    """The SOCKS5 UDP request header (RSV, FRAG 0, ATYP IPv4) for an IPv4 C{target}."""
    return b"\x00\x00\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1])


def udp_associate(proxy: tuple[str, int], timeout: float = 10.0) -> tuple[socket.socket, tuple[str, int]]:
    """
    Open a control connection to C{proxy} and ask for UDP ASSOCIATE; return
    it and the relay's address (BND.ADDR, or the proxy's address if the
    server answers with 0.0.0.0 or ::).  The association lasts as long as
    the returned socket is open.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in proxy[0] else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect(proxy)
        sock.sendall(SOCKS_GREETING)
        method = recv_exact(sock, 2)
        if method != b"\x05\x00":
            raise BenchError(f"proxy refused no-auth: method reply {method.hex()}")
        sock.sendall(b"\x05\x03\x00\x01" + bytes(6))  # DST 0.0.0.0:0: the relay learns our port
        head = recv_exact(sock, 5)
        length = reply_length(head)
        if head[0] != 5 or length is None or length < 0 or head[3] == 3:
            raise BenchError(f"malformed UDP ASSOCIATE reply {head.hex()}")
        rest = recv_exact(sock, length - 5)
        if head[1] != 0:
            raise BenchError(f"UDP ASSOCIATE refused with REP={head[1]}")
        raw = head[4:] + rest
        family = socket.AF_INET if head[3] == 1 else socket.AF_INET6
        host = socket.inet_ntop(family, raw[:-2])
        (port,) = struct.unpack("!H", raw[-2:])
        if host in ("0.0.0.0", "::"):
            host = proxy[0]
        return sock, (host, port)
    except BaseException:
        sock.close()
        raise


def kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """
    Make C{sock} blocking with SO_RCVTIMEO/SO_SNDTIMEO instead of a Python
    timeout, which would add a poll() before every send and recv.
    """
    sock.settimeout(None)
    timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def probe(proxy: tuple[str, int] | None, target: tuple[str, int], timeout: float = 5.0) -> None:
    """One CONNECT and a 16-byte echo through the proxy, or L{BenchError}/OSError."""
    with open_tunnel(proxy, target, timeout) as sock:
        payload = b"E" + os.urandom(ECHO_SIZE - 1)
        sock.sendall(payload)
        if recv_exact(sock, ECHO_SIZE) != payload:
            raise BenchError("echo through the proxy came back wrong")


# -- many sessions on one epoll loop ---------------------------------------------

S_CONNECTING, S_METHOD, S_REPLY, S_ECHO, S_EOF = range(5)
_STATE_NAMES = ["connect", "greeting", "request", "echo", "close"]


class _Session:
    """One client session driven by L{SessionDriver}."""

    __slots__ = ("sock", "state", "buf", "started", "payload")

    def __init__(self, sock: socket.socket, started: float, payload: bytes) -> None:
        self.sock = sock
        self.state = S_CONNECTING
        self.buf = b""
        self.started = started
        self.payload = payload


@dataclass
class DriverResult:
    """What a L{SessionDriver} run did."""

    completed: int = 0  # sessions that finished inside the counting window
    completed_total: int = 0
    started: int = 0
    unfinished: int = 0  # still running when time was up
    errors: Counter[str] = field(default_factory=Counter)
    durations_us: list[int] = field(default_factory=list)
    held: list[tuple[socket.socket, bytes]] = field(default_factory=list)
    cpu_seconds: float = 0.0


class SessionDriver:
    """
    Runs C{concurrency} SOCKS5 client sessions at a time on one epoll loop,
    without pipelining: connect, greeting, CONNECT, 16-byte echo, then
    either wait for the target's close (C{hold=False}, the echo target is
    in C{MODE_QUICK}) or keep the tunnel open (C{hold=True}, C{MODE_ECHO}).
    With no proxy, sessions go straight to the target (connect, echo, close).
    """

    def __init__(
        self,
        proxy: tuple[str, int] | None,
        target: tuple[str, int],
        concurrency: int,
        hold: bool = False,
        session_timeout: float = 10.0,
        tag: int = 0,
    ) -> None:
        self.address = proxy or target
        self.direct = proxy is None
        self.family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        self.request = connect_request(target)
        self.concurrency = concurrency
        self.hold = hold
        self.mode = b"E" if hold else b"Q"
        self.session_timeout = session_timeout
        self.tag = tag
        self.pid = os.getpid()
        self.epoll = select.epoll()
        self.sessions: dict[int, _Session] = {}
        self.result = DriverResult()

    def run(self, count_from: float, stop_at: float, max_sessions: int) -> DriverResult:
        """
        Run sessions until C{stop_at} (monotonic) or until C{max_sessions}
        have been started (in hold mode: are held).  Completions after
        C{count_from} are counted in C{completed} and C{durations_us}.
        """
        result = self.result
        next_sweep = time.monotonic() + 0.1
        try:
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    break
                if self.hold and len(result.held) >= max_sessions:
                    break
                self._top_up(now, max_sessions)
                if not self.sessions:
                    if result.started >= max_sessions:
                        break
                    time.sleep(0.01)  # every start failed: do not spin
                    continue
                for fd, mask in self.epoll.poll(min(0.1, max(0.0, stop_at - now))):
                    session = self.sessions.get(fd)
                    if session is not None:
                        self._event(session, mask, count_from)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.1
        finally:
            result.unfinished = len(self.sessions)
            for session in list(self.sessions.values()):
                session.sock.close()
            self.sessions.clear()
            self.epoll.close()
        return result

    def _top_up(self, now: float, max_sessions: int) -> None:
        """Start sessions until C{concurrency} are running (or a start fails)."""
        result = self.result
        while len(self.sessions) < self.concurrency and result.started < max_sessions:
            if self.hold and len(result.held) + len(self.sessions) >= max_sessions:
                return
            result.started += 1
            payload = self.mode + struct.pack("!IIIxxx", self.tag, result.started, self.pid)
            try:
                sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as e:
                result.errors[f"socket: {errno_name(e)}"] += 1
                return
            err = sock.connect_ex(self.address)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                result.errors[f"connect: {errno.errorcode.get(err, err)}"] += 1
                return
            session = _Session(sock, now, payload)
            self.sessions[sock.fileno()] = session
            # On loopback the handshake has usually completed inside connect():
            # then send at once and skip a wait for writability.
            try:
                self._send_first(session)
                self.epoll.register(sock.fileno(), select.EPOLLIN)
            except BlockingIOError:
                self.epoll.register(sock.fileno(), select.EPOLLOUT)
            except OSError as e:
                self.epoll.register(sock.fileno(), select.EPOLLOUT)
                self._fail(session, errno_name(e))

    def _send_first(self, session: _Session) -> None:
        """Send the first message (the greeting, or with no proxy the echo payload)."""
        if self.direct:
            session.sock.send(session.payload)
            session.state = S_ECHO
        else:
            session.sock.send(SOCKS_GREETING)
            session.state = S_METHOD

    def _fail(self, session: _Session, what: str) -> None:
        self.result.errors[f"{_STATE_NAMES[session.state]}: {what}"] += 1
        self._end(session)

    def _end(self, session: _Session) -> None:
        del self.sessions[session.sock.fileno()]
        session.sock.close()

    def _sweep(self, now: float) -> None:
        """Give up on sessions older than the session timeout."""
        limit = now - self.session_timeout
        for session in [s for s in self.sessions.values() if s.started < limit]:
            self._fail(session, "timeout")

    def _event(self, session: _Session, mask: int, count_from: float) -> None:
        sock = session.sock
        try:
            if session.state == S_CONNECTING:
                if mask & (select.EPOLLERR | select.EPOLLHUP):
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self._fail(session, errno.errorcode.get(err, str(err)))
                    return
                self._send_first(session)
                self.epoll.modify(sock.fileno(), select.EPOLLIN)
                return
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(session, errno_name(e))
            return
        if not data:
            if session.state == S_EOF:
                self._completed(session, count_from)
            else:
                self._fail(session, "EOF")
            return
        try:
            self._received(session, session.buf + data)
        except OSError as e:
            self._fail(session, errno_name(e))

    def _received(self, session: _Session, buf: bytes) -> None:
        """Advance the session's state machine with everything received so far."""
        state = session.state
        if state == S_METHOD:
            if len(buf) < 2:
                session.buf = buf
            elif buf != b"\x05\x00":
                self._fail(session, f"method reply {buf.hex()}")
            else:
                session.buf = b""
                session.sock.send(self.request)
                session.state = S_REPLY
        elif state == S_REPLY:
            length = reply_length(buf)
            if length is None or len(buf) < length:
                session.buf = buf
            elif length < 0 or buf[0] != 5 or buf[1] != 0 or len(buf) != length:
                self._fail(session, f"reply {buf[:4].hex()}")
            else:
                session.buf = b""
                session.sock.send(session.payload)
                session.state = S_ECHO
        elif state == S_ECHO:
            if len(buf) < ECHO_SIZE:
                session.buf = buf
            elif buf != session.payload:
                self._fail(session, "echo mismatch")
            elif self.hold:
                self.epoll.unregister(session.sock.fileno())
                del self.sessions[session.sock.fileno()]
                self.result.held.append((session.sock, session.payload))
            else:
                session.buf = b""
                session.state = S_EOF
        else:
            self._fail(session, "data after the echo")

    def _completed(self, session: _Session, count_from: float) -> None:
        now = time.monotonic()
        result = self.result
        result.completed_total += 1
        if now >= count_from:
            result.completed += 1
            result.durations_us.append(int((now - session.started) * 1e6))
        self._end(session)


def _connrate_worker(
    pipe: Connection,
    proxy: tuple[str, int] | None,
    target: tuple[str, int],
    clients: int,
    start_at: float,
    warmup: float,
    duration: float,
    tag: int,
) -> None:
    """Worker process of the connection-rate test: runs a L{SessionDriver}, sends back its result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = os.times()
    driver = SessionDriver(proxy, target, clients, tag=tag)
    result = driver.run(start_at + warmup, start_at + warmup + duration, max_sessions=10_000_000)
    after = os.times()
    result.cpu_seconds = (after.user - before.user) + (after.system - before.system)
    pipe.send(result)
    pipe.close()


# -- CPU accounting ----------------------------------------------------------


@dataclass
class CpuSnapshot:
    """CPU counters at one moment."""

    wall: float
    proxy: float
    target: float
    own: float
    cores: dict[int, tuple[int, int]]


class CpuMeter:
    """Measures how busy the proxy, the load side and each core were during a test."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def snapshot(self) -> CpuSnapshot:
        """Read all counters now."""
        bench = self.bench
        times = os.times()
        return CpuSnapshot(
            wall=time.monotonic(),
            proxy=tree_cpu(bench.proxy_tree()) if bench.proxy_pid else 0.0,
            target=process_cpu(bench.target_pid),
            own=times.user + times.system,
            cores=core_times(),
        )

    def usage(self, before: CpuSnapshot, after: CpuSnapshot, extra_load: float = 0.0) -> dict[str, Any]:
        """
        Percentages of one core: the proxy's process tree, our load
        processes (this one, the target, plus C{extra_load} CPU seconds of
        workers), and how busy the proxy's and the load's cores were in total;
        also the proxy tree's CPU seconds (C{proxy_s}).
        """
        wall = max(after.wall - before.wall, 1e-9)
        load = (after.own - before.own) + (after.target - before.target) + extra_load

        def busy(cpus: set[int]) -> float | None:
            deltas = [
                (after.cores[c][0] - before.cores[c][0], after.cores[c][1] - before.cores[c][1])
                for c in cpus
                if c in before.cores and c in after.cores
            ]
            total = sum(t for _, t in deltas)
            return round(100 * sum(b for b, _ in deltas) / total, 1) if total else None

        bench = self.bench
        return {
            "wall_s": round(wall, 3),
            "proxy_s": round(after.proxy - before.proxy, 4) if bench.proxy_pid else None,
            "proxy_pct": round(100 * (after.proxy - before.proxy) / wall, 1) if bench.proxy_pid else None,
            "load_pct": round(100 * load / wall, 1),
            "proxy_core_busy_pct": busy(bench.proxy_cpus) if bench.proxy_cpus else None,
            "load_core_busy_pct": busy(bench.load_cpus) if bench.load_cpus else None,
        }


def proxy_us_per(usages: Sequence[dict[str, Any]], count: float) -> float | None:
    """
    The proxy's CPU microseconds per unit of work: C{count} units over the
    C{CpuMeter.usage} windows C{usages}.
    """
    total = 0.0
    for usage in usages:
        seconds = usage.get("proxy_s")
        if seconds is None:
            return None
        total += seconds
    return round(total / count * 1e6, 2) if count else None


# -- the proxy under test ------------------------------------------------------


class ProxyProcess:
    """A SOCKS5 server started from a command line template with C{{port}} and C{{host}}."""

    def __init__(self, template: list[str], cpus: set[int] | None, log_dir: Path, name: str) -> None:
        self.template = template
        self.cpus = cpus
        self.log_dir = log_dir
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None
        self.starts = 0
        self.ready_secs: float | None = None

    def command(self, port: int | None) -> list[str]:
        """The command line for C{port} (None: leave C{{port}}), with taskset in front if pinning."""
        cmd = [arg.replace("{host}", HOST) for arg in self.template]
        if port is not None:
            cmd = [arg.replace("{port}", str(port)) for arg in cmd]
        if self.cpus is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpu_list(self.cpus), *cmd]
        return cmd

    def start(self, target: tuple[str, int], timeout: float = 20.0) -> tuple[str, int]:
        """
        Start a fresh instance on a new port; return its address once a probe
        passes, and set C{ready_secs} to how long that took.
        """
        self.starts += 1
        self.port = free_port()
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cpus = self.cpus
        preexec = None
        if cpus is not None and not shutil.which("taskset"):

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        self.ready_secs = None
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tempfile.gettempdir(),
                start_new_session=True,
                preexec_fn=preexec,
            )
        address = (HOST, self.port)
        deadline = started + timeout
        error: Exception | None = None
        # Polled every 10 ms so that ready_secs means something.
        for _ in range(int(timeout / 0.01) + 1):
            if self.process.poll() is not None:
                raise BenchError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                probe(address, target, timeout=2.0)
                self.ready_secs = time.monotonic() - started
                return address
            except (OSError, BenchError) as e:
                error = e
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.stop()
        raise BenchError(f"server did not pass a probe in {timeout:.0f} s: {error}; log: {self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The server's process id (taskset execs the command, so it is the same)."""
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Lines of the current log that look like errors (tracebacks, unhandled errors)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        words = ("Traceback", "Unhandled", "Error", "CRITICAL")
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if any(w in line for w in words)][:20]

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after 5 s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# -- the tests -----------------------------------------------------------------


class Bench:
    """Holds the configuration and the running processes, and runs the tests."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pattern = Pattern()
        self.proxy_cpus: set[int] = set()
        self.load_cpus: set[int] = set()
        self.target_process: multiprocessing.process.BaseProcess | None = None
        self.target: tuple[str, int] = (HOST, 0)
        self.udp_target: tuple[str, int] = (HOST, 0)
        self.server: ProxyProcess | None = None
        self.proxy: tuple[str, int] | None = None  # None: --direct
        self.proxy_pid: int | None = None
        self.cpu = CpuMeter(self)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    @property
    def target_pid(self) -> int:
        """The target process's id."""
        assert self.target_process is not None and self.target_process.pid is not None
        return self.target_process.pid

    def proxy_tree(self) -> list[int]:
        """The proxy's process tree (empty if its pid is unknown)."""
        return process_tree(self.proxy_pid) if self.proxy_pid else []

    def memory(self) -> Memory | None:
        """The proxy tree's memory now, or None if its pid is unknown."""
        return tree_memory(self.proxy_tree()) if self.proxy_pid else None

    def log(self, message: str) -> None:
        """Progress output on stderr."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # -- setup ---------------------------------------------------------------

    def setup(self) -> None:
        """Pin ourselves, raise the fd limit, start the target."""
        args = self.args
        available = os.sched_getaffinity(0)
        if not args.no_pin:
            proxy_cpus, load_cpus = parse_cpus(args.proxy_cpu), parse_cpus(args.load_cpu)
            if proxy_cpus <= available and load_cpus <= available and not proxy_cpus & load_cpus:
                self.proxy_cpus, self.load_cpus = proxy_cpus, load_cpus
                os.sched_setaffinity(0, load_cpus)
            else:
                self.notes.append(f"not pinned: CPUs {cpu_list(available)} available")
        available_mib = _kib_field(_read("/proc/meminfo"), "MemAvailable") // 1024
        if available_mib and args.bp_mib > available_mib // 2:
            # A proxy without flow control may buffer everything the source sends.
            self.notes.append(f"backpressure download cut from {args.bp_mib} to {available_mib // 2} MiB")
            args.bp_mib = available_mib // 2
        wanted = 3 * args.tunnels + 2 * args.clients + 512
        limit = raise_nofile(wanted)
        if limit < wanted:
            tunnels = max(1, (limit - 2 * args.clients - 512) // 3)
            self.notes.append(f"RLIMIT_NOFILE is {limit}: tunnels reduced from {args.tunnels} to {tunnels}")
            args.tunnels = tunnels
        self.target_process, self.target, self.udp_target = start_target()

    def start_proxy(self) -> None:
        """Start a fresh server (if we run one), or check the external one."""
        args = self.args
        if self.server is None:
            probe(self.proxy, self.target)  # external proxy, or none with --direct
            return
        if self.server.process is not None:
            if args.no_restart and self.server.process.poll() is None:
                return
            self.server.stop()
        self.proxy = self.server.start(self.target)
        self.proxy_pid = self.server.pid
        self.log(f"server pid {self.proxy_pid} listening on {self.proxy}")

    def teardown(self) -> None:
        """Stop the server and the target."""
        if self.server is not None:
            self.server.stop()
        if self.target_process is not None and self.target_process.is_alive():
            self.target_process.terminate()
            self.target_process.join(5)

    # -- bulk ----------------------------------------------------------------

    def bulk_once(self, direction: str, nbytes: int) -> float:
        """One transfer of C{nbytes} through one tunnel; return MB/s or raise L{BenchError}."""
        timeout = self.args.bulk_timeout
        with open_tunnel(self.proxy, self.target) as sock:
            kernel_timeouts(sock, 10.0)
            deadline = time.monotonic() + timeout
            start = time.perf_counter()
            if direction == "upload":
                sock.sendall(HEADER.pack(MODE_SINK, nbytes))
                sent = 0
                while sent < nbytes:
                    if time.monotonic() > deadline:
                        raise BenchError(f"upload not done after {timeout} s ({sent} bytes sent)")
                    sent += sock.send(self.pattern.at(sent, min(CHUNK, nbytes - sent)))
                count, mismatch = TRAILER.unpack(recv_exact(sock, TRAILER.size))
                elapsed = time.perf_counter() - start
            else:
                sock.sendall(HEADER.pack(MODE_SOURCE, nbytes))
                count, mismatch = self._download(sock, nbytes, deadline)
                elapsed = time.perf_counter() - start
        if count != nbytes:
            raise BenchError(f"{direction}: {count} bytes arrived, {nbytes} sent")
        if mismatch != NO_MISMATCH:
            raise BenchError(f"{direction}: wrong data in the chunk at offset {mismatch}")
        return nbytes / elapsed / 1e6

    def _download(self, sock: socket.socket, nbytes: int, deadline: float) -> tuple[int, int]:
        """Receive and check a source stream; return (bytes, first bad offset), EOF included."""
        buffer = bytearray(CHUNK)
        pattern = self.pattern
        got, mismatch = 0, NO_MISMATCH
        while True:
            n = sock.recv_into(buffer, CHUNK)
            if n == 0:
                return got, mismatch
            # startswith is a memcmp; comparing memoryviews would be 100x slower.
            if mismatch == NO_MISMATCH and not buffer.startswith(pattern.at(got, n)):
                mismatch = got
            got += n
            if got > nbytes + CHUNK or time.monotonic() > deadline:
                raise BenchError(f"download: {got} bytes so far, no EOF after {nbytes}")

    def test_bulk(self) -> None:
        """Upload and download, C{bulk_reps} times each; median MB/s."""
        nbytes = self.args.bulk_mib * MiB
        for direction in ("upload", "download"):
            runs: list[tuple[float, dict[str, Any]]] = []
            try:
                for _ in range(self.args.bulk_reps):
                    before = self.cpu.snapshot()
                    rate = self.bulk_once(direction, nbytes)
                    runs.append((rate, self.cpu.usage(before, self.cpu.snapshot())))
                    self.log(f"bulk {direction}: {rate:.0f} MB/s  {runs[-1][1]}")
            except (OSError, BenchError) as e:
                self.results[f"bulk_{direction}"] = {"error": f"{type(e).__name__}: {e}"}
                self.log(f"bulk {direction} FAILED: {e}")
                continue
            runs.sort(key=lambda r: r[0])
            median = runs[len(runs) // 2]
            self.results[f"bulk_{direction}"] = {
                "MBps": round(median[0], 1),
                "all_MBps": [round(r[0], 1) for r in runs],
                "bytes": nbytes,
                # Over every transfer: one lasts only a few of the kernel's 10 ms CPU ticks.
                "proxy_us_per_MB": proxy_us_per([r[1] for r in runs], len(runs) * nbytes / 1e6),
                "cpu": median[1],
            }

    # -- latency -------------------------------------------------------------

    def test_latency(self) -> None:
        """Ping-pong of 64-byte messages in one tunnel, one in flight."""
        args = self.args
        message = bytearray(os.urandom(PING_SIZE))
        message[0] = MODE_ECHO
        samples: list[int] = []
        try:
            with open_tunnel(self.proxy, self.target) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                kernel_timeouts(sock, 5.0)
                before = self.cpu.snapshot()
                measuring = args.lat_warmup == 0
                stop_at = time.monotonic() + (args.lat_secs if measuring else 5.0)
                for i in range(args.lat_warmup + args.lat_count):
                    struct.pack_into("!I", message, 1, i)
                    start = time.perf_counter_ns()
                    sock.sendall(message)
                    echo = recv_exact(sock, PING_SIZE)
                    took = time.perf_counter_ns() - start
                    if echo != message:
                        raise BenchError(f"round trip {i}: echo differs")
                    if measuring:
                        samples.append(took)
                        if time.monotonic() > stop_at:
                            break
                    elif i + 1 >= args.lat_warmup or time.monotonic() > stop_at:
                        measuring = True  # warm-up: lat_warmup round trips or 5 s
                        stop_at = time.monotonic() + args.lat_secs
                cpu = self.cpu.usage(before, self.cpu.snapshot())
                done = i + 1  # round trips in the CPU window, warm-up included
        except (OSError, BenchError) as e:
            self.results["latency"] = {"error": f"{type(e).__name__}: {e}"}
            return
        samples.sort()
        self.results["latency"] = {
            "p50_us": round(percentile(samples, 50) / 1000, 1),
            "p99_us": round(percentile(samples, 99) / 1000, 1),
            "mean_us": round(statistics.fmean(samples) / 1000, 1),
            "max_us": round(samples[-1] / 1000, 1),
            "round_trips": len(samples),
            "proxy_us_per_round_trip": proxy_us_per([cpu], done),
            "cpu": cpu,
        }
        self.log(f"latency: {self.results['latency']}")

    # -- connection rate -------------------------------------------------------

    def test_connrate(self) -> None:
        """C{clients} concurrent sessions over C{workers} processes for C{conn_secs}."""
        args = self.args
        workers = max(1, min(args.conn_workers, args.clients))
        context = multiprocessing.get_context("fork")
        start_at = time.monotonic() + 0.3
        memory_before = self.memory()
        pipes, processes = [], []
        for index in range(workers):
            clients = args.clients // workers + (1 if index < args.clients % workers else 0)
            parent_end, child_end = context.Pipe(duplex=False)
            process = context.Process(
                target=_connrate_worker,
                args=(
                    child_end,
                    self.proxy,
                    self.target,
                    clients,
                    start_at,
                    args.conn_warmup,
                    args.conn_secs,
                    index,
                ),
                daemon=True,
            )
            process.start()
            child_end.close()
            pipes.append(parent_end)
            processes.append(process)
        overflows = listen_overflows()
        time.sleep(max(0.0, start_at + args.conn_warmup - time.monotonic()))
        before = self.cpu.snapshot()
        results: list[DriverResult] = []
        deadline = start_at + args.conn_warmup + args.conn_secs + 20.0
        for pipe in pipes:
            if pipe.poll(max(0.0, deadline - time.monotonic())):
                results.append(pipe.recv())
        after = self.cpu.snapshot()
        for process in processes:
            process.join(2.0)
            if process.is_alive():
                process.terminate()
        if len(results) < workers:
            self.results["connrate"] = {"error": f"{workers - len(results)} worker(s) gave no result"}
            return
        # Workers' CPU covers warm-up too; scale it to the measured window.
        total_span = args.conn_warmup + args.conn_secs
        worker_cpu = sum(r.cpu_seconds for r in results) * args.conn_secs / total_span
        durations = sorted(d for r in results for d in r.durations_us)
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r.errors)
        completed = sum(r.completed for r in results)
        memory_after = self.memory()
        cpu = self.cpu.usage(before, after, extra_load=worker_cpu)
        cpu["clients_pct"] = round(100 * worker_cpu / cpu["wall_s"], 1)
        cpu["target_pct"] = round(100 * (after.target - before.target) / cpu["wall_s"], 1)
        self.results["connrate"] = {
            "per_s": round(completed / args.conn_secs, 1),
            "sessions": completed,
            "sessions_total": sum(r.completed_total for r in results),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors.most_common()),
            "unfinished_at_end": sum(r.unfinished for r in results),
            "session_ms": {
                "p50": round(percentile(durations, 50) / 1000, 2),
                "p99": round(percentile(durations, 99) / 1000, 2),
                "max": round(durations[-1] / 1000, 2) if durations else None,
                "over_1s": sum(1 for d in durations if d >= 1_000_000),
            },
            "listen_overflows": listen_overflows() - overflows,
            "clients": args.clients,
            "workers": workers,
            "seconds": args.conn_secs,
            "proxy_rss_kib": {
                "before": memory_before.rss if memory_before else None,
                "after": memory_after.rss if memory_after else None,
            },
            "proxy_us_per_session": proxy_us_per([cpu], completed),
            "cpu": cpu,
        }
        self.log(f"connrate: {self.results['connrate']}")

    # -- UDP -----------------------------------------------------------------

    def test_udp(self) -> None:
        """
        UDP ASSOCIATE, then datagrams of C{udp_size} payload bytes (plus the
        SOCKS header) to the UDP echo target, C{udp_window} in flight, for
        C{udp_secs} after C{udp_warmup}; round trips per second and losses.
        """
        control: socket.socket | None = None
        try:
            if self.proxy is None:  # --direct: plain datagrams, no header
                relay, header = self.udp_target, b""
            else:
                control, relay = udp_associate(self.proxy)
                header = udp_header(self.udp_target)
            family = socket.AF_INET6 if ":" in relay[0] else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind(("::1" if family == socket.AF_INET6 else HOST, 0))
                sock.connect(relay)  # also filters out anything not from the relay
                sock.setblocking(False)
                entry = self._udp_run(sock, header)
        except (OSError, BenchError) as e:
            self.results["udp"] = {"error": f"{type(e).__name__}: {e}"}
            self.log(f"udp FAILED: {e}")
            return
        finally:
            if control is not None:
                control.close()
        if entry["bad"]:
            entry["error"] = f"{entry['bad']} datagrams came back wrong"
        elif not entry["round_trips"]:
            entry["error"] = "no datagram came back"
        self.results["udp"] = entry
        self.log(f"udp: {entry}")

    def _udp_run(self, sock: socket.socket, header: bytes) -> dict[str, Any]:
        """Keep C{udp_window} datagrams in flight on a connected, non-blocking C{sock}; measure."""
        args = self.args
        window, loss_timeout = args.udp_window, args.udp_loss_timeout
        pad = os.urandom(max(0, args.udp_size - UDP_SEQ.size))
        offset = len(header)
        length = offset + UDP_SEQ.size + len(pad)
        poller = select.epoll()
        poller.register(sock.fileno(), select.EPOLLIN)
        outstanding: dict[int, float] = {}  # sequence number -> send time
        counted: set[int] = set()  # sequence numbers sent inside the measured window
        rtts: list[float] = []
        seq = round_trips = sent = lost = late = bad = send_errors = 0
        started = time.monotonic()
        count_from = started + args.udp_warmup
        stop_at = count_from + args.udp_secs
        next_sweep = started + 0.05
        before: CpuSnapshot | None = None
        buffer = bytearray(65536)
        try:
            for _ in range(100_000_000):  # bounded: ends at stop_at long before this
                now = time.monotonic()
                if now >= stop_at:
                    break
                if before is None and now >= count_from:
                    before = self.cpu.snapshot()
                while len(outstanding) < window:
                    seq += 1
                    try:
                        sock.send(header + UDP_SEQ.pack(seq) + pad)
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. ECONNREFUSED from an ICMP error
                        send_errors += 1
                        break
                    outstanding[seq] = time.monotonic()
                    if now >= count_from:
                        counted.add(seq)
                        sent += 1
                got = False
                for _ in range(window * 2):
                    try:
                        n = sock.recv_into(buffer)
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. ECONNREFUSED: the relay port is closed
                        send_errors += 1
                        break
                    got = True
                    received = time.monotonic()
                    if n != length or buffer[:offset] != header or buffer[offset + UDP_SEQ.size : n] != pad:
                        bad += 1
                        continue
                    (number,) = UDP_SEQ.unpack_from(buffer, offset)
                    sent_at = outstanding.pop(number, None)
                    if sent_at is None:
                        late += 1  # already counted as lost, or a duplicate
                        continue
                    if received >= count_from and received < stop_at:
                        round_trips += 1
                        rtts.append(int((received - sent_at) * 1e6))
                else:
                    continue  # more may be waiting: read again before sleeping
                if now >= next_sweep:
                    next_sweep = now + 0.05
                    for number in [k for k, t in outstanding.items() if now - t > loss_timeout]:
                        del outstanding[number]
                        lost += number in counted
                if not got:
                    poller.poll(min(0.01, max(0.0, stop_at - now)))
            after = self.cpu.snapshot()
            # Give the datagrams still in flight their chance, then count the rest as lost.
            drain_until = time.monotonic() + loss_timeout
            while outstanding and time.monotonic() < drain_until:
                if not poller.poll(max(0.0, drain_until - time.monotonic())):
                    break
                for _ in range(window * 2):
                    try:
                        n = sock.recv_into(buffer)
                    except (BlockingIOError, OSError):
                        break
                    if n == length:
                        outstanding.pop(UDP_SEQ.unpack_from(buffer, offset)[0], None)
            lost += sum(1 for number in outstanding if number in counted)
        finally:
            poller.close()
        rtts.sort()
        cpu = self.cpu.usage(before or after, after)
        return {
            "per_s": round(round_trips / args.udp_secs, 1),
            "round_trips": round_trips,
            "sent": sent,
            "lost": lost,
            "loss_pct": round(100 * lost / sent, 3) if sent else None,
            "late": late,
            "bad": bad,
            "socket_errors": send_errors,
            "rtt_us": {
                "p50": round(percentile(rtts, 50), 1),
                "p99": round(percentile(rtts, 99), 1),
                "max": rtts[-1] if rtts else None,
            },
            "window": window,
            "payload_bytes": UDP_SEQ.size + len(pad),
            "datagram_bytes": length,
            "seconds": args.udp_secs,
            "proxy_us_per_round_trip": proxy_us_per([cpu], round_trips),
            "cpu": cpu,
        }

    # -- start-up ------------------------------------------------------------

    def test_startup(self) -> None:
        """
        Seconds from starting the server until it serves a CONNECT (and a
        16-byte echo), over C{--startup-reps} fresh starts; the phase's own
        start is the first.
        """
        args = self.args
        server = self.server
        # parse_args drops this test unless the script starts the server.
        assert server is not None and server.ready_secs is not None
        times = [server.ready_secs]
        try:
            for _ in range(args.startup_reps - 1):
                server.stop()
                self.proxy = server.start(self.target)
                self.proxy_pid = server.pid
                assert server.ready_secs is not None
                times.append(server.ready_secs)
        except (OSError, BenchError) as e:
            done = ", ".join(f"{t:.2f}" for t in times)
            self.results["startup"] = {"error": f"{type(e).__name__}: {e} (after starts taking {done} s)"}
            return
        entry = {"secs": statistics.median(times), "all_secs": [round(t, 3) for t in times]}
        self.results["startup"] = entry
        self.log(f"startup: {entry}")

    # -- memory --------------------------------------------------------------

    def test_memory(self) -> None:
        """RSS/PSS idle, with N idle tunnels, and after closing them."""
        args = self.args
        if not self.proxy_pid:
            self.results["memory"] = {"error": "proxy pid unknown (give --proxy-pid)"}
            return
        time.sleep(0.5)
        idle = self.memory()
        assert idle is not None
        driver = SessionDriver(self.proxy, self.target, args.clients, hold=True)
        overflows = listen_overflows()
        opened_at = time.monotonic()
        result = driver.run(0.0, opened_at + args.tunnel_timeout, max_sessions=args.tunnels)
        held = result.held
        open_secs = time.monotonic() - opened_at
        overflows = listen_overflows() - overflows
        try:
            time.sleep(1.0)
            loaded = self.memory()
            assert loaded is not None
            failed = self._verify_tunnels(held)
        finally:
            for sock, _ in held:
                sock.close()
        time.sleep(1.0)
        after = self.memory()
        assert after is not None
        count = len(held)
        entry: dict[str, Any] = {
            "idle_rss_kib": idle.rss,
            "idle_pss_kib": idle.pss,
            "tunnels": count,
            "tunnels_wanted": args.tunnels,
            "open_seconds": round(open_secs, 2),
            "open_errors": dict(result.errors.most_common()),
            "listen_overflows": overflows,
            "tunnels_rss_kib": loaded.rss,
            "tunnels_pss_kib": loaded.pss,
            "processes": loaded.processes,
            "kib_per_tunnel_rss": round((loaded.rss - idle.rss) / count, 2) if count else None,
            "kib_per_tunnel_pss": round((loaded.pss - idle.pss) / count, 2) if count else None,
            "failed_second_echo": failed,
            "after_close_rss_kib": after.rss,
        }
        if count < args.tunnels or failed:
            entry["error"] = f"{count} of {args.tunnels} tunnels opened, {failed} failed the second echo"
        self.results["memory"] = entry
        self.log(f"memory: {entry}")

    def _verify_tunnels(self, held: list[tuple[socket.socket, bytes]]) -> int:
        """Echo once more through every held tunnel (within 20 s in all); return how many failed."""
        deadline = time.monotonic() + 20.0
        failed = 0
        for sock, payload in held:
            try:
                sock.send(payload)
            except OSError:
                failed += 1
        for sock, payload in held:
            try:
                sock.setblocking(True)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                if recv_exact(sock, ECHO_SIZE) != payload:
                    failed += 1
            except (OSError, BenchError):
                failed += 1
        return failed

    # -- backpressure --------------------------------------------------------

    def test_backpressure(self) -> None:
        """Peak RSS growth of the proxy while a client reads a big download slowly."""
        args = self.args
        if not self.proxy_pid:
            self.results["backpressure"] = {"error": "proxy pid unknown (give --proxy-pid)"}
            return
        nbytes = args.bp_mib * MiB
        buffer = bytearray(args.bp_read_kib * 1024)
        try:
            sock = open_tunnel(self.proxy, self.target, rcvbuf=128 * 1024)
        except (OSError, BenchError) as e:
            self.results["backpressure"] = {"error": f"{type(e).__name__}: {e}"}
            return
        with sock:
            sock.setblocking(False)
            time.sleep(0.3)
            pids = self.proxy_tree()
            baseline = tree_memory(pids)
            hwm_reset = reset_peak_rss(pids)
            peak, samples, got, mismatch, broken = baseline.rss, 0, 0, NO_MISMATCH, ""
            sock.sendall(HEADER.pack(MODE_SOURCE, nbytes))
            start = time.monotonic()
            next_read = next_sample = start
            for _ in range(int(args.bp_secs * 1000) + 1000):  # wakes at most every ms or so
                if (now := time.monotonic()) >= start + args.bp_secs:
                    break
                if now >= next_read:
                    next_read += args.bp_interval_ms / 1000
                    try:
                        n = sock.recv_into(buffer, len(buffer), socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        n = -1
                    except OSError as e:
                        broken = f"tunnel failed after {got} bytes: {errno_name(e)}"
                        break
                    if n == 0:
                        broken = f"the proxy closed the tunnel after {got} bytes"
                        break
                    if n > 0 and mismatch == NO_MISMATCH and not buffer.startswith(self.pattern.at(got, n)):
                        mismatch = got
                    got += max(n, 0)
                if now >= next_sample:
                    next_sample += 0.05
                    peak = max(peak, tree_memory(pids).rss)
                    samples += 1
                time.sleep(max(0.0, min(next_read, next_sample) - time.monotonic()))
            end = tree_memory(pids)
        time.sleep(1.0)
        after = tree_memory(pids)
        peak_hwm = end.hwm if hwm_reset else 0
        growth = max(peak, peak_hwm) - baseline.rss
        entry = {
            "peak_growth_kib": growth,
            "baseline_rss_kib": baseline.rss,
            "peak_sampled_kib": peak,
            "peak_hwm_kib": peak_hwm if hwm_reset else None,
            "rss_at_end_kib": end.rss,
            "rss_1s_after_close_kib": after.rss,
            "read_bytes": got,
            "read_MBps": round(got / args.bp_secs / 1e6, 2),
            "samples": samples,
            "seconds": args.bp_secs,
            "requested_bytes": nbytes,
        }
        if mismatch != NO_MISMATCH:
            entry["error"] = f"wrong data at offset {mismatch}"
        if broken:
            entry["error"] = broken
        self.results["backpressure"] = entry
        self.log(f"backpressure: {entry}")

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Run the selected tests, each phase on a fresh server instance when we start it."""
        tests = set(self.args.tests)
        phases = [
            ("startup", [("startup", self.test_startup)]),
            ("memory", [("memory", self.test_memory)]),
            (
                "perf",
                [
                    ("bulk", self.test_bulk),
                    ("latency", self.test_latency),
                    ("connrate", self.test_connrate),
                    ("udp", self.test_udp),
                ],
            ),
            ("backpressure", [("backpressure", self.test_backpressure)]),
        ]
        for phase, steps in phases:
            steps = [step for step in steps if step[0] in tests]
            if not steps:
                continue
            try:
                self.start_proxy()
            except (OSError, BenchError) as e:
                self.notes.append(f"{phase}: proxy did not start or answer: {e}")
                self.log(f"{phase}: proxy did not start or answer: {e}")
                continue
            for name, step in steps:
                self.log(f"running {name}")
                step()
            if self.server is not None:
                self.notes.extend(f"server log ({phase}): {line}" for line in self.server.log_problems())
                if self.server.process is not None and self.server.process.poll() is not None:
                    self.notes.append(f"{phase}: server exited with {self.server.process.returncode}")


# -- output --------------------------------------------------------------------


def _pct(cpu: dict[str, Any], key: str) -> str:
    value = cpu.get(key)
    return "" if value is None else f"{value:.0f}%"


def _row(name: str, value: str, entry: dict[str, Any] | None = None, note: str = "") -> list[str]:
    """One table row; the CPU columns come from C{entry["cpu"]} if there is one."""
    cpu = (entry or {}).get("cpu") or {}
    keys = ("proxy_pct", "load_pct", "proxy_core_busy_pct", "load_core_busy_pct")
    if entry and "error" in entry:
        note = f"{note}; {entry['error']}" if note else entry["error"]
    return [name, value, *(_pct(cpu, key) for key in keys), note]


def _cpuNote(entry: dict[str, Any], key: str, unit: str) -> str:
    """'; proxy CPU N µs/UNIT' for a test's note, or nothing when the proxy's CPU is unknown."""
    value = entry.get(key)
    return f"; proxy CPU {value:.1f} µs/{unit}" if value is not None else ""


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The rows of the summary table: test, result, four CPU columns, notes."""
    rows: list[list[str]] = []

    def usable(name: str, key: str) -> dict[str, Any] | None:
        entry = results.get(key)
        if entry and set(entry) == {"error"}:
            rows.append(_row(name, "FAIL", entry))
            return None
        return entry

    for direction in ("upload", "download"):
        if entry := usable(f"bulk {direction}", f"bulk_{direction}"):
            runs = ", ".join(f"{v:.0f}" for v in entry["all_MBps"])
            note = f"runs {runs}" + _cpuNote(entry, "proxy_us_per_MB", "MB")
            rows.append(_row(f"bulk {direction}", f"{entry['MBps']:.0f} MB/s", entry, note))
    if entry := usable("connections", "connrate"):
        ms = entry["session_ms"]
        note = f"errors {entry['errors']}; session p50 {ms['p50']} p99 {ms['p99']} max {ms['max']} ms"
        if ms["over_1s"]:
            note += f"; {ms['over_1s']} took >1 s"
        if entry["listen_overflows"]:
            note += f"; {entry['listen_overflows']} listen queue overflows"
        note += _cpuNote(entry, "proxy_us_per_session", "session")
        rows.append(_row("connections", f"{entry['per_s']:.0f} /s", entry, note))
    if entry := usable("latency p50 / p99", "latency"):
        value = f"{entry['p50_us']:.0f} / {entry['p99_us']:.0f} µs"
        note = f"{entry['round_trips']} round trips, max {entry['max_us']:.0f} µs"
        note += _cpuNote(entry, "proxy_us_per_round_trip", "round trip")
        rows.append(_row("latency p50 / p99", value, entry, note))
    if entry := usable("udp round trips", "udp"):
        note = (
            f"{entry['payload_bytes']}-byte payloads, {entry['window']} in flight; "
            f"lost {entry['lost']} of {entry['sent']}; rtt p50 {entry['rtt_us']['p50']:.0f} "
            f"p99 {entry['rtt_us']['p99']:.0f} µs"
        ) + _cpuNote(entry, "proxy_us_per_round_trip", "round trip")
        rows.append(_row("udp round trips", f"{entry['per_s']:.0f} /s", entry, note))
    if entry := usable("start-up", "startup"):
        runs = ", ".join(f"{v:.2f}" for v in entry["all_secs"])
        note = f"until it serves a CONNECT; runs {runs}"
        rows.append(_row("start-up", f"{entry['secs']:.2f} s", None, note))
    if entry := usable("memory", "memory"):
        n = entry["tunnels"]
        rows.append(_row("RSS idle", _mib(entry["idle_rss_kib"]), None, f"PSS {_mib(entry['idle_pss_kib'])}"))
        note = f"PSS {_mib(entry['tunnels_pss_kib'])}; {_mib(entry['after_close_rss_kib'])} after closing"
        rows.append(_row(f"RSS {n} tunnels", _mib(entry["tunnels_rss_kib"]), None, note))
        if n:
            value = f"{entry['kib_per_tunnel_rss']:.1f} KiB"
            note = f"PSS {entry['kib_per_tunnel_pss']:.1f} KiB"
            rows.append(
                _row("per tunnel", value, {"error": entry["error"]} if "error" in entry else None, note)
            )
    if entry := usable("backpressure", "backpressure"):
        note = (
            f"read {entry['read_MBps']} MB/s for {entry['seconds']} s; "
            f"RSS {_mib(entry['rss_1s_after_close_kib'])} 1 s after close"
        )
        rows.append(_row("backpressure peak", f"+{_mib(entry['peak_growth_kib'])}", entry, note))
    return rows


def format_table(rows: list[list[str]]) -> str:
    """A plain-text table with a header row; the last column is left ragged."""
    header = ["test", "result", "proxy", "load", "core P", "core L", "notes"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def describe_run(bench: Bench) -> dict[str, Any]:
    """Run metadata for the report and the JSON file."""
    args = bench.args
    server = bench.server
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "server": (
            shlex.join(server.command(None))
            if server
            else f"{args.proxy} (external)"
            if args.proxy
            else "none (--direct: client to target)"
        ),
        "proxy_cpus": cpu_list(bench.proxy_cpus) if bench.proxy_cpus else None,
        "load_cpus": cpu_list(bench.load_cpus) if bench.load_cpus else None,
        "fresh_instance_per_phase": server is not None and not args.no_restart,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": (_read("/proc/loadavg") or "").split()[:3],
        "sizes": {
            "bulk_mib": args.bulk_mib,
            "bulk_reps": args.bulk_reps,
            "clients": args.clients,
            "conn_secs": args.conn_secs,
            "conn_warmup": args.conn_warmup,
            "lat_count": args.lat_count,
            "lat_secs": args.lat_secs,
            "tunnels": args.tunnels,
            "bp_mib": args.bp_mib,
            "bp_secs": args.bp_secs,
            "udp_secs": args.udp_secs,
            "udp_window": args.udp_window,
            "udp_size": args.udp_size,
            "startup_reps": args.startup_reps,
        },
    }


def describe_sizes(args: argparse.Namespace, width: int = 100) -> list[str]:
    """The sizes of the tests that ran, as lines of at most about C{width} characters."""
    parts = {
        "bulk": f"bulk {args.bulk_mib} MiB x{args.bulk_reps}",
        "connrate": f"{args.clients} clients for {args.conn_secs} s (+{args.conn_warmup} s warm-up)",
        "latency": f"latency <= {args.lat_count} round trips or {args.lat_secs} s",
        "memory": f"{args.tunnels} idle tunnels",
        "backpressure": f"backpressure {args.bp_mib} MiB for {args.bp_secs} s",
        "udp": f"udp {args.udp_size} B x{args.udp_window} in flight for {args.udp_secs} s",
        "startup": f"{args.startup_reps} start-ups",
    }
    lines = [""]
    for test, text in parts.items():
        if test not in args.tests:
            continue
        if lines[-1] and len(lines[-1]) + len(text) > width:
            lines.append("")
        lines[-1] += f"{text}; "
    return [line.rstrip("; ") for line in lines]


def report(bench: Bench) -> str:
    """The whole text report."""
    meta = describe_run(bench)
    lines = [
        f"server:  {meta['server']}",
        f"CPUs:    proxy {meta['proxy_cpus'] or '-'}, load {meta['load_cpus'] or '-'}"
        f" ({meta['cpus']} online); load average {' '.join(meta['loadavg_at_end'])}",
        *(("sizes:   " if i == 0 else " " * 9) + line for i, line in enumerate(describe_sizes(bench.args))),
        "CPU columns: % of one core used by the proxy's process tree (proxy) and by our load",
        "processes (load); how busy the proxy's core (core P) and the load's core (core L) were,",
        "other programs included.",
        "",
        format_table(table_rows(bench.results)),
    ]
    if bench.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in bench.notes)]
    return "\n".join(lines)


# -- command line --------------------------------------------------------------

#: Every test, in the order of the report.
TESTS = ("bulk", "latency", "connrate", "memory", "backpressure", "udp", "startup")

QUICK = {
    "bulk_mib": 128,
    "conn_secs": 2.0,
    "conn_warmup": 0.5,
    "lat_count": 5000,
    "lat_secs": 1.0,
    "tunnels": 200,
    "bp_secs": 1.5,
    "udp_secs": 1.5,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--proxy", metavar="HOST:PORT", help="measure this running SOCKS5 server (no auth)")
    which.add_argument(
        "--server-cmd",
        metavar="CMD",
        help="start this server instead of twistd socks5; {port} and {host} are substituted",
    )
    which.add_argument(
        "--direct",
        action="store_true",
        help="no proxy: the client talks straight to the target (the load side's ceiling)",
    )
    p.add_argument("--proxy-pid", type=int, help="pid of the --proxy server (default: found from /proc)")
    p.add_argument("--proxy-cpu", default="0", help="CPU(s) for the server we start (default 0)")
    p.add_argument("--load-cpu", default="1", help="CPU(s) for the load generator and target (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin anything to CPUs")
    p.add_argument("--no-restart", action="store_true", help="one server instance for all phases")
    p.add_argument(
        "--tests",
        type=lambda s: s.split(","),
        default=list(TESTS),
        help="comma-separated subset of " + ",".join(TESTS),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    p.add_argument("--bulk-mib", type=int, default=256, help="MiB per bulk transfer (default 256)")
    p.add_argument("--bulk-reps", type=int, default=3, help="transfers per direction; the median is shown")
    p.add_argument("--bulk-timeout", type=float, default=120.0, help="seconds one transfer may take")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients in the connection test")
    p.add_argument("--conn-workers", type=int, default=1, help="load processes for the connection test")
    p.add_argument("--conn-secs", type=float, default=5.0, help="seconds counted in the connection test")
    p.add_argument("--conn-warmup", type=float, default=1.0, help="warm-up seconds before counting")
    p.add_argument("--lat-warmup", type=int, default=300, help="round trips before measuring latency")
    p.add_argument("--lat-count", type=int, default=20000, help="at most this many measured round trips")
    p.add_argument("--lat-secs", type=float, default=2.0, help="... or this many seconds")
    p.add_argument("--tunnels", type=int, default=1000, help="idle tunnels for the memory test")
    p.add_argument("--tunnel-timeout", type=float, default=60.0, help="seconds to open all the tunnels")
    p.add_argument("--bp-mib", type=int, default=1024, help="MiB the slow reader asks for (default 1024)")
    p.add_argument("--bp-secs", type=float, default=3.0, help="seconds the slow reader reads")
    p.add_argument("--bp-read-kib", type=int, default=16, help="KiB the slow reader reads each time")
    p.add_argument("--bp-interval-ms", type=float, default=10.0, help="milliseconds between slow reads")
    p.add_argument("--udp-secs", type=float, default=3.0, help="seconds counted in the UDP test")
    p.add_argument("--udp-warmup", type=float, default=0.5, help="UDP warm-up seconds before counting")
    p.add_argument("--udp-window", type=int, default=32, help="UDP datagrams in flight at once")
    p.add_argument("--udp-size", type=int, default=64, help="UDP payload bytes (after the SOCKS header)")
    p.add_argument(
        "--udp-loss-timeout", type=float, default=1.0, help="seconds after which a datagram counts as lost"
    )
    p.add_argument("--startup-reps", type=int, default=3, help="fresh starts timed in the start-up test")
    p.add_argument("--log-dir", type=Path, help="where server logs go (default: a new temporary directory)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    unknown = set(args.tests) - set(TESTS)
    if unknown:
        p.error(f"unknown tests: {', '.join(sorted(unknown))}")
    if args.udp_size < UDP_SEQ.size or args.udp_window < 1:
        p.error(f"--udp-size must be at least {UDP_SEQ.size} and --udp-window at least 1")
    if args.startup_reps < 1:
        p.error("--startup-reps must be at least 1")
    if args.direct:
        args.tests = [t for t in args.tests if t not in ("memory", "backpressure", "startup")]
    elif args.proxy:
        args.tests = [t for t in args.tests if t != "startup"]
    return args


def server_template(args: argparse.Namespace) -> list[str]:
    """The command line template of the server to start."""
    if args.server_cmd:
        template = shlex.split(args.server_cmd)
        if not any("{port}" in arg for arg in template):
            raise SystemExit("--server-cmd needs {port} somewhere")
        return template
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        found = shutil.which("twistd")
        if not found:
            raise SystemExit(f"no twistd next to {sys.executable} or on PATH; run with the venv's python")
        twistd = Path(found)
    return [str(twistd), "--pidfile=", "-n", "socks5", "--port", "tcp:{port}:interface={host}"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit status 1 if a test failed, 130 if interrupted."""
    args = parse_args(argv)
    bench = Bench(args)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="socks5bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.proxy:
        host, _, port = args.proxy.rpartition(":")
        host = str(socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0][4][0])
        if not is_loopback(host):
            raise SystemExit("--proxy must be on 127.0.0.1 (or ::1): all traffic stays on this machine")
        bench.proxy = (host, int(port))
        bench.proxy_pid = args.proxy_pid or listener_pid(int(port))
        if bench.proxy_pid is None:
            bench.notes.append("proxy pid not found: no memory figures or proxy CPU (give --proxy-pid)")
    elif not args.direct:
        bench.server = ProxyProcess(server_template(args), None, log_dir, "server")
    try:
        bench.setup()
        if bench.server is not None and bench.proxy_cpus:
            bench.server.cpus = bench.proxy_cpus
        if args.proxy and bench.proxy_pid:
            bench.notes.append(
                f"external proxy pid {bench.proxy_pid}, not pinned, not restarted between phases"
            )
        bench.log(f"target on {bench.target[0]}:{bench.target[1]}, logs in {log_dir}")
        bench.run()
    except KeyboardInterrupt:
        bench.notes.append("interrupted")
    finally:
        bench.teardown()
    text = report(bench)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"run": describe_run(bench), "results": bench.results, "notes": bench.notes}, indent=2)
            + "\n"
        )
    if "interrupted" in bench.notes:
        return 130
    failed = any("error" in entry for entry in bench.results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
