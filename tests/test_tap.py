"""Tests for the C{twistd socks5} options and service (L{txsocks5.tap})."""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from txsocks5.service import SOCKS5Service
from txsocks5.tap import Options, makeService, portDescription


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    """Parsing and checking the command line."""

    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["ports"], ["tcp:1080:interface=127.0.0.1:backlog=1024"])
        self.assertEqual([m.name for m in options["methods"]], ["none"])
        self.assertEqual(options["negotiate-timeout"], 30.0)
        self.assertEqual(options["idle-timeout"], 0.0)

    def test_barePort(self) -> None:
        self.assertEqual(portDescription("1081"), "tcp:1081:interface=127.0.0.1:backlog=1024")

    def test_backlog(self) -> None:
        """Stream listeners get a deep listen queue unless they name one."""
        self.assertEqual(portDescription("tcp6:1080"), "tcp6:1080:backlog=1024")
        self.assertEqual(portDescription("tcp:1080:backlog=5"), "tcp:1080:backlog=5")
        self.assertEqual(portDescription("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")

    def test_repeatedPorts(self) -> None:
        options = parse("--port", "1080", "-p", r"tcp6:1080:interface=\:\:1")
        self.assertEqual(len(options["endpoints"]), 2)

    def test_auth(self) -> None:
        """--auth selects username/password and no longer offers 0x00."""
        options = parse("--auth", "memory:alice:secret")
        self.assertEqual([m.name for m in options["methods"]], ["username"])

    def test_allowNoAuth(self) -> None:
        options = parse("--auth", "memory:alice:secret", "--allow-no-auth")
        self.assertEqual([m.name for m in options["methods"]], ["username", "none"])

    def test_methods(self) -> None:
        options = parse("--auth", "memory:a:b", "--method", "none", "--method", "username")
        self.assertEqual([m.name for m in options["methods"]], ["none", "username"])

    def test_bad(self) -> None:
        """Bad values are usage errors."""
        for args in (
            ["--method", "bogus"],
            ["--method", "username"],
            ["--auth", "memory:a:b", "--method", "none"],
            ["--port", "nonsense:1"],
            ["--max-connections", "-1"],
            ["--max-connections", "lots"],
            ["--idle-timeout", "-5"],
            ["--connect-timeout", "0"],
            ["--negotiate-timeout", "nan"],
            ["--auth", "memory:odd"],
            ["--auth", "file:/nonexistent/txsocks5.users"],
            ["--udp-port-range", "2000"],
            ["--udp-port-range", "3000-2000"],
            ["--udp-port-range", "0-10"],
            ["--udp-advertise", "proxy.example"],
            ["--bind-check", "strict"],
            ["--bind-port-range", "5-1"],
        ):
            self.assertRaises(UsageError, parse, *args)


class MakeServiceTests(SynchronousTestCase):
    """makeService turns options into a configured service."""

    def test_service(self) -> None:
        service = makeService(
            parse(
                "--auth",
                "memory:alice:secret",
                "--idle-timeout",
                "60",
                "--negotiate-timeout",
                "0",
                "--max-connections",
                "10",
            )
        )
        self.assertIsInstance(service, SOCKS5Service)
        factory = service.factory
        self.assertEqual(factory.idleTimeout, 60)
        self.assertIsNone(factory.negotiateTimeout)
        self.assertEqual(factory.maxConnections, 10)
        self.assertEqual(factory.finWaitTimeout, 120)
        self.assertEqual(len(factory.checkers), 1)

    def test_bindOptions(self) -> None:
        options = parse("--bind-timeout", "5", "--bind-check", "port", "--bind-port-range", "40000-40010")
        factory = makeService(options).factory
        self.assertEqual((factory.bindTimeout, factory.bindCheck), (5, "port"))
        self.assertEqual(factory.bindPortRange, (40000, 40010))
        self.assertEqual(makeService(parse()).factory.bindCheck, "address")

    def test_udpOptions(self) -> None:
        factory = makeService(
            parse(
                "--udp-advertise", "203.0.113.5", "--udp-port-range", "40000-40100", "--udp-idle-timeout", "0"
            )
        ).factory
        self.assertEqual(factory.udpAdvertise, "203.0.113.5")
        self.assertEqual(factory.udpPortRange, (40000, 40100))
        self.assertIsNone(factory.udpIdleTimeout)
        self.assertEqual(factory.maxUDPAssociationsPerClient, 16)
