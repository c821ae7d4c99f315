"""A real, throwaway PostgreSQL for tests: ``initdb`` in a temporary folder, served on 127.0.0.1 and a Unix socket.

Debian's ``postgresql`` package provides the server binaries under ``/usr/lib/postgresql/<version>/bin``; nothing
else is installed or left running. ``initdb`` and ``postgres`` refuse to run as root, so when the tests run as root
(CI does) the cluster gets a folder of its own under the system's temporary directory (root's pytest folders are
private), handed to the ``postgres`` system user the package creates, and the binaries run as that user::

    with PostgresCluster(tmp_path / "pg") as pg:
        dsn = pg.create_database("ratchet")        # postgresql://ratchet@127.0.0.1:PORT/ratchet
        pg.psql("ratchet", "select 1")

``stop()`` and ``start()`` keep the data and the port (a restart of the database server); ``kill()`` is a crash
(SIGKILL of the postmaster); leaving the ``with`` block stops it and removes the folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresError", "postgres_bin_dir"]

#: The account the server runs as when the tests run as root (created by Debian's postgresql package).
SYSTEM_USER = "postgres"
#: The superuser role initdb creates (trust authentication: the cluster only listens on loopback and its socket).
SUPERUSER = "ratchet_test"


class PostgresError(RuntimeError):
    """The test cluster could not be created, started or queried; the message has the server's log tail."""


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb``, or ``$PG_BIN``; None if there is none."""
    override = os.environ.get("PG_BIN")
    if override:
        return Path(override) if (Path(override) / "initdb").exists() else None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One PostgreSQL server in ``base_dir`` (see the module docstring). ``available()`` says whether it can run."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # The postgres user cannot enter root's private temporary folders (pytest's are 0700): the cluster
            # gets a folder of its own in the system's temporary directory, handed over to that user.
            base_dir = Path(tempfile.mkdtemp(prefix="ratchet-pg-"))
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgres.log"
        self.port = port or _free_port()
        self.bin = postgres_bin_dir()
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        """PostgreSQL's server binaries are installed (and, as root, the ``postgres`` user exists to run them)."""
        if postgres_bin_dir() is None:
            return False
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                return False
        return True

    # -- life cycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _command(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SYSTEM_USER, "--", *args]
        return list(args)

    def _hand_over(self, path: Path) -> None:
        if self._as_root:
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def init(self) -> None:
        """Create the cluster (once): ``initdb`` with trust authentication for the test superuser."""
        if self.bin is None:
            raise PostgresError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        if (self.data_dir / "PG_VERSION").exists():
            return
        for folder in (self.base_dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            self._hand_over(folder)
        result = subprocess.run(
            self._command(
                str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ),
            capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 30) -> None:
        """Start the server (creating the cluster first if needed) and wait until it accepts connections."""
        self.init()
        if self._proc is not None and self._proc.poll() is None:
            return
        log = open(self.log_file, "ab")
        self._hand_over(self.log_file)
        self._proc = subprocess.Popen(
            self._command(
                str(self.bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
                # fsync off: a killed server loses nothing the OS holds; commits stay synchronous (crash tests).
                "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "max_connections=50", "-c", "shared_buffers=32MB",
            ),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostgresError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
                capture_output=True, timeout=10, check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(f"postgres did not accept connections within {timeout:.0f}s: {self.log_tail()}")

    def stop(self, timeout: float = 15) -> None:
        """Stop the server cleanly (SIGINT: fast shutdown), killing it if it does not stop in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self) -> None:
        """Crash the server: SIGKILL to the postmaster and its backends (data stays for a restart)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # ``runuser`` may be reaped before the postmaster under it is gone: wait until the port is closed.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.05)
        # The killed postmaster may linger as an unreaped zombie (a container's init does not reap): its lock files
        # would make the next start think it still runs.
        for lock in [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    # -- using it ------------------------------------------------------------------------------------------------

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over TCP on 127.0.0.1."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by the test superuser) and return its URL."""
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` with ``psql`` over the Unix socket; returns its unaligned, tuples-only output."""
        assert self.bin is not None
        psql = self.bin / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        result = subprocess.run(
            [str(psql), "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed: {result.stderr.strip()[-2000:]}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
