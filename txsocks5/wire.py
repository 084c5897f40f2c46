"""
Sans-I/O codec for the SOCKS5 wire format (RFC 1928) and its username/password
sub-negotiation (RFC 1929).

Every message has a frozen dataclass with an C{encode()} method, and a
C{parse*} function that takes the bytes received so far and returns either
C{None} (more bytes are needed) or a L{Parsed} pair of the message and the
number of bytes it used.  Bytes after the message are left alone, so
pipelined messages parse one after another.  Malformed input raises
L{ProtocolError} and nothing else; the error carries the reply code a server
should answer with, if any.

Both directions are here: a server parses greetings, RFC 1929 requests and
requests and encodes the answers; a client does the opposite.  This module
does no I/O and imports nothing from Twisted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from socket import AF_INET, AF_INET6, inet_pton
from typing import Generic, TypeVar

__all__ = [
    "SOCKS_VERSION",
    "AUTH_VERSION",
    "Method",
    "Command",
    "AddressType",
    "Reply",
    "AuthStatus",
    "ProtocolError",
    "Address",
    "Parsed",
    "Greeting",
    "MethodSelection",
    "AuthRequest",
    "AuthResponse",
    "Request",
    "Response",
    "UDPHeader",
    "parseGreeting",
    "parseMethodSelection",
    "parseAuthRequest",
    "parseAuthResponse",
    "parseRequest",
    "parseResponse",
    "parseUDPDatagram",
    "UDP_IP_HEADER_SIZES",
]

SOCKS_VERSION = 5
"""The VER byte of every RFC 1928 message."""

AUTH_VERSION = 1
"""The VER byte of the RFC 1929 sub-negotiation."""


class Method(IntEnum):
    """Authentication METHOD codes (RFC 1928 section 3)."""

    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    """Request CMD codes (RFC 1928 section 4)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    """ATYP codes (RFC 1928 section 5)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(IntEnum):
    """REP codes of a server's reply (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AuthStatus(IntEnum):
    """STATUS of an RFC 1929 response: zero is success, anything else failure."""

    SUCCESS = 0x00
    FAILURE = 0x01


class ProtocolError(Exception):
    """
    The peer sent bytes that are not a valid message.

    @ivar reply: the REP code a server should answer a request with before
        closing, or C{None} when the only right answer is to close.
    """

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Address:
    """
    A SOCKS address: an IPv4 literal, an IPv6 literal or a domain name, with
    a port.

    Domain names are kept as text decoded from UTF-8 with C{surrogateescape},
    so any byte string a client sends survives a round trip unchanged.
    """

    type: AddressType
    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of range: {self.port}")
        if self.type == AddressType.DOMAIN:
            if not 0 < len(_encodeDomain(self.host)) <= 255:
                raise ValueError("a domain name is 1 to 255 bytes")
        elif self.type == AddressType.IPV4:
            ipaddress.IPv4Address(self.host)
        else:
            ipaddress.IPv6Address(self.host)

    @classmethod
    def _parsed(cls, type: AddressType, host: str, port: int) -> Address:
        """An address the parser has already checked: no second validation."""
        address = object.__new__(cls)
        address.__dict__.update(type=type, host=host, port=port)  # As a frozen __init__ would.
        return address

    @classmethod
    def fromHost(cls, host: str, port: int) -> Address:
        """
        The address for C{host}: an IP literal if it parses as one, otherwise
        a domain name.  IPv4-mapped IPv6 literals become plain IPv4.
        """
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        if _isIPv4(host):  # The common case, checked cheaply.
            return cls._parsed(AddressType.IPV4, host, port)
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return cls(AddressType.DOMAIN, host, port)
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return cls(AddressType.IPV4, str(ip.ipv4_mapped), port)
            return cls(AddressType.IPV6, str(ip), port)
        return cls(AddressType.IPV4, str(ip), port)

    def encode(self) -> bytes:
        """ATYP, the address and the port, as they appear on the wire."""
        if self.type == AddressType.IPV4:
            return b"\x01" + inet_pton(AF_INET, self.host) + self.port.to_bytes(2, "big")
        if self.type == AddressType.IPV6:
            raw = inet_pton(AF_INET6, self.host.split("%", 1)[0])
            return b"\x04" + raw + self.port.to_bytes(2, "big")
        name = _encodeDomain(self.host)
        return bytes([AddressType.DOMAIN, len(name)]) + name + struct.pack("!H", self.port)

    def __str__(self) -> str:
        """C{host:port} (C{[v6]:port}), with a domain name made safe to log."""
        if self.type == AddressType.IPV6:
            return f"[{self.host}]:{self.port}"
        if self.type == AddressType.DOMAIN:
            return f"{_printable(self.host)}:{self.port}"
        return f"{self.host}:{self.port}"


