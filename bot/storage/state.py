"""The runtime's own state: ``data_dir/state.db`` (SQLite), or schema ``ratchet`` in PostgreSQL.

It holds what makes "nothing lost, nothing twice" true across restarts and crashes:

* the sync token, written only once every event of the batches up to it has been handled;
* which plugin has handled which event (so a redelivered event is skipped per plugin);
* events that could not be decrypted yet, with their raw JSON, so a key that arrives after a restart still unlocks
  them.

Writes are small, so they run synchronously on the event loop: SQLite through the standard library's ``sqlite3`` (WAL
mode; every call is microseconds and would cost more if bounced through a thread), PostgreSQL through one psycopg
connection in autocommit mode (one round trip per write, a fraction of a millisecond on a nearby server). The SQL is
written once (``INSERT ... ON CONFLICT`` runs on both engines); only the schema differs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import StateError, StorageError
from bot.storage.pg_connection import STATE_SCHEMA, SqlConnection, connect, redact_url

__all__ = ["PendingEvent", "StateError", "StateStore", "secure_file"]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS handled (
    event_id TEXT NOT NULL, plugin TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (event_id, plugin)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handled_ts ON handled (ts);
CREATE TABLE IF NOT EXISTS pending_utd (
    event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, session_id TEXT NOT NULL,
    source TEXT NOT NULL, received_ts INTEGER NOT NULL
);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS handled (
    event_id TEXT NOT NULL, plugin TEXT NOT NULL, ts BIGINT NOT NULL,
    PRIMARY KEY (event_id, plugin)
);
CREATE INDEX IF NOT EXISTS handled_ts ON handled (ts);
CREATE TABLE IF NOT EXISTS pending_utd (
    event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, session_id TEXT NOT NULL,
    source TEXT NOT NULL, received_ts BIGINT NOT NULL, seq BIGSERIAL
);
"""


def secure_file(path: Path) -> None:
    """Make ``path`` readable and writable by its owner only (0600)."""
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class PendingEvent:
    """An encrypted event waiting for its room key."""

    event_id: str
    room_id: str
    session_id: str
    source: dict
    received_ts: int


