"""Tests for L{txsocks5.htpasswd}: the htpasswd (bcrypt) credentials checker and its strcred plugin."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bcrypt
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.plugin import IPlugin, getPlugins
from twisted.python import threadable, usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txsocks5 import htpasswd, wire
from txsocks5.auth import UsernamePassword, UsernamePasswordAuthentication, checkersForRFC1929
from txsocks5.htpasswd import HtpasswdChecker, HtpasswdCheckerFactory, HtpasswdError, parseHtpasswd
from txsocks5.interfaces import AuthOutcome

#: A line exactly as C{htpasswd -B -C 4 -b -n alice secret} (Apache 2.4)
#: wrote it: a C{$2y$} hash of "secret".
HTPASSWD_B_LINE = b"alice:$2y$04$4coGSnVbsku7mdeStj5sZOW6qUjGD6WZqoim5LnMs6suEaDxVfljC"


def bcryptHash(password: bytes, prefix: bytes = b"$2b$") -> bytes:
    """A cheap (cost 4) bcrypt hash of C{password}, with C{prefix} ($2b$, $2y$ or $2a$)."""
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))
    return prefix + hashed[4:]


def line(username: bytes, password: bytes, prefix: bytes = b"$2b$") -> bytes:
    """One C{user:hash} line."""
    return username + b":" + bcryptHash(password, prefix)


def replaceFile(path: Path, content: bytes) -> None:
    """Put C{content} at C{path} as editors and C{htpasswd}-like tools do: a new file moved over it."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(content)
    os.replace(new, path)


class Events:
    """Log events of L{txsocks5.htpasswd} during a test."""

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        testCase.patch(htpasswd, "log", Logger(observer=self.events.append))

    def atLevel(self, level: LogLevel) -> list[dict[str, Any]]:
        """The events logged at C{level}."""
        return [e for e in self.events if e["log_level"] == level]

    def text(self) -> str:
        """Every event, formatted, with its fields."""
        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)


