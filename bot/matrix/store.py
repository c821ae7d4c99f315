"""nio's crypto store, with inbound Megolm sessions loaded on first use (on SQLite here, on PostgreSQL in pg_store).

nio's :class:`~nio.store.SqliteStore` loads every inbound group session (every room key the bot ever received) when
the client starts: one unpickle and one extra query per session, and all of them stay in memory. A bot in many rooms
accumulates tens of thousands, so start-up time and memory grow with its age. matrix-rust-sdk loads sessions when a
message needs them; :class:`LazyStoreMixin` does the same on nio's own tables, whichever database holds them
(:class:`LazySqliteStore`: nio's SQLite file; :mod:`bot.matrix.pg_store`: PostgreSQL):

* :meth:`LazyStoreMixin.load_inbound_group_sessions` returns a :class:`LazyGroupSessionStore`, which keeps the
  sessions used so far in memory and reads a missing one from the database (one indexed query) the first time ``get()``
  asks for it. ``store[room_id]`` loads that room's sessions; iterating the store (key export, a full scan) or
  touching its ``_entries`` loads everything, after which it behaves exactly like nio's ``GroupSessionStore``.
* Nothing about nio's tables changes: sessions are written by nio's own ``save_inbound_group_session`` (on
  PostgreSQL the same row as one upsert, see :mod:`bot.matrix.pg_store`), so a store written by this class opens with
  plain nio and vice versa (old libolm pickles are upgraded on first use, as nio
  upgrades them at load).
* Key backup finds the sessions it has not uploaded yet without loading any: once at start-up from their ids
  (:meth:`LazyGroupSessionStore.session_keys`, paged queries), then per sync from the sessions ``add()``-ed since its
  last upload (:meth:`LazyGroupSessionStore.added_since`); it reads the ones to upload with
  :meth:`LazyGroupSessionStore.peek_many` (one query per few hundred, not kept in memory).
* nio asks the store whether a message's sending device is verified for every decrypted event, and ``SqliteStore``
  answers with three queries each time. The answer only changes through the store's own methods, so it is cached
  here and the cache is dropped by every method that writes trust state or device rows.
* nio saves the set of encrypted rooms after every sync, in a transaction of its own even when the set is empty;
  rooms already saved are skipped (nio's ``INSERT ... ON CONFLICT IGNORE`` would not change them).

The SQL here is peewee's, on nio's models, and runs on SQLite and PostgreSQL alike; the one thing the engines
answer differently (the order of a table without an integer key) is :attr:`LazyStoreMixin._session_order`.

``tests/test_lazy_store.py`` checks decryption, key import, key requests and restarts against plain nio, on both.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nio.crypto import GroupSessionStore, InboundGroupSession, OlmDevice, TrustState
from nio.store import SqliteStore
from nio.store.database import use_database
from nio.store.models import Accounts, DeviceKeys, DeviceTrustState, ForwardedChains, MegolmInboundSessions
from peewee import SQL, Node, SqliteDatabase

__all__ = ["LazyGroupSessionStore", "LazySqliteStore", "LazyStoreMixin"]

log = logging.getLogger(__name__)

_NO_ROW = object()  # the device has no row in the database (nio: "not verified", "not blacklisted", ...)
_ID_BATCH = 400  # session ids per query of read_inbound_group_sessions_by_id (under SQLite's old limit of 999)


class LazyGroupSessionStore(GroupSessionStore):
    """nio's ``GroupSessionStore`` (same methods, same answers) that reads sessions from the database on demand.

    In memory, ``_loaded`` has the layout of nio's ``_entries`` (room id -> sender key -> session id -> session).
    A session that is in memory is authoritative (it may be newer than the database row, exactly as with nio);
    one that is not is looked up in the database.
    """

    def __init__(self, store: LazyStoreMixin | None) -> None:
        # no super().__init__(): nio's _entries is a property here (touching it loads everything)
        self._store = store
        self._loaded: defaultdict[str, defaultdict[str, dict[str, InboundGroupSession]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._rooms_loaded: set[str] = set()
        self._all_loaded = store is None or store.account_id() is None
        #: how many sessions were read from the database (for tests and the benchmark)
        self.loaded_from_db = 0
        #: sessions ``add()``-ed since start-up, in order (new room keys: key backup uploads these, see added_since)
        self._added: list[InboundGroupSession] = []

    # -- nio's GroupSessionStore API ---------------------------------------------------------------------------

    def add(self, session: InboundGroupSession) -> bool:
        """Remember ``session``; False if this very object is stored already (nio's rule)."""
        bucket = self._loaded[session.room_id][session.sender_key]
        if session in bucket.values():
            return False
        bucket[session.id] = session
        self._added.append(session)
        return True

    def get(self, room_id: str, sender_key: str, session_id: str) -> InboundGroupSession | None:
        """The session, from memory or else from the database; None if there is none."""
        bucket = self._loaded[room_id][sender_key]
        session = bucket.get(session_id)
        if session is not None or self._all_loaded or room_id in self._rooms_loaded:
            return session
        assert self._store is not None
        found = self._store.read_inbound_group_session(session_id)
        if found is None or found.room_id != room_id or found.sender_key != sender_key or found.id != session_id:
            return None
        self.loaded_from_db += 1
        bucket[session_id] = found
        return found

    def __getitem__(self, room_id: str) -> defaultdict[str, dict[str, InboundGroupSession]]:
        self._load_room(room_id)
        return self._loaded[room_id]

    def discard(self, room_id: str, sender_key: str, session_id: str) -> None:
        """Forget the in-memory copy of a session about to be replaced (a copy from an earlier index came), without
        reading the room's other sessions as ``store[room_id]`` would."""
        self._loaded[room_id][sender_key].pop(session_id, None)

    def __iter__(self) -> Iterator[InboundGroupSession]:
        self.load_all()
        for room_sessions in self._loaded.values():
            for sender_sessions in room_sessions.values():
                yield from sender_sessions.values()

    @property
    def _entries(self) -> defaultdict[str, defaultdict[str, dict[str, InboundGroupSession]]]:
        # code that reaches into nio's private dict expects every session in it
        self.load_all()
        return self._loaded

    # -- what key backup needs, without loading sessions ----------------------------------------------------------

    @property
    def added_count(self) -> int:
        """How many sessions were ``add()``-ed since start-up: a mark for :meth:`added_since`."""
        return len(self._added)

    def added_since(self, mark: int) -> list[InboundGroupSession]:
        """The sessions ``add()``-ed after ``mark`` (an earlier :attr:`added_count`), oldest first."""
        return self._added[mark:]

    def session_keys(self) -> Iterator[tuple[str, str, str]]:
        """(room id, sender key, session id) of every session, in memory or in the database, none of them loaded.

        One query of three columns, no unpickling, streamed (a session in memory and in the database comes twice):
        key backup asks once at start-up which sessions are not backed up.
        """
        in_memory = [
            (room_id, sender_key, session_id)
            for room_id, senders in self._loaded.items()
            for sender_key, sessions in senders.items()
            for session_id in sessions
        ]
        yield from in_memory
        if not self._all_loaded:
            assert self._store is not None
            yield from self._store.iter_inbound_group_session_keys()

    def peek_many(self, keys: list[tuple[str, str, str]]) -> list[InboundGroupSession]:
        """The sessions of ``keys`` (room id, sender key, session id), for reading once (key backup uploading a
        backlog): those in memory as they are, the others read from the database in one query and *not* kept in
        memory. Keys without a session (or whose row names another room or sender) are left out, as ``get`` answers
        None for them."""
        found: dict[tuple[str, str, str], InboundGroupSession] = {}
        absent: list[tuple[str, str, str]] = []
        for key in keys:
            room_id, sender_key, session_id = key
            session = self._loaded.get(room_id, {}).get(sender_key, {}).get(session_id)
            if session is not None:
                found[key] = session
            elif not (self._all_loaded or room_id in self._rooms_loaded):
                absent.append(key)
        if absent:
            assert self._store is not None
            read = self._store.read_inbound_group_sessions_by_id([session_id for _r, _s, session_id in absent])
            by_id = {session.id: session for session in read}
            for key in absent:
                session = by_id.get(key[2])
                if session is not None and session.room_id == key[0] and session.sender_key == key[1]:
                    found[key] = session
                    self.loaded_from_db += 1  # counted as get() counts: the sessions it answers with
        return [found[key] for key in keys if key in found]

    # -- loading -------------------------------------------------------------------------------------------------

    @property
    def in_memory(self) -> int:
        """How many sessions are in memory now."""
        return sum(len(s) for senders in self._loaded.values() for s in senders.values())

    def _merge(self, sessions: list[InboundGroupSession]) -> None:
        for session in sessions:
            bucket = self._loaded[session.room_id][session.sender_key]
            if session.id not in bucket:  # memory wins: it may hold a newer copy than the row
                bucket[session.id] = session
                self.loaded_from_db += 1

    def _load_room(self, room_id: str) -> None:
        if self._all_loaded or room_id in self._rooms_loaded:
            return
        assert self._store is not None
        self._merge(self._store.read_inbound_group_sessions(room_id=room_id))
        self._rooms_loaded.add(room_id)

    def load_all(self) -> None:
        """Read every session of the database into memory (what nio does at start-up)."""
        if self._all_loaded:
            return
        assert self._store is not None
        self._merge(self._store.read_inbound_group_sessions())
        self._all_loaded = True


class LazyStoreMixin:
    """What Ratchet adds to nio's ``SqliteStore`` (whichever database its peewee models are bound to): lazily
    loaded inbound group sessions, cached device trust answers, encrypted rooms saved once.

    Mix it in before a ``SqliteStore`` subclass (``class S(LazyStoreMixin, SqliteStore)``): it calls nio's methods
    through ``super()`` and reads nio's tables with peewee queries that SQLite and PostgreSQL both run.
    """

    # set by nio's MatrixStore (a dataclass): declared for type checkers only
    user_id: str
    device_id: str
    pickle_key: str
    database: Any
    models: list

    #: The order nio loads inbound group sessions in, and the key :meth:`iter_inbound_group_session_keys` pages on:
    #: a unique, indexed expression of ``megolminboundsessions`` (SQLite: its rowid, the insertion order).
    _session_order: Node = SQL("rowid")
    #: A value below every :attr:`_session_order` value (where paging starts).
    _session_order_start: Any = 0

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # nio's MatrixStore opens the database and creates the tables
        self._account_id: int | None = None
        self._trust: dict[tuple[str, str], Any] = {}
        self._saved_rooms: set[str] | None = None

    def is_open(self) -> bool:
        """The database answers a trivial query (``/health/ready`` asks)."""
        try:
            self.database.execute_sql("SELECT 1").fetchone()
        except Exception:
            return False
        return True

    # -- inbound group sessions ----------------------------------------------------------------------------------

    @use_database
    def account_id(self) -> int | None:
        """The database id of this user/device's account row (None before the account is created)."""
        if self._account_id is None:
            row = (
                Accounts.select(Accounts.id)
                .where((Accounts.user_id == self.user_id) & (Accounts.device_id == self.device_id))
                .tuples()
                .first()
            )
            self._account_id = row[0] if row else None
        return self._account_id

    def load_inbound_group_sessions(self) -> GroupSessionStore:
        """A store that reads sessions from this database when they are first needed."""
        return LazyGroupSessionStore(self)

    def _unpickle(self, row: tuple, chains: list[str]) -> InboundGroupSession:
        sender_key, fp_key, room_id, pickle, _session_id = row
        session = InboundGroupSession.from_pickle(
            bytes(pickle) if not isinstance(pickle, bytes) else pickle,
            fp_key,
            sender_key,
            room_id,
            self.pickle_key,
            chains,
        )
        if session.upgrade_pickle:  # a libolm pickle: nio rewrites it in vodozemac's format when it loads it
            session.upgrade_pickle = False
            self.save_inbound_group_session(session)
        return session

    _COLUMNS = (
        MegolmInboundSessions.sender_key,
        MegolmInboundSessions.fp_key,
        MegolmInboundSessions.room_id,
        MegolmInboundSessions.session,
        MegolmInboundSessions.session_id,
    )

    @use_database
    def read_inbound_group_session(self, session_id: str) -> InboundGroupSession | None:
        """One session by id, from the database (None if there is no such row for this account)."""
        account = self.account_id()
        if account is None:
            return None
        row = (
            MegolmInboundSessions.select(*self._COLUMNS)
            .where((MegolmInboundSessions.session_id == session_id) & (MegolmInboundSessions.account == account))
            .tuples()
            .first()
        )
        if row is None:
            return None
        chains = [
            c[0]
            for c in ForwardedChains.select(ForwardedChains.sender_key)
            .where(ForwardedChains.session == session_id)
            .order_by(ForwardedChains.id)
            .tuples()
        ]
        return self._unpickle(row, chains)

    @use_database
    def read_inbound_group_sessions_by_id(self, session_ids: list[str]) -> list[InboundGroupSession]:
        """The sessions with these ids (those that exist for this account), two queries per :data:`_ID_BATCH` ids."""
        account = self.account_id()
        if account is None:
            return []
        out: list[InboundGroupSession] = []
        for start in range(0, len(session_ids), _ID_BATCH):
            ids = session_ids[start : start + _ID_BATCH]
            # by the primary key alone, the account checked here: with ``account == ...`` in the query SQLite's
            # planner walks the account's index, every row of it (0.5 ms per session at 500,000 sessions)
            rows = [
                row[1:]
                for row in MegolmInboundSessions.select(MegolmInboundSessions.account, *self._COLUMNS)
                .where(MegolmInboundSessions.session_id.in_(ids))
                .tuples()
                if row[0] == account
            ]
            chains: defaultdict[str, list[str]] = defaultdict(list)
            for session_id, sender_key in (
                ForwardedChains.select(ForwardedChains.session, ForwardedChains.sender_key)
                .where(ForwardedChains.session.in_(ids))
                .order_by(ForwardedChains.id)
                .tuples()
            ):
                chains[session_id].append(sender_key)
            out.extend(self._unpickle(row, chains.get(row[4], [])) for row in rows)
        return out

    def iter_inbound_group_session_keys(self, batch: int = 2000) -> Iterator[tuple[str, str, str]]:
        """(room id, sender key, session id) of every session row of this account, in nio's load order, read
        ``batch`` rows at a time (50,000 of them as one list would cost tens of MiB at start-up)."""
        last = self._session_order_start
        while True:
            rows = self._session_key_rows(last, batch)
            yield from ((room_id, sender_key, session_id) for _order, room_id, sender_key, session_id in rows)
            if len(rows) < batch:
                return
            last = rows[-1][0]

    @use_database
    def _session_key_rows(self, after: Any, limit: int) -> list[tuple[Any, str, str, str]]:
        account = self.account_id()
        if account is None:
            return []
        order = self._session_order
        query = (
            MegolmInboundSessions.select(
                order,
                MegolmInboundSessions.room_id,
                MegolmInboundSessions.sender_key,
                MegolmInboundSessions.session_id,
            )
            .where((MegolmInboundSessions.account == account) & (order > after))
            .order_by(order)
            .limit(limit)
        )
        # the driver's rows as they are: peewee's row wrapper took most of the time of a 500,000-session scan
        return self.database.execute_sql(*query.sql()).fetchall()

    @use_database
    def read_inbound_group_sessions(self, *, room_id: str | None = None) -> list[InboundGroupSession]:
        """Every session of this account (of ``room_id`` only, if given), in nio's load order."""
        account = self.account_id()
        if account is None:
            return []
        where = MegolmInboundSessions.account == account
        if room_id is not None:
            where &= MegolmInboundSessions.room_id == room_id
        rows = list(
            MegolmInboundSessions.select(*self._COLUMNS).where(where).order_by(self._session_order).tuples()
        )
        chains: defaultdict[str, list[str]] = defaultdict(list)
        chain_query = ForwardedChains.select(ForwardedChains.session, ForwardedChains.sender_key)
        if room_id is not None:
            chain_query = chain_query.join(
                MegolmInboundSessions, on=(ForwardedChains.session == MegolmInboundSessions.session_id)
            ).where(MegolmInboundSessions.room_id == room_id)
        for session_id, sender_key in chain_query.order_by(ForwardedChains.id).tuples():
            chains[session_id].append(sender_key)
        return [self._unpickle(row, chains.get(row[4], [])) for row in rows]

    # -- device trust: SqliteStore asks the database three times per call; cache the answer ----------------------

    def _trust_state(self, device: OlmDevice) -> Any:
        key = (device.user_id, device.id)
        state = self._trust.get(key)
        if state is None:
            state = self._read_trust_state(device)
            self._trust[key] = state
        return state

    @use_database
    def _read_trust_state(self, device: OlmDevice) -> Any:
        account = self.account_id()
        if account is None:
            return _NO_ROW
        row = (
            DeviceKeys.select(DeviceKeys.id)
            .where(
                (DeviceKeys.user_id == device.user_id)
                & (DeviceKeys.device_id == device.id)
                & (DeviceKeys.account == account)
            )
            .tuples()
            .first()
        )
        if row is None:
            return _NO_ROW
        trust = DeviceTrustState.select(DeviceTrustState.state).where(DeviceTrustState.device == row[0]).first()
        return trust.state if trust is not None else TrustState.unset

    def is_device_verified(self, device: OlmDevice) -> bool:
        return self._trust_state(device) == TrustState.verified

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        return self._trust_state(device) == TrustState.blacklisted

    def is_device_ignored(self, device: OlmDevice) -> bool:
        return self._trust_state(device) == TrustState.ignored

    def _forget_trust(self, device: OlmDevice | None = None) -> None:
        if device is None:
            self._trust.clear()
        else:
            self._trust.pop((device.user_id, device.id), None)

    def verify_device(self, device: OlmDevice) -> bool:
        try:
            return super().verify_device(device)
        finally:
            self._forget_trust(device)

    def unverify_device(self, device: OlmDevice) -> bool:
        try:
            return super().unverify_device(device)
        finally:
            self._forget_trust(device)

    def blacklist_device(self, device: OlmDevice) -> bool:
        try:
            return super().blacklist_device(device)
        finally:
            self._forget_trust(device)

    def unblacklist_device(self, device: OlmDevice) -> bool:
        try:
            return super().unblacklist_device(device)
        finally:
            self._forget_trust(device)

    def ignore_device(self, device: OlmDevice) -> bool:
        try:
            return super().ignore_device(device)
        finally:
            self._forget_trust(device)

    def unignore_device(self, device: OlmDevice) -> bool:
        try:
            return super().unignore_device(device)
        finally:
            self._forget_trust(device)

    def ignore_devices(self, devices: list[OlmDevice]) -> None:
        try:
            return super().ignore_devices(devices)
        finally:
            self._forget_trust()

    def save_device_keys(self, device_keys: dict[str, dict[str, OlmDevice]]) -> None:
        """nio's method; only the saved devices' cached trust answers are dropped (their rows may be replaced, which
        resets their trust). nio calls it after every key query, mostly with no device or a few."""
        try:
            return super().save_device_keys(device_keys)
        finally:
            for devices in device_keys.values():
                for device in devices.values():
                    self._forget_trust(device)

    # -- encrypted rooms: nio saves the set after every sync, in a transaction, even when it is empty ----------------

    def load_encrypted_rooms(self) -> set[str]:
        rooms = super().load_encrypted_rooms()
        self._saved_rooms = set(rooms)
        return rooms

    def save_encrypted_rooms(self, rooms: Any) -> None:
        """nio's method, skipped for rooms already saved (nio's INSERT would ignore them): most syncs have none."""
        saved = self._saved_rooms
        if saved is None:
            saved = self._saved_rooms = set(super().load_encrypted_rooms())
        new = [room for room in rooms if room not in saved]
        if new:
            super().save_encrypted_rooms(new)
            saved.update(new)

    def delete_encrypted_room(self, room: str) -> None:
        super().delete_encrypted_room(room)
        if self._saved_rooms is not None:
            self._saved_rooms.discard(room)

    def save_account(self, account: Any) -> None:
        super().save_account(account)
        if self._account_id is None:
            self.account_id()


@dataclass
class LazySqliteStore(LazyStoreMixin, SqliteStore):
    """nio's ``SqliteStore`` (its file, its format) with lazily loaded inbound group sessions and cached device trust
    answers, in write-ahead-log mode."""

    def _create_database(self) -> SqliteDatabase:
        """nio's database (foreign keys, secure delete) with SQLite's write-ahead log instead of its rollback journal.

        nio commits on the event loop's thread, and with the rollback journal every commit waits for several
        ``fsync`` calls (the journal, the database, the journal's removal); in WAL mode a commit is one ``fsync`` of
        the log. ``synchronous`` stays FULL, SQLite's default: a commit survives a power cut as before, so no Olm or
        Megolm state (a one-time key, a ratchet) is ever lost after it was used. Measured as the event loop's longest
        stall while 50,000 keys are restored from the server-side backup (bench/looplag.py, issue 20 target 2). The
        ``-wal`` and ``-shm`` files get the database file's mode (0600)."""
        return SqliteDatabase(
            self.database_path,
            pragmas={"foreign_keys": 1, "secure_delete": 1, "journal_mode": "wal", "synchronous": "full"},
        )
