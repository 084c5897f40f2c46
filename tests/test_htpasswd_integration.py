"""
End-to-end tests of C{--auth htpasswd:PATH} over real loopback sockets:
curl, python-socks and raw RFC 1929 clients against an in-process server
with an L{HtpasswdChecker}, and a C{twistd socks5} child whose htpasswd file
changes while it runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from pathlib import Path

import bcrypt
from python_socks import ProxyError, ProxyType
from python_socks.sync import Proxy
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.support import (
    CURL,
    LOOPBACK4,
    SKIP_CURL,
    EchoProtocol,
    IntegrationTestCase,
    Server,
    connectTo,
    encodeAuth,
    listenTCP,
    recvExactly,
    recvUntilClosed,
    runCurl,
    runProcess,
    socksConnect,
    startTarget,
    startTwistd,
    twistdCommand,
    waitFor,
)
from tests.test_integration import BODY, httpSite
from txsocks5.auth import UsernamePasswordAuthentication
from txsocks5.htpasswd import HtpasswdChecker

HTPASSWD = shutil.which("htpasswd")

#: What a server sends to a username/password greeting and an accepted login.
ACCEPTED = b"\x05\x02\x01\x00"
#: ... and to a refused login.
REFUSED = b"\x05\x02\x01\x01"


def bcryptLine(username: bytes, password: bytes, prefix: bytes = b"$2y$") -> bytes:
    """A C{user:hash} line like C{htpasswd -B} writes ($2y$), at cost 4 for speed."""
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))
    return username + b":" + prefix + hashed[4:] + b"\n"


def replaceFile(path: Path, content: bytes) -> None:
    """Put C{content} at C{path}: a new file moved over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(content)
    os.replace(new, path)


def echoRoundTrip(sock: socket.socket, payload: bytes = b"ping through the tunnel") -> bytes:
    """Send C{payload} to an echo target and read it back."""
    sock.sendall(payload)
    return recvExactly(sock, len(payload))


def login(proxy: tuple[str, int], username: bytes, password: bytes) -> bytes:
    """
    Offer username/password and log in; return the server's two answers
    (method selection and login status).  A refused login must be followed
    by a close.
    """
    with connectTo(proxy) as sock:
        sock.sendall(b"\x05\x01\x02" + encodeAuth(username, password))
        answers = recvExactly(sock, 4)
        if answers[3] != 0 and recvUntilClosed(sock) != b"":
            raise AssertionError("data after a refused login")
        return answers


