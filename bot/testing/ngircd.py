"""ngIRCd, a real production IRC server (the Debian ``ngircd`` package), for tests.

:class:`NgircdServer` runs ``ngircd --nodaemon`` on 127.0.0.1 and a free port with a config generated under the
test's directory (no DNS, ident or PAM lookups, no per-IP connection limit); ``stop()`` ends it, ``start()`` brings it
back on the same port. Talk to it with :class:`bot.testing.ircd.IrcClient`::

    with NgircdServer(tmp_path / "ngircd") as ircd:
        peer = await IrcClient.connect(ircd.port, "carol")

Unlike miniircd it behaves as servers operators meet do: silent until a client has sent a line (so a TLS handshake
against it hangs until its registration timeout), ``CAP LS`` before registration, a nick length limit (raised to 30
here). ``available()`` says whether the binary is installed (``apt-get install ngircd``; ``.ci/run`` installs it).
As root, ngircd reads its config first, then drops to the ``nobody`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from bot.testing.ircd import IrcServerError

__all__ = ["NgircdServer"]

#: Where Debian installs the daemon (not on a normal user's PATH).
_CANDIDATES = ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ngircd_binary() -> str | None:
    """The ngircd executable, or None if it is not installed."""
    found = shutil.which("ngircd")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


class NgircdServer:
    """ngircd on 127.0.0.1 (see the module docstring)."""

    def __init__(self, base_dir: Path, port: int | None = None, *, name: str = "irc.ratchet.test") -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @staticmethod
    def available() -> bool:
        return ngircd_binary() is not None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.base_dir / "ngircd.conf"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "ngircd.log"

    def write_config(self) -> Path:
        """Write the server's config (done by :meth:`start`); returns its path."""
        self.config_path.write_text(
            "[Global]\n"
            f"\tName = {self.name}\n"
            "\tInfo = Ratchet test server\n"
            f"\tListen = {self.host}\n"
            f"\tPorts = {self.port}\n"
            '\tMotdPhrase = "Ratchet test server"\n'
            "\tAdminInfo1 = tests\n\tAdminInfo2 = 127.0.0.1\n\tAdminEMail = tests@localhost\n"
            "[Limits]\n"
            "\tMaxConnectionsIP = 0\n"
            "\tMaxNickLength = 30\n"
            "\tMaxJoins = 0\n"
            "\tPingTimeout = 120\n"
            "\tPongTimeout = 20\n"
            "[Options]\n"
            "\tDNS = no\n"
            "\tIdent = no\n"
            "\tPAM = no\n"
        )
        self.config_path.chmod(0o644)  # readable for the "nobody" ngircd switches to when started as root (REHASH)
        return self.config_path

    def start(self, timeout: float = 15) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        binary = ngircd_binary()
        if binary is None:
            raise IrcServerError("ngircd is not installed (apt-get install ngircd)")
        self.write_config()
        self._log = self.log_path.open("ab")
        deadline = time.monotonic() + timeout
        while True:
            self._proc = subprocess.Popen(
                [binary, "--nodaemon", "--config", str(self.config_path)],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base_dir,
            )
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # died (port still in TIME_WAIT after a restart?): try again below
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                    return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                self.stop()
                raise IrcServerError(f"ngircd did not start on port {self.port}: {self.log_tail()}")
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

    def __enter__(self) -> NgircdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
