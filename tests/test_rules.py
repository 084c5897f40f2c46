"""
Tests for L{txsocks5.rules}: parsing rules and matching requests against
them, without sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txsocks5.interfaces import AccessRequest, IRuleSet
from txsocks5.rules import (
    PROTECTED,
    Rule,
    RuleError,
    RuleSet,
    isLoopback,
    parseDestination,
    parseNetwork,
    parseRuleLine,
    parseRulesFile,
)

REMOTE = "198.51.100.7"


def connect(
    address: str | None = None,
    port: int | None = 80,
    name: str | None = None,
    client: str | None = REMOTE,
    user: str | None = None,
    command: str = "connect",
) -> AccessRequest:
    """A request to check."""
    return AccessRequest(client, user, command, name=name, address=address, port=port)


def ruleSet(*lines: str) -> RuleSet:
    """A rule set from rules-file lines."""
    clients, requests = parseRulesFile("test.rules", lines)
    return RuleSet(clients, requests)


class NetworkTests(SynchronousTestCase):
    """L{parseNetwork} and L{Network} matching."""

    def test_addressesAndNetworks(self) -> None:
        self.assertEqual(str(parseNetwork("10.0.0.0/8")), "10.0.0.0/8")
        self.assertEqual(str(parseNetwork("192.0.2.1")), "192.0.2.1/32")
        self.assertEqual(str(parseNetwork("2001:db8::/32")), "2001:db8::/32")
        self.assertEqual(str(parseNetwork("[2001:db8::1]")), "2001:db8::1/128")
        self.assertEqual(str(parseNetwork("0.0.0.0/0")), "0.0.0.0/0")

    def test_mistakesAreErrors(self) -> None:
        for text in ("10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/x", "host", "", "::ffff:10.0.0.0/104", "1.2.3"):
            with self.assertRaises(RuleError, msg=text):
                parseNetwork(text)

    def test_hostBitsSuggestion(self) -> None:
        with self.assertRaises(RuleError) as caught:
            parseNetwork("10.1.2.3/8")
        self.assertIn("did you mean 10.0.0.0/8", str(caught.exception))

    def test_mappedAddressesMatchAsIPv4(self) -> None:
        network = parseNetwork("169.254.0.0/16")
        self.assertTrue(network.contains("::ffff:169.254.169.254"))
        self.assertTrue(network.contains("169.254.169.254"))
        self.assertFalse(network.contains("fe80::1"))
        self.assertFalse(network.contains("example.com"))

    @given(
        st.ip_addresses(),
        st.integers(min_value=0, max_value=128),
        st.ip_addresses(),
    )
    def test_containsAgreesWithIpaddress(
        self, base: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int, probe: object
    ) -> None:
        """Membership is what the standard library says, for any network and address."""
        prefix = min(prefix, base.max_prefixlen)
        expected = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
        # IPv4-mapped networks are written as IPv4 (parseNetwork says so).
        assume(not (isinstance(expected, ipaddress.IPv6Network) and expected.network_address.ipv4_mapped))
        network = parseNetwork(str(expected))
        assert isinstance(probe, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        inStdlib = probe.version == expected.version and probe in expected
        if isinstance(probe, ipaddress.IPv6Address) and probe.ipv4_mapped is not None:
            mapped = probe.ipv4_mapped
            inStdlib = expected.version == 4 and mapped in expected
        self.assertEqual(network.contains(str(probe)), inStdlib)

    @given(st.text(max_size=50))
    def test_onlyRuleErrors(self, text: str) -> None:
        """No text makes the parsers raise anything but L{RuleError}."""
        for parse in (parseNetwork, parseDestination):
            with contextlib.suppress(RuleError):
                parse(text)

    @given(st.text(alphabet="0123456789abcxyz.:/-[]*, ²٣\u00e9", max_size=40))
    def test_onlyRuleErrorsNearMisses(self, text: str) -> None:
        """Text made of the characters rules use (and other scripts' digits) raises only L{RuleError}."""
        for parse in (parseNetwork, parseDestination):
            with contextlib.suppress(RuleError):
                parse(text)
        for line in (f"allow to {text}", f"deny from {text}", f"client allow from {text} log", text):
            with contextlib.suppress(RuleError):
                parseRuleLine(line, "f:1")

    def test_within(self) -> None:
        self.assertTrue(parseNetwork("169.254.169.254").within(parseNetwork("169.254.0.0/16")))
        self.assertFalse(parseNetwork("0.0.0.0/0").within(parseNetwork("169.254.0.0/16")))
        self.assertFalse(parseNetwork("::1").within(parseNetwork("127.0.0.0/8")))


class DestinationTests(SynchronousTestCase):
    """L{parseDestination}."""

    def test_forms(self) -> None:
        spec = parseDestination("10.0.0.0/8:443")
        self.assertEqual((str(spec.network), spec.ports), ("10.0.0.0/8", (443, 443)))
        spec = parseDestination("[2001:db8::/32]:1000-2000")
        self.assertEqual((str(spec.network), spec.ports), ("2001:db8::/32", (1000, 2000)))
        spec = parseDestination("2001:db8::1")
        self.assertEqual((str(spec.network), spec.ports), ("2001:db8::1/128", None))
        spec = parseDestination(".Example.COM.")
        self.assertEqual((spec.pattern, spec.ports), (".example.com", None))
        spec = parseDestination(":25")
        self.assertEqual((spec.network, spec.pattern, spec.ports), (None, None, (25, 25)))
        spec = parseDestination("any")
        self.assertEqual((spec.network, spec.pattern, spec.ports), (None, None, None))
        spec = parseDestination("*.example.com:80")
        self.assertEqual((spec.pattern, spec.ports), ("*.example.com", (80, 80)))

    def test_internationalNames(self) -> None:
        """A pattern in Unicode matches the IDNA form clients send."""
        spec = parseDestination(".bücher.example")
        self.assertEqual(spec.pattern, ".xn--bcher-kva.example")
        self.assertTrue(spec.matches(connect(name="www.xn--bcher-kva.example")))

    def test_mistakes(self) -> None:
        for text in ("", "a b", "10.0.0.0/8:70000", "host:2-1", "[::1", "[::1]x", "a..b", ".", "1.2.3.4.5/8"):
            with self.assertRaises(RuleError, msg=text):
                parseDestination(text)

    def test_nameMatching(self) -> None:
        suffix = parseDestination(".example.com")
        self.assertTrue(suffix.matches(connect(name="example.com")))
        self.assertTrue(suffix.matches(connect(name="a.b.EXAMPLE.com.")))
        self.assertFalse(suffix.matches(connect(name="badexample.com")))
        sub = parseDestination("*.example.com")
        self.assertFalse(sub.matches(connect(name="example.com")))
        self.assertTrue(sub.matches(connect(name="www.example.com")))
        exact = parseDestination("example.com")
        self.assertFalse(exact.matches(connect(name="www.example.com")))
        self.assertFalse(exact.matches(connect(address="192.0.2.1")))

    @given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535))
    def test_portRanges(self, a: int, b: int, port: int) -> None:
        low, high = min(a, b), max(a, b)
        spec = parseDestination(f"any:{low}-{high}")
        self.assertEqual(spec.matches(connect(address="192.0.2.1", port=port)), low <= port <= high)

    def test_unknownFactsAreUndecided(self) -> None:
        network = parseDestination("10.0.0.0/8")
        self.assertIsNone(network.matches(connect(name="example.com")))
        self.assertIsNone(network.matches(connect(port=None, command="udp")))
        self.assertIsNone(parseDestination(".example.com").matches(connect(port=None, command="udp")))


