"""Tests for C{bench/compare.py}: its arguments and its table (no servers are run)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase


def _loadCompare() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "compare.py"
    spec = importlib.util.spec_from_file_location("_bench_compare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _loadCompare()


def _refused(argv: list[str]) -> str:
    """What C{compare.py} says when it refuses C{argv}."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.suppress(SystemExit):
        compare.parse_args(argv)
        return ""
    return said.getvalue()


class ArgumentTests(SynchronousTestCase):
    """What C{compare.py} accepts."""

    def test_servers(self) -> None:
        """txsocks5 comes first; named servers follow in order; options after -- are passed on."""
        args, passed = compare.parse_args(
            ["--server", "a=x {port}", "--server", "b=y=z {port}", "--", "--quick"]
        )
        self.assertEqual(args.servers, {"txsocks5": None, "a": "x {port}", "b": "y=z {port}"})
        self.assertEqual(passed, ["--quick"])

    def test_needsAnotherServer(self) -> None:
        """With nothing to compare with, it says so."""
        self.assertIn("name at least one --server", _refused([]))

    def test_badServer(self) -> None:
        """A server without a name or a command, or named twice, is refused."""
        for argv in (["--server", "nocommand"], ["--server", "=cmd"], ["--server", "a=1", "--server", "a=2"]):
            self.assertIn("error:", _refused(argv))


class ReportTests(SynchronousTestCase):
    """The table of medians and same-round ratios."""

    def test_ratiosPerRound(self) -> None:
        """
        Ratios are taken within a round, then their median: two rounds where
        the machine ran twice as fast in the second give 1.5 each time.
        """
        rounds = [
            {"txsocks5": {"connrate": {"per_s": 3000}}, "dante": {"connrate": {"per_s": 2000}}},
            {"txsocks5": {"connrate": {"per_s": 6000}}, "dante": {"connrate": {"per_s": 4000}}},
        ]
        text = compare.report(["txsocks5", "dante"], rounds, {"connrate"})
        self.assertIn("txsocks5/dante", text)
        line = next(line for line in text.splitlines() if line.startswith("connections/s"))
        self.assertEqual(
            line.split(),
            ["connections/s", "4,500", "(3,000-6,000)", "3,000", "(2,000-4,000)", "1.5", "(1.5-1.5)"],
        )

    def test_cpuPerWork(self) -> None:
        """The proxies' CPU per session is compared like the other figures."""
        rounds = [
            {
                "txsocks5": {"connrate": {"per_s": 3000, "proxy_us_per_session": 100.0}},
                "dante": {"connrate": {"per_s": 2000, "proxy_us_per_session": 50.0}},
            },
        ]
        text = compare.report(["txsocks5", "dante"], rounds, {"connrate"})
        line = next(line for line in text.splitlines() if line.startswith("proxy CPU per session"))
        self.assertEqual(line.split()[-3:], ["100", "50", "2"])
        self.assertNotIn("per round trip", text)

    def test_failuresListed(self) -> None:
        """A failed run leaves its figure out and is named under the table."""
        rounds = [
            {"txsocks5": {"udp": {"per_s": 100.0}}, "other": {"udp": {"error": "refused with REP=7"}}},
        ]
        text = compare.report(["txsocks5", "other"], rounds, {"udp"})
        line = next(line for line in text.splitlines() if line.startswith("UDP"))
        self.assertEqual(line.split(), ["UDP", "round", "trips/s", "100", "-", "-"])
        self.assertIn("round 1, other: udp: refused with REP=7", text)

    def test_onlyTestsRun(self) -> None:
        """Figures of tests that were not run are not shown."""
        text = compare.report(["txsocks5", "x"], [{"txsocks5": {}, "x": {}}], {"latency"})
        self.assertIn("latency p99", text)
        self.assertNotIn("connections/s", text)
