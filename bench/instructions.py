"""
CPU instructions per SOCKS5 CONNECT session, counted by valgrind.

Timings on a shared VM drift by tens of percent between runs; instruction
counts do not.  This runs txsocks5 (``twistd socks5`` from this checkout)
under ``valgrind --tool=callgrind``, drives short sessions through it
(greeting, CONNECT to a local echo target, 16 bytes there and back, close),
and prints the user-space instructions the server spent per session.  The
same checkout and arguments give the same count within about 1%, so two
versions of a change can be compared without a quiet machine.  It says
nothing about the kernel's share (system calls): count those with
``strace -c``.

    python3 bench/instructions.py                      # default server arguments
    python3 bench/instructions.py -- --no-session-log  # extra twistd socks5 arguments
    python3 bench/instructions.py --probe txfloor      # bench/txfloor.py instead (or pyfloor)

It needs valgrind (Debian: ``apt-get install valgrind``).  Traffic stays on
127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import glob
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PAYLOAD = b"sixteen bytes!!!"


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serveEcho(listener: socket.socket, stop: threading.Event) -> None:
    """Echo 16 bytes on each connection, then close (the target closes first)."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=echoOnce, args=(conn,), daemon=True).start()


def echoOnce(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(30)
        data = b""
        while len(data) < len(PAYLOAD):
            chunk = conn.recv(len(PAYLOAD) - len(data))
            if not chunk:
                return
            data += chunk
        conn.sendall(data)


def recvExactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def session(proxyPort: int, targetPort: int) -> None:
    """One short SOCKS5 session; raises if anything is wrong."""
    with socket.create_connection((HOST, proxyPort), timeout=60) as sock:
        sock.sendall(b"\x05\x01\x00")
        if recvExactly(sock, 2) != b"\x05\x00":
            raise ConnectionError("bad method selection")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + struct.pack("!H", targetPort))
        reply = recvExactly(sock, 10)
        if reply[1] != 0:
            raise ConnectionError(f"CONNECT refused: {reply[1]:#04x}")
        sock.sendall(PAYLOAD)
        if recvExactly(sock, len(PAYLOAD)) != PAYLOAD:
            raise ConnectionError("bad echo")
        if sock.recv(1) != b"":
            raise ConnectionError("no EOF")


def runSessions(count: int, concurrency: int, proxyPort: int, targetPort: int) -> tuple[int, int]:
    """Run C{count} sessions, C{concurrency} at a time; return (completed, failed)."""
    lock = threading.Lock()
    left = [count]
    results = [0, 0]

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                session(proxyPort, targetPort)
                ok = 0
            except OSError:
                ok = 1
            with lock:
                results[ok] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results[0], results[1]


def waitListening(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not listen on {port} within {seconds} s")


def totalInstructions(dumpPrefix: str) -> int:
    """The instruction total of the newest callgrind dump."""
    dumps = sorted(glob.glob(dumpPrefix + ".*"), key=os.path.getmtime)
    if not dumps:
        raise SystemExit("callgrind wrote no dump")
    for line in Path(dumps[-1]).read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {dumps[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000, help="sessions counted (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="sessions at once (default 64)")
    parser.add_argument("--warmup", type=int, default=200, help="sessions before counting (default 200)")
    parser.add_argument(
        "--probe",
        choices=("pyfloor", "txfloor"),
        help="measure bench/pyfloor.py or bench/txfloor.py (the least a Python or a Twisted-shaped "
        "relay costs) instead of txsocks5",
    )
    parser.add_argument("serverArgs", nargs="*", help="extra arguments for the server (after --)")
    args = parser.parse_args()
    sessions = max(1, min(args.sessions, 100_000))
    concurrency = max(1, min(args.concurrency, 512))

    target = socket.socket()
    target.bind((HOST, 0))
    target.listen(1024)
    targetPort = target.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=serveEcho, args=(target, stop), daemon=True).start()

    proxyPort = freePort()
    workdir = tempfile.mkdtemp(prefix="txsocks5-instructions-")
    dumpPrefix = os.path.join(workdir, "callgrind.out")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--compress-strings=no",
        f"--callgrind-out-file={dumpPrefix}",
        sys.executable,
    ]
    if args.probe:
        command += [str(CHECKOUT / "bench" / f"{args.probe}.py"), "--host", HOST, "--port", str(proxyPort)]
    else:
        command += [
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            "-n",
            "socks5",
            "--port",
            f"tcp:{proxyPort}:interface={HOST}",
        ]
    command += args.serverArgs
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    log = open(os.path.join(workdir, "server.log"), "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        waitListening(proxyPort, 120)
        runSessions(args.warmup, concurrency, proxyPort, targetPort)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
        completed, failed = runSessions(sessions, concurrency, proxyPort, targetPort)
        before = set(glob.glob(dumpPrefix + ".*"))
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
        for _ in range(100):
            if set(glob.glob(dumpPrefix + ".*")) - before:
                break
            time.sleep(0.1)
        total = totalInstructions(dumpPrefix)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        stop.set()
    if failed or not completed:
        raise SystemExit(
            f"{failed} of {completed + failed} sessions failed (server log: {workdir}/server.log)"
        )
    print(
        f"{total / completed / 1000:.0f}k instructions per session "
        f"({completed} sessions, {concurrency} at once, server: {args.probe or 'txsocks5'}, "
        f"args: {' '.join(args.serverArgs) or '(none)'})"
    )


if __name__ == "__main__":
    main()