class ParseTests(SynchronousTestCase):
    """L{parseHtpasswd}: the file format."""

    def test_good(self) -> None:
        """Users with $2y$, $2b$ and $2a$ hashes; comments, blank lines and CRLF are fine."""
        alice = bcryptHash(b"a", b"$2y$")
        bob = bcryptHash(b"b", b"$2b$")
        carol = bcryptHash(b"c", b"$2a$")
        data = (
            b"# users\n\nalice:" + alice + b"\r\n  # indented comment\nbob:" + bob + b"\n   \ncarol:" + carol
        )
        self.assertEqual(parseHtpasswd(data), {b"alice": alice, b"bob": bob, b"carol": carol})

    def test_empty(self) -> None:
        self.assertEqual(parseHtpasswd(b""), {})
        self.assertEqual(parseHtpasswd(b"# nobody yet\n\n"), {})

    def test_htpasswdB(self) -> None:
        """A line as C{htpasswd -B} writes it."""
        self.assertEqual(list(parseHtpasswd(HTPASSWD_B_LINE + b"\n")), [b"alice"])

    def test_nonUTF8Username(self) -> None:
        """Usernames are bytes, whatever they are."""
        data = line(b"\xe9ric", b"pw")
        self.assertEqual(list(parseHtpasswd(data)), [b"\xe9ric"])

    def assertRejected(self, data: bytes, *mentions: str) -> str:
        with self.assertRaises(HtpasswdError) as caught:
            parseHtpasswd(data, "/etc/users.htpasswd")
        message = str(caught.exception)
        self.assertIn("/etc/users.htpasswd", message)
        for mention in mentions:
            self.assertIn(mention, message)
        return message

    def test_noColon(self) -> None:
        """A line that is not user:hash: an error naming the file and the line number."""
        data = b"# c\n" + line(b"alice", b"a") + b"\nnonsense\n"
        self.assertRejected(data, "line 3", "user:hash")

    def test_noUsername(self) -> None:
        self.assertRejected(b"\n" + b":" + bcryptHash(b"x"), "line 2", "user:hash")

    def test_otherSchemes(self) -> None:
        """Every non-bcrypt hash is refused, naming file, line and user, and telling to use htpasswd -B."""
        cases = [
            (b"bob:$apr1$Zl0yc5gT$Tgm9DEzb0uHUJ/oXwp7Ot/", "$apr1$"),
            (b"bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "{SHA}"),
            (b"bob:rT0dgHt2TXRzM", "crypt"),
            (b"bob:secret", "plain-text"),
            (b"bob:$6$salt$abcdefghijklmnopqrstuvwxyz", "$6$"),
            (b"bob:$2y$03$" + b"." * 53, "malformed bcrypt"),
            (b"bob:$2y$05$" + b"." * 52, "malformed bcrypt"),
            (b"bob:$2x$05$" + b"." * 53, "malformed bcrypt"),
            (b"bob:realm:" + bcryptHash(b"x"), "plain-text"),
        ]
        for entry, kind in cases:
            message = self.assertRejected(
                line(b"alice", b"a") + b"\n" + entry + b"\n", "line 2", "'bob'", kind
            )
            self.assertIn("htpasswd -B", message)
            self.assertNotIn(entry.split(b":", 1)[1].decode(), message)

    def test_duplicate(self) -> None:
        """A user listed twice is an error naming both lines."""
        data = line(b"alice", b"a") + b"\n" + line(b"bob", b"b") + b"\n" + line(b"alice", b"c")
        self.assertRejected(data, "line 3", "'alice'", "line 1")


class ConstructionTests(SynchronousTestCase):
    """Loading the file when the checker is made."""

    def test_missing(self) -> None:
        path = os.path.abspath(self.mktemp())
        with self.assertRaises(HtpasswdError) as caught:
            HtpasswdChecker(path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("cannot read", str(caught.exception))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        self.assertRaises(HtpasswdError, HtpasswdChecker, path)

    def test_malformed(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"alice:$apr1$Zl0yc5gT$Tgm9DEzb0uHUJ/oXwp7Ot/\n")
        with self.assertRaises(HtpasswdError) as caught:
            HtpasswdChecker(str(path))
        self.assertIn(f"{path}, line 1: user 'alice'", str(caught.exception))

    def test_loaded(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(HTPASSWD_B_LINE + b"\n" + line(b"bob", b"b") + b"\n")
        checker = HtpasswdChecker(str(path))
        self.assertEqual(checker.usernames, {b"alice", b"bob"})
        self.assertEqual(checker.filename, str(path))
        self.assertIn(str(path), repr(checker))

    def test_emptyWarns(self) -> None:
        """A file with no users loads, with a warning that every login will be refused."""
        events = Events(self)
        path = Path(self.mktemp())
        path.write_bytes(b"# nobody\n")
        self.assertEqual(HtpasswdChecker(str(path)).usernames, frozenset())
        [warning] = events.atLevel(LogLevel.warn)
        self.assertEqual(warning["path"], str(path))

    def test_interfaces(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(HTPASSWD_B_LINE)
        checker = HtpasswdChecker(str(path))
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(checker.credentialInterfaces, (IUsernamePassword,))
        self.assertTrue(verifyObject(strcred.ICheckerFactory, HtpasswdCheckerFactory()))
        self.assertTrue(verifyObject(IPlugin, HtpasswdCheckerFactory()))


class _Options(usage.Options, strcred.AuthOptionMixin):
    """A command line with C{--auth}, as C{twistd socks5} has."""

    supportedInterfaces = [IUsernamePassword]


class PluginTests(SynchronousTestCase):
    """The C{htpasswd} strcred plugin (C{twisted/plugins/txsocks5_htpasswd.py})."""

    def test_found(self) -> None:
        factory = strcred.findCheckerFactory("htpasswd")
        self.assertIsInstance(factory, HtpasswdCheckerFactory)
        self.assertIn("htpasswd", [f.authType for f in getPlugins(strcred.ICheckerFactory)])
        self.assertIn(IUsernamePassword, factory.credentialInterfaces)
        self.assertIn("htpasswd -B", factory.authHelp)

    def test_makeChecker(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(HTPASSWD_B_LINE)
        checker = strcred.makeChecker(f"htpasswd:{path}")
        self.assertIsInstance(checker, HtpasswdChecker)
        self.assertEqual(checker.filename, str(path))

    def test_noFile(self) -> None:
        self.assertRaises(HtpasswdError, strcred.makeChecker, "htpasswd")
        self.assertRaises(HtpasswdError, strcred.makeChecker, "htpasswd:")

    def test_usageError(self) -> None:
        """--auth with a missing or malformed file is a usage error naming the file."""
        options = _Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--auth", "htpasswd:/nonexistent/users"])
        self.assertIn("/nonexistent/users: cannot read the file", str(caught.exception))
        path = Path(self.mktemp())
        path.write_bytes(b"alice:secret\n")
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--auth", f"htpasswd:{path}"])
        self.assertIn(f"{path}, line 1: user 'alice'", str(caught.exception))

    def test_options(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(HTPASSWD_B_LINE)
        options = _Options()
        options.parseOptions(["--auth", f"htpasswd:{path}"])
        [checker] = options["credCheckers"]
        self.assertIsInstance(checker, HtpasswdChecker)


class CheckerTests(TestCase):
    """Logins, with bcrypt in the (real) reactor's thread pool."""

    def setUp(self) -> None:
        self.events = Events(self)
        self.path = Path(self.mktemp())
        self.path.write_bytes(b"# test users\n" + HTPASSWD_B_LINE + b"\n" + line(b"bob", b"hunter2") + b"\n")
        self.checker = HtpasswdChecker(str(self.path))
        self.checked: list[tuple[bytes, bytes]] = []
        self.inIOThread: list[bool] = []
        real = htpasswd._bcryptMatches

        def recording(password: bytes, hashed: bytes) -> bool:
            self.checked.append((password, hashed))
            self.inIOThread.append(threadable.isInIOThread())
            return real(password, hashed)

        self.patch(htpasswd, "_bcryptMatches", recording)

    async def login(self, username: bytes | str, password: bytes | str) -> Any:
        """The avatar ID for these credentials."""
        credentials = UsernamePassword(
            username.encode() if isinstance(username, str) else username,
            password.encode() if isinstance(password, str) else password,
        )
        return await self.checker.requestAvatarId(credentials)

    async def assertRefused(self, username: bytes, password: bytes) -> None:
        with self.assertRaises(UnauthorizedLogin) as caught:
            await self.login(username, password)
        self.assertEqual(str(caught.exception), "wrong username or password")

    async def test_rightPassword(self) -> None:
        """The $2y$ line from htpasswd -B and a $2b$ line both work; the avatar ID is the username bytes."""
        self.assertEqual(await self.login(b"alice", b"secret"), b"alice")
        self.assertEqual(await self.login(b"bob", b"hunter2"), b"bob")
        self.assertTrue(threadable.isInIOThread())
        self.assertEqual(self.inIOThread, [False, False], "bcrypt ran in the reactor thread")

    async def test_strCredentials(self) -> None:
        """Credentials that carry str (other twisted.cred users) work too, as UTF-8."""

        class StrCredentials:
            username = "alice"
            password = "secret"

        self.assertEqual(await self.checker.requestAvatarId(StrCredentials()), b"alice")  # type: ignore[arg-type]

    async def test_wrongPassword(self) -> None:
        await self.assertRefused(b"alice", b"hunter2")
        await self.assertRefused(b"alice", b"")
        await self.assertRefused(b"ALICE", b"secret")

    async def test_unknownUser(self) -> None:
        """An unknown user is refused like a wrong password, after a bcrypt check of the same cost."""
        await self.assertRefused(b"eve", b"secret")
        [(password, hashed)] = self.checked
        self.assertEqual(password, b"secret")
        self.assertTrue(hashed.startswith(b"$2b$04$"), hashed)
        self.assertNotIn(hashed, parseHtpasswd(self.path.read_bytes()).values())

    async def test_longPassword(self) -> None:
        """Passwords are cut at 72 bytes, as htpasswd -B does when hashing."""
        replaceFile(self.path, line(b"carol", b"p" * 72))
        self.assertEqual(await self.login(b"carol", b"p" * 72 + b"whatever"), b"carol")
        await self.assertRefused(b"carol", b"p" * 71)

    async def test_oddPasswords(self) -> None:
        """NUL bytes and non-UTF-8 bytes are just refused."""
        await self.assertRefused(b"alice", b"sec\x00ret")
        await self.assertRefused(b"alice", b"\xff\xfe")

    async def test_throughRFC1929(self) -> None:
        """The RFC 1929 authenticator uses it as it is; the user is the decoded name."""
        [checker] = checkersForRFC1929([self.checker])
        self.assertIs(checker, self.checker)
        negotiation = UsernamePasswordAuthentication().negotiate(
            [checker], IPv4Address("TCP", "127.0.0.1", 1)
        )
        result = negotiation.dataReceived(wire.AuthRequest(b"alice", b"secret").encode())
        assert result is not None
        outcome = await result[0]
        self.assertEqual(outcome, AuthOutcome(True, "alice", b"\x01\x00"))

    async def test_reloadOnChange(self) -> None:
        """A changed file is read before the next login: new password in, old one out."""
        await self.login(b"alice", b"secret")
        replaceFile(self.path, line(b"alice", b"changed") + b"\n" + line(b"dave", b"d") + b"\n")
        self.assertEqual(await self.login(b"alice", b"changed"), b"alice")
        await self.assertRefused(b"alice", b"secret")
        await self.assertRefused(b"bob", b"hunter2")
        self.assertEqual(await self.login(b"dave", b"d"), b"dave")
        self.assertEqual(self.checker.usernames, {b"alice", b"dave"})
        [reloaded] = self.events.atLevel(LogLevel.info)
        self.assertEqual((reloaded["path"], reloaded["users"]), (str(self.path), 2))

    async def test_reloadInPlace(self) -> None:
        """A file rewritten in place (same inode and size) is noticed by its modification time."""
        before = os.stat(self.path)
        content = self.path.read_bytes().replace(b"bob:", b"eve:")
        with open(self.path, "r+b") as f:
            f.write(content)
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        self.assertEqual(os.stat(self.path).st_ino, before.st_ino)
        self.assertEqual(await self.login(b"eve", b"hunter2"), b"eve")
        await self.assertRefused(b"bob", b"hunter2")

    async def test_malformedReloadKeepsUsers(self) -> None:
        """A changed file that is malformed is logged once; the users loaded before stay."""
        replaceFile(self.path, line(b"alice", b"new") + b"\nbob:$apr1$Zl0yc5gT$Tgm9DEzb0uHUJ/oXwp7Ot/\n")
        self.assertEqual(await self.login(b"alice", b"secret"), b"alice")
        await self.assertRefused(b"alice", b"new")
        self.assertEqual(await self.login(b"bob", b"hunter2"), b"bob")
        [error] = self.events.atLevel(LogLevel.error)
        self.assertEqual(error["path"], str(self.path))
        self.assertEqual(error["users"], 2)
        self.assertIn("line 2: user 'bob'", error["error"])
        self.assertIn("htpasswd -B", formatEvent(error))
        # Fixed: loaded at the next login.
        replaceFile(self.path, line(b"alice", b"new") + b"\n")
        self.assertEqual(await self.login(b"alice", b"new"), b"alice")
        await self.assertRefused(b"bob", b"hunter2")

    async def test_missingFileKeepsUsers(self) -> None:
        """A file that went away is logged once; the users loaded before stay until it is back."""
        self.path.unlink()
        self.assertEqual(await self.login(b"alice", b"secret"), b"alice")
        await self.assertRefused(b"alice", b"wrong")
        [error] = self.events.atLevel(LogLevel.error)
        self.assertIn("cannot read the file", error["error"])
        replaceFile(self.path, line(b"alice", b"back") + b"\n")
        self.assertEqual(await self.login(b"alice", b"back"), b"alice")
        self.assertEqual(len(self.events.atLevel(LogLevel.error)), 1)

    async def test_concurrentLoginsLogOnce(self) -> None:
        """Logins at once that all find the same change log it once (a reload, or an error)."""
        replaceFile(self.path, line(b"alice", b"new") + b"\n")
        results = await gatherResults(
            [Deferred.fromCoroutine(self.login(b"alice", b"new")) for _ in range(6)]
        )
        self.assertEqual(results, [b"alice"] * 6)
        self.assertEqual(len(self.events.atLevel(LogLevel.info)), 1)
        replaceFile(self.path, b"alice:secret\n")
        results = await gatherResults(
            [Deferred.fromCoroutine(self.login(b"alice", b"new")) for _ in range(6)]
        )
        self.assertEqual(results, [b"alice"] * 6)
        self.assertEqual(len(self.events.atLevel(LogLevel.error)), 1)

    async def test_reload(self) -> None:
        """reload() reads the file even when nothing on disk looks changed."""
        before = os.stat(self.path)
        content = self.path.read_bytes().replace(b"bob:", b"eve:")
        with open(self.path, "r+b") as f:
            f.write(content)
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        # Same fingerprint: a login does not notice...
        await self.assertRefused(b"eve", b"hunter2")
        # ...but a reload does.
        self.assertIs(await self.checker.reload(), True)
        self.assertEqual(self.checker.usernames, {b"alice", b"eve"})
        self.assertEqual(await self.login(b"eve", b"hunter2"), b"eve")
        # Asked for, a reload is always logged, changed or not.
        self.assertIs(await self.checker.reload(), True)
        self.assertEqual(len(self.events.atLevel(LogLevel.info)), 2)

    async def test_reloadMalformed(self) -> None:
        """reload() of a malformed or missing file fires False, logs, and keeps the users."""
        self.path.write_bytes(b"alice\n")
        self.assertIs(await self.checker.reload(), False)
        self.assertIs(await self.checker.reload(), False)
        self.path.unlink()
        self.assertIs(await self.checker.reload(), False)
        self.assertEqual(self.checker.usernames, {b"alice", b"bob"})
        self.assertEqual(await self.login(b"alice", b"secret"), b"alice")
        errors = self.events.atLevel(LogLevel.error)
        self.assertEqual(len(errors), 3)
        self.assertIn("line 1", errors[0]["error"])
        self.assertIn("line 1", errors[1]["error"])
        self.assertIn("cannot read the file", errors[2]["error"])

    async def test_passwordsNeverLogged(self) -> None:
        """Neither passwords tried nor those in the file reach the log."""
        await self.assertRefused(b"alice", b"Tr0ub4dor&3")
        replaceFile(self.path, line(b"alice", b"n3wPassw0rd") + b"\nbob:Pl4inTextPw\n")
        await self.assertRefused(b"alice", b"n3wPassw0rd")
        self.path.write_bytes(line(b"alice", b"n3wPassw0rd"))
        await self.checker.reload()
        text = self.events.text()
        self.assertTrue(self.events.events)
        for secret in ("Tr0ub4dor&3", "n3wPassw0rd", "Pl4inTextPw", "$2b$", "$2y$"):
            self.assertNotIn(secret, text)
