"""Tests for the C{twistd socks5} options and service (L{txsocks5.tap})."""

from __future__ import annotations

from typing import Any

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from txsocks5.proxyprotocol import ProxyProtocolEndpoint
from txsocks5.reloading import HangupService
from txsocks5.rules import RuleSet
from txsocks5.server import SOCKS5Factory
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
        self.assertEqual(options["busy-poll"], 0.0)

    def test_barePort(self) -> None:
        self.assertEqual(portDescription("1081"), "tcp:1081:interface=127.0.0.1:backlog=1024")

    def test_backlog(self) -> None:
        """Stream listeners get a deep listen queue unless they name one."""
        self.assertEqual(portDescription("tcp6:1080"), "tcp6:1080:backlog=1024")
        self.assertEqual(portDescription("tcp:1080:backlog=5"), "tcp:1080:backlog=5")
        self.assertEqual(portDescription("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")

    def test_proxyProtocolPort(self) -> None:
        """
        After haproxy: the rest is a port description as any other (a bare
        number included), and the port admits clients by their PROXY
        headers.
        """
        self.assertEqual(portDescription("haproxy:1081"), "haproxy:tcp:1081:interface=127.0.0.1:backlog=1024")
        self.assertEqual(portDescription("haproxy:tcp6:1080"), "haproxy:tcp6:1080:backlog=1024")
        [endpoint] = parse("--port", "haproxy:1081")["endpoints"]
        self.assertIsInstance(endpoint, ProxyProtocolEndpoint)

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
            ["--busy-poll", "-1"],
            ["--busy-poll", "2000000"],
            ["--busy-poll", "nan"],
        ):
            self.assertRaises(UsageError, parse, *args)


def factoryOf(options: Options) -> SOCKS5Factory:
    """The factory of the SOCKS5 service C{makeService} builds from C{options}."""
    service: Any = makeService(options)
    factory: SOCKS5Factory = service.getServiceNamed("socks5").factory
    return factory


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
        socks = service.getServiceNamed("socks5")  # type: ignore[attr-defined]
        self.assertIsInstance(socks, SOCKS5Service)
        factory = socks.factory
        self.assertEqual(factory.idleTimeout, 60)
        self.assertIsNone(factory.negotiateTimeout)
        self.assertEqual(factory.maxConnections, 10)
        self.assertEqual(factory.finWaitTimeout, 120)
        self.assertEqual(len(factory.checkers), 1)

    def test_bindOptions(self) -> None:
        options = parse("--bind-timeout", "5", "--bind-check", "port", "--bind-port-range", "40000-40010")
        factory = factoryOf(options)
        self.assertEqual((factory.bindTimeout, factory.bindCheck), (5, "port"))
        self.assertEqual(factory.bindPortRange, (40000, 40010))
        self.assertEqual(factoryOf(parse()).bindCheck, "address")

    def test_udpOptions(self) -> None:
        factory = factoryOf(
            parse(
                "--udp-advertise", "203.0.113.5", "--udp-port-range", "40000-40100", "--udp-idle-timeout", "0"
            )
        )
        self.assertEqual(factory.udpAdvertise, "203.0.113.5")
        self.assertEqual(factory.udpPortRange, (40000, 40100))
        self.assertIsNone(factory.udpIdleTimeout)
        self.assertEqual(factory.maxUDPAssociationsPerClient, 16)

    def test_ruleOptionsInOrder(self) -> None:
        """Rule options and rules files keep the order they were given in."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("client allow from 10.0.0.0/8\ndeny to .example.com\n")
        factory = factoryOf(
            parse(
                "--deny-destination",
                "10.0.0.0/8",
                "--rules",
                path,
                "--allow-destination",
                "any",
                "--deny-client",
                "10.9.0.0/16",
            )
        )
        rules = factory.rules
        assert isinstance(rules, RuleSet)
        self.assertEqual(
            [r.source for r in rules.requestRules],
            ["--deny-destination 10.0.0.0/8", f"{path}:2", "--allow-destination any"],
        )
        self.assertEqual([r.source for r in rules.clientRules], [f"{path}:1", "--deny-client 10.9.0.0/16"])

    def test_badRules(self) -> None:
        """Bad rules are usage errors that say where and what."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("allow to any\n\ndeny to 10.0.0.1/8\n")
        for args, expected in (
            (["--rules", path], f"{path}:3"),
            (["--rules", path + ".missing"], "No such file"),
            (["--deny-destination", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
            (["--allow-client", "example.com"], "not an IP address or network"),
            (["--port", "\u00b2"], "--port"),
            (["--bind-port-range", "\u00b2-\u00b3"], "not a port range"),
        ):
            with self.assertRaises(UsageError) as caught:
                parse(*args)
            self.assertIn(expected, str(caught.exception))

    def test_limitOptions(self) -> None:
        factory = factoryOf(
            parse(
                "--max-connections-per-client",
                "8",
                "--max-udp-per-user",
                "2",
                "--login-attempts",
                "3",
                "--login-lockout",
                "30",
            )
        )
        self.assertEqual(factory.maxConnectionsPerClient, 8)
        self.assertEqual(factory.maxUDPAssociationsPerUser, 2)
        self.assertEqual((factory.loginThrottle.maxFailures, factory.loginThrottle.lockout), (3, 30))
        defaults = factoryOf(parse())
        self.assertTrue(defaults.logSessions)
        self.assertFalse(factoryOf(parse("--no-session-log")).logSessions)
        self.assertEqual(defaults.sessionLog.delay, 0.1)
        self.assertEqual(factoryOf(parse("--session-log-delay", "0")).sessionLog.delay, 0)
        self.assertEqual(factoryOf(parse("--session-log-delay", "2.5")).sessionLog.delay, 2.5)
        self.assertIsNone(defaults.maxConnectionsPerClient)
        self.assertEqual((defaults.loginThrottle.maxFailures, defaults.loginThrottle.lockout), (5, 60))

    def test_hangupReloadsHtpasswd(self) -> None:
        """With a checker that can reload, SIGHUP handling is part of the service."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("")
        service: Any = makeService(parse("--auth", f"htpasswd:{path}"))
        hangup = service.getServiceNamed("hangup")
        self.assertIsInstance(hangup, HangupService)
        self.assertEqual(len(hangup.callbacks), 1)
        plain: Any = makeService(parse("--auth", "memory:alice:secret"))
        self.assertEqual([s.name for s in plain], ["socks5"])