class StateStore:
    """Runtime state in one SQLite file (:meth:`open`) or a PostgreSQL schema (:meth:`open_postgres`)."""

    def __init__(
        self,
        db: sqlite3.Connection | SqlConnection,
        path: Path | str,
        *,
        errors: tuple[type[Exception], ...] = (sqlite3.Error,),
        insertion_order: str = "rowid",
    ) -> None:
        self._db = db
        #: The SQLite file, or the PostgreSQL URL without its password (for messages).
        self.path = path
        self._errors = errors
        self._insertion_order = insertion_order
        #: Called once with the first :class:`StateError` (the runtime stops the bot); the write still raises it.
        self.on_write_error: Callable[[StateError], None] | None = None
        self.write_error: StateError | None = None

    def _write(self, sql: str, args: tuple = ()) -> Any:
        """Run one write; a failing write raises :class:`StateError` (and is reported once)."""
        return self._run(sql, args, "write")

    def _read(self, sql: str, args: tuple = ()) -> Any:
        """Run one query; a failing one (a database server gone) raises :class:`StateError`, reported once."""
        return self._run(sql, args, "read")

    def _run(self, sql: str, args: tuple, what: str) -> Any:
        try:
            return self._db.execute(sql, args)
        except self._errors as exc:
            diag = getattr(exc, "diag", None)
            detail = (getattr(diag, "message_primary", None) or str(exc)).strip()
            error = StateError(f"cannot {what} {self.path}: {detail}")
            if self.write_error is None:
                self.write_error = error
                if self.on_write_error is not None:
                    self.on_write_error(error)
            raise error from exc

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """Open (creating if needed) the state database at ``path`` with mode 0600."""
        new = not path.exists()
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if new:
                secure_file(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SQLITE_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open {path}: {exc}") from exc
        return cls(db, path)

    @classmethod
    def open_postgres(cls, url: str, settings: Mapping[str, str] | None = None) -> StateStore:
        """Open (creating if needed) the state tables in schema ``ratchet`` of the database at ``url``.

        ``settings`` are applied to the connection (the lease epoch that fences writes, see
        :mod:`bot.storage.lease`)."""
        import psycopg

        try:
            conn = SqlConnection(connect(url, schema=STATE_SCHEMA, settings=settings))
            conn.executescript(_POSTGRES_SCHEMA)
        except (StorageError, psycopg.Error) as exc:
            raise StateError(f"cannot open the state in {redact_url(url)}: {str(exc).strip()}") from exc
        return cls(conn, redact_url(url), errors=(psycopg.Error,), insertion_order="seq")

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        self._db.close()

    # -- key/value -------------------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """Return the stored value for ``key`` or None."""
        row = self._read("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``."""
        self._write(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def sync_token(self) -> str | None:
        """The ``next_batch`` token up to which every event has been handled."""
        return self.get("sync_token")

    @property
    def sync_token_ms(self) -> int | None:
        """When the batch that ended at :attr:`sync_token` was received (ms since the epoch)."""
        value = self.get("sync_token_ms")
        return int(value) if value else None

    def save_sync_token(self, token: str, received_ms: int) -> None:
        """Persist the sync token (call only once the batches before it are fully handled)."""
        self._write(
            "INSERT INTO kv (key, value) VALUES ('sync_token', ?), ('sync_token_ms', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (token, str(received_ms)),
        )

    # -- handled events --------------------------------------------------------------------------------------

    def is_handled(self, event_id: str, plugin: str) -> bool:
        """True if ``plugin`` already handled ``event_id`` (in this run or an earlier one)."""
        row = self._read(
            "SELECT 1 FROM handled WHERE event_id = ? AND plugin = ?", (event_id, plugin)
        ).fetchone()
        return row is not None

    def mark_handled(self, event_id: str, plugin: str) -> None:
        """Record that ``plugin`` has handled ``event_id``."""
        self._write(
            "INSERT INTO handled (event_id, plugin, ts) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (event_id, plugin, int(time.time())),
        )

    def prune_handled(self, older_than_seconds: float) -> int:
        """Forget handled-event records older than the catch-up window; returns how many were removed."""
        cutoff = int(time.time() - older_than_seconds)
        cur = self._write("DELETE FROM handled WHERE ts < ?", (cutoff,))
        return cur.rowcount

    # -- events waiting for keys -----------------------------------------------------------------------------

    def add_pending(self, event_id: str, room_id: str, session_id: str, source: dict) -> bool:
        """Remember an undecryptable event; returns False if it was already waiting."""
        cur = self._write(
            "INSERT INTO pending_utd (event_id, room_id, session_id, source, received_ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (event_id, room_id, session_id, json.dumps(source), int(time.time() * 1000)),
        )
        return cur.rowcount == 1

    def pending(self, session_ids: Iterable[str] | None = None) -> list[PendingEvent]:
        """Events waiting for a key, oldest first; only those of ``session_ids`` if given."""
        rows = self._read(
            "SELECT event_id, room_id, session_id, source, received_ts FROM pending_utd "
            f"ORDER BY received_ts, {self._insertion_order}"
        ).fetchall()
        wanted = set(session_ids) if session_ids is not None else None
        return [
            PendingEvent(r[0], r[1], r[2], json.loads(r[3]), r[4])
            for r in rows
            if wanted is None or r[2] in wanted
        ]

    def remove_pending(self, event_id: str) -> None:
        """Forget a waiting event (decrypted, or expired)."""
        self._write("DELETE FROM pending_utd WHERE event_id = ?", (event_id,))

    def count_pending(self) -> int:
        """How many events are waiting for keys."""
        return self._read("SELECT count(*) FROM pending_utd").fetchone()[0]
