"""A real IRC server for tests, and a tiny IRC client to talk to it as a test peer.

:class:`IrcServer` runs `miniircd <https://pypi.org/project/miniircd/>`_ (pure Python, from the ``dev`` extra) as a
subprocess on 127.0.0.1 and a free port; ``stop()``/``start()``/``restart()`` keep the port, so a bridge reconnects
to the same address (:class:`IrcServerProcess` is the process handling it shares with
:class:`~bot.testing.ngircd.NgircdServer`)::

    with IrcServer(tmp_path) as ircd:
        peer = await IrcClient.connect(ircd.port, "carol")
        await peer.join("#room")
        await peer.say("#room", "hello")
        line = await peer.expect(lambda m: m.command == "PRIVMSG" and "hi" in m.text)

:class:`IrcClient` is deliberately raw (a few lines of asyncio streams): it is the peer the bridge is tested against,
not a second implementation of the bridge. It records every line it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

__all__ = ["IrcClient", "IrcLine", "IrcServer", "IrcServerError", "IrcServerProcess", "self_signed_pem"]


class IrcServerError(RuntimeError):
    """The test IRC server could not be started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _miniircd() -> list[str]:
    exe = Path(sys.executable).with_name("miniircd")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("miniircd")
    if found:
        return [found]
    return [sys.executable, "-m", "miniircd"]


