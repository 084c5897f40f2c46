"""
txfloor: how fast a Twisted-shaped SOCKS5 server can be on this machine.

A measuring probe, not a server to run: the SOCKS5 CONNECT relay of
C{pyfloor.py} (no-authentication, IP literals, half-close, and nothing
else) written as Twisted code is: a C{Protocol} per client built by a
C{Factory}, C{reactor.connectTCP} with a C{ClientFactory} for the target,
and the transports' C{write}, C{loseWriteConnection} and
C{loseConnection}.  It runs on txsocks5's reactor (lean transports), or
with C{--stock-reactor} on Twisted's own epoll reactor.  Set beside
C{pyfloor.py} and txsocks5 under the same load, it splits what txsocks5
costs into the interpreter's and the kernel's share (C{pyfloor.py}),
Twisted's (this), and that of txsocks5's features (the rest):

    .venv/bin/python bench/compare.py --tests connrate,latency \\
        --server txfloor="$PWD/.venv/bin/python $PWD/bench/txfloor.py --host {host} --port {port}" \\
        --server pyfloor="$PWD/.venv/bin/python $PWD/bench/pyfloor.py --host {host} --port {port}"

It listens on a loopback address only and runs until it is stopped.  Run
it with the venv's Python from the checkout (it imports txsocks5).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # This checkout's txsocks5.
from pyfloor import (  # noqa: E402  (beside this file)
    FAILED,
    NO_AUTH,
    UNSUPPORTED,
    argumentParser,
    greetingLength,
    parseArguments,
    parseRequest,
    succeeded,
)

reactor: Any = None  # The reactor main() installs.


@implementer(IHalfCloseableProtocol)
class RelaySide(Protocol):
    """One side of a tunnel once it is relaying: passes data and the ends on to its peer."""

    peer: RelaySide | None = None
    readEnded = False

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.readEnded = True
        peer = self.peer
        if peer is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif peer.readEnded:
            peer.transport.loseConnection()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            peer.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """Nothing to do: the peer's FIN was passed on."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]


class ClientSide(RelaySide):
    """The client's connection: negotiates, then relays."""

    def __init__(self) -> None:
        self.buffer = b""
        self.greeted = False
        self.waiting = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)  # type: ignore[union-attr]
            return
        buffer = self.buffer + data
        if self.waiting:  # Sent ahead of the reply: passed on once connected.
            self.buffer = buffer
            return
        if not self.greeted:
            used = greetingLength(buffer)
            if used is None:
                self.buffer = buffer
                return
            self.transport.write(NO_AUTH)  # type: ignore[union-attr]
            self.greeted = True
            buffer = buffer[used:]
        try:
            request = parseRequest(buffer)
        except ValueError:
            self.transport.write(UNSUPPORTED)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if request is None:
            self.buffer = buffer
            return
        used, host, port = request
        self.buffer = buffer[used:]
        self.waiting = True
        reactor.connectTCP(host, port, TargetFactory(self))


class TargetSide(RelaySide):
    """The connection to the target: replies to the client once it is made."""

    factory: TargetFactory

    def connectionMade(self) -> None:
        client = self.factory.client
        self.peer, client.peer = client, self
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        host = self.transport.getHost()  # type: ignore[union-attr]
        client.transport.write(succeeded(host.host, host.port))  # type: ignore[union-attr]
        if client.buffer:
            self.transport.write(client.buffer)  # type: ignore[union-attr]
            client.buffer = b""


class TargetFactory(ClientFactory):
    """Connects one client's target."""

    protocol = TargetSide  # type: ignore[assignment]
    noisy = False

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.transport.write(FAILED)  # type: ignore[union-attr]
        self.client.transport.loseConnection()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    global reactor
    parser = argumentParser(__doc__.splitlines()[1])
    parser.add_argument(
        "--stock-reactor", action="store_true", help="Twisted's epoll reactor, not txsocks5's"
    )
    args = parseArguments(parser, argv)
    if not args.stock_reactor:
        from txsocks5._fastpath import installFastReactor

        installFastReactor()
    from twisted.internet import reactor as installed

    reactor = installed
    factory = Factory.forProtocol(ClientSide)
    factory.noisy = False
    reactor.listenTCP(args.port, factory, backlog=1024, interface=args.host)
    reactor.run()


if __name__ == "__main__":
    main()
