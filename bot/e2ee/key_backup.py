"""Server-side key backup (``m.megolm_backup.v1.curve25519-aes-sha2``): versions, uploads and restores.

The pure crypto lives in :mod:`bot.crypto.megolm_backup`; this module talks to the homeserver and to nio's crypto store:

* :func:`get_current_version` / :func:`create_version`: ``GET`` / ``POST /room_keys/version``;
* :class:`KeyBackup` uploads each new inbound Megolm session (``PUT /room_keys/keys?version=``) and restores a whole
  backup into nio's store (``GET /room_keys/keys?version=``);
* :class:`UploadTracker` remembers, in ``data_dir/key_backup.db``, which sessions are in which backup version, so a
  restart does not upload everything again.

Finding new sessions is cheap and loads none that are backed up already. With Ratchet's lazy session store
(:class:`bot.matrix.store.LazyGroupSessionStore`) the first upload after start-up reads the ids of the stored sessions
(paged queries, nothing unpickled), asks the tracker which of them it lacks (one indexed query per
:data:`PROBE_BATCH` ids: the tracker's table is not held in memory) and reads only those, a batch at a time, uploading
each batch before looking further (a backlog of any size is backed up holding a batch in memory); later uploads look
only at the sessions added to the store since the previous one. With nio's in-memory store (everything loaded anyway)
we keep the number of sessions per room seen at the last upload and only look inside rooms whose count changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.crypto.megolm_backup import (
    BackupError,
    BackupKey,
    JsonSignerFn,
    backup_session_data,
    key_backup_data,
    merge_key_backup_bodies,
)
from bot.errors import KeyBackupError, MatrixRequestError
from bot.matrix.requests import request_json
from bot.matrix.room_keys import (
    InboundGroupSession,
    export_session,
    import_session,
    sessions_by_room,
    store_session,
)

__all__ = [
    "PROBE_BATCH",
    "RESTORE_PROGRESS_EVERY",
    "TRACK_FILE",
    "UPLOAD_BATCH",
    "KeyBackup",
    "KeyBackupError",
    "RestoreResult",
    "UploadTracker",
    "backup_entry",
    "create_version",
    "get_current_version",
    "import_session",
]

log = logging.getLogger("ratchet.key_backup")

#: Where the upload tracker lives, inside data_dir.
TRACK_FILE = "key_backup.db"
#: Sessions per ``PUT /room_keys/keys`` request.
UPLOAD_BATCH = 200
#: The first upload after start-up lets the event loop run every this many stored sessions it looks at (and asks the
#: tracker about them in one go).
SCAN_SLICE = 1000
#: Keys per query when asking the tracker which keys it lacks (two parameters each: under SQLite's old limit of 999).
PROBE_BATCH = 400
#: A restore logs its progress every this many keys.
RESTORE_PROGRESS_EVERY = 500

_V3 = "/_matrix/client/v3"


# ----------------------------------------------------------------------------------------------- versions


async def get_current_version(client: Any) -> dict[str, Any] | None:
    """The current backup version (``GET /room_keys/version``), or None if the account has none."""
    try:
        info = await request_json(client, "GET", f"{_V3}/room_keys/version")
    except MatrixRequestError as err:
        if err.status == 404:
            return None
        raise
    return info if isinstance(info, dict) and info.get("version") else None


async def create_version(client: Any, backup_key: BackupKey, *signers: JsonSignerFn) -> str:
    """Create a backup version for ``backup_key`` (``auth_data`` signed by each of ``signers``); returns it."""
    body = backup_key.version_body(*signers)
    resp = await request_json(client, "POST", f"{_V3}/room_keys/version", body)
    version = resp.get("version") if isinstance(resp, dict) else None
    if not isinstance(version, str) or not version:
        raise KeyBackupError(f"the homeserver created a backup version but returned no version id: {resp!r}")
    return version


def _keys_path(version: str) -> str:
    return f"{_V3}/room_keys/keys?version={urllib.parse.quote(version, safe='')}"


# ----------------------------------------------------------------------------------------------- sessions


def backup_entry(session: InboundGroupSession, backup_key: BackupKey) -> dict[str, Any]:
    """The ``KeyBackupData`` for one nio inbound session, encrypted to ``backup_key``."""
    chain_length = len(session.forwarding_chain or [])
    data = backup_key.encrypt_session(backup_session_data(export_session(session)))
    return key_backup_data(session.first_known_index, chain_length, False, data)


# ----------------------------------------------------------------------------------------------- tracking


class UploadTracker:
    """Which sessions (room id, session id) are in which backup version: a table, asked in batches.

    ``db`` is the table's place: a path (``data_dir/key_backup.db``, a SQLite file made 0600) or a callable giving a
    sqlite3-style connection (``Storage.open_backup_tracker``: the same file, or a table in PostgreSQL). The SQL runs
    on both engines.

    The table is not kept in memory: 500,000 backed-up keys would take 175 MiB as a set of tuples (measured at the
    start-up benchmark's 500,000 sessions). :meth:`missing` answers for many keys at once with one indexed query per
    :data:`PROBE_BATCH` keys; only the number of rows is kept (read by :meth:`ready`, counted up by
    :meth:`add_many`).
    """

    def __init__(self, db: Path | Callable[[], Any], version: str) -> None:
        self._open: Callable[[], Any] = db if callable(db) else (lambda: _open_file(Path(db)))
        self.version = version
        with contextlib.closing(self._open()) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS uploaded ("
                " version TEXT NOT NULL, room_id TEXT NOT NULL, session_id TEXT NOT NULL,"
                " PRIMARY KEY (version, room_id, session_id))"
            )
            conn.commit()
        #: the number of rows of this version: read when first needed (:meth:`ready` reads it in a worker thread)
        self._count: int | None = None

    def _read_count(self) -> int:
        with contextlib.closing(self._open()) as conn:
            return int(conn.execute("SELECT count(*) FROM uploaded WHERE version = ?", (self.version,)).fetchone()[0])

    async def ready(self) -> None:
        """Count the rows in a worker thread unless they are counted already (the event loop does not wait on it)."""
        if self._count is None:
            count = await asyncio.to_thread(self._read_count)
            if self._count is None:
                self._count = count

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """One connection for many :meth:`missing` calls (a scan asks hundreds of times)."""
        with contextlib.closing(self._open()) as conn:
            yield conn

    def missing(self, keys: Iterable[tuple[str, str]], conn: Any = None) -> list[tuple[str, str]]:
        """The keys of ``keys`` that are not recorded in this version, in their order (each once)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        if conn is None:
            with self.connection() as own:
                return self.missing(wanted, own)
        absent: set[tuple[str, str]] = set()
        for start in range(0, len(wanted), PROBE_BATCH):
            chunk = wanted[start : start + PROBE_BATCH]
            params: list[str] = [part for key in chunk for part in key]
            params.append(self.version)
            rows = conn.execute(
                "SELECT v.column1, v.column2 FROM (VALUES " + ", ".join(["(?, ?)"] * len(chunk)) + ") AS v"
                " WHERE NOT EXISTS (SELECT 1 FROM uploaded AS u"
                " WHERE u.version = ? AND u.room_id = v.column1 AND u.session_id = v.column2)",
                params,
            ).fetchall()
            absent.update((r, s) for r, s in rows)
        return [key for key in wanted if key in absent]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return not self.missing([key])

    def __len__(self) -> int:
        if self._count is None:
            self._count = self._read_count()
        return self._count

    def add_many(self, keys: Iterable[tuple[str, str]]) -> None:
        """Record sessions as backed up in this version."""
        with self.connection() as conn:
            new = self.missing(keys, conn)
            if not new:
                return
            conn.executemany(
                "INSERT INTO uploaded (version, room_id, session_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(self.version, r, s) for r, s in new],
            )
            conn.commit()
        if self._count is not None:
            self._count += len(new)


def _open_file(path: Path) -> sqlite3.Connection:
    fresh = not path.exists()
    conn = sqlite3.connect(str(path))
    if fresh:
        path.chmod(0o600)
    return conn


# ----------------------------------------------------------------------------------------------- the backup


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: ``imported`` new sessions out of ``total`` in the backup (``failed`` did not decrypt)."""

    version: str
    total: int
    imported: int
    failed: int


class KeyBackup:
    """One active backup version: uploads new room keys, restores all of them."""

    def __init__(self, client: Any, backup_key: BackupKey, version: str, track_path: Path | Callable[[], Any]) -> None:
        self.client = client
        self.backup_key = backup_key
        self.version = version
        self.tracker = UploadTracker(track_path, version)
        #: Set when the server refuses our version (a newer backup replaced it); uploads stop until a restart.
        self.disabled_reason: str | None = None
        self._room_counts: dict[str, int] = {}
        #: lazy store: its ``added_count`` at the last complete upload (None: not scanned since start-up)
        self._added_mark: int | None = None

    @property
    def keys_backed_up(self) -> int:
        """How many sessions are known to be in this backup version."""
        return len(self.tracker)

    # -- upload ------------------------------------------------------------------------------------------------

    def _store_rooms(self) -> Iterator[tuple[str, dict[str, dict[str, InboundGroupSession]]]]:
        olm = getattr(self.client, "olm", None)
        if olm is not None:
            yield from sessions_by_room(olm)

    def _lazy_store(self) -> Any | None:
        """The client's store of inbound group sessions if it is the lazy one (it lists the stored ids without loading
        a session, and what was added since a mark), else None."""
        store = getattr(getattr(self.client, "olm", None), "inbound_group_store", None)
        if callable(getattr(store, "added_since", None)) and callable(getattr(store, "session_keys", None)):
            return store
        return None

    def _unbacked_steps(
        self, *, uploading: bool = False
    ) -> Generator[list[InboundGroupSession] | None, None, Callable[[], None]]:
        """The sessions not backed up yet, in batches of at most :data:`UPLOAD_BATCH` (yielded as lists; ``None`` is
        a pause for the event loop), then what to call once all of them are uploaded.

        ``uploading``: the consumer uploads (and records) each batch before it asks for the next, so the tracker
        already answers for it and the scan need not remember it: a store with a backlog of 500,000 sessions is then
        backed up holding a batch or two in memory, not all of them."""
        with self.tracker.connection() as conn:
            store = self._lazy_store()
            if store is not None:
                return (yield from self._unbacked_lazy(store, conn, uploading))
            return (yield from self._unbacked_in_memory(conn))

    def _unbacked_in_memory(
        self, conn: Any
    ) -> Generator[list[InboundGroupSession] | None, None, Callable[[], None]]:
        """nio's in-memory store (everything loaded anyway): look only inside rooms whose count changed. nio's dicts
        are read in one go (they may change while a batch is uploaded)."""
        counts: dict[str, int] = {}
        candidates: dict[tuple[str, str], InboundGroupSession] = {}
        for room_id, senders in self._store_rooms():
            count = sum(len(s) for s in senders.values())
            if self._room_counts.get(room_id) == count:
                continue
            counts[room_id] = count
            for sessions in senders.values():
                for session_id, session in sessions.items():
                    candidates.setdefault((room_id, session_id), session)
        yield from self._batches([candidates[k] for k in self.tracker.missing(candidates, conn)])
        return lambda: self._room_counts.update(counts)

    def _unbacked_lazy(
        self, store: Any, conn: Any, uploading: bool
    ) -> Generator[list[InboundGroupSession] | None, None, Callable[[], None]]:
        """The lazy store: never load a session that is backed up already (50,000 of them would be read per sync)."""
        mark = store.added_count

        def done() -> None:
            self._added_mark = mark

        if self._added_mark is not None:  # later: only what was added to the store since the last upload (in memory)
            added = {(s.room_id, s.id): s for s in store.added_since(self._added_mark)}
            new = [added[key] for key in self.tracker.missing(added, conn)]
            yield from self._batches([store.get(s.room_id, s.sender_key, s.id) or s for s in new])
            return done
        # first upload since start-up: the stored ids (nothing unpickled), the tracker asked a slice at a time
        wanted: dict[tuple[str, str], str] = {}  # found, not handed out yet -> its sender key
        handed: set[tuple[str, str]] = set()  # collecting (not uploading): found and handed out already
        keys = iter(store.session_keys())  # a session in memory and in the database comes twice
        while True:
            slice_: dict[tuple[str, str], str] = {}
            for room_id, sender_key, session_id in keys:
                slice_.setdefault((room_id, session_id), sender_key)
                if len(slice_) >= SCAN_SLICE:
                    break
            last = len(slice_) < SCAN_SLICE
            for key in self.tracker.missing(slice_, conn):
                if key not in wanted and key not in handed:
                    wanted[key] = slice_[key]
            while len(wanted) >= UPLOAD_BATCH or (last and wanted):
                batch = [(key, wanted.pop(key)) for key in list(itertools.islice(wanted, UPLOAD_BATCH))]
                if not uploading:
                    handed.update(key for key, _sender in batch)
                yield from self._batches(_load_sessions(store, [(r, sender, s) for (r, s), sender in batch]))
            if last:
                return done
            yield None

    @staticmethod
    def _batches(sessions: list[InboundGroupSession]) -> Iterator[list[InboundGroupSession]]:
        for start in range(0, len(sessions), UPLOAD_BATCH):
            yield sessions[start : start + UPLOAD_BATCH]

    async def upload_new(self) -> int:
        """Upload the inbound sessions that are not in the backup yet; returns how many were uploaded.

        The sessions are found and uploaded a batch at a time (:meth:`_unbacked_steps`); the store counts as looked
        at only once every batch is in the backup, so a failed upload is looked for again after the next sync."""
        if self.disabled_reason:
            return 0
        await self.tracker.ready()
        steps = self._unbacked_steps(uploading=True)
        uploaded = 0
        while True:
            try:
                batch = next(steps)
            except StopIteration as stop:
                done = stop.value
                break
            if batch is None:
                await asyncio.sleep(0)
                continue
            count = await self._upload_batch(batch)
            if count is None:  # the backup version was replaced: stop looking
                steps.close()
                return uploaded
            uploaded += count
        done()
        if uploaded:
            log.info("backed up %d room key%s (version %s)", uploaded, "" if uploaded == 1 else "s", self.version)
        return uploaded

    async def _upload_batch(self, batch: list[InboundGroupSession]) -> int | None:
        """Upload one batch and record it; how many were uploaded, or None if the server refused our version."""
        bodies = []
        keys = []
        for session in batch:
            try:
                data = backup_entry(session, self.backup_key)
            except Exception as exc:  # a session vodozemac cannot export: skip it, do not block the rest
                log.warning("cannot back up session %s in %s: %s", session.id, session.room_id, exc)
                keys.append((session.room_id, session.id))
                continue
            bodies.append({"rooms": {session.room_id: {"sessions": {session.id: data}}}})
            keys.append((session.room_id, session.id))
        if bodies:
            try:
                await request_json(self.client, "PUT", _keys_path(self.version), merge_key_backup_bodies(bodies))
            except MatrixRequestError as err:
                if err.errcode == "M_WRONG_ROOM_KEYS_VERSION" or err.status == 404:
                    self.disabled_reason = (
                        f"backup version {self.version} is no longer the current one ({err.errcode or err.status})"
                    )
                    log.warning("key backup stopped: %s; restart the bot to pick up the new backup",
                                self.disabled_reason)
                    return None
                raise
        self.tracker.add_many(keys)
        return len(bodies)

    # -- restore -----------------------------------------------------------------------------------------------

    async def restore(self, *, progress_every: int = RESTORE_PROGRESS_EVERY) -> RestoreResult:
        """Download every key of this version and import the new ones into nio's store (and memory).

        The event loop never waits long (issue 20): the answer (40 MB for 50,000 keys) is parsed, and every key
        decrypted and turned into a session, in a worker thread, :data:`RESTORE_BATCH` keys at a time (one batch is
        prepared while the previous one is stored); the store writes stay on the loop (nio's store is not shared
        between threads), in one transaction per slice of at most :data:`RESTORE_SLICE_SECONDS`, with the loop free
        between slices. Keys are stored in the answer's order, with the same checks, counts and log lines as one pass
        would give.
        """
        olm = self.client.olm
        if olm is None:
            raise KeyBackupError("the client has no crypto store loaded")
        own_key = olm.account.identity_keys["curve25519"]  # restored sessions count as forwarded by the bot itself
        # One worker thread, started before the heavy work: starting a thread waits until it runs, and while another
        # worker decrypts keys that wait took the loop 44 ms (issue 20; asyncio.to_thread starts threads on demand).
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratchet-restore") as pool:
            await loop.run_in_executor(pool, int)
            return await self._restore(olm, own_key, pool, progress_every)

    async def _restore(self, olm: Any, own_key: str, pool: ThreadPoolExecutor, progress_every: int) -> RestoreResult:
        loop = asyncio.get_running_loop()
        body = await request_json(self.client, "GET", _keys_path(self.version), raw=True)
        entries = await loop.run_in_executor(pool, functools.partial(backup_entries, body, raw=True, yield_gil=True))
        del body
        if entries is None:
            raise KeyBackupError("the homeserver's key backup answer has no 'rooms'")
        total = len(entries)
        log.info("restoring %d room keys from key backup version %s", total, self.version)
        imported = failed = seen = 0
        restored: list[tuple[str, str]] = []
        backup_key = self.backup_key

        def prepare(start: int) -> list[tuple[str, str, InboundGroupSession | Exception]]:
            out: list[tuple[str, str, InboundGroupSession | Exception]] = []
            for room_id, session_id, text in entries[start : start + RESTORE_BATCH]:
                time.sleep(0)  # let go of the GIL between keys: the event loop gets it back in µs, not 5 ms
                try:
                    entry = json.loads(text)
                    data = backup_key.decrypt_session((entry or {}).get("session_data") or {})
                    out.append((room_id, session_id, import_session(room_id, session_id, data, via=own_key)))
                except (BackupError, KeyBackupError) as exc:
                    out.append((room_id, session_id, exc))
                except Exception as exc:  # as the one-pass restore did: anything else ends the restore
                    out.append((room_id, session_id, _Abort(exc)))
            return out

        transaction = _store_transaction(olm)
        next_batch = loop.run_in_executor(pool, prepare, 0) if total else None
        for start in range(0, total, RESTORE_BATCH):
            assert next_batch is not None
            batch = await next_batch
            following = start + RESTORE_BATCH
            next_batch = loop.run_in_executor(pool, prepare, following) if following < total else None
            i = 0
            try:
                while i < len(batch):
                    deadline = time.monotonic() + RESTORE_SLICE_SECONDS
                    abort: _Abort | None = None
                    with transaction():  # committed before an abort is raised: what was stored stays stored
                        while i < len(batch):
                            room_id, session_id, session = batch[i]
                            i += 1
                            seen += 1
                            if isinstance(session, _Abort):
                                abort = session
                                break
                            if isinstance(session, Exception):
                                failed += 1
                                log.debug("skipping backed-up session %s: %s", session_id, session)
                            else:
                                if store_session(olm, room_id, session):
                                    imported += 1
                                restored.append((room_id, session_id))
                            if progress_every and seen % progress_every == 0:
                                log.info("key backup restore: %d of %d keys processed", seen, total)
                            if time.monotonic() >= deadline:
                                break
                    if abort is not None:
                        raise abort.exc
                    await asyncio.sleep(0)
            except BaseException:
                if next_batch is not None:
                    next_batch.cancel()
                raise
            # The batch's answer text is freed now, not all 40 MB at the end in one go, and the sessions just stored
            # (nio keeps them in memory for the life of the process) leave the full garbage collections: each of
            # those walked every session restored so far, 100 ms and more with the loop standing still (issue 20).
            entries[start:following] = [None] * (min(following, total) - start)
            del batch
            gc.freeze()
        await loop.run_in_executor(pool, self.tracker.add_many, restored)
        if failed:
            log.warning("%d of %d backed-up keys could not be decrypted with this backup key", failed, total)
        log.info("key backup restore done: %d new keys imported of %d", imported, total)
        return RestoreResult(self.version, total, imported, failed)


def _load_sessions(store: Any, keys: list[tuple[str, str, str]]) -> list[InboundGroupSession]:
    """The sessions of ``keys`` (room id, sender key, session id) for uploading: with the lazy store's ``peek_many``
    one query for those not in memory, and none of them kept in memory; else ``get`` one by one. Keys without a
    session (or whose row names another room or sender) are left out, as ``get`` answers None for them."""
    peek_many = getattr(store, "peek_many", None)
    if callable(peek_many):
        return list(peek_many(keys))
    return [s for s in (store.get(*key) for key in keys) if s is not None]


#: Keys decrypted per worker-thread call during a restore.
RESTORE_BATCH = 1000
#: A restore stores sessions in transactions of at most this long, letting the event loop run in between.
RESTORE_SLICE_SECONDS = 0.002


@dataclass(frozen=True)
class _Abort:
    """An unexpected error while preparing a key: re-raised on the loop when the restore reaches that key."""

    exc: BaseException


_UNSET = object()


def _store_transaction(olm: Any) -> Callable[[], Any]:
    """One database transaction around many session writes (nio commits each statement on its own otherwise), with
    the store's models bound to its database once for all of them.

    Every method of nio's store binds its ten models to the database again (``use_database``: peewee's
    ``bind_ctx``, which walks the models' graph): the largest cost in a profile of the restore. Inside the
    transaction a nested ``bind_ctx`` of models already bound to this database is skipped (it would change nothing,
    on entering or leaving); the database object gets its own ``bind_ctx`` back before the loop runs anything else.
    """
    store = getattr(olm, "store", None)
    database = getattr(store, "database", None)
    atomic = getattr(database, "atomic", None)
    models = getattr(store, "models", None)
    if not callable(atomic):
        return contextlib.nullcontext
    if not callable(getattr(database, "bind_ctx", None)) or not models:
        return atomic

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        original = database.bind_ctx

        def bind_ctx(bound: Any, *args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs and all(m._meta.database is database for m in bound):
                return contextlib.nullcontext()
            return original(bound, *args, **kwargs)

        own = vars(database).get("bind_ctx", _UNSET)
        with original(models), _without_fsync(database), atomic():
            database.bind_ctx = bind_ctx
            try:
                yield
            finally:
                if own is _UNSET:
                    del database.bind_ctx  # the class's method again
                else:
                    database.bind_ctx = own

    return transaction


@contextlib.contextmanager
def _without_fsync(database: Any) -> Iterator[None]:
    """A restore's commits without waiting for the disk, on SQLite: ``synchronous=NORMAL`` for its transactions only.

    With the store in WAL mode a commit is then a write to the log, not an ``fsync`` on the event loop's thread (the
    restore's longest stalls, issue 20 target 2); the log still reaches the disk at the next checkpoint or FULL
    commit. A power cut can lose only the last restored keys, which are copies of the server's backup: running the
    restore again brings them back. Nothing else writes in between (a transaction is one synchronous slice of the
    loop), and the connection's own setting is put back after each one."""
    from peewee import SqliteDatabase

    if not isinstance(database, SqliteDatabase):  # PostgreSQL (bot/matrix/pg_store.py), a test's stand-in
        yield
        return
    (level,) = database.execute_sql("PRAGMA synchronous").fetchone()
    database.execute_sql("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        database.execute_sql(f"PRAGMA synchronous={int(level)}")


def backup_entries(
    body: bytes | str, *, raw: bool = False, yield_gil: bool = False
) -> list[tuple[str, str, Any]] | None:
    """``(room id, session id, KeyBackupData)`` of every key in a ``GET /room_keys/keys`` answer, in its order; None
    if the answer is not a JSON object with a ``rooms`` object.

    The same result as walking ``json.loads(body)["rooms"]`` (for an answer without duplicate keys; with them, the
    entries of every copy are kept, a later one winning per key), but parsed one key at a time: a single
    ``json.loads`` of a 40 MB answer holds the GIL for its whole duration, so the event loop would stall even with
    the parse in a worker thread. With ``raw`` each entry is its JSON text (for
    ``json.loads`` later): 50,000 strings are nothing to the garbage collector, 50,000 parsed entries are 250,000
    objects that every full collection walks while the restore runs. ``yield_gil``: let go of the GIL between keys
    (for a worker thread; a thread running Python code otherwise keeps it up to 5 ms, the switch interval, each
    time the event loop's thread wants it back).
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    except UnicodeDecodeError:
        return None
    found: dict[tuple[str, str], Any] = {}
    state = {"rooms": False}

    def on_session(room_id: str) -> Callable[[str, int], int]:
        def member(session_id: str, i: int) -> int:
            if yield_gil and len(found) % 20 == 0:
                time.sleep(0)  # in a worker thread: let the event loop have the GIL every few keys
            value, end = _DECODER.raw_decode(text, i)
            found[(room_id, session_id)] = text[i:end] if raw else value
            return end

        return member

    def on_room(room_id: str, i: int) -> int:
        if text[i] != "{":
            return _skip(text, i)

        def member(key: str, j: int) -> int:
            if key == "sessions" and text[j] == "{":
                return _walk_object(text, j, on_session(room_id))
            return _skip(text, j)

        return _walk_object(text, i, member)

    def top(key: str, i: int) -> int:
        if key == "rooms" and text[i] == "{":
            state["rooms"] = True
            return _walk_object(text, i, on_room)
        if key == "rooms":
            state["rooms"] = False
        return _skip(text, i)

    try:
        i = _ws(text, 0)
        if i >= len(text) or text[i] != "{":
            return None
        end = _ws(text, _walk_object(text, i, top))
        if end != len(text):
            return None
    except (ValueError, IndexError):
        return None
    if not state["rooms"]:
        return None
    return [(room_id, session_id, entry) for (room_id, session_id), entry in found.items()]


_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _skip(text: str, i: int) -> int:
    return _DECODER.raw_decode(text, i)[1]


def _walk_object(text: str, i: int, member: Callable[[str, int], int]) -> int:
    """Walk the JSON object at ``text[i]`` (``{``): ``member(key, start of value)`` returns the end of the value.
    Returns the index after the closing ``}``; raises ValueError on malformed JSON."""
    i = _ws(text, i + 1)
    if text[i] == "}":
        return i + 1
    while True:
        if text[i] != '"':
            raise ValueError(f"expected a key at {i}")
        key, i = _DECODER.raw_decode(text, i)
        i = _ws(text, i)
        if text[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        i = _ws(text, member(key, _ws(text, i + 1)))
        if text[i] == "}":
            return i + 1
        if text[i] != ",":
            raise ValueError(f"expected ',' or '}}' at {i}")
        i = _ws(text, i + 1)