class HtpasswdServerTests(IntegrationTestCase):
    """An in-process server with an L{HtpasswdChecker}; real clients over loopback."""

    async def setUpServer(self) -> tuple[Path, Server]:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"# txsocks5 users\n" + bcryptLine(b"alice", b"secret") + bcryptLine(b"bob", b"pw2"))
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()], checkers=[HtpasswdChecker(str(path))]
        )
        return path, server

    async def echoTarget(self) -> int:
        _, port = await startTarget(self, EchoProtocol)
        return port

    async def test_rawRightPassword(self) -> None:
        """RFC 1929 by hand: 01 00, then a working tunnel to the echo target."""
        _, server = await self.setUpServer()
        port = await self.echoTarget()

        def client() -> tuple[int, bytes]:
            sock, reply = socksConnect(server.address, LOOPBACK4, port, (b"alice", b"secret"))
            with sock:
                return reply[0], echoRoundTrip(sock)

        self.assertEqual(await deferToThread(client), (0, b"ping through the tunnel"))

    async def test_rawRefused(self) -> None:
        """Wrong password and unknown user: both answered 01 01, then a close."""
        _, server = await self.setUpServer()
        for username, password in [(b"alice", b"wrong"), (b"eve", b"secret"), (b"alice", b"")]:
            self.assertEqual(await deferToThread(login, server.address, username, password), REFUSED)
        self.assertEqual(server.outbound.attempts, [])

    async def test_pythonSocks(self) -> None:
        """python-socks: the right password connects to the echo target, a wrong one raises ProxyError."""
        _, server = await self.setUpServer()
        port = await self.echoTarget()

        def client(password: str) -> bytes:
            proxy = Proxy(ProxyType.SOCKS5, server.host, server.port, "alice", password, rdns=True)
            sock = proxy.connect(dest_host=LOOPBACK4, dest_port=port, timeout=10)
            with sock:
                sock.settimeout(10)
                return echoRoundTrip(sock, b"python-socks says hi")

        self.assertEqual(await deferToThread(client, "secret"), b"python-socks says hi")
        with self.assertRaises(ProxyError):
            await deferToThread(client, "wrong")
        self.assertEqual(len(server.outbound.attempts), 1)

    async def curl(self, server: Server, user: str) -> tuple[bytes, bytes, int]:
        port = (await listenTCP(self, httpSite())).getHost().port  # type: ignore[attr-defined]
        return await runCurl("--socks5", server.url, "--proxy-user", user, f"http://127.0.0.1:{port}/")

    async def test_curl(self) -> None:
        """curl --socks5 --proxy-user alice:secret fetches through the proxy."""
        if CURL is None:
            raise SkipTest(SKIP_CURL)
        _, server = await self.setUpServer()
        out, err, code = await self.curl(server, "alice:secret")
        self.assertEqual((code, out), (0, BODY), err)

    async def test_curlWrongPassword(self) -> None:
        """curl with a wrong password fails and nothing is fetched."""
        if CURL is None:
            raise SkipTest(SKIP_CURL)
        _, server = await self.setUpServer()
        out, err, code = await self.curl(server, "alice:wrong")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertEqual(server.outbound.attempts, [])

    async def test_concurrentLogins(self) -> None:
        """Many logins at once (bcrypt in threads): each gets its own right answer."""
        _, server = await self.setUpServer()
        cases = [(b"alice", b"secret", ACCEPTED), (b"bob", b"pw2", ACCEPTED), (b"bob", b"x", REFUSED)] * 4

        def clients() -> list[bytes]:
            # Plain threads, not the reactor's pool: the server's bcrypt
            # checks need that pool, and blocked clients must not fill it.
            answers: list[bytes] = [b""] * len(cases)

            def client(index: int, username: bytes, password: bytes) -> None:
                answers[index] = login(server.address, username, password)

            threads = [threading.Thread(target=client, args=(i, u, p)) for i, (u, p, _) in enumerate(cases)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            return answers

        self.assertEqual(await deferToThread(clients), [expected for _, _, expected in cases])

    async def test_htpasswdTool(self) -> None:
        """A file made and changed (in place) by Apache's htpasswd -B: logins follow it."""
        if HTPASSWD is None:
            raise SkipTest("htpasswd (apache2-utils) is not installed")
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        out, err, code = await runProcess(
            [HTPASSWD, "-B", "-C", "4", "-c", "-b", str(path), "alice", "secret"]
        )
        self.assertEqual(code, 0, err)
        self.assertTrue(path.read_bytes().startswith(b"alice:$2y$04$"))
        server = await self.startServer(
            authenticators=[UsernamePasswordAuthentication()], checkers=[HtpasswdChecker(str(path))]
        )
        self.assertEqual(await deferToThread(login, server.address, b"alice", b"secret"), ACCEPTED)
        out, err, code = await runProcess([HTPASSWD, "-B", "-C", "4", "-b", str(path), "alice", "changed"])
        self.assertEqual(code, 0, err)
        self.assertEqual(await deferToThread(login, server.address, b"alice", b"changed"), ACCEPTED)
        self.assertEqual(await deferToThread(login, server.address, b"alice", b"secret"), REFUSED)


class HtpasswdTwistdTests(IntegrationTestCase):
    """C{twistd socks5 --auth htpasswd:PATH} as a child process."""

    async def test_changeWhileTunnelOpen(self) -> None:
        """
        Log in; change alice's password while that tunnel is open: new logins
        need the new password, the old one fails, the open tunnel still
        relays.  A malformed rewrite afterwards is logged and changes nothing.
        """
        path = Path(self.mktemp()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bcryptLine(b"alice", b"s3cret-old"))
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", "--auth", f"htpasswd:{path}")
        proxy = (LOOPBACK4, await child.listening)
        _, targetPort = await startTarget(self, EchoProtocol)
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])

        def tunnel(password: bytes) -> socket.socket:
            sock, reply = socksConnect(proxy, LOOPBACK4, targetPort, (b"alice", password))
            sockets.append(sock)
            if reply[0] != 0:
                raise AssertionError(f"REP {reply[0]}")
            return sock

        first = await deferToThread(tunnel, b"s3cret-old")
        self.assertEqual(await deferToThread(echoRoundTrip, first, b"before"), b"before")

        replaceFile(path, b"# changed\n" + bcryptLine(b"alice", b"n3w-pass", b"$2b$"))
        second = await deferToThread(tunnel, b"n3w-pass")
        self.assertEqual(await deferToThread(echoRoundTrip, second, b"new login"), b"new login")
        with self.assertRaisesRegex(ValueError, "login refused"):
            await deferToThread(tunnel, b"s3cret-old")
        self.assertEqual(await deferToThread(echoRoundTrip, first, b"still relaying"), b"still relaying")
        await waitFor(lambda: b"Reloaded " in child.output, what="the reload log line")
        self.assertIn(f"Reloaded {path} (1 user(s))".encode(), bytes(child.output))

        replaceFile(path, b"alice:$apr1$Zl0yc5gT$Tgm9DEzb0uHUJ/oXwp7Ot/\n")
        self.assertEqual(await deferToThread(login, proxy, b"alice", b"n3w-pass"), ACCEPTED)
        self.assertEqual(await deferToThread(echoRoundTrip, first, b"and after"), b"and after")
        await waitFor(lambda: b"Not reloaded" in child.output, what="the reload error")
        output = bytes(child.output)
        self.assertRegex(output, re.escape(f"{path}, line 1: user 'alice'".encode()))
        self.assertIn(b"still using the 1 user(s) loaded before", output)
        for secret in (b"s3cret-old", b"n3w-pass", b"Zl0yc5gT", b"$2y$", b"$2b$"):
            self.assertNotIn(secret, output)
        self.assertNotIn(b"Traceback", output)
        for sock in sockets:
            sock.close()
        self.assertTrue(child.running)

    async def test_sighupReloads(self) -> None:
        """SIGHUP reads the file again at once (even unchanged), and the server keeps running."""
        path = Path(self.mktemp()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bcryptLine(b"alice", b"pw") + bcryptLine(b"bob", b"pw"))
        child = await startTwistd(self, "--port", "tcp:0:interface=127.0.0.1", "--auth", f"htpasswd:{path}")
        proxy = (LOOPBACK4, await child.listening)
        child.transport.signalProcess("HUP")  # type: ignore[union-attr]
        await waitFor(lambda: f"Reloaded {path} (2 user(s))".encode() in child.output, what="the reload")
        self.assertIn(b"SIGHUP: reading the credentials again", bytes(child.output))
        self.assertEqual(await deferToThread(login, proxy, b"bob", b"pw"), ACCEPTED)
        self.assertTrue(child.running)

    async def twistd(self, *args: str) -> tuple[bytes, int]:
        """Run C{twistd -n socks5 ARGS} to completion; return its output and exit code."""
        workdir = self.mktemp()
        Path(workdir).mkdir(parents=True)
        out, err, code = await runProcess(twistdCommand("--pidfile=", "-n", "socks5", *args), path=workdir)
        return out + err, code

    def assertUsageError(self, output: bytes, code: int, *mentions: bytes) -> None:
        """A non-zero exit, no traceback, and one line (the last) naming the problem."""
        self.assertNotEqual(code, 0, output)
        self.assertNotIn(b"Traceback", output)
        lastLine = output.strip().splitlines()[-1]
        for mention in mentions:
            self.assertIn(mention, lastLine, output)
            self.assertEqual(output.count(mention), 1, output)

    async def test_missingFile(self) -> None:
        """--auth htpasswd:/nonexistent: a one-line usage error."""
        output, code = await self.twistd("--auth", "htpasswd:/nonexistent")
        self.assertUsageError(output, code, b"/nonexistent: cannot read the file")

    async def test_malformedFile(self) -> None:
        """A file with a non-bcrypt hash: a one-line usage error naming file, line and user."""
        path = Path(self.mktemp()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bcryptLine(b"alice", b"secret") + b"bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        output, code = await self.twistd("--auth", f"htpasswd:{path}")
        self.assertUsageError(output, code, f"{path}, line 2: user 'bob'".encode(), b"htpasswd -B")

    async def test_helpAuth(self) -> None:
        """--help-auth lists htpasswd; --help-auth-type htpasswd explains it."""
        output, code = await self.twistd("--help-auth")
        self.assertEqual(code, 0, output)
        self.assertRegex(output, rb"(?m)^\s+htpasswd\s+Path of an htpasswd file")
        output, code = await self.twistd("--help-auth-type", "htpasswd")
        self.assertEqual(code, 0, output)
        self.assertIn(b"htpasswd -B -c FILE USER", output)
