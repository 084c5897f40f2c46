"""
compare: txsocks5 against other SOCKS5 servers, in alternating rounds.

On a shared or virtual machine the speed of the whole machine drifts, by
tens of percent within an hour, so two servers measured one after the other
can differ by more than they really do.  This runs ``socks5bench.py`` once
per server per round, the servers' order turning each round, and reports
each figure as the median and range over the rounds, with txsocks5's figure
divided by each other server's *in the same round*: a ratio that the drift
mostly cancels out of.

    python3 bench/compare.py --server microsocks='microsocks -i {host} -p {port}' --rounds 5
    python3 bench/compare.py --rounds 5 --server dante="bash -c \\
        'sed s/1080/{port}/ /etc/danted.conf >/tmp/d.conf && exec danted -f /tmp/d.conf'"
    python3 bench/compare.py --tests connrate --rounds 8 --server \\
        nolog="$PWD/.venv/bin/twistd --pidfile= -n socks5 --port tcp:{port}:interface={host} --no-session-log"
    python3 bench/compare.py --server mine=... -- --conn-secs 5     # options after -- go to socks5bench.py

txsocks5 is this checkout's ``twistd socks5`` (what ``socks5bench.py`` starts
by default).  A CMD is a ``socks5bench.py --server-cmd``: it starts a server
in the foreground, without authentication, listening on ``{port}`` (and
``{host}``); it does not run in this directory, so give paths in full.  Run
this with the venv's Python.  Standard library only; all traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
OURS = "txsocks5"

#: The figures compared: (label, test, result key, field).
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("bulk upload, MB/s", "bulk", "bulk_upload", "MBps"),
    ("bulk download, MB/s", "bulk", "bulk_download", "MBps"),
    ("connections/s", "connrate", "connrate", "per_s"),
    ("latency p50, us", "latency", "latency", "p50_us"),
    ("latency p99, us", "latency", "latency", "p99_us"),
    ("UDP round trips/s", "udp", "udp", "per_s"),
    ("KiB per idle tunnel (PSS)", "memory", "memory", "kib_per_tunnel_pss"),
    ("backpressure growth, KiB", "backpressure", "backpressure", "peak_growth_kib"),
    ("start-up, s", "startup", "startup", "secs"),
    ("proxy CPU per MB up, us", "bulk", "bulk_upload", "proxy_us_per_MB"),
    ("proxy CPU per session, us", "connrate", "connrate", "proxy_us_per_session"),
    ("proxy CPU per round trip, us", "latency", "latency", "proxy_us_per_round_trip"),
    ("proxy CPU per UDP round trip, us", "udp", "udp", "proxy_us_per_round_trip"),
)

Results = dict[str, dict[str, object]]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the ones after C{--} for socks5bench.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passed: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, passed = argv[:at], argv[at + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip() if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="another server to measure (repeat for more); CMD as socks5bench.py --server-cmd",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every server once (3)")
    p.add_argument(
        "--tests",
        default="bulk,latency,connrate,udp",
        help="socks5bench.py tests to run (default bulk,latency,connrate,udp)",
    )
    p.add_argument("--json", type=Path, help="also write every round's figures here")
    args = p.parse_args(argv)
    servers: dict[str, str | None] = {OURS: None}
    for spec in args.server:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or not cmd:
            p.error(f"--server wants NAME=CMD, not {spec!r}")
        if name in servers:
            p.error(f"two servers named {name!r}")
        servers[name] = cmd
    if len(servers) < 2:
        p.error("name at least one --server to compare txsocks5 with")
    if not 1 <= args.rounds <= 50:
        p.error("--rounds must be 1 to 50")
    args.servers = servers
    return args, passed


def run_once(cmd: str | None, tests: str, passed: list[str], out: Path) -> Results:
    """One socks5bench.py run against one server; its results by test."""
    argv = [sys.executable, str(HERE / "socks5bench.py"), "--tests", tests, "--json", str(out), *passed]
    if cmd is not None:
        argv += ["--server-cmd", cmd]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    if not out.exists():
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": {"error": " / ".join(tail) or f"exit status {done.returncode}"}}
    ran = json.loads(out.read_text())
    results: Results = ran["results"]
    why = " / ".join(ran.get("notes") or []) or "no result"
    for _label, test, key, _field in FIGURES:
        if test in tests.split(",") and key not in results:
            results[key] = {"error": why}  # E.g. the server did not start.
    return results


def figure(results: Results, key: str, field: str) -> float | None:
    """One figure of one run, or C{None} if it failed or was not measured."""
    entry = results.get(key)
    if not isinstance(entry, dict) or "error" in entry:
        return None
    value = entry.get(field)
    return float(value) if isinstance(value, int | float) else None


def number(value: float) -> str:
    """A figure as text: whole above 100, three significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    """Median and range, as text."""
    if not values:
        return "-"
    median = number(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({number(min(values))}-{number(max(values))})"


def report(names: list[str], rounds: list[dict[str, Results]], tests: set[str]) -> str:
    """The table: each server's median (range) per figure, then txsocks5's ratio to each."""
    others = [name for name in names if name != OURS]
    header = ["figure", *names, *(f"{OURS}/{name}" for name in others)]
    rows = [header]
    for label, test, key, field in FIGURES:
        if test not in tests:
            continue
        row = [label]
        for name in names:
            row.append(spread([v for r in rounds if (v := figure(r[name], key, field)) is not None]))
        for name in others:
            ratios = []
            for r in rounds:
                ours, theirs = figure(r[OURS], key, field), figure(r[name], key, field)
                if ours is not None and theirs:
                    ratios.append(ours / theirs)
            row.append(spread(ratios))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    failures = [
        f"round {i + 1}, {name}: {test}: {entry['error']}"
        for i, r in enumerate(rounds)
        for name in names
        for test, entry in r[name].items()
        if isinstance(entry, dict) and "error" in entry
    ]
    notes = [
        f"median (min-max) over {len(rounds)} rounds; ratios are txsocks5's figure divided by the "
        "other server's in the same round (for latency, memory, start-up and CPU, lower is better)",
        *failures,
    ]
    return "\n".join([*lines, "", *notes])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the comparison; exit status 1 if any run failed."""
    args, passed = parse_args(argv)
    names = list(args.servers)
    rounds: list[dict[str, Results]] = []
    with tempfile.TemporaryDirectory(prefix="compare-") as work:
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            results: dict[str, Results] = {}
            for name in order:
                print(f"round {index + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                out = Path(work) / f"{index}-{len(results)}.json"
                results[name] = run_once(args.servers[name], args.tests, passed, out)
            rounds.append(results)
    print(report(names, rounds, set(args.tests.split(","))))
    if args.json:
        servers = {name: shlex.split(cmd) if cmd else None for name, cmd in args.servers.items()}
        args.json.write_text(json.dumps({"servers": servers, "rounds": rounds}, indent=2) + "\n")
    failed = any("error" in entry for r in rounds for res in r.values() for entry in res.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
