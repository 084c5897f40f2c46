"""
Tests for L{txsocks5._reactor}: when the fast epoll reactor is used, and
that C{twistd socks5} serves through both it and the stock reactor.
"""

from __future__ import annotations

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import IntegrationTestCase, socksConnect, startTwistd
from tests.test_integration import echoRoundTrip, startEcho
from txsocks5 import _reactor


class AvailabilityTests(SynchronousTestCase):
    """The fast reactor is used only where its Twisted internals were checked."""

    def test_testedVersion(self) -> None:
        if _reactor.epollreactor is None:
            raise SkipTest("no epoll on this platform")
        self.patch(_reactor, "_twistedVersion", lambda: _reactor.TESTED_TWISTED[0])
        self.assertTrue(_reactor.fastReactorAvailable())

    def test_untestedVersion(self) -> None:
        """Another Twisted release gets the stock reactor."""
        self.patch(_reactor, "_twistedVersion", lambda: "99.1")
        self.assertFalse(_reactor.fastReactorAvailable())

    def test_alreadyInstalled(self) -> None:
        """A reactor chosen before (here: trial's) is never replaced."""
        self.assertFalse(_reactor.installFastReactor())


class TwistdReactorTests(IntegrationTestCase):
    """CONNECT through twistd on the fast reactor and on the stock one."""

    async def serveThrough(self, *twistdArgs: str) -> bytes:
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", twistdArgs=twistdArgs)
        port = await child.listening
        _, targetPort = await startEcho(self)

        def client() -> bytes:
            sock, _ = socksConnect(("127.0.0.1", port), "127.0.0.1", targetPort)
            with sock:
                return echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), b"ping through the tunnel")
        return bytes(child.output)

    async def test_fastByDefault(self) -> None:
        if not _reactor.fastReactorAvailable():
            raise SkipTest("the fast reactor is not used with this Twisted")
        output = await self.serveThrough()
        self.assertIn(b"reactor class: txsocks5._reactor.FastEPollReactor", output)

    async def test_stockWhenChosen(self) -> None:
        """twistd --reactor=epoll keeps Twisted's own reactor, and it works as well."""
        output = await self.serveThrough("--reactor=epoll")
        self.assertIn(b"reactor class: twisted.internet.epollreactor.EPollReactor", output)
