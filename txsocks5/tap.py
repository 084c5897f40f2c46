"""
The C{twistd socks5} command line: L{Options} and L{makeService}.

Another program can build the same service from the same words::

    options = Options()
    options.parseOptions(["--port", "tcp6:1080", "--auth", "file:/etc/txsocks5.users"])
    makeService(options).setServiceParent(application)
"""

from __future__ import annotations

import gc
import ipaddress
import os
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.cred import strcred
from twisted.cred.checkers import FilePasswordDB
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from txsocks5._fastpath import FastEPollReactor, installFastReactor
from txsocks5.accepting import raiseFileLimit
from txsocks5.auth import availableAuthenticators
from txsocks5.bind import PeerCheck
from txsocks5.proxyprotocol import ProxyProtocolEndpoint
from txsocks5.reloading import HangupService, reloaders
from txsocks5.rules import Rule, RuleError, RuleSet, parseClients, parseDestination, parseRulesFile
from txsocks5.server import SOCKS5Factory
from txsocks5.service import SOCKS5Service, openProxyProblem
from txsocks5.workers import WorkerLifetime, WorkerPool, workerArguments

__all__ = ["Options", "makeService", "portDescription"]

DEFAULT_PORT = "1080"

log = Logger()


#: The listen queue asked for when a description does not say: Twisted's
#: default of 50 overflows under bursts of connections, and each overflow
#: costs a client a one-second SYN retry.
DEFAULT_BACKLOG = 1024

_BACKLOG_TYPES = {"tcp", "tcp6", "ssl", "unix"}


def portDescription(port: str) -> str:
    """
    An endpoint description for C{--port}: a bare number means that port on
    the IPv4 loopback address (like Twisted's own C{socks} plugin); anything
    else is an endpoint description as it is.  Stream types that take a
    C{backlog} get L{DEFAULT_BACKLOG} unless they name one.  After
    C{haproxy:} (a PROXY-protocol port) the same holds for the rest.
    """
    kind, _, rest = port.partition(":")
    if kind == "haproxy":
        return f"haproxy:{portDescription(rest)}"
    if port.isascii() and port.isdigit():
        port = f"tcp:{int(port)}:interface={quoteStringArgument('127.0.0.1')}"
    kind = port.split(":", 1)[0]
    if kind in _BACKLOG_TYPES and "backlog=" not in port:
        port = f"{port}:backlog={DEFAULT_BACKLOG}"
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"not a number of seconds: {value!r}")
    return seconds


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError(f"not a count: {value!r}")
    return count


