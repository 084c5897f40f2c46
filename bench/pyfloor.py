"""
pyfloor: how fast a SOCKS5 server written in Python can be on this machine.

A measuring probe, not a server to run: the least work a single-threaded
Python SOCKS5 CONNECT relay can do, with none of a real server's features.
It takes the no-authentication method only, CONNECTs to IPv4 and IPv6
literals, relays with half-close, and has no logging, timeouts, access
rules, backpressure or limits.  Whatever a Python server (txsocks5
included) costs beyond this is the price of its features and its
framework; what this costs is the interpreter's and the kernel's, which no
Python server avoids.  Measure it beside the others with the same load:

    python3 bench/pyfloor.py --port 1081 &
    python3 bench/socks5bench.py --proxy 127.0.0.1:1081 --tests connrate,latency
    python3 bench/compare.py --tests connrate,latency --server \\
        pyfloor="python3 $PWD/bench/pyfloor.py --host {host} --port {port}"

It listens on a loopback address only and runs until it is stopped
(SIGTERM or SIGINT).  Standard library only; Linux (epoll).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import select
import signal
import socket
import struct
import sys

IN = select.EPOLLIN
OUT = select.EPOLLOUT

#: Reply to the greeting: version 5, no authentication.
NO_AUTH = b"\x05\x00"
#: Replies with BND.ADDR 0.0.0.0:0: the connection failed (general failure), and a request this does not take.
FAILED = b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00"
UNSUPPORTED = b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"
#: Request headers: VER CMD=CONNECT RSV ATYP, and the address's length for each ATYP.
ADDRESS_LENGTHS = {b"\x05\x01\x00\x01": 4, b"\x05\x01\x00\x04": 16}


class Side:
    """One socket of a session: the client's or the target's."""

    __slots__ = ("sock", "peer", "step", "buffer", "readEnded")

    def __init__(self, sock: socket.socket, step: int) -> None:
        self.sock = sock
        self.peer: Side | None = None
        self.step = step
        self.buffer = b""
        self.readEnded = False


GREETING, REQUEST, WAITING, CONNECTING, RELAYING = range(5)


def sendAll(sock: socket.socket, data: bytes) -> None:
    """Send all of C{data}, waiting (blocking the loop) if the socket is full: no backpressure here."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.setblocking(True)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)


class Floor:
    """The relay's one loop: an epoll set and the sides it watches."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.poller = select.epoll()
        self.sides: dict[int, Side] = {}
        self.poller.register(listener.fileno(), IN)

    def run(self) -> None:
        """Serve until interrupted."""
        listening = self.listener.fileno()
        sides = self.sides
        while True:
            for fd, _ in self.poller.poll():
                if fd == listening:
                    self.accept()
                    continue
                side = sides.get(fd)
                if side is None:
                    continue
                try:
                    if side.step == RELAYING:
                        self.relay(side)
                    elif side.step == CONNECTING:  # The target's socket.
                        self.connected(side)
                    else:
                        self.negotiate(side)
                except OSError:
                    self.close(side)

    def accept(self) -> None:
        """Take every waiting connection."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return  # Out of descriptors, or the client gave up: the next turn tries again.
            sock.setblocking(False)
            self.sides[sock.fileno()] = Side(sock, GREETING)
            self.poller.register(sock.fileno(), IN)

    def negotiate(self, side: Side) -> None:
        """Read the greeting, then the request, and start the connection it asks for."""
        data = side.sock.recv(65536)
        if not data:
            self.close(side)
            return
        buffer = side.buffer + data
        if side.step == WAITING:  # Sent ahead of the reply: passed on once connected.
            side.buffer = buffer
            return
        if side.step == GREETING:
            used = greetingLength(buffer)
            if used is None:
                side.buffer = buffer
                return
            side.sock.send(NO_AUTH)
            buffer = buffer[used:]
            side.step = REQUEST
        try:
            request = parseRequest(buffer)
        except ValueError:
            side.sock.send(UNSUPPORTED)
            self.close(side)
            return
        if request is None:
            side.buffer = buffer
            return
        used, host, port = request
        side.buffer = buffer[used:]  # Sent ahead of the reply: passed on once connected.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = Side(socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK), CONNECTING)
        target.peer, side.peer = side, target
        self.sides[target.sock.fileno()] = target
        target.sock.connect_ex((host, port))
        self.poller.register(target.sock.fileno(), OUT)
        side.step = WAITING

    def connected(self, target: Side) -> None:
        """The target's connection attempt ended: reply, and relay if it succeeded."""
        client = target.peer
        assert client is not None
        if target.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            client.sock.send(FAILED)
            self.close(target)
            return
        target.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sock.send(succeeded(*target.sock.getsockname()[:2]))
        target.step = client.step = RELAYING
        self.poller.modify(target.sock.fileno(), IN)
        if client.buffer:
            sendAll(target.sock, client.buffer)
            client.buffer = b""

    def relay(self, side: Side) -> None:
        """Pass what C{side} sent to its peer; on EOF, half-close the peer."""
        data = side.sock.recv(65536)
        peer = side.peer
        assert peer is not None
        if data:
            sendAll(peer.sock, data)
            return
        side.readEnded = True
        if peer.readEnded:
            self.close(side)
            return
        self.poller.modify(side.sock.fileno(), 0)
        peer.sock.shutdown(socket.SHUT_WR)

    def close(self, side: Side) -> None:
        """Close C{side} and its peer."""
        for one in (side, side.peer):
            if one is not None and self.sides.pop(one.sock.fileno(), None) is not None:
                one.sock.close()


def argumentParser(description: str) -> argparse.ArgumentParser:
    """The probes' command line: where to listen."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    parser.add_argument("--port", type=int, default=1081)
    return parser


def parseArguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse C{argv}; refuse a C{--host} that is not loopback (the probes have no access control)."""
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("--host must be a loopback address: this probe has no access control")
    return args


def greetingLength(buffer: bytes) -> int | None:
    """How many bytes the greeting at the start of C{buffer} takes; C{None} if more are needed."""
    if len(buffer) < 2 or len(buffer) < 2 + buffer[1]:
        return None
    return 2 + buffer[1]


def parseRequest(buffer: bytes) -> tuple[int, str, int] | None:
    """
    The (bytes used, host, port) of a CONNECT request to an IP literal at
    the start of C{buffer}; C{None} if more bytes are needed.  Raises
    C{ValueError} for a request the probes do not take.
    """
    length = ADDRESS_LENGTHS.get(buffer[:4])
    if length is None:
        if len(buffer) >= 4:
            raise ValueError("not a CONNECT to an IP literal")
        return None
    if len(buffer) < 6 + length:
        return None
    host = str(ipaddress.ip_address(buffer[4 : 4 + length]))
    (port,) = struct.unpack("!H", buffer[4 + length : 6 + length])
    return 6 + length, host, port


def succeeded(host: str, port: int) -> bytes:
    """The reply to a CONNECT that succeeded, with the outgoing socket's address."""
    packed = ipaddress.ip_address(host).packed
    atyp = b"\x01" if len(packed) == 4 else b"\x04"
    return b"\x05\x00\x00" + atyp + packed + struct.pack("!H", port)


def main(argv: list[str] | None = None) -> None:
    args = parseArguments(argumentParser(__doc__.splitlines()[1]), argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Accepted sockets inherit it.
    listener.bind((args.host, args.port))
    listener.listen(1024)
    listener.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it quietly, as SIGTERM does.
        Floor(listener).run()


if __name__ == "__main__":
    main()
