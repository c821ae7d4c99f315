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

import os
import shutil
import subprocess
from pathlib import Path

from bot.testing.ircd import IrcServerError, IrcServerProcess

__all__ = ["NgircdServer"]

#: Where Debian installs the daemon (not on a normal user's PATH).
_CANDIDATES = ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd")


def ngircd_binary() -> str | None:
    """The ngircd executable, or None if it is not installed."""
    found = shutil.which("ngircd")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


class NgircdServer(IrcServerProcess):
    """ngircd on 127.0.0.1 (see the module docstring)."""

    server_name = "ngircd"
    log_name = "ngircd.log"
    stdin = subprocess.DEVNULL

    def __init__(self, base_dir: Path, port: int | None = None, *, name: str = "irc.ratchet.test") -> None:
        super().__init__(base_dir, port)
        self.name = name

    @staticmethod
    def available() -> bool:
        return ngircd_binary() is not None

    @property
    def config_path(self) -> Path:
        return self.base_dir / "ngircd.conf"

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

    def _command(self) -> list[str]:
        binary = ngircd_binary()
        if binary is None:
            raise IrcServerError("ngircd is not installed (apt-get install ngircd)")
        self.write_config()
        return [binary, "--nodaemon", "--config", str(self.config_path)]
