"""
Access rules, in two stages like Dante's C{sockd.conf}: I{client} rules
decide at accept who may talk to the server at all; I{request} rules decide
what an admitted client may ask for (by user, command, destination name,
network and port).  In each stage the first rule that matches wins.

Destinations in some ranges are protected by default (see L{PROTECTED}):
link-local (cloud metadata included), unspecified, multicast and broadcast
addresses for everyone, and this host's loopback for clients that are not
on loopback themselves.  A broad allow rule (C{any}, C{0.0.0.0/0}, a name
pattern) does not open them; only an allow rule whose network lies inside
the protected range does (C{--allow-destination 169.254.169.254}).

Rules come from the command line (C{--allow-client}, C{--deny-client},
C{--allow-destination}, C{--deny-destination}) or a rules file, one rule a
line (see L{parseRuleLine} and the README)::

    client allow from 10.0.0.0/8
    deny to .internal.example.com log
    allow user alice to any
    allow command connect to any:443
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from zope.interface import implementer

from txsocks5.interfaces import AccessRequest, IRuleSet, Verdict

__all__ = [
    "COMMANDS",
    "PROTECTED",
    "DestinationSpec",
    "Network",
    "Rule",
    "RuleError",
    "RuleSet",
    "parseDestination",
    "parseNetwork",
    "parseRuleLine",
    "parseRulesFile",
    "isLoopback",
]

#: The command names request rules use.
COMMANDS = frozenset({"connect", "bind", "udp"})

_ACTIONS = {"allow": True, "pass": True, "deny": False, "block": False}


class RuleError(ValueError):
    """A rule (or a part of one) that cannot be understood; the message says why."""


def _ipKey(host: str) -> tuple[int, int] | None:
    """
    C{(4 or 6, integer value)} for an IP literal, with IPv4-mapped IPv6
    addresses taken as the IPv4 address they are; C{None} if C{host} is
    not an IP literal.
    """
    try:
        if ":" in host:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), "big")
            if value >> 32 == 0xFFFF:
                return 4, value & 0xFFFFFFFF
            return 6, value
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Network:
    """An IPv4 or IPv6 network (CIDR), matched against IP literals."""

    version: int
    value: int
    prefix: int

    @cached_property
    def _mask(self) -> int:
        bits = 32 if self.version == 4 else 128
        return ((1 << self.prefix) - 1) << (bits - self.prefix)

    def containsKey(self, key: tuple[int, int]) -> bool:
        """Whether the address with L{_ipKey} C{key} is in this network."""
        return key[0] == self.version and key[1] & self._mask == self.value

    def contains(self, host: str) -> bool:
        """Whether the IP literal C{host} is in this network (never for a name)."""
        key = _ipKey(host)
        return key is not None and self.containsKey(key)

    def within(self, other: Network) -> bool:
        """Whether every address of this network is in C{other}."""
        return (
            self.version == other.version
            and self.prefix >= other.prefix
            and self.value & other._mask == other.value
        )

    def __str__(self) -> str:
        family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        size = 4 if self.version == 4 else 16
        return f"{socket.inet_ntop(family, self.value.to_bytes(size, 'big'))}/{self.prefix}"


def parseNetwork(text: str) -> Network:
    """
    A network from C{ADDRESS} or C{ADDRESS/PREFIX} (IPv4 or IPv6, IPv6
    optionally in brackets).

    @raise RuleError: if C{text} is not one, or has host bits set (a typo
        that would otherwise match more or less than meant).
    """
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    address, slash, prefixText = inner.partition("/")
    key = _ipKey(address) if address and "%" not in address else None
    if key is None:
        raise RuleError(f"{text!r} is not an IP address or network")
    if ":" in address and key[0] == 4:
        raise RuleError(f"{text!r}: write IPv4-mapped addresses as IPv4 (they are matched as IPv4)")
    bits = 32 if key[0] == 4 else 128
    if slash:
        if not (prefixText.isascii() and prefixText.isdigit()) or not 0 <= int(prefixText) <= bits:
            raise RuleError(f"{text!r}: the prefix length must be 0 to {bits}")
        prefix = int(prefixText)
    else:
        prefix = bits
    network = Network(key[0], key[1], prefix)
    if key[1] & network._mask != key[1]:
        fixed = Network(key[0], key[1] & network._mask, prefix)
        raise RuleError(f"{text!r} has host bits set; did you mean {fixed}?")
    return network


_ANY4 = Network(4, 0, 0)
_ANY6 = Network(6, 0, 0)


def parseClients(text: str) -> tuple[Network, ...]:
    """Client networks from C{any} (every IPv4 and IPv6 address) or one network."""
    if text in ("any", "*"):
        return (_ANY4, _ANY6)
    return (parseNetwork(text),)


def isLoopback(host: str | None) -> bool:
    """Whether C{host} is a loopback address; C{None} (a UNIX socket) counts as local."""
    if host is None:
        return True
    key = _ipKey(host)
    return key is not None and (_LOOPBACK4.containsKey(key) or _LOOPBACK6.containsKey(key))


def _nameValid(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and ".." not in name


@dataclass(frozen=True)
class DestinationSpec:
    """
    What a request rule's destination matches: any host, a network, or a
    host name pattern, each optionally limited to a port range.

    Name patterns: C{example.com} is that name only; C{.example.com} is
    that name and every name under it; C{*.example.com} is only the names
    under it.  Names match case-insensitively; a name pattern never
    matches a destination given as an IP address, and a network never
    matches a name until it is resolved.

    @ivar text: the spec as written.
    """

    text: str
    network: Network | None = None
    pattern: str | None = None
    ports: tuple[int, int] | None = None

    def matches(self, request: AccessRequest) -> bool | None:
        """Whether C{request}'s destination matches; C{None} if that is not known yet."""
        if self.ports is not None:
            if request.port is None:
                return None
            low, high = self.ports
            if not low <= request.port <= high:
                return False
        if self.pattern is not None:
            if request.name is None:
                return False if request.address is not None else None
            return _nameMatches(self.pattern, request.name)
        if self.network is not None:
            if request.address is None:
                return None
            return self.network.contains(request.address)
        return True


