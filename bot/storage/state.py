"""The runtime's own state: ``data_dir/state.db`` (SQLite).

It holds what makes "nothing lost, nothing twice" true across restarts and crashes:

* the sync token, written only once every event of the batches up to it has been handled;
* which plugin has handled which event (so a redelivered event is skipped per plugin);
* events that could not be decrypted yet, with their raw JSON, so a key that arrives after a restart still unlocks
  them.

Writes are small and local, so this uses the standard library's ``sqlite3`` synchronously (WAL mode); every call is
microseconds and would cost more if bounced through a thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bot.errors import StateError

__all__ = ["PendingEvent", "StateError", "StateStore", "secure_file"]

_SCHEMA = """
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
    """Runtime state in one SQLite file. Create with :meth:`open`."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        #: Called once with the first :class:`StateError` (the runtime stops the bot); the write still raises it.
        self.on_write_error: Callable[[StateError], None] | None = None
        self.write_error: StateError | None = None

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """Run one write; a failing write raises :class:`StateError` (and is reported once)."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            error = StateError(f"cannot write {self.path}: {exc}")
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
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open {path}: {exc}") from exc
        return cls(db, path)

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        self._db.close()

    # -- key/value -------------------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """Return the stored value for ``key`` or None."""
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
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
        row = self._db.execute(
            "SELECT 1 FROM handled WHERE event_id = ? AND plugin = ?", (event_id, plugin)
        ).fetchone()
        return row is not None

    def mark_handled(self, event_id: str, plugin: str) -> None:
        """Record that ``plugin`` has handled ``event_id``."""
        self._write(
            "INSERT OR IGNORE INTO handled (event_id, plugin, ts) VALUES (?, ?, ?)",
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
            "INSERT OR IGNORE INTO pending_utd (event_id, room_id, session_id, source, received_ts) "
            "VALUES (?, ?, ?, ?, ?)",
            (event_id, room_id, session_id, json.dumps(source), int(time.time() * 1000)),
        )
        return cur.rowcount == 1

    def pending(self, session_ids: Iterable[str] | None = None) -> list[PendingEvent]:
        """Events waiting for a key, oldest first; only those of ``session_ids`` if given."""
        rows = self._db.execute(
            "SELECT event_id, room_id, session_id, source, received_ts FROM pending_utd "
            "ORDER BY received_ts, rowid"
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
        return self._db.execute("SELECT count(*) FROM pending_utd").fetchone()[0]