T = TypeVar("T")


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parsed message and how many bytes of the input it used."""

    message: T
    consumed: int


@dataclass(frozen=True)
class Greeting:
    """The client's first message: the METHODs it can do."""

    methods: tuple[int, ...]

    def encode(self) -> bytes:
        """The greeting on the wire."""
        return bytes([SOCKS_VERSION, len(self.methods), *self.methods])


@dataclass(frozen=True)
class MethodSelection:
    """The server's answer to a greeting: the METHOD it chose."""

    method: int

    def encode(self) -> bytes:
        """The method selection on the wire."""
        return bytes([SOCKS_VERSION, self.method])


@dataclass(frozen=True)
class AuthRequest:
    """An RFC 1929 username/password request."""

    username: bytes
    password: bytes

    def encode(self) -> bytes:
        """The RFC 1929 request on the wire."""
        if len(self.username) > 255 or len(self.password) > 255:
            raise ValueError("username and password are at most 255 bytes each")
        return (
            bytes([AUTH_VERSION, len(self.username)])
            + self.username
            + bytes([len(self.password)])
            + self.password
        )

    def __repr__(self) -> str:
        # Secrets never reach logs, not even through a repr.
        return f"AuthRequest(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True)
class AuthResponse:
    """An RFC 1929 response: STATUS zero means success."""

    status: int

    def encode(self) -> bytes:
        """The RFC 1929 response on the wire."""
        return bytes([AUTH_VERSION, self.status])


@dataclass(frozen=True)
class Request:
    """A client's request: a CMD code and the destination address."""

    command: int
    address: Address

    def encode(self) -> bytes:
        """The request on the wire."""
        return bytes([SOCKS_VERSION, self.command, 0]) + self.address.encode()


@dataclass(frozen=True)
class Response:
    """A server's reply to a request: a REP code and BND.ADDR/BND.PORT."""

    reply: int
    address: Address

    def encode(self) -> bytes:
        """The reply on the wire."""
        return bytes([SOCKS_VERSION, self.reply, 0]) + self.address.encode()


@dataclass(frozen=True)
class UDPHeader:
    """The header in front of every datagram relayed by UDP ASSOCIATE."""

    fragment: int
    address: Address

    def encode(self) -> bytes:
        """The header on the wire (the payload follows it)."""
        return b"\x00\x00" + bytes([self.fragment]) + self.address.encode()


#: The length of DST.ADDR for each IP literal ATYP.
_IPV4_SIZE = 4
_IPV6_SIZE = 16

UDP_IP_HEADER_SIZES: Mapping[int, int] = {
    AddressType.IPV4: 3 + 1 + _IPV4_SIZE + 2,
    AddressType.IPV6: 3 + 1 + _IPV6_SIZE + 2,
}
"""
The length of a UDP request header (RSV, FRAG, ATYP, DST.ADDR, DST.PORT) by
its ATYP, for the two whose address is an IP literal: a datagram's payload
starts there.
"""


def _isIPv4(host: str) -> bool:
    """Whether C{host} is a dotted-quad IPv4 literal."""
    try:
        inet_pton(AF_INET, host)
    except (OSError, UnicodeError):
        return False
    return True


