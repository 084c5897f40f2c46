"""Tests for L{txsocks5.outbound}: direct connections and REP mapping."""

from __future__ import annotations

import errno

from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txsocks5 import wire
from txsocks5.interfaces import IConnectingFactory, IOutbound
from txsocks5.outbound import DirectOutbound, replyForFailure
from txsocks5.relay import TargetFactory


class ReplyForFailureTests(SynchronousTestCase):
    """Every connection error maps to the REP code RFC 1928 gives it."""

    def test_mapping(self) -> None:
        cases = [
            (error.ConnectionRefusedError(), wire.Reply.CONNECTION_REFUSED),
            (error.DNSLookupError("x"), wire.Reply.HOST_UNREACHABLE),
            (error.UnknownHostError(), wire.Reply.HOST_UNREACHABLE),
            (error.NoRouteError(), wire.Reply.NETWORK_UNREACHABLE),
            (error.ConnectError(errno.EHOSTUNREACH, "x"), wire.Reply.HOST_UNREACHABLE),
            (error.ConnectError(errno.ENETUNREACH, "x"), wire.Reply.NETWORK_UNREACHABLE),
            (error.TimeoutError(), wire.Reply.TTL_EXPIRED),
            (error.TCPTimedOutError(), wire.Reply.TTL_EXPIRED),
            (defer.TimeoutError(), wire.Reply.TTL_EXPIRED),
            (error.ConnectingCancelledError(None), wire.Reply.TTL_EXPIRED),
            (OSError(errno.EHOSTUNREACH, "x"), wire.Reply.HOST_UNREACHABLE),
            (error.ConnectError(), wire.Reply.GENERAL_FAILURE),
            (ValueError(), wire.Reply.GENERAL_FAILURE),
        ]
        for exception, reply in cases:
            self.assertEqual(replyForFailure(Failure(exception)), reply, exception)


class DirectOutboundTests(SynchronousTestCase):
    """L{DirectOutbound} on a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.outbound = DirectOutbound(self.reactor, timeout=7)
        self.factory = Factory.forProtocol(Protocol)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IOutbound, self.outbound))

    def test_ipv4Literal(self) -> None:
        """An IPv4 literal is connected to straight away."""
        self.outbound.connect(wire.Address.fromHost("192.0.2.1", 8080), self.factory)
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("192.0.2.1", 8080, 7))

    def test_ipv6Literal(self) -> None:
        self.outbound.connect(wire.Address.fromHost("2001:db8::1", 443), self.factory)
        [(host, port, _, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("2001:db8::1", 443))

    def test_literalAsDomain(self) -> None:
        """An IP literal sent as a domain name (curl does this) is not resolved."""
        self.outbound.connect(wire.Address(wire.AddressType.DOMAIN, "192.0.2.1", 80), self.factory)
        [(host, _, _, _, _)] = self.reactor.tcpClients
        self.assertEqual(host, "192.0.2.1")

    def test_name(self) -> None:
        """Names are resolved with the reactor's resolver, then connected to."""
        self.outbound.connect(wire.Address.fromHost("example.test", 80), self.factory)
        self.reactor.advance(0)
        [(host, port, _, _, _)] = self.reactor.tcpClients
        # MemoryReactor resolves every name to 127.0.0.1.
        self.assertEqual((host, port), ("127.0.0.1", 80))

    def test_invalidName(self) -> None:
        """A name that cannot be a host name fails as unresolvable."""
        d = self.outbound.connect(wire.Address(wire.AddressType.DOMAIN, "bad\udcff..name", 80), self.factory)
        failure = self.failureResultOf(d)
        self.assertEqual(replyForFailure(failure), wire.Reply.HOST_UNREACHABLE)

    def test_timeout(self) -> None:
        """A named attempt that takes longer than the timeout fails as timed out."""
        d = self.outbound.connect(wire.Address.fromHost("slow.test", 80), self.factory)
        self.reactor.advance(7)
        failure = self.failureResultOf(d)
        self.assertEqual(replyForFailure(failure), wire.Reply.TTL_EXPIRED)

    def test_literalTimeout(self) -> None:
        """A literal's attempt times out by the connect's own timeout."""
        d = self.outbound.connect(wire.Address.fromHost("192.0.2.1", 80), self.factory)
        [(_, _, factory, timeout, _)] = self.reactor.tcpClients
        self.assertEqual(timeout, 7)
        factory.clientConnectionFailed(None, Failure(error.TimeoutError()))
        self.assertEqual(replyForFailure(self.failureResultOf(d)), wire.Reply.TTL_EXPIRED)


class ConnectingFactoryTests(SynchronousTestCase):
    """Literals with an L{IConnectingFactory}: connectTCP without an endpoint wrapper."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.outbound = DirectOutbound(self.reactor, timeout=7)
        self.factory = TargetFactory()

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IConnectingFactory, self.factory))

    def test_connected(self) -> None:
        """The Deferred fires with the protocol once its connection is made."""
        d = self.outbound.connect(wire.Address.fromHost("2001:db8::1", 443), self.factory)
        [(host, port, factory, timeout, _)] = self.reactor.tcpClients
        self.assertIs(factory, self.factory)
        self.assertEqual((host, port, timeout), ("2001:db8::1", 443, 7))
        self.assertNoResult(d)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertIs(self.successResultOf(d), protocol)

    def test_forgetsEndedAttempt(self) -> None:
        """
        Once the attempt has ended the factory lets go of the connector and
        the Deferred (no reference cycle for the garbage collector), so
        asking for the Deferred again is an error.
        """
        d = self.outbound.connect(wire.Address.fromHost("192.0.2.1", 80), self.factory)
        self.factory.startedConnecting(self.reactor.connectors[0])
        self.factory.buildProtocol(None).makeConnection(StringTransport())
        self.successResultOf(d)
        self.assertIsNone(self.factory._connector)
        self.assertRaises(RuntimeError, self.factory.whenConnected)

    def test_failed(self) -> None:
        d = self.outbound.connect(wire.Address.fromHost("192.0.2.1", 80), self.factory)
        self.factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(error.ConnectionRefusedError())
        )
        self.assertEqual(replyForFailure(self.failureResultOf(d)), wire.Reply.CONNECTION_REFUSED)

    def test_cancel(self) -> None:
        """Cancelling stops the attempt; the connector's late failure report is ignored."""
        d = self.outbound.connect(wire.Address.fromHost("192.0.2.1", 80), self.factory)
        [connector] = self.reactor.connectors
        d.cancel()
        self.assertTrue(connector.stoppedConnecting)
        self.factory.clientConnectionFailed(connector, Failure(error.UserError()))
        self.failureResultOf(d, defer.CancelledError)

    def test_namesUseEndpoints(self) -> None:
        """Names still go through HostnameEndpoint (happy eyeballs)."""
        self.outbound.connect(wire.Address.fromHost("example.test", 80), self.factory)
        self.reactor.advance(0)
        [(_, _, factory, _, _)] = self.reactor.tcpClients
        self.assertIsNot(factory, self.factory)