class RuleLineTests(SynchronousTestCase):
    """L{parseRuleLine} and L{parseRulesFile}."""

    def test_full(self) -> None:
        parsed = parseRuleLine(
            "allow from 10.0.0.0/8, 192.168.0.0/16 user alice,bob command connect,udp"
            " to .example.com:443 log",
            "f:1",
        )
        assert parsed is not None
        stage, rule = parsed
        self.assertEqual(stage, "request")
        self.assertTrue(rule.allow)
        self.assertTrue(rule.log)
        self.assertEqual([str(n) for n in rule.clients], ["10.0.0.0/8", "192.168.0.0/16"])
        self.assertEqual(rule.users, {"alice", "bob"})
        self.assertEqual(rule.commands, {"connect", "udp"})
        self.assertEqual([d.text for d in rule.destinations], [".example.com:443"])

    def test_clientStage(self) -> None:
        parsed = parseRuleLine("client deny from any  # everyone else", "f:2")
        assert parsed is not None
        self.assertEqual(parsed[0], "client")
        self.assertFalse(parsed[1].allow)
        self.assertEqual(len(parsed[1].clients), 2)

    def test_blankAndComments(self) -> None:
        self.assertIsNone(parseRuleLine("", "f:1"))
        self.assertIsNone(parseRuleLine("   # nothing", "f:1"))

    def test_errors(self) -> None:
        for line in (
            "permit to any",
            "allow to",
            "allow sideways 1",
            "allow to any to any",
            "allow command shell",
            "client allow to any",
            "allow from 10.0.0.0/33",
            "allow user ,",
        ):
            with self.assertRaises(RuleError, msg=line):
                parseRuleLine(line, "f:1")

    def test_fileErrorNamesTheLine(self) -> None:
        with self.assertRaises(RuleError) as caught:
            parseRulesFile("rules.conf", ["allow to any", "# fine", "deny to 10.1.0.0/8"])
        self.assertTrue(str(caught.exception).startswith("rules.conf:3: "), str(caught.exception))

    def test_byteOrderMark(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8-sig") as f:
            f.write("client allow from 127.0.0.1\r\ndeny to any\r\n")
        clients, requests = parseRulesFile(path)
        self.assertEqual((len(clients), len(requests)), (1, 1))

    def test_fileStages(self) -> None:
        clients, requests = parseRulesFile("r", ["client allow from 127.0.0.1", "deny to any", "client deny"])
        self.assertEqual([r.source for r in clients], ["r:1", "r:3"])
        self.assertEqual([r.source for r in requests], ["r:2"])


class RuleSetTests(SynchronousTestCase):
    """L{RuleSet}: first match wins, defaults, protected ranges."""

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRuleSet, RuleSet()))

    def test_noRulesAllowsOrdinaryDestinations(self) -> None:
        rules = RuleSet()
        verdict = rules.checkRequest(connect("192.0.2.1"))
        assert verdict is not None
        self.assertTrue(verdict.allowed)
        self.assertTrue(rules.admitClient(REMOTE).allowed)

    def test_protectedByDefault(self) -> None:
        rules = RuleSet()
        for address in (
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "fd00:ec2::254",
            "127.0.0.1",
            "::1",
        ):
            verdict = rules.checkRequest(connect(address))
            assert verdict is not None
            self.assertFalse(verdict.allowed, address)
            self.assertIn("protected", verdict.reason)

    def test_loopbackForLoopbackClients(self) -> None:
        rules = RuleSet()
        for client in ("127.0.0.1", "::1", None):
            for address in ("127.0.0.1", "::1", "127.1.2.3"):
                verdict = rules.checkRequest(connect(address, client=client))
                assert verdict is not None
                self.assertTrue(verdict.allowed, (client, address))
        verdict = rules.checkRequest(connect("169.254.169.254", client="127.0.0.1"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)

    def test_broadAllowDoesNotOpenProtected(self) -> None:
        rules = ruleSet("allow to any", "allow to 0.0.0.0/0", "allow to .internal")
        verdict = rules.checkRequest(connect("169.254.169.254", name="metadata.internal"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)

    def test_explicitAllowOpensProtected(self) -> None:
        rules = ruleSet("allow to 169.254.169.254:80", "allow to 127.0.0.1:8080", "deny to any")
        for address, port, allowed in (
            ("169.254.169.254", 80, True),
            ("169.254.169.254", 81, False),
            ("169.254.169.253", 80, False),
            ("127.0.0.1", 8080, True),
            ("127.0.0.1", 22, False),
            ("192.0.2.1", 80, False),
        ):
            verdict = rules.checkRequest(connect(address, port))
            assert verdict is not None
            self.assertEqual(verdict.allowed, allowed, (address, port))

    def test_denyBeforeExplicitAllow(self) -> None:
        rules = ruleSet("deny to 169.254.0.0/16", "allow to 169.254.169.254")
        verdict = rules.checkRequest(connect("169.254.169.254"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)
        self.assertEqual(verdict.reason, "rule test.rules:1")

    def test_protectionOff(self) -> None:
        verdict = RuleSet(protect=False).checkRequest(connect("169.254.169.254"))
        assert verdict is not None
        self.assertTrue(verdict.allowed)

    def test_firstMatchWins(self) -> None:
        rules = ruleSet("deny to 10.1.0.0/16 log", "allow to 10.0.0.0/8", "deny to any")
        inner = rules.checkRequest(connect("10.1.2.3"))
        outer = rules.checkRequest(connect("10.2.0.1"))
        other = rules.checkRequest(connect("192.0.2.1"))
        assert inner is not None and outer is not None and other is not None
        self.assertEqual((inner.allowed, inner.reason, inner.log), (False, "rule test.rules:1", True))
        self.assertEqual((outer.allowed, outer.reason), (True, "rule test.rules:2"))
        self.assertFalse(other.allowed)

    def test_defaults(self) -> None:
        denyOnly = ruleSet("deny to 10.0.0.0/8")
        allowOnly = ruleSet("allow to 10.0.0.0/8")
        verdict = denyOnly.checkRequest(connect("192.0.2.1"))
        assert verdict is not None
        self.assertTrue(verdict.allowed)
        verdict = allowOnly.checkRequest(connect("192.0.2.1"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)
        self.assertEqual(verdict.reason, "no request rule matched")

    def test_namesBeforeAndAfterResolution(self) -> None:
        rules = ruleSet("deny to .blocked.example", "deny to 10.0.0.0/8", "allow to any")
        before = rules.checkRequest(connect(name="www.blocked.example"))
        assert before is not None
        self.assertFalse(before.allowed)
        self.assertIsNone(rules.checkRequest(connect(name="fine.example")))
        after = rules.checkRequest(connect("10.0.0.5", name="fine.example"))
        assert after is not None
        self.assertFalse(after.allowed)
        ok = rules.checkRequest(connect("192.0.2.1", name="fine.example"))
        assert ok is not None
        self.assertTrue(ok.allowed)

    def test_users(self) -> None:
        rules = ruleSet("allow user alice", "deny")
        alice = rules.checkRequest(connect("192.0.2.1", user="alice"))
        bob = rules.checkRequest(connect("192.0.2.1", user="bob"))
        anonymous = rules.checkRequest(connect("192.0.2.1"))
        assert alice is not None and bob is not None and anonymous is not None
        self.assertEqual((alice.allowed, bob.allowed, anonymous.allowed), (True, False, False))

    def test_commands(self) -> None:
        rules = ruleSet("deny command bind,udp", "allow")
        for command, allowed in (("connect", True), ("bind", False), ("udp", False)):
            verdict = rules.checkRequest(connect("192.0.2.1", command=command))
            assert verdict is not None
            self.assertEqual(verdict.allowed, allowed, command)

    def test_udpAssociationDecidedPerDatagram(self) -> None:
        rules = ruleSet("allow to 10.0.0.0/8", "deny")
        association = AccessRequest(REMOTE, None, "udp")
        self.assertIsNone(rules.checkRequest(association))
        onlyConnect = ruleSet("allow command connect")
        verdict = onlyConnect.checkRequest(association)
        assert verdict is not None
        self.assertFalse(verdict.allowed)

    def test_bindToZerosIsNotProtected(self) -> None:
        verdict = RuleSet().checkRequest(connect("0.0.0.0", 0, command="bind"))
        assert verdict is not None
        self.assertTrue(verdict.allowed)
        verdict = RuleSet().checkRequest(connect("169.254.1.1", 0, command="bind"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)

    def test_clientRules(self) -> None:
        rules = ruleSet(
            "client deny from 10.9.0.0/16", "client allow from 10.0.0.0/8", "client allow from ::1"
        )
        self.assertFalse(rules.admitClient("10.9.1.1").allowed)
        self.assertTrue(rules.admitClient("10.1.1.1").allowed)
        self.assertTrue(rules.admitClient("::1").allowed)
        self.assertTrue(rules.admitClient("::ffff:10.1.1.1").allowed)
        self.assertFalse(rules.admitClient(REMOTE).allowed)
        self.assertTrue(rules.admitClient(None).allowed, "UNIX socket clients are local")

    def test_clientConditionOnRequestRules(self) -> None:
        rules = ruleSet("allow from 10.0.0.0/8 to any", "deny")
        inside = rules.checkRequest(connect("192.0.2.1", client="10.1.1.1"))
        outside = rules.checkRequest(connect("192.0.2.1"))
        assert inside is not None and outside is not None
        self.assertEqual((inside.allowed, outside.allowed), (True, False))

    def test_everyProtectedRangeIsDenied(self) -> None:
        rules = RuleSet()
        for protection in PROTECTED:
            network = ipaddress.ip_network(str(protection.network))
            verdict = rules.checkRequest(connect(str(network.network_address)))
            assert verdict is not None
            self.assertFalse(verdict.allowed, str(network))

    def test_isLoopback(self) -> None:
        self.assertTrue(isLoopback("127.9.9.9"))
        self.assertTrue(isLoopback("::ffff:127.0.0.1"))
        self.assertTrue(isLoopback("::1"))
        self.assertTrue(isLoopback(None))
        self.assertFalse(isLoopback("10.0.0.1"))

    def test_ruleDescribe(self) -> None:
        rule = Rule(True, "--allow-destination any")
        self.assertEqual(
            RuleSet([rule], [rule]).describe(), "1 client, 1 request; protected destinations denied"
        )

    def test_deniedNameAfterNetworkRule(self) -> None:
        """A name denied whatever it resolves to is denied before resolution."""
        rules = ruleSet("deny to 10.0.0.0/8", "deny to .blocked.example", "allow to any")
        verdict = rules.checkRequest(connect(name="www.blocked.example"))
        assert verdict is not None
        self.assertFalse(verdict.allowed)
        self.assertEqual(verdict.reason, "rule test.rules:2")
        self.assertIsNone(rules.checkRequest(connect(name="fine.example")))
        onlyDenies = ruleSet("deny to 10.0.0.0/8")
        self.assertIsNone(onlyDenies.checkRequest(connect(name="fine.example")))
        allowList = ruleSet("deny to 10.0.0.0/8", "allow to .ok.example")
        verdict = allowList.checkRequest(connect(name="other.example"))
        assert verdict is not None
        self.assertFalse(verdict.allowed, "no rule can allow it")
        self.assertIsNone(ruleSet("allow to 10.0.0.0/8", "deny").checkRequest(connect(name="x.example")))

    def test_broadDestinationBesideNarrowOne(self) -> None:
        """Only the destination that matched can open a protected range, not one beside it."""
        rules = ruleSet("allow to 127.0.0.1:8080, any", "allow to 169.254.169.254:80, .example")
        for address, port in (("127.0.0.1", 22), ("169.254.169.254", 443)):
            verdict = rules.checkRequest(connect(address, port))
            assert verdict is not None
            self.assertFalse(verdict.allowed, (address, port))
        verdict = rules.checkRequest(connect("127.0.0.1", 8080))
        assert verdict is not None
        self.assertTrue(verdict.allowed)

    def test_onlyASCIIDigits(self) -> None:
        """Digits of other scripts are not port numbers or prefix lengths (int() would refuse them)."""
        for text in ("a.example:²", "10.0.0.0/²", "any:1-²"):
            with self.assertRaises(RuleError, msg=text):
                parseDestination(text)