def _printable(name: str) -> str:
    """
    C{name} as valid, printable text: bytes that were not UTF-8 and control
    characters become backslash escapes.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _encodeDomain(host: str) -> bytes:
    return host.encode("utf-8", "surrogateescape")


def _parseAddress(data: bytes, offset: int) -> tuple[Address, int] | None:
    """
    Parse ATYP, address and port at C{offset}; return the address and the
    offset just past it, or C{None} if more bytes are needed.
    """
    if len(data) <= offset:
        return None
    atyp = data[offset]
    if atyp == AddressType.IPV4:
        end = offset + 1 + _IPV4_SIZE
        if len(data) < end + 2:
            return None
        host = f"{data[offset + 1]}.{data[offset + 2]}.{data[offset + 3]}.{data[offset + 4]}"
        kind = AddressType.IPV4
    elif atyp == AddressType.IPV6:
        end = offset + 1 + _IPV6_SIZE
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(data[offset + 1 : end]))
        kind = AddressType.IPV6
    elif atyp == AddressType.DOMAIN:
        if len(data) < offset + 2:
            return None
        length = data[offset + 1]
        if length == 0:
            raise ProtocolError("empty domain name", Reply.HOST_UNREACHABLE)
        end = offset + 2 + length
        if len(data) < end + 2:
            return None
        host = data[offset + 2 : end].decode("utf-8", "surrogateescape")
        kind = AddressType.DOMAIN
    else:
        raise ProtocolError(f"unknown address type {atyp:#04x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    return Address._parsed(kind, host, (data[end] << 8) | data[end + 1]), end + 2


def _checkVersion(data: bytes, expected: int, what: str) -> None:
    if data[0] != expected:
        raise ProtocolError(f"{what}: version {data[0]}, expected {expected}")


def parseGreeting(data: bytes) -> Parsed[Greeting] | None:
    """
    Parse a client greeting (VER, NMETHODS, METHODS).

    A greeting with no methods parses (to an empty tuple): the answer to it
    is L{Method.NO_ACCEPTABLE}.
    """
    if len(data) < 2:
        return None
    _checkVersion(data, SOCKS_VERSION, "greeting")
    end = 2 + data[1]
    if len(data) < end:
        return None
    return Parsed(Greeting(tuple(data[2:end])), end)


def parseMethodSelection(data: bytes) -> Parsed[MethodSelection] | None:
    """Parse a server's method selection (VER, METHOD)."""
    if len(data) < 2:
        return None
    _checkVersion(data, SOCKS_VERSION, "method selection")
    return Parsed(MethodSelection(data[1]), 2)


def parseAuthRequest(data: bytes) -> Parsed[AuthRequest] | None:
    """Parse an RFC 1929 request (VER, ULEN, UNAME, PLEN, PASSWD)."""
    if len(data) < 2:
        return None
    _checkVersion(data, AUTH_VERSION, "username/password request")
    userEnd = 2 + data[1]
    if len(data) < userEnd + 1:
        return None
    end = userEnd + 1 + data[userEnd]
    if len(data) < end:
        return None
    return Parsed(AuthRequest(data[2:userEnd], data[userEnd + 1 : end]), end)


def parseAuthResponse(data: bytes) -> Parsed[AuthResponse] | None:
    """Parse an RFC 1929 response (VER, STATUS)."""
    if len(data) < 2:
        return None
    _checkVersion(data, AUTH_VERSION, "username/password response")
    return Parsed(AuthResponse(data[1]), 2)


def parseRequest(data: bytes) -> Parsed[Request] | None:
    """
    Parse a client request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT).

    Any CMD byte parses: whether a command is supported is the server's
    business.  A wrong VER raises with L{Reply.GENERAL_FAILURE}; an unknown
    ATYP with L{Reply.ADDRESS_TYPE_NOT_SUPPORTED}.  RSV is ignored.
    """
    if len(data) < 4:
        return None
    if data[0] != SOCKS_VERSION:
        raise ProtocolError(
            f"request: version {data[0]}, expected {SOCKS_VERSION}",
            Reply.GENERAL_FAILURE,
        )
    parsed = _parseAddress(data, 3)
    if parsed is None:
        return None
    address, end = parsed
    return Parsed(Request(data[1], address), end)


def parseResponse(data: bytes) -> Parsed[Response] | None:
    """Parse a server reply (VER, REP, RSV, ATYP, BND.ADDR, BND.PORT)."""
    if len(data) < 4:
        return None
    _checkVersion(data, SOCKS_VERSION, "reply")
    parsed = _parseAddress(data, 3)
    if parsed is None:
        return None
    address, end = parsed
    return Parsed(Response(data[1], address), end)


def parseUDPDatagram(datagram: bytes) -> tuple[UDPHeader, bytes]:
    """
    Split a whole SOCKS5 UDP datagram into its header and payload.

    Unlike the stream parsers this one never waits for more: a datagram
    too short for its header is malformed.
    """
    try:
        parsed = _parseAddress(datagram, 3) if len(datagram) >= 4 else None
    except ProtocolError as e:
        raise ProtocolError(f"UDP header: {e}") from None
    if parsed is None:
        raise ProtocolError("UDP datagram shorter than its header")
    address, end = parsed
    return UDPHeader(datagram[2], address), datagram[end:]