def _positiveSeconds(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError("must be more than 0")
    return seconds


def _microseconds(value: str) -> float:
    microseconds = float(value)
    if not 0 <= microseconds <= 1_000_000:
        raise ValueError(f"not a number of microseconds (0 to 1000000): {value!r}")
    return microseconds


def _workerCount(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 256:
        raise ValueError(f"not a number of workers (1 to 256): {value!r}")
    return count


def _portRange(value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if (
        not sep
        or not value.isascii()
        or not low.isdigit()
        or not high.isdigit()
        or not 0 < int(low) <= int(high) <= 65535
    ):
        raise ValueError(f"not a port range LOW-HIGH: {value!r}")
    return int(low), int(high)


_seconds.coerceDoc = "Seconds; 0 turns it off."  # type: ignore[attr-defined]
_positiveSeconds.coerceDoc = "Seconds."  # type: ignore[attr-defined]
_count.coerceDoc = "0 means no limit."  # type: ignore[attr-defined]
_microseconds.coerceDoc = "Microseconds; 0 turns it off."  # type: ignore[attr-defined]


class Options(usage.Options, strcred.AuthOptionMixin):
    """Options of C{twistd socks5}."""

    synopsis = "[options]"
    longdesc = (
        "A SOCKS5 proxy server (RFC 1928, RFC 1929). With no options it serves "
        "clients without authentication on 127.0.0.1:1080. Give --auth to require "
        "a username and password (RFC 1929), e.g. --auth file:/etc/txsocks5.users "
        "or --auth memory:alice:secret; see --help-auth."
    )
    supportedInterfaces = [IUsernamePassword]

    optParameters = [
        ["negotiate-timeout", None, 30.0, "Seconds to complete greeting, login and request.", _seconds],
        ["connect-timeout", None, 30.0, "Seconds a CONNECT may take, resolution included.", _positiveSeconds],
        ["idle-timeout", None, 0.0, "Seconds a tunnel may carry no data before it is closed.", _seconds],
        ["fin-wait-timeout", None, 120.0, "Seconds a tunnel may stay half-closed.", _seconds],
        ["max-connections", None, 0, "Clients served at once; more are refused at accept.", _count],
        ["bind-timeout", None, 120.0, "Seconds a BIND waits for its peer to connect.", _seconds],
        ["bind-port-range", None, None, "LOW-HIGH: take BIND listening ports from this range.", _portRange],
        ["udp-advertise", None, None, "Address to put in UDP ASSOCIATE replies (e.g. a public address)."],
        ["udp-port-range", None, None, "LOW-HIGH: take UDP relay ports from this range.", _portRange],
        ["udp-idle-timeout", None, 300.0, "Seconds a UDP association may relay nothing.", _seconds],
        ["max-udp-associations", None, 1024, "UDP associations open at once.", _count],
        ["max-udp-per-client", None, 16, "UDP associations open at once per client address.", _count],
        ["max-udp-per-user", None, 0, "UDP associations open at once per logged-in user.", _count],
        [
            "max-connections-per-client",
            None,
            0,
            "Clients served at once from one address; more are refused at accept.",
            _count,
        ],
        [
            "login-attempts",
            None,
            5,
            "Failed logins in a row from one address before its logins are refused for a while.",
            _count,
        ],
        [
            "login-lockout",
            None,
            60.0,
            "Seconds logins are refused after too many failures (doubling for repeat offenders).",
            _positiveSeconds,
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the (TCP) ports; each serves its clients fully.",
            _workerCount,
        ],
        [
            "session-log-delay",
            None,
            0.1,
            "Log finished sessions in batches, each at most this many seconds after it ended "
            "(cheaper per line); 0 logs each at once.",
            _seconds,
        ],
        [
            "busy-poll",
            None,
            0.0,
            "Poll for up to this long without sleeping before waiting for events, while events come "
            "that soon: lower latency (on a VM, half) for more CPU time. Needs txsocks5's reactor.",
            _microseconds,
        ],
    ]
    compData = usage.Completions(optActions={"bind-check": usage.CompleteList(PeerCheck.ALL)})

    optFlags = [
        ["allow-no-auth", None, "With --auth, also let clients in without authentication."],
        [
            "no-session-log",
            None,
            "Do not log a line per finished session (under twistd's text log that line is a sixth "
            "of the CPU a short connection costs).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["arguments"] = []
        self["inherited"] = []
        self["ports"] = []
        self["methods"] = []
        self["bind-check"] = PeerCheck.ADDRESS
        self["client-rules"] = []
        self["request-rules"] = []

    def opt_port(self, description: str) -> None:
        """Where to listen: an endpoint description (tcp6:1080, ssl:1080:privateKey=key.pem, ...) or a bare port number on 127.0.0.1. Repeatable. [default: 1080]"""  # noqa: E501
        self["ports"].append(portDescription(description))

    opt_p = opt_port

    def opt_inherited_port(self, value: str) -> None:
        """(Internal, for --workers) Serve on an inherited listening socket: FD:FAMILY."""
        fd, _, family = value.partition(":")
        if not value.isascii() or not fd.isdigit() or not family.isdigit():
            raise usage.UsageError(f"--inherited-port {value}: expected FD:FAMILY")
        self["inherited"].append((int(fd), int(family)))

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse C{options}, keeping them for the workers of C{--workers}."""
        if options is None:
            import sys

            options = sys.argv[1:]
        self["arguments"] = list(options)
        super().parseOptions(options)

    def opt_bind_check(self, check: str) -> None:
        """Who may connect to a BIND: address (DST.ADDR, unless zeros), port (DST.ADDR and DST.PORT), or none (anyone). [default: address]"""  # noqa: E501
        if check not in PeerCheck.ALL:
            raise usage.UsageError(f"--bind-check: one of {', '.join(PeerCheck.ALL)}")
        self["bind-check"] = check

    def _clientRule(self, allow: bool, option: str, value: str) -> None:
        try:
            clients = parseClients(value)
        except RuleError as e:
            raise usage.UsageError(f"--{option} {value}: {e}") from None
        self["client-rules"].append(Rule(allow, f"--{option} {value}", clients=clients))

    def _requestRule(self, allow: bool, option: str, value: str) -> None:
        try:
            destination = parseDestination(value)
        except RuleError as e:
            raise usage.UsageError(f"--{option} {value}: {e}") from None
        self["request-rules"].append(Rule(allow, f"--{option} {value}", destinations=(destination,)))

    def opt_allow_client(self, network: str) -> None:
        """Serve clients from this network (CIDR or address, or any); with any such rule, other clients are refused. Repeatable, in order with --deny-client."""  # noqa: E501
        self._clientRule(True, "allow-client", network)

    def opt_deny_client(self, network: str) -> None:
        """Refuse clients from this network (CIDR or address, or any) at accept. Repeatable, in order with --allow-client."""  # noqa: E501
        self._clientRule(False, "deny-client", network)

    def opt_allow_destination(self, spec: str) -> None:
        """Allow requests to SPEC: a CIDR or address, a name pattern (example.com, .example.com), or any; optionally :PORT or :LOW-HIGH. With any such rule, other destinations are denied. Repeatable, in order."""  # noqa: E501
        self._requestRule(True, "allow-destination", spec)

    def opt_deny_destination(self, spec: str) -> None:
        """Deny requests to SPEC (as for --allow-destination) with REP 0x02. Repeatable, in order."""
        self._requestRule(False, "deny-destination", spec)

    def opt_rules(self, path: str) -> None:
        """Read client and request rules from a rules file (see the README); they go in order with the rule options."""  # noqa: E501
        try:
            clientRules, requestRules = parseRulesFile(path)
        except OSError as e:
            raise usage.UsageError(f"--rules {path}: {e.strerror or e}") from None
        except RuleError as e:
            raise usage.UsageError(f"--rules {e}") from None
        except UnicodeDecodeError as e:
            raise usage.UsageError(f"--rules {path}: not UTF-8 text ({e.reason})") from None
        self["client-rules"].extend(clientRules)
        self["request-rules"].extend(requestRules)

    def opt_auth(self, description: str) -> None:
        """Check usernames and passwords with a twisted.cred checker: memory:USER:PASSWORD[:USER:PASSWORD...], file:PATH, htpasswd:PATH (bcrypt), ... (see --help-auth). Repeatable."""  # noqa: E501
        try:
            super().opt_auth(description)
        except usage.UsageError as e:
            # Name the checker type only: the rest may be a password.
            message = str(e).removeprefix("Unexpected error: ")
            raise usage.UsageError(f"--auth {description.split(':', 1)[0]}: {message}") from None

    def opt_method(self, name: str) -> None:
        """Offer an authentication method by name (username, none, ...), most preferred first. Repeatable. [default: username with --auth, none without]"""  # noqa: E501
        available = availableAuthenticators()
        if name not in available:
            raise usage.UsageError(f"unknown method {name!r}; available: {', '.join(sorted(available))}")
        self["methods"].append(available[name])

    def postOptions(self) -> None:
        """
        Check the options and fill in defaults.

        Unless a reactor is installed already (C{twistd --reactor=...}, or
        a program that imported one), this installs txsocks5's faster epoll
        reactor (see L{txsocks5._fastpath}).
        """
        installFastReactor()
        from twisted.internet import reactor

        if not self["ports"]:
            self["ports"].append(portDescription(DEFAULT_PORT))
        endpoints: list[IStreamServerEndpoint] = []
        if self["inherited"]:
            # A worker of --workers: serve the parent's sockets.
            endpoints = [AdoptedStreamServerEndpoint(reactor, fd, family) for fd, family in self["inherited"]]
        else:
            for description in self["ports"]:
                kind, _, rest = description.partition(":")
                try:
                    if kind == "haproxy":
                        # Clients are admitted by the address the PROXY header names.
                        endpoint = ProxyProtocolEndpoint(serverFromString(reactor, rest))
                    else:
                        endpoint = serverFromString(reactor, description)
                except Exception as e:
                    raise usage.UsageError(f"--port {description}: {e}") from None
                if self["workers"] > 1 and not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
                    raise usage.UsageError(
                        f"--port {description}: --workers serves tcp: and tcp6: ports only"
                    )
                endpoints.append(endpoint)
        self["endpoints"] = endpoints
        advertise = self["udp-advertise"]
        if advertise is not None:
            try:
                ipaddress.ip_address(advertise)
            except ValueError:
                raise usage.UsageError(f"--udp-advertise {advertise}: not an IP address") from None

        checkers = self.get("credCheckers", [])
        for checker in checkers:
            if isinstance(checker, FilePasswordDB) and not os.access(checker.filename, os.R_OK):
                raise usage.UsageError(f"--auth file:{checker.filename}: cannot read the file")
        methods = self["methods"]
        if not methods:
            available = availableAuthenticators()
            methods.append(available["username" if checkers else "none"])
            if checkers and self["allow-no-auth"]:
                methods.append(available["none"])
        elif self["allow-no-auth"]:
            raise usage.UsageError("--allow-no-auth and --method do not mix: list the methods")
        if any(m.usesCredentials for m in methods) and not checkers:
            raise usage.UsageError("username/password authentication needs --auth")
        if checkers and not any(m.usesCredentials for m in methods):
            raise usage.UsageError("--auth is given but no method offered uses it")


def _ruleSet(options: Options | dict[str, Any]) -> RuleSet:
    return RuleSet(options.get("client-rules", ()), options.get("request-rules", ()))


def makeService(options: Options | dict[str, Any]) -> IService:
    """
    Build the service that C{twistd socks5} runs from parsed L{Options}: a
    L{MultiService} holding the L{SOCKS5Service} (named C{"socks5"}) and,
    when a checker can read its data again, a L{HangupService} that does so
    on SIGHUP; or, with C{--workers}, one holding the L{WorkerPool} and a
    L{HangupService} that passes SIGHUP on to the workers.
    """
    from twisted.internet import reactor

    raiseFileLimit(reactor)
    if not reactor.running:  # twistd, not a program that runs already
        # Once started, the objects made so far (modules, plugins, the
        # service) live as long as the process: moving them out of the
        # collector's sight makes its full collections shorter.
        reactor.callWhenRunning(gc.freeze)
    if options.get("workers", 1) > 1:
        pool = MultiService()
        methods, rules = options["methods"], _ruleSet(options)
        workers = WorkerPool(
            options["endpoints"],
            options["workers"],
            workerArguments(options["arguments"]),
            check=lambda ports: openProxyProblem(methods, rules, ports),
        )
        HangupService(
            reactor, [lambda: workers.signalWorkers("HUP")], "passing it on to the workers"
        ).setServiceParent(pool)
        workers.setServiceParent(pool)
        return pool
    if options.get("inherited"):
        WorkerLifetime(reactor).start()
    busyPoll = options.get("busy-poll", 0.0)
    if busyPoll:
        if FastEPollReactor is not None and isinstance(reactor, FastEPollReactor):
            reactor.setBusyPolling(busyPoll / 1e6)
            log.info(
                "Polling for up to {microseconds:g} µs before each wait for events", microseconds=busyPoll
            )
        else:
            log.warn(
                "--busy-poll needs txsocks5's reactor, not {reactor}: not polling busily",
                reactor=type(reactor).__name__,
            )

    factory = SOCKS5Factory(
        authenticators=options["methods"],
        checkers=options.get("credCheckers", []),
        reactor=reactor,
        negotiateTimeout=options["negotiate-timeout"] or None,
        connectTimeout=options["connect-timeout"],
        idleTimeout=options["idle-timeout"] or None,
        finWaitTimeout=options["fin-wait-timeout"] or None,
        maxConnections=options["max-connections"] or None,
        bindTimeout=options["bind-timeout"] or None,
        bindCheck=options["bind-check"],
        bindPortRange=options["bind-port-range"],
        udpAdvertise=options["udp-advertise"],
        udpPortRange=options["udp-port-range"],
        udpIdleTimeout=options["udp-idle-timeout"] or None,
        maxUDPAssociations=options["max-udp-associations"] or None,
        maxUDPAssociationsPerClient=options["max-udp-per-client"] or None,
        maxUDPAssociationsPerUser=options["max-udp-per-user"] or None,
        maxConnectionsPerClient=options["max-connections-per-client"] or None,
        rules=_ruleSet(options),
        maxLoginFailures=options["login-attempts"],
        loginLockout=options["login-lockout"],
        logSessions=not options.get("no-session-log"),
        sessionLogDelay=options.get("session-log-delay", 0.0),
    )
    top = MultiService()
    reload = reloaders(factory.checkers)
    if reload or options.get("inherited"):  # A worker gets the parent's SIGHUP passed on.
        # First: it handles SIGHUP before the server says it serves.
        what = "reading the credentials again" if reload else "nothing to read again"
        HangupService(reactor, reload, what).setServiceParent(top)
    SOCKS5Service(factory, options["endpoints"], exitOnListenFailure=True).setServiceParent(top)
    return top
