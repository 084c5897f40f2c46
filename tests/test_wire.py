"""Tests for L{txsocks5.wire}: encodings, incremental parsing, round trips."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txsocks5 import wire
from txsocks5.wire import Address, AddressType

ipv4 = st.ip_addresses(v=4).map(lambda ip: Address(AddressType.IPV4, str(ip), 0))
ports = st.integers(0, 0xFFFF)
domains = st.binary(min_size=1, max_size=255).map(lambda b: b.decode("utf-8", "surrogateescape"))


@st.composite
def addresses(draw: Callable[..., Any]) -> Address:
    """Any SOCKS address: IPv4, IPv6 or domain, with any port."""
    kind = draw(st.sampled_from(list(AddressType)))
    port = draw(ports)
    if kind == AddressType.IPV4:
        return Address(kind, str(draw(st.ip_addresses(v=4))), port)
    if kind == AddressType.IPV6:
        return Address(kind, str(draw(st.ip_addresses(v=6))), port)
    return Address(kind, draw(domains), port)


small = st.integers(0, 255)
messages = st.one_of(
    st.builds(wire.Greeting, st.lists(small, max_size=255).map(tuple)),
    st.builds(wire.MethodSelection, small),
    st.builds(
        wire.AuthRequest,
        st.binary(max_size=255),
        st.binary(max_size=255),
    ),
    st.builds(wire.AuthResponse, small),
    st.builds(wire.Request, small, addresses()),
    st.builds(wire.Response, small, addresses()),
)

PARSERS: dict[type, Callable[[bytes], Any]] = {
    wire.Greeting: wire.parseGreeting,
    wire.MethodSelection: wire.parseMethodSelection,
    wire.AuthRequest: wire.parseAuthRequest,
    wire.AuthResponse: wire.parseAuthResponse,
    wire.Request: wire.parseRequest,
    wire.Response: wire.parseResponse,
}


class RoundTripTests(SynchronousTestCase):
    """Every message parses back to itself, whole, in pieces, or pipelined."""

    @given(messages, st.binary(max_size=32))
    def test_roundTrip(self, message: Any, trailer: bytes) -> None:
        """
        A message parses back to itself and consumes exactly its own bytes,
        whatever follows it.
        """
        encoded = message.encode()
        parsed = PARSERS[type(message)](encoded + trailer)
        self.assertEqual(parsed, wire.Parsed(message, len(encoded)))

    @given(messages)
    def test_everyPrefixNeedsMore(self, message: Any) -> None:
        """Every proper prefix of a message asks for more bytes."""
        encoded = message.encode()
        parse = PARSERS[type(message)]
        for end in range(len(encoded)):
            self.assertIsNone(parse(encoded[:end]))

    @given(addresses(), st.integers(0, 255), st.binary(max_size=100))
    def test_udpRoundTrip(self, address: Address, fragment: int, payload: bytes) -> None:
        """A UDP datagram splits back into its header and payload."""
        header = wire.UDPHeader(fragment, address)
        self.assertEqual(wire.parseUDPDatagram(header.encode() + payload), (header, payload))

    @given(addresses(), st.integers(0, 255))
    def test_udpHeaderSizes(self, address: Address, fragment: int) -> None:
        """
        L{wire.UDP_IP_HEADER_SIZES} gives the length of an encoded header whose
        address is an IP literal, and has no entry for a domain name.
        """
        encoded = wire.UDPHeader(fragment, address).encode()
        size = wire.UDP_IP_HEADER_SIZES.get(encoded[3])
        if address.type == AddressType.DOMAIN:
            self.assertIsNone(size)
        else:
            self.assertEqual(size, len(encoded))


PARSE_FUNCTIONS = [*PARSERS.values(), wire.parseUDPDatagram]


class NoCrashTests(SynchronousTestCase):
    """No byte string makes a parser raise anything but L{wire.ProtocolError}."""

    @settings(max_examples=500)
    @given(st.binary(max_size=600))
    def test_arbitraryBytes(self, data: bytes) -> None:
        for parse in PARSE_FUNCTIONS:
            with contextlib.suppress(wire.ProtocolError):  # The one exception allowed.
                parse(data)

    @settings(max_examples=300)
    @given(st.sampled_from([1, 3, 4, 0, 2, 5, 255]), st.binary(max_size=300))
    def test_plausibleRequests(self, atyp: int, rest: bytes) -> None:
        """Requests and replies with a right version and any address bytes."""
        data = bytes([5, 1, 0, atyp]) + rest
        for parse in (wire.parseRequest, wire.parseResponse):
            with contextlib.suppress(wire.ProtocolError):  # The one exception allowed.
                parse(data)


class ParserTests(SynchronousTestCase):
    """Byte-level cases the RFCs pin down."""

    def test_greeting(self) -> None:
        self.assertEqual(
            wire.parseGreeting(b"\x05\x02\x00\x02"),
            wire.Parsed(wire.Greeting((0, 2)), 4),
        )

    def test_greetingWithoutMethods(self) -> None:
        """NMETHODS=0 parses to no methods: the server answers 0xFF."""
        self.assertEqual(wire.parseGreeting(b"\x05\x00"), wire.Parsed(wire.Greeting(()), 2))

    def test_greetingWrongVersion(self) -> None:
        """A SOCKS4 or garbage first byte is an error with no reply."""
        for data in (b"\x04\x01", b"GET / HTTP/1.1\r\n"):
            with self.assertRaises(wire.ProtocolError) as e:
                wire.parseGreeting(data)
            self.assertIsNone(e.exception.reply)

    def test_requestIPv4(self) -> None:
        parsed = wire.parseRequest(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        self.assertEqual(
            parsed,
            wire.Parsed(wire.Request(1, Address(AddressType.IPV4, "127.0.0.1", 80)), 10),
        )

    def test_requestIPv6(self) -> None:
        data = b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x01\xbb"
        parsed = wire.parseRequest(data)
        assert parsed is not None
        self.assertEqual(parsed.message.address, Address(AddressType.IPV6, "::1", 443))

    def test_requestDomain(self) -> None:
        data = b"\x05\x01\x00\x03\x0bexample.com\x00\x50"
        parsed = wire.parseRequest(data)
        assert parsed is not None
        self.assertEqual(parsed.message.address, Address(AddressType.DOMAIN, "example.com", 80))

    def test_requestUnknownCommandParses(self) -> None:
        """Unknown commands parse; whether to support them is the server's call."""
        parsed = wire.parseRequest(b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
        assert parsed is not None
        self.assertEqual(parsed.message.command, 9)

    def test_requestUnknownAddressType(self) -> None:
        with self.assertRaises(wire.ProtocolError) as e:
            wire.parseRequest(b"\x05\x01\x00\x02\x00")
        self.assertEqual(e.exception.reply, wire.Reply.ADDRESS_TYPE_NOT_SUPPORTED)

    def test_requestWrongVersion(self) -> None:
        with self.assertRaises(wire.ProtocolError) as e:
            wire.parseRequest(b"\x04\x01\x00\x01")
        self.assertEqual(e.exception.reply, wire.Reply.GENERAL_FAILURE)

    def test_requestEmptyDomain(self) -> None:
        with self.assertRaises(wire.ProtocolError) as e:
            wire.parseRequest(b"\x05\x01\x00\x03\x00\x00\x50")
        self.assertEqual(e.exception.reply, wire.Reply.HOST_UNREACHABLE)

    def test_authRequest(self) -> None:
        self.assertEqual(
            wire.parseAuthRequest(b"\x01\x05alice\x06secret"),
            wire.Parsed(wire.AuthRequest(b"alice", b"secret"), 14),
        )

    def test_authRequestWrongVersion(self) -> None:
        with self.assertRaises(wire.ProtocolError):
            wire.parseAuthRequest(b"\x05\x01a\x01b")

    def test_authRequestHidesPassword(self) -> None:
        """The password never shows in a repr (and so never in a log)."""
        self.assertNotIn("secret", repr(wire.AuthRequest(b"alice", b"secret")))

    def test_udpTooShort(self) -> None:
        for data in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x7f\x00"):
            self.assertRaises(wire.ProtocolError, wire.parseUDPDatagram, data)

    def test_pipelined(self) -> None:
        """Messages sent back to back parse one after another."""
        data = (
            wire.Greeting((0,)).encode()
            + wire.Request(1, Address(AddressType.DOMAIN, "a.test", 1)).encode()
            + b"payload"
        )
        first = wire.parseGreeting(data)
        assert first is not None
        second = wire.parseRequest(data[first.consumed :])
        assert second is not None
        self.assertEqual(data[first.consumed + second.consumed :], b"payload")


class AddressTests(SynchronousTestCase):
    """L{Address} construction and formatting."""

    def test_fromHost(self) -> None:
        self.assertEqual(Address.fromHost("10.0.0.1", 1), Address(AddressType.IPV4, "10.0.0.1", 1))
        self.assertEqual(Address.fromHost("::1", 1), Address(AddressType.IPV6, "::1", 1))
        self.assertEqual(Address.fromHost("a.test", 1), Address(AddressType.DOMAIN, "a.test", 1))

    def test_fromHostIsAnAddressLikeAnyOther(self) -> None:
        """
        The address C{fromHost} makes without a second validation equals,
        hashes and refuses changes like one made by the constructor.
        """
        fast, checked = Address.fromHost("10.0.0.1", 1), Address(AddressType.IPV4, "10.0.0.1", 1)
        self.assertEqual((fast, hash(fast), repr(fast)), (checked, hash(checked), repr(checked)))
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, fast, "port", 2)

    def test_fromHostUnmapsIPv4(self) -> None:
        """IPv4-mapped IPv6 addresses (from dual-stack sockets) become IPv4."""
        self.assertEqual(Address.fromHost("::ffff:127.0.0.1", 5), Address(AddressType.IPV4, "127.0.0.1", 5))

    @given(st.text(max_size=60), ports)
    def test_fromHostAnyText(self, host: str, port: int) -> None:
        """Any text (surrogates included) is an IP literal or a name, never a crash."""
        try:
            Address.fromHost(host, port)
        except ValueError:
            pass  # Too long or empty for a domain name.

    def test_fromHostScope(self) -> None:
        self.assertEqual(Address.fromHost("fe80::1%eth0", 5), Address(AddressType.IPV6, "fe80::1", 5))

    def test_scopedEncode(self) -> None:
        """A scope ID (meaningless to a peer) is left out of the encoding."""
        scoped = Address(AddressType.IPV6, "fe80::1%eth0", 80)
        self.assertEqual(scoped.encode(), Address(AddressType.IPV6, "fe80::1", 80).encode())

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, Address, AddressType.IPV4, "::1", 1)
        self.assertRaises(ValueError, Address, AddressType.IPV4, "1.2.3.4", 70000)
        self.assertRaises(ValueError, Address, AddressType.DOMAIN, "", 1)
        self.assertRaises(ValueError, Address, AddressType.DOMAIN, "a" * 256, 1)
        self.assertRaises(ValueError, Address.fromHost, "127.0.0.1", 65536)
        self.assertRaises(ValueError, Address.fromHost, "a.test", -1)

    def test_strEscapes(self) -> None:
        """Names that are not UTF-8 or hold control characters print safely."""
        raw = wire.Address(AddressType.DOMAIN, b"\xff\x1b[31mx\n".decode("utf-8", "surrogateescape"), 1)
        self.assertEqual(str(raw), "\\xff\\x1b[31mx\\n:1")
        str(raw).encode("utf-8")
        self.assertEqual(str(Address.fromHost("bücher.test", 1)), "bücher.test:1")

    @given(addresses())
    def test_strAlwaysEncodes(self, address: Address) -> None:
        self.assertTrue(str(address).encode("utf-8").isascii() or str(address).isprintable())

    def test_str(self) -> None:
        self.assertEqual(str(Address.fromHost("::1", 80)), "[::1]:80")
        self.assertEqual(str(Address.fromHost("a.test", 80)), "a.test:80")