def self_signed_pem(path: Path, host: str = "localhost") -> Path:
    """Write a new self-signed certificate for ``host`` (valid for a day) and its key to the PEM file ``path``, for
    ``IrcServer(..., ssl_pem=path)``; returns ``path``. Needs the ``cryptography`` package (Synapse brings it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


class IrcServerProcess:
    """An IRC server as a subprocess on 127.0.0.1 and a free port, the part :class:`IrcServer` (miniircd) and
    :class:`~bot.testing.ngircd.NgircdServer` share: :meth:`start` waits until it accepts connections (trying again
    while a restart's port is still in TIME_WAIT), :meth:`stop` ends it, the port stays across restarts. A subclass
    gives :meth:`_command` (and writes what the server needs before it starts there)."""

    #: The server's name in errors.
    server_name = "the IRC server"
    #: The server's output, in ``base_dir``.
    log_name = "server.log"
    #: The subprocess's stdin (None: inherited).
    stdin: int | None = None

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.base_dir / self.log_name

    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground (called by :meth:`start`)."""
        raise NotImplementedError

    def start(self, timeout: float = 15) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        cmd = self._command()
        self._log = self.log_path.open("ab")
        deadline = time.monotonic() + timeout
        while True:
            self._proc = subprocess.Popen(
                cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=self.stdin, cwd=self.base_dir
            )
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # died (port still in TIME_WAIT after a restart?): try again below
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                    return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                self.stop()
                raise IrcServerError(f"{self.server_name} did not start on port {self.port}: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (every client is disconnected)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IrcServer(IrcServerProcess):
    """miniircd on 127.0.0.1 (see the module docstring). ``available()`` says whether miniircd is installed."""

    server_name = "miniircd"
    log_name = "miniircd.log"

    def __init__(self, base_dir: Path, port: int | None = None, *, ssl_pem: Path | None = None) -> None:
        """``ssl_pem``: a PEM file with the certificate and key to serve TLS instead of plain text."""
        self.ssl_pem = ssl_pem
        super().__init__(base_dir, port)

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("miniircd") is not None

    @property
    def log_dir(self) -> Path:
        """Where the server logs every channel's messages (kept across restarts)."""
        return self.base_dir / "channels"

    def channel_log(self, channel: str) -> list[tuple[str, str]]:
        """``(nick, text)`` of every message the server relayed to ``channel``, across restarts, in order.

        This is the server's own record: a test can check what reached the channel even when no peer was there.
        """
        path = self.log_dir / (channel.lower().replace("_", "__").replace("/", "_") + ".log")
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            # "[2024-01-01 00:00:00 UTC] <nick> text"; meta lines ("* nick joined") are skipped
            _, _, rest = line.partition("] ")
            if rest.startswith("<") and "> " in rest:
                nick, _, text = rest[1:].partition("> ")
                out.append((nick, text))
        return out

    def _command(self) -> list[str]:
        self.log_dir.mkdir(exist_ok=True)
        cmd = [*_miniircd(), "--listen", self.host, "--ports", str(self.port), "--debug",
               "--channel-log-dir", str(self.log_dir)]
        if self.ssl_pem is not None:
            cmd += ["--ssl-pem-file", str(self.ssl_pem)]
        if os.geteuid() == 0:
            cmd += ["--setuid", "root"]  # miniircd refuses to run as root unless told so (CI runs as root)
        return cmd

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, wait ``down_for`` seconds, start again on the same port."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()


@dataclass(frozen=True)
class IrcLine:
    """One line from the server: ``:prefix COMMAND params... :trailing``."""

    raw: str
    prefix: str
    command: str
    params: tuple[str, ...]

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    @property
    def target(self) -> str:
        return self.params[0] if self.params else ""

    @property
    def text(self) -> str:
        return self.params[-1] if self.params else ""

    @classmethod
    def parse(cls, raw: str) -> IrcLine:
        rest = raw
        prefix = ""
        if rest.startswith("@"):
            _, _, rest = rest.partition(" ")
        if rest.startswith(":"):
            prefix, _, rest = rest[1:].partition(" ")
        trailing = None
        if " :" in rest:
            rest, trailing = rest.split(" :", 1)
        elif rest.startswith(":"):
            rest, trailing = "", rest[1:]
        parts = rest.split()
        command = parts[0].upper() if parts else ""
        params = parts[1:] + ([trailing] if trailing is not None else [])
        return cls(raw, prefix, command, tuple(params))


class IrcClient:
    """A minimal IRC client for tests: connect, join, say, and wait for lines."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.lines: list[IrcLine] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, port: int, nick: str, *, host: str = "127.0.0.1", timeout: float = 10) -> IrcClient:
        """Connect and register as ``nick``; returns once the server welcomed us."""
        client = cls(nick)
        await client._open(host, port, timeout)
        return client

    async def _open(self, host: str, port: int, timeout: float) -> None:
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        self.closed.clear()
        self._task = asyncio.create_task(self._read_loop())
        self.send_raw(f"NICK {self.nick}")
        self.send_raw(f"USER {self.nick} 0 * :{self.nick} (test peer)")
        await self.expect(lambda m: m.command in ("001", "433"), timeout=timeout, since=0)
        if any(m.command == "433" for m in self.lines):
            raise AssertionError(f"nick {self.nick} is taken")

    def send_raw(self, line: str) -> None:
        assert self._writer is not None, "not connected"
        self._writer.write(line.encode() + b"\r\n")

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.readline()
                if not data:
                    break
                raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
                line = IrcLine.parse(raw)
                if line.command == "PING":
                    self.send_raw(f"PONG :{line.text}")
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def join(self, channel: str, timeout: float = 10) -> None:
        self.send_raw(f"JOIN {channel}")
        await self.expect(lambda m: m.command == "366" and channel.lower() in (p.lower() for p in m.params),
                          timeout=timeout)

    async def say(self, target: str, text: str) -> None:
        self.send_raw(f"PRIVMSG {target} :{text}")
        assert self._writer is not None
        await self._writer.drain()

    async def action(self, target: str, text: str) -> None:
        await self.say(target, f"\x01ACTION {text}\x01")

    async def expect(
        self, predicate: Callable[[IrcLine], bool], *, timeout: float = 20, since: int = 0
    ) -> IrcLine:
        """The first received line (from index ``since``) matching ``predicate``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for line in self.lines[since:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = "\n".join(m.raw for m in self.lines[-15:])
                    raise AssertionError(f"{self.nick}: no matching IRC line within {timeout}s; recent:\n{recent}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    def privmsgs(self, channel: str | None = None, *, nick: str | None = None) -> list[IrcLine]:
        """PRIVMSGs received (to ``channel`` and/or from ``nick``), in order."""
        return [
            m for m in self.lines
            if m.command == "PRIVMSG"
            and (channel is None or m.target.lower() == channel.lower())
            and (nick is None or m.nick.lower() == nick.lower())
        ]

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self.send_raw("QUIT :bye")
                await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
