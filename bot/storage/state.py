"""The runtime's own state: ``data_dir/state.db`` (SQLite), or schema ``ratchet`` in PostgreSQL.

It holds what makes "nothing lost, nothing twice" true across restarts and crashes:

* the sync token, written only once every event of the batches up to it has been handled;
* which plugin has handled which event (so a redelivered event is skipped per plugin);
* events that could not be decrypted yet, with their raw JSON, so a key that arrives after a restart still unlocks
  them;
* every joined room's current state as the bot last synced it (one row per state event), so that a restart loads the
  rooms from here and resumes with an incremental sync instead of asking the server for every room's full state;
* in appservice mode, the ids of the latest handled transactions (one row each, appended as each is acknowledged), so
  that a transaction the homeserver sends again, also after a restart, is answered without being handled twice.

Writes are small, so they run synchronously on the event loop: SQLite through the standard library's ``sqlite3`` (WAL
mode; every call is microseconds and would cost more if bounced through a thread), PostgreSQL through one psycopg
connection in autocommit mode (one round trip per write, a fraction of a millisecond on a nearby server). The SQL is
written once (``INSERT ... ON CONFLICT`` runs on both engines); only the schema differs.

Handled-event records on SQLite go through a journal first (``data_dir/handled.journal``, mode 0600): the record is
appended with one ``write()`` in the same step as the handler's return, so a ``kill -9`` cannot separate "the plugin
did it" from "the framework knows" any more than a commit per event could, and the rows reach ``state.db`` in one
transaction per event-loop turn (a commit per record was much of the runtime's per-event cost; issue 20). Opening the
store folds a journal left by a crash into ``state.db`` before anything reads it. On PostgreSQL every record is its
own autocommitted ``INSERT``: the journal would be on one machine's disk, and the standby that takes over runs on
another. Both engines look up a whole sync batch's records with one query (:meth:`StateStore.prefetch_handled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import StateError, StorageError
from bot.storage.pg_connection import STATE_SCHEMA, SqlConnection, connect, redact_url

__all__ = ["PendingEvent", "StateError", "StateStore", "secure_file"]

#: The journal of handled-event records next to ``state.db`` (SQLite only).
HANDLED_JOURNAL = "handled.journal"
#: Event ids looked up per ``SELECT ... IN (...)`` by :meth:`StateStore.prefetch_handled`.
PREFETCH_CHUNK = 500
#: The ``kv`` key saying that ``room_state`` holds every joined room (written with the rows of a full sync).
ROOM_STATE_COMPLETE = "room_state_complete"
_UPSERT_ROOM_STATE = (
    "INSERT INTO room_state (room_id, type, state_key, event) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (room_id, type, state_key) DO UPDATE SET event = excluded.event"
)
_INSERT_HANDLED = "INSERT INTO handled (event_id, plugin, ts) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
#: One handled transaction id, appended (numbered after the newest by the table itself: one index to write, not two).
_RECORD_TRANSACTION = "INSERT INTO appservice_txn (txn_id) VALUES (?)"
#: Forget all rows older than the ``?``-th newest (counted from 0): exactly that many + 1 stay, gaps in the numbering
#: (a PostgreSQL sequence skips the values of failed inserts) or not.
_PRUNE_TRANSACTIONS = (
    "DELETE FROM appservice_txn WHERE seq < (SELECT seq FROM appservice_txn ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)

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
CREATE TABLE IF NOT EXISTS room_state (
    room_id TEXT NOT NULL, type TEXT NOT NULL, state_key TEXT NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS appservice_txn (seq INTEGER PRIMARY KEY, txn_id TEXT NOT NULL);
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
CREATE TABLE IF NOT EXISTS room_state (
    room_id TEXT NOT NULL, type TEXT NOT NULL, state_key TEXT NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE TABLE IF NOT EXISTS appservice_txn (seq BIGSERIAL PRIMARY KEY, txn_id TEXT NOT NULL);
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
        journal: Path | None = None,
    ) -> None:
        self._db = db
        #: The SQLite file, or the PostgreSQL URL without its password (for messages).
        self.path = path
        self._errors = errors
        self._insertion_order = insertion_order
        #: Called once with the first :class:`StateError` (the runtime stops the bot); the write still raises it.
        self.on_write_error: Callable[[StateError], None] | None = None
        self.write_error: StateError | None = None
        #: Handled records appended to the journal and not yet in the database, in order (SQLite only).
        self._unflushed: list[tuple[str, str, int]] = []
        self._unflushed_keys: set[tuple[str, str]] = set()
        self._flush_scheduled = False
        #: The event ids of the batch being routed, and which of them (event id, plugin) are handled.
        self._prefetched_ids: frozenset[str] = frozenset()
        self._prefetched_hits: set[tuple[str, str]] = set()
        self._journal_path = journal
        self._journal_fd: int | None = None
        #: Transaction ids recorded since the table was last pruned (:meth:`record_transaction`).
        self._txns_since_prune = 0
        if journal is not None:
            self._replay_journal(journal)
            self._journal_fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

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
            self._report(StateError(f"cannot {what} {self.path}: {detail}"), exc)

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
            return cls(db, path, journal=path.parent / HANDLED_JOURNAL)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open {path}: {exc}") from exc

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
        """Write what the journal holds, close the database (a checkpoint folds the WAL back into the file)."""
        try:
            self.flush()
        finally:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
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
        self.flush()  # the records before the token (the journal would keep them anyway; state.db alone is whole)
        self._write(
            "INSERT INTO kv (key, value) VALUES ('sync_token', ?), ('sync_token_ms', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (token, str(received_ms)),
        )

    # -- handled events --------------------------------------------------------------------------------------

    def is_handled(self, event_id: str, plugin: str) -> bool:
        """True if ``plugin`` already handled ``event_id`` (in this run or an earlier one)."""
        key = (event_id, plugin)
        if key in self._unflushed_keys:
            return True
        if event_id in self._prefetched_ids:
            return key in self._prefetched_hits
        row = self._read(
            "SELECT 1 FROM handled WHERE event_id = ? AND plugin = ?", (event_id, plugin)
        ).fetchone()
        return row is not None

    def prefetch_handled(self, event_ids: Iterable[str]) -> None:
        """Look up the records of ``event_ids`` (a sync batch's events) at once, for the :meth:`is_handled` calls that
        follow: one query per :data:`PREFETCH_CHUNK` ids instead of one per event and plugin. Replaces the previous
        batch's; records written later are added by :meth:`mark_handled`, other ids are still looked up one by one."""
        ids = frozenset(e for e in event_ids if isinstance(e, str))
        hits: set[tuple[str, str]] = set()
        ordered = sorted(ids)
        for start in range(0, len(ordered), PREFETCH_CHUNK):
            chunk = ordered[start : start + PREFETCH_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(f"SELECT event_id, plugin FROM handled WHERE event_id IN ({marks})", tuple(chunk))
            hits.update((row[0], row[1]) for row in rows.fetchall())
        self._prefetched_ids = ids
        self._prefetched_hits = hits

    def mark_handled(self, event_id: str, plugin: str) -> None:
        """Record that ``plugin`` has handled ``event_id``.

        On SQLite the record is appended to the journal now (durable against a crash of the process as soon as this
        returns) and written to ``state.db`` with the others of this event-loop turn; on PostgreSQL it is inserted
        now. A failed write raises :class:`StateError`."""
        key = (event_id, plugin)
        if event_id in self._prefetched_ids:
            self._prefetched_hits.add(key)
        ts = int(time.time())
        if self._journal_fd is None:
            self._write(_INSERT_HANDLED, (event_id, plugin, ts))
            return
        if key in self._unflushed_keys:
            return
        try:
            os.write(self._journal_fd, _journal_line(event_id, plugin, ts))
        except OSError as exc:
            full = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
            self._report(StateError(f"cannot write {self._journal_path}: {exc.strerror or exc}{full}"), exc)
        self._unflushed.append((event_id, plugin, ts))
        self._unflushed_keys.add(key)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._flush_soon)
            except RuntimeError:  # no event loop (a command-line tool): write it now
                self.flush()

    def _flush_soon(self) -> None:
        try:
            self.flush()
        except StateError:
            pass  # reported through on_write_error; the records stay in the journal for the next start

    def flush(self) -> None:
        """Write the journal's records to the database in one transaction, then empty the journal."""
        self._flush_scheduled = False
        rows = self._unflushed
        if not rows:
            return
        try:
            with self._transaction():
                self._db.executemany(_INSERT_HANDLED, rows)
        except self._errors as exc:
            self._report(StateError(f"cannot write {self.path}: {exc}"), exc)
        self._unflushed = []
        self._unflushed_keys = set()
        if self._journal_fd is not None:
            with contextlib.suppress(OSError):  # the rows are in the database; a stale journal is replayed harmlessly
                os.ftruncate(self._journal_fd, 0)

    def _replay_journal(self, journal: Path) -> None:
        """Fold the records a crash left in the journal into the database (before anything reads them)."""
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return
        rows = []
        for line in data.splitlines():
            record = _parse_journal_line(line)
            if record is not None:  # a line cut by a power loss (never by a crash of the process) is dropped
                rows.append(record)
        if rows:
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT_HANDLED, rows)
            self._db.execute("COMMIT")
        os.truncate(journal, 0)

    def _report(self, error: StateError, cause: BaseException) -> None:
        if self.write_error is None:
            self.write_error = error
            if self.on_write_error is not None:
                self.on_write_error(error)
        raise error from cause

    def prune_handled(self, older_than_seconds: float) -> int:
        """Forget handled-event records older than the catch-up window; returns how many were removed."""
        self.flush()
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


    # -- the rooms' state ------------------------------------------------------------------------------------

    @property
    def room_state_complete(self) -> bool:
        """True once ``room_state`` holds every joined room (since the first full sync that was saved)."""
        return self.get(ROOM_STATE_COMPLETE) == "1"

    def save_room_state(
        self,
        events: Iterable[tuple[str, str, str, str]],
        *,
        left: Iterable[str] = (),
        replace_all: bool = False,
    ) -> None:
        """Apply one sync's state to ``room_state`` in one transaction.

        ``events`` are ``(room_id, type, state_key, event JSON)``, later ones replacing earlier ones of the same key;
        the rows of the rooms in ``left`` are removed. ``replace_all`` (a full sync: initial or ``full_state``) first
        removes every row, then marks the table complete (:attr:`room_state_complete`). A failed write raises
        :class:`StateError`."""
        rows = list(events)
        gone = [(room_id,) for room_id in left]
        if not rows and not gone and not replace_all:
            return
        try:
            with self._transaction():
                if replace_all:
                    self._db.execute("DELETE FROM room_state")
                if gone:
                    self._db.executemany("DELETE FROM room_state WHERE room_id = ?", gone)
                if rows:
                    self._db.executemany(_UPSERT_ROOM_STATE, rows)
                if replace_all:
                    self.set(ROOM_STATE_COMPLETE, "1")
        except self._errors as exc:
            self._report(StateError(f"cannot write {self.path}: {exc}"), exc)

    def iter_room_state(self) -> Iterator[tuple[str, list[str]]]:
        """Every saved room's state events (JSON texts), one room at a time (by room id), read as they are asked
        for (SQLite): a restart builds each room and drops its events before the next room's are read, so no more
        than one room's events are in memory at once (see :meth:`~bot.matrix.sync.SyncSource.restore_rooms`)."""
        current: str | None = None
        texts: list[str] = []
        for room_id, event in self._read("SELECT room_id, event FROM room_state ORDER BY room_id"):
            if room_id != current:
                if current is not None:
                    yield current, texts
                current, texts = room_id, []
            texts.append(event)
        if current is not None:
            yield current, texts

    # -- appservice transactions ---------------------------------------------------------------------------

    def record_transaction(self, txn_id: str, *, keep: int) -> None:
        """Record that transaction ``txn_id`` is handled: one row appended (one statement, one commit), instead of
        rewriting the whole list of recent ids per transaction. Every ``keep`` records, all but the newest ``keep``
        rows are forgotten, so the table holds fewer than ``2 * keep`` rows. A failed write raises
        :class:`StateError`."""
        self._write(_RECORD_TRANSACTION, (txn_id,))
        self._txns_since_prune += 1
        if self._txns_since_prune >= keep:
            self._write(_PRUNE_TRANSACTIONS, (keep - 1,))
            self._txns_since_prune = 0

    def recent_transactions(self, limit: int) -> list[str]:
        """The ids of the newest ``limit`` rows, oldest first (older rows are removed). An id recorded twice (it came
        again after it had left the reader's window) is listed twice: its last place is the one that counts."""
        self._write(_PRUNE_TRANSACTIONS, (limit - 1,))
        self._txns_since_prune = 0
        rows = self._read("SELECT txn_id FROM appservice_txn ORDER BY seq").fetchall()
        return [row[0] for row in rows]

    def import_transactions(self, txn_ids: Iterable[str], *, drop_key: str) -> None:
        """Append ``txn_ids`` (oldest first) as handled and delete the key/value entry ``drop_key`` that held them,
        in one transaction: the one-time move of the ids an earlier version kept as one JSON list in ``kv``. A failed
        write raises :class:`StateError` (and changes nothing)."""
        try:
            with self._transaction():
                self._db.executemany(_RECORD_TRANSACTION, [(txn_id,) for txn_id in txn_ids])
                self._db.execute("DELETE FROM kv WHERE key = ?", (drop_key,))
        except self._errors as exc:
            self._report(StateError(f"cannot write {self.path}: {exc}"), exc)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Statements run in one transaction (SQLite: BEGIN/COMMIT on the autocommit connection; PostgreSQL: a
        transaction block of the driver)."""
        if isinstance(self._db, SqlConnection):
            with self._db.raw.transaction():
                yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _journal_line(event_id: str, plugin: str, ts: int) -> bytes:
    """One journal record: ``ts TAB plugin TAB event id`` (JSON when a field could break the line)."""
    if "\t" in event_id or "\n" in event_id or "\r" in event_id or "\t" in plugin or "\n" in plugin:
        return (json.dumps([event_id, plugin, ts]) + "\n").encode()
    return f"{ts}\t{plugin}\t{event_id}\n".encode()


def _parse_journal_line(line: bytes) -> tuple[str, str, int] | None:
    try:
        text = line.decode()
        if text.startswith("["):
            event_id, plugin, ts = json.loads(text)
            return str(event_id), str(plugin), int(ts)
        ts_text, plugin, event_id = text.split("\t", 2)
        return event_id, plugin, int(ts_text)
    except (ValueError, UnicodeDecodeError):
        return None