def _nameMatches(pattern: str, name: str) -> bool:
    name = name.rstrip(".").lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    if pattern.startswith("."):
        return name == pattern[1:] or name.endswith(pattern)
    return name == pattern


def _parsePorts(text: str, spec: str) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    if not dash:
        high = low
    if not (text.isascii() and low.isdigit() and high.isdigit()) or not 0 <= int(low) <= int(high) <= 65535:
        raise RuleError(f"{spec!r}: {text!r} is not a port or a range LOW-HIGH (0-65535)")
    return int(low), int(high)


def parseDestination(text: str) -> DestinationSpec:
    """
    A destination from C{HOST[:PORTS]}: C{HOST} is C{any} (or C{*}, or
    nothing: C{:25}), an IP address or CIDR network (IPv6 in brackets when
    a port follows: C{[2001:db8::/32]:443}), or a name pattern
    (C{example.com}, C{.example.com}, C{*.example.com}); C{PORTS} is C{N}
    or C{LOW-HIGH}.

    @raise RuleError: if C{text} is none of these.
    """
    if not text:
        raise RuleError("an empty destination")
    host, ports = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RuleError(f"{text!r}: no closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise RuleError(f"{text!r}: expected ':PORT' after ']'")
            ports = _parsePorts(rest[1:], text)
        return DestinationSpec(text, network=parseNetwork(host), ports=ports)
    if text.count(":") == 1:
        host, portText = text.split(":")
        ports = _parsePorts(portText, text)
    if host in ("", "any", "*"):
        return DestinationSpec(text, ports=ports)
    first = host.split("/", 1)[0]
    if ":" in host or "/" in host or _ipKey(first) is not None or first.replace(".", "").isdigit():
        return DestinationSpec(text, network=parseNetwork(host), ports=ports)
    pattern = host.lower().rstrip(".")
    name = pattern[2:] if pattern.startswith("*.") else pattern.lstrip(".")
    if pattern.count(".") == len(pattern) or not _nameValid(name):
        raise RuleError(f"{text!r} is not an address, network or host name pattern")
    if not name.isascii():
        # Clients send international names as IDNA (xn--...): match them so.
        try:
            encoded = name.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise RuleError(f"{text!r} is not a valid international host name ({e})") from None
        pattern = pattern[: len(pattern) - len(name)] + encoded
    return DestinationSpec(text, pattern=pattern, ports=ports)


@dataclass(frozen=True)
class Rule:
    """
    One rule: allow or deny what matches every condition it has.

    @ivar allow: allow (C{True}) or deny what matches.
    @ivar source: where the rule was written, for log lines (an option and
        its value, or C{FILE:LINE}).
    @ivar clients: client networks; empty for any client.
    @ivar users: user names; C{None} for anyone (a rule naming users never
        matches a client that did not log in).
    @ivar commands: some of L{COMMANDS}; C{None} for any.
    @ivar destinations: empty for any destination.
    @ivar log: log every request (or client) this rule decides.
    """

    allow: bool
    source: str
    clients: tuple[Network, ...] = ()
    users: frozenset[str] | None = None
    commands: frozenset[str] | None = None
    destinations: tuple[DestinationSpec, ...] = ()
    log: bool = False

    def matchesClient(self, client: str | None) -> bool:
        """Whether the client address C{client} meets this rule's client condition."""
        if not self.clients:
            return True
        if client is None:
            return False
        key = _ipKey(client)
        return key is not None and any(n.containsKey(key) for n in self.clients)

    def matches(self, request: AccessRequest) -> bool | None:
        """Whether C{request} meets every condition; C{None} if that depends on what is not known yet."""
        if not self.matchesClient(request.client):
            return False
        if self.users is not None and request.user not in self.users:
            return False
        if self.commands is not None and request.command not in self.commands:
            return False
        if not self.destinations:
            return True
        undecided = False
        for destination in self.destinations:
            matched = destination.matches(request)
            if matched:
                return True
            if matched is None:
                undecided = True
        return None if undecided else False

    def opens(self, protected: Network, request: AccessRequest) -> bool:
        """
        Whether this rule opens C{protected} to C{request}: a destination of
        it that matches the request is a network inside C{protected}.
        """
        return any(
            d.network is not None and d.network.within(protected) and d.matches(request)
            for d in self.destinations
        )


@dataclass(frozen=True)
class Protection:
    """A range of destinations denied unless a rule explicitly allows it."""

    network: Network
    label: str
    loopbackClientsExempt: bool = False


_LOOPBACK4 = parseNetwork("127.0.0.0/8")
_LOOPBACK6 = parseNetwork("::1")

#: The destinations denied by default, and why.
PROTECTED: tuple[Protection, ...] = (
    Protection(parseNetwork("169.254.0.0/16"), "link-local (cloud metadata)"),
    Protection(parseNetwork("fe80::/10"), "link-local"),
    Protection(parseNetwork("fd00:ec2::254"), "cloud metadata"),
    Protection(parseNetwork("100.100.100.200"), "cloud metadata"),
    Protection(parseNetwork("0.0.0.0/8"), "unspecified"),
    Protection(parseNetwork("::"), "unspecified"),
    Protection(parseNetwork("224.0.0.0/4"), "multicast"),
    Protection(parseNetwork("ff00::/8"), "multicast"),
    Protection(parseNetwork("255.255.255.255"), "broadcast"),
    Protection(_LOOPBACK4, "loopback", loopbackClientsExempt=True),
    Protection(_LOOPBACK6, "loopback", loopbackClientsExempt=True),
)

#: L{PROTECTED} by IP version, as C{(mask, network value, protection)}: a
#: request's destination is checked against these on every CONNECT.
_PROTECTED_BY_VERSION: dict[int, list[tuple[int, int, Protection]]] = {
    version: [(p.network._mask, p.network.value, p) for p in PROTECTED if p.network.version == version]
    for version in (4, 6)
}

_ADMITTED = Verdict(True, "no client rules")


@implementer(IRuleSet)
class RuleSet:
    """
    Client and request rules, first match wins in each stage.

    When no rule of a stage matches, the stage allows, unless it has an
    allow rule: then what is not allowed is denied.

    @param clientRules: decide at accept (only their client condition and
        action count).
    @param requestRules: decide each request, and each UDP datagram's
        destination.
    @param protect: deny L{PROTECTED} destinations unless a rule opens them.
    """

    def __init__(
        self,
        clientRules: Sequence[Rule] = (),
        requestRules: Sequence[Rule] = (),
        protect: bool = True,
    ) -> None:
        self.clientRules = tuple(clientRules)
        self.requestRules = tuple(requestRules)
        self.protect = protect
        self._clientDefault = Verdict(not any(r.allow for r in self.clientRules), "no client rule matched")
        self._requestDefault = Verdict(not any(r.allow for r in self.requestRules), "no request rule matched")

    def admitClient(self, client: str | None) -> Verdict:
        """See L{IRuleSet.admitClient}."""
        if not self.clientRules or client is None:
            return _ADMITTED
        for rule in self.clientRules:
            if rule.matchesClient(client):
                return Verdict(rule.allow, f"rule {rule.source}", rule.log)
        return self._clientDefault

    def checkRequest(self, request: AccessRequest) -> Verdict | None:
        """See L{IRuleSet.checkRequest}."""
        protection = self._protection(request)
        # A rule that may match once more is known (a network, for a name not
        # yet resolved) leaves the verdict open if it allows; if it denies,
        # a later deny still denies whatever the address turns out to be.
        undecidedDeny = False
        for rule in self.requestRules:
            matched = rule.matches(request)
            if matched is False:
                continue
            if matched is None:
                if rule.allow:
                    return None
                undecidedDeny = True
                continue
            if protection is not None and rule.allow and not rule.opens(protection.network, request):
                continue  # A broad allow does not open a protected range.
            if rule.allow and undecidedDeny:
                return None
            return Verdict(rule.allow, f"rule {rule.source}", rule.log)
        if protection is not None:
            return Verdict(False, f"{protection.label} destination {protection.network} is protected")
        if undecidedDeny and self._requestDefault.allowed:
            return None
        return self._requestDefault

    def _protection(self, request: AccessRequest) -> Protection | None:
        if not self.protect or request.address is None:
            return None
        key = _ipKey(request.address)
        if key is None:
            return None
        if request.command == "bind" and key[1] == 0:
            return None  # BIND's DST.ADDR of zeros means "any peer", not a destination.
        version, value = key
        for mask, network, protection in _PROTECTED_BY_VERSION[version]:
            if value & mask == network:
                if protection.loopbackClientsExempt and isLoopback(request.client):
                    return None
                return protection
        return None

    def describe(self) -> str:
        """How many rules of each stage there are, for the start-up log line."""
        counts = f"{len(self.clientRules)} client, {len(self.requestRules)} request"
        return f"{counts}; protected destinations {'denied' if self.protect else 'open'}"


# -- the rules file -----------------------------------------------------------


def _split(value: str, what: str) -> list[str]:
    items = value.split(",")
    if not all(items):
        raise RuleError(f"an empty item in the {what} list {value!r}")
    return items


def parseRuleLine(line: str, source: str) -> tuple[Literal["client", "request"], Rule] | None:
    """
    One line of a rules file: C{None} for a blank line or a comment,
    otherwise the stage and the rule.  The grammar::

        [client] allow|deny [from NETS] [user NAMES] [command CMDS] [to DESTS] [log]

    Lists are comma-separated; C{client} rules take only C{from} and C{log}.

    @raise RuleError: naming what is wrong.
    """
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    words = " ".join(text.split()).replace(" ,", ",").replace(", ", ",").split(" ")
    stage: Literal["client", "request"] = "request"
    if words[0] == "client":
        stage = "client"
        words = words[1:]
    if not words or words[0] not in _ACTIONS:
        raise RuleError(f"expected allow or deny, found {' '.join(words[:1]) or 'nothing'!r}")
    allow = _ACTIONS[words[0]]
    fields: dict[str, str] = {}
    log = False
    index = 1
    allowed = ("from",) if stage == "client" else ("from", "user", "command", "to")
    while index < len(words):
        word = words[index]
        if word == "log":
            log = True
            index += 1
            continue
        key = {"users": "user", "commands": "command"}.get(word, word)
        if key not in allowed:
            raise RuleError(f"unknown word {word!r} (expected {', '.join(allowed)} or log)")
        if key in fields:
            raise RuleError(f"{key!r} given twice")
        if index + 1 >= len(words):
            raise RuleError(f"{word!r} needs a value")
        fields[key] = words[index + 1]
        index += 2
    clients: tuple[Network, ...] = ()
    if "from" in fields:
        clients = tuple(n for item in _split(fields["from"], "client") for n in parseClients(item))
    users = frozenset(_split(fields["user"], "user")) if "user" in fields else None
    commands = None
    if "command" in fields:
        commands = frozenset(_split(fields["command"], "command"))
        unknown = commands - COMMANDS
        if unknown:
            raise RuleError(f"unknown command {sorted(unknown)[0]!r} (expected connect, bind or udp)")
    destinations: tuple[DestinationSpec, ...] = ()
    if "to" in fields:
        destinations = tuple(parseDestination(item) for item in _split(fields["to"], "destination"))
    return stage, Rule(allow, source, clients, users, commands, destinations, log)


def parseRulesFile(path: str, lines: Iterable[str] | None = None) -> tuple[list[Rule], list[Rule]]:
    """
    The client rules and request rules in the rules file at C{path}.

    @param lines: the file's lines, if already read.
    @raise RuleError: naming the file and line of the first bad rule.
    @raise OSError: if the file cannot be read.
    """
    if lines is None:
        with open(path, encoding="utf-8-sig") as f:  # A byte order mark is not a rule.
            lines = f.read().splitlines()
    clientRules: list[Rule] = []
    requestRules: list[Rule] = []
    for number, line in enumerate(lines, 1):
        source = f"{path}:{number}"
        try:
            parsed = parseRuleLine(line, source)
        except RuleError as e:
            raise RuleError(f"{source}: {e}") from None
        if parsed is not None:
            stage, rule = parsed
            (clientRules if stage == "client" else requestRules).append(rule)
    return clientRules, requestRules
