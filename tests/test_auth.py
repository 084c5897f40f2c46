"""Tests for L{txsocks5.auth} and the authenticator plugins."""

from __future__ import annotations

from twisted.cred import strcred
from twisted.cred.checkers import FilePasswordDB
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txsocks5 import wire
from txsocks5.auth import (
    NoAuthentication,
    UsernamePassword,
    UsernamePasswordAuthentication,
    availableAuthenticators,
    checkersForRFC1929,
)
from txsocks5.interfaces import AuthOutcome, IAuthenticator, IAuthNegotiation

PEER = IPv4Address("TCP", "127.0.0.1", 1)


class InterfaceTests(SynchronousTestCase):
    """Every implementation provides its interface."""

    def test_authenticators(self) -> None:
        for authenticator in (NoAuthentication(), UsernamePasswordAuthentication()):
            self.assertTrue(verifyObject(IAuthenticator, authenticator))
            self.assertTrue(verifyObject(IAuthNegotiation, authenticator.negotiate([], PEER)))

    def test_noAuthenticationAtOnce(self) -> None:
        """No authentication is decided at once: an outcome, not a Deferred."""
        result = NoAuthentication().negotiate([], PEER).dataReceived(b"request")
        self.assertEqual(result, (AuthOutcome(accepted=True), 0))

    def test_plugins(self) -> None:
        """The built-in methods are found as plugins, by name."""
        names = {plugin.name for plugin in getPlugins(IAuthenticator)}
        self.assertTrue({"none", "username"} <= names)
        self.assertEqual(availableAuthenticators()["username"].method, 2)


class UsernamePasswordTests(SynchronousTestCase):
    """RFC 1929 against strcred's memory: and file: checkers."""

    def outcome(self, checkers: list, username: bytes, password: bytes) -> AuthOutcome:
        negotiation = UsernamePasswordAuthentication().negotiate(checkersForRFC1929(checkers), PEER)
        data = wire.AuthRequest(username, password).encode() + b"rest"
        result = negotiation.dataReceived(data)
        assert result is not None
        outcome, consumed = result
        self.assertEqual(data[consumed:], b"rest")
        if isinstance(outcome, AuthOutcome):
            return outcome
        return self.successResultOf(outcome)

    def test_memoryChecker(self) -> None:
        checker = strcred.makeChecker("memory:alice:secret:bob:hunter2")
        accepted = self.outcome([checker], b"alice", b"secret")
        self.assertEqual(accepted, AuthOutcome(True, "alice", b"\x01\x00"))
        self.assertEqual(self.outcome([checker], b"bob", b"hunter2").user, "bob")
        self.assertFalse(self.outcome([checker], b"alice", b"hunter2").accepted)

    def test_fileChecker(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"alice:secret\nbob:pw\n")
        checker = strcred.makeChecker(f"file:{path.path}")
        self.assertIsInstance(checker, FilePasswordDB)
        self.assertTrue(self.outcome([checker], b"alice", b"secret").accepted)
        failed = self.outcome([checker], b"alice", b"wrong")
        self.assertEqual(failed, AuthOutcome(False, None, b"\x01\x01"))

    def test_checkersInOrder(self) -> None:
        """The first checker that accepts wins; failures fall through."""
        first = strcred.makeChecker("memory:alice:one")
        second = strcred.makeChecker("memory:alice:two")
        self.assertTrue(self.outcome([first, second], b"alice", b"two").accepted)

    def test_malformedRefusedAtOnce(self) -> None:
        """A malformed request is refused at once, using all it sent."""
        negotiation = UsernamePasswordAuthentication().negotiate([], PEER)
        with capturedLogs() as events:
            result = negotiation.dataReceived(b"\x05\x01x")
        self.assertEqual(result, (AuthOutcome(False, None, b"\x01\x01"), 3))
        self.assertEqual(
            [formatEvent(event) for event in events],
            [
                "Bad username/password request from 127.0.0.1:1: "
                "username/password request: version 5, expected 1"
            ],
        )

    def test_needsMore(self) -> None:
        negotiation = UsernamePasswordAuthentication().negotiate([], PEER)
        self.assertIsNone(negotiation.dataReceived(b"\x01\x05ali"))

    def test_constantTimeCredentials(self) -> None:
        credentials = UsernamePassword(b"alice", b"secret")
        self.assertTrue(credentials.checkPassword(b"secret"))
        self.assertTrue(credentials.checkPassword("secret"))
        self.assertFalse(credentials.checkPassword(b"secreT"))
        self.assertNotIn("secret", repr(credentials))
