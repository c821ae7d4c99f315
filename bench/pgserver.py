"""A throwaway PostgreSQL server for the benchmarks, with PostgreSQL's shipped durability settings, and its CPU time.

:class:`bot.testing.postgres.PostgresCluster` (the tests' cluster) runs with ``fsync=off`` and
``full_page_writes=off``: right for tests, flattering for a benchmark. :class:`BenchPostgres` is the same cluster
(Debian's server binaries, ``initdb`` in a temporary folder, 127.0.0.1 and a Unix socket, run as the ``postgres``
user when the bench runs as root) with those two settings left out and ``shared_buffers`` at PostgreSQL's default,
so the server runs as shipped: ``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``. What the server
really runs with is read back with ``SHOW`` after start-up (:meth:`BenchPostgres.settings`) and put in the results;
the scenario refuses to run if ``fsync`` is not on.

:func:`server_cpu_seconds` is the server's CPU time from ``/proc``: the postmaster's user + system time, that of its
live children (one backend per connection, the checkpointer, the WAL writer, autovacuum, ...), and the CPU time of
the children it has already reaped (the postmaster's ``cutime``/``cstime``: a backend whose connection closed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bot.testing.postgres import PostgresCluster

__all__ = ["BenchPostgres", "server_cpu_seconds"]

#: The tests' settings that :class:`BenchPostgres` drops (so PostgreSQL's defaults apply).
_TEST_ONLY = ("fsync=off", "full_page_writes=off", "shared_buffers=32MB")
#: What is read back after start-up and reported next to the figures.
SHOWN = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "shared_buffers",
         "wal_level", "max_wal_size")


class BenchPostgres(PostgresCluster):
    """The tests' :class:`PostgresCluster` with PostgreSQL's durability defaults (see the module docstring)."""

    def _command(self, *args: str) -> list[str]:
        if args and Path(args[0]).name == "postgres":
            out: list[str] = []
            i = 0
            while i < len(args):
                if args[i] == "-c" and i + 1 < len(args) and args[i + 1] in _TEST_ONLY:
                    i += 2
                    continue
                out.append(args[i])
                i += 1
            args = tuple(out)
        return super()._command(*args)

    def settings(self) -> dict[str, str]:
        """The server's settings that matter for the figures, as it reports them."""
        return {name: self.psql("postgres", f"SHOW {name}") for name in SHOWN}

    @property
    def postmaster_pid(self) -> int:
        """The postmaster's pid (first line of ``postmaster.pid``; as root, Popen's pid is ``runuser``'s)."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (closing its connections first)."""
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def clone_database(self, template: str, name: str) -> str:
        """A copy of database ``template`` (which must have no connections) as ``name``; returns its URL."""
        self.drop_database(name)
        self.psql("postgres", f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.dsn(name)

    def database_size_mb(self, name: str) -> float:
        """The database's size on disk, in MiB."""
        return int(self.psql("postgres", f"SELECT pg_database_size('{name}')")) / 2**20


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def server_cpu_seconds(postmaster: int) -> float:
    """CPU seconds (user + system) the PostgreSQL server under ``postmaster`` has used so far, its children (live and
    reaped) included."""
    ticks = os.sysconf("SC_CLK_TCK")
    own = _stat(postmaster)
    if own is None:
        raise RuntimeError(f"no postmaster {postmaster}")
    # after ")": [0] state, [1] ppid, ..., [11] utime, [12] stime, [13] cutime, [14] cstime
    total = sum(int(v) for v in own[11:15])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is not None and int(fields[1]) == postmaster:
            total += sum(int(v) for v in fields[11:15])
    return total / ticks


def loadavg() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (other engineers' tests run on it too)."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def describe(settings: dict[str, Any]) -> str:
    """One line: the server version and its durability settings."""
    return ", ".join(f"{k} {v}" for k, v in settings.items())
