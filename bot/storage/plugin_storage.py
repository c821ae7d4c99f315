"""Per-plugin storage: a key-value store and SQL on the plugin's own tables, with versioned migrations.

A loaded plugin finds it as ``self.storage``. Two engines present one interface, :class:`BasePluginStorage`:

* :class:`PluginStorage` (this module, the default): the plugin's own SQLite database, ``data_dir/plugins/<name>.db``;
* :class:`~bot.storage.pg_plugin_storage.PostgresPluginStorage` (``database: postgresql://...``): the plugin's own
  schema, ``ratchet_plugin_<name>``, in the bot's database.

It offers two levels:

* a key-value store for JSON-serializable values, enough for most plugins::

      await self.storage.set("last_run", {"when": 1700000000, "ok": True})
      state = await self.storage.get("last_run", default={})
      count = await self.storage.incr(f"greeted:{user_id}")      # atomic
      for key, value in await self.storage.items("greeted:"):
          ...

* SQL on the plugin's own tables, created by versioned migrations the plugin lists in order::

      class Quotes(Plugin):
          migrations = [
              "CREATE TABLE quotes (id INTEGER PRIMARY KEY, room TEXT NOT NULL, text TEXT NOT NULL);",
              "CREATE INDEX quotes_room ON quotes (room);",
          ]

          @command("quote")
          async def quote(self, ctx: Context, text: str):
              await self.storage.execute("INSERT INTO quotes (room, text) VALUES (?, ?)", (ctx.room_id, text))

  Each migration runs once, in order, in a transaction of its own together with the bump of the database's version
  (SQLite: ``PRAGMA user_version``); append new migrations, never edit or remove released ones. SQL written in the
  portable subset (docs/plugins.md, "Storage on PostgreSQL") runs on both engines; a released migration that is not
  portable keeps its SQLite text and gets a PostgreSQL equivalent: ``{"sqlite": ..., "postgresql": ...}``.

All database work runs on one worker thread per plugin, so the event loop never waits on the disk or the network and
the calls of one plugin are serialized. The SQLite database uses WAL journaling, ``synchronous=NORMAL`` and enforces
foreign keys. The file is readable by its owner only (0600) and a folder created for it is 0700.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from bot.errors import StorageError

__all__ = [
    "DIALECTS",
    "KV_TABLE",
    "BasePluginStorage",
    "Migration",
    "PluginStorage",
    "StorageError",
    "plugin_db_path",
]

T = TypeVar("T")

#: A migration step written once: a SQL script, or a plain function given the connection (called inside the
#: transaction: a ``sqlite3.Connection`` on SQLite, a :class:`~bot.storage.pg_connection.SqlConnection` on PostgreSQL).
MigrationStep = str | Callable[[Any], None]
#: A migration: one step for both engines, or ``{"sqlite": step, "postgresql": step}`` when the SQL differs (a released
#: SQLite migration that is not portable keeps its text under ``"sqlite"``).
Migration = MigrationStep | Mapping[str, MigrationStep]

#: The engines a migration dict names.
DIALECTS = ("sqlite", "postgresql")

#: The table behind the key-value API (plugins should not name their own tables ``ratchet_*``).
KV_TABLE = "ratchet_kv"

_KV_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {KV_TABLE} (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER
)"""

#: The key-value statements, the same on both engines (``?`` placeholders, ``ON CONFLICT``).
_KV_GET = f"SELECT value FROM {KV_TABLE} WHERE key = ?"
_KV_PUT = (
    f"INSERT INTO {KV_TABLE} (key, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_KV_DELETE = f"DELETE FROM {KV_TABLE} WHERE key = ?"

#: How long a statement waits for a lock held by another connection before failing (seconds).
_BUSY_TIMEOUT = 10.0


def plugin_db_path(data_dir: Path, plugin: str) -> Path:
    """Where plugin ``plugin`` keeps its database: ``data_dir/plugins/<plugin>.db``."""
    if not plugin or plugin != os.path.basename(plugin) or plugin.startswith("."):
        raise ValueError(f"invalid plugin name for a storage file: {plugin!r}")
    return Path(data_dir) / "plugins" / f"{plugin}.db"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"storage keys must be strings, got {type(key).__name__}")


def _dumps(value: Any) -> str:
    """``value`` as JSON text; TypeError if it is not JSON-serializable (including nan, infinity and cycles)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except TypeError as exc:
        raise TypeError(f"storage values must be JSON-serializable: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise TypeError(f"storage values must be JSON-serializable: {exc}") from None


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` in code point order (None: no bound).

    Both engines compare keys in code point order (SQLite's BINARY collation and PostgreSQL's ``"C"`` collation
    compare UTF-8 bytes), so the keys with a prefix are the range ``prefix <= key < prefix_end(prefix)``: one
    range scan of the primary key's index, with no LIKE wildcards to escape.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def split_script(script: str) -> list[str]:
    """The statements of a SQL script, each with its terminating ``;`` (triggers are kept whole)."""
    statements: list[str] = []
    start = 0
    pos = script.find(";")
    while pos != -1:
        chunk = script[start : pos + 1]
        if sqlite3.complete_statement(chunk):
            statements.append(chunk)
            start = pos + 1
        pos = script.find(";", pos + 1)
    tail = script[start:]
    if tail.strip():
        # A last statement without ';' (or only comments); an unterminated string or comment stays incomplete.
        if not sqlite3.complete_statement(tail + "\n;"):
            raise sqlite3.OperationalError("incomplete SQL at the end of the script (unterminated string or comment?)")
        statements.append(tail + "\n;")
    return statements


def check_migrations(migrations: Sequence[Migration], label: str) -> tuple[Migration, ...]:
    """``migrations`` as a tuple, each checked: a string, a plain (not async) function, or a dict with exactly the
    keys ``"sqlite"`` and ``"postgresql"`` whose values are such. Raises TypeError naming the migration's number."""
    steps = tuple(migrations)
    for number, step in enumerate(steps, start=1):
        if isinstance(step, Mapping):
            if set(step) != set(DIALECTS):
                raise TypeError(
                    f"plugin {label}: migration {number} is a dict, which needs exactly the keys 'sqlite' and "
                    f"'postgresql', got {sorted(map(str, step))}"
                )
            parts = [step[dialect] for dialect in DIALECTS]
        else:
            parts = [step]
        for part in parts:
            if isinstance(part, str):
                continue
            if not callable(part) or inspect.iscoroutinefunction(part):
                raise TypeError(
                    f"plugin {label}: migration {number} must be a SQL string, a plain function taking the "
                    f"connection, or a dict {{'sqlite': ..., 'postgresql': ...}} of those, got {part!r}"
                )
    return steps


def migration_for(step: Migration, dialect: str) -> MigrationStep:
    """The step of migration ``step`` that engine ``dialect`` runs."""
    return step[dialect] if isinstance(step, Mapping) else step


def refuse_awaitable(result: Any, what: str) -> None:
    """Raise TypeError if ``result`` (what a migration or transaction function returned) is awaitable: such a
    function was async, and its work would never run inside the transaction."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(what)


class Session(Protocol):
    """One storage's connection, as :class:`BasePluginStorage` uses it; only ever touched on the worker thread."""

    def transact(self, fn: Callable[[Any], T], *, internal: bool = False) -> T:
        """Run ``fn(conn)`` in one write transaction, committed if it returns, rolled back if it raises. ``conn`` is
        what plugins get, or with ``internal`` the storage's own unchecked connection (for the key-value SQL)."""
        ...

    def run_statement(self, sql: str, params: Any) -> Any:
        """Run one plugin statement on its own (committed at once); a cursor with rowcount/fetchone/fetchall/close."""
        ...

    def query(self, sql: str, params: Any) -> Any:
        """Run one of the storage's own statements (the key-value SQL) outside a transaction; its cursor."""
        ...

    def executemany(self, sql: str, rows: list[Any]) -> int:
        """Run a plugin statement once per parameter set, all in one transaction; the rows changed."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class BasePluginStorage(abc.ABC):
    """A plugin's own storage: a key-value store plus SQL on the plugin's tables, on either engine.

    Create with the engine's ``open()`` (the plugin host does this before the plugin's ``start()``, and closes it
    after ``stop()``). Every method is a coroutine that runs on the storage's worker thread; calls are executed one at
    a time, in the order they were made.

    Key-value values are stored as JSON: they come back as the JSON types (tuples become lists, dict keys become
    strings). Errors of the engine propagate unchanged; :attr:`Error` and :attr:`IntegrityError` name the engine's
    classes, so ``except self.storage.IntegrityError:`` works on both.
    """

    #: ``"sqlite"`` or ``"postgresql"``.
    dialect: ClassVar[str]

    def __init__(self, session: Session, executor: ThreadPoolExecutor, plugin: str, label: str, version: int) -> None:
        self._conn = session
        self._executor = executor
        #: The plugin's name (for messages).
        self.plugin = plugin
        self._label = label
        self._version = version
        self._closing: asyncio.Future[None] | None = None

    # -- what the engine tells -------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data is, for messages and as a key: the SQLite file, or the database (no password) and schema."""

    @property
    @abc.abstractmethod
    def Error(self) -> type[Exception]:
        """The engine's base error class (``sqlite3.Error``, ``psycopg.Error``)."""

    @property
    @abc.abstractmethod
    def IntegrityError(self) -> type[Exception]:
        """The engine's error for a broken constraint (unique, foreign key, not null)."""

    @property
    @abc.abstractmethod
    def ProgrammingError(self) -> type[Exception]:
        """The engine's error for a misused API (e.g. several statements in one ``execute``)."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    async def _start(
        cls, label: str, open_sync: Callable[..., tuple[Session, int]], *args: Any
    ) -> tuple[Session, ThreadPoolExecutor, int]:
        """Start the worker thread and run ``open_sync(*args)`` on it: the session and its version."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ratchet-storage-{label}")
        job: Future[tuple[Session, int]] = executor.submit(open_sync, *args)
        try:
            session, version = await asyncio.wrap_future(job)
        except BaseException:
            # Also on cancellation: close the connection once the open job finishes (the worker runs jobs in order).
            executor.submit(_discard, job)
            executor.shutdown(wait=False)
            raise
        return session, executor, version

    @property
    def version(self) -> int:
        """The database's version: the number of migrations applied."""
        return self._version

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing is not None

    async def close(self) -> None:
        """Close the database once the calls already made have finished. Calling it again does nothing.

        Any call made after ``close()`` raises :class:`StorageError`.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await asyncio.wrap_future(self._executor.submit(self._conn.close))
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> BasePluginStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closing is not None:
            raise StorageError(f"the storage of plugin {self._label} is closed")
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    # -- key-value -------------------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` if there is none."""
        _check_key(key)

        def work() -> tuple[str] | None:
            cursor = self._conn.query(_KV_GET, (key,))
            try:
                return cursor.fetchone()
            finally:
                cursor.close()

        row = await self._run(work)
        return default if row is None else json.loads(row[0])

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON-serializable) under ``key``, replacing any previous value.

        Raises:
            TypeError: ``value`` is not JSON-serializable (nothing is written).
        """
        _check_key(key)
        text = _dumps(value)

        def work() -> None:
            self._conn.query(_KV_PUT, (key, text, _now_ms())).close()

        await self._run(work)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; returns whether it existed."""
        _check_key(key)

        def work() -> bool:
            cursor = self._conn.query(_KV_DELETE, (key,))
            try:
                return cursor.rowcount > 0
            finally:
                cursor.close()

        return await self._run(work)

    def _scan(self, prefix: str, with_values: bool) -> list[Any]:
        columns = "key, value" if with_values else "key"
        end = prefix_end(prefix)
        if end is None:
            cursor = self._conn.query(f"SELECT {columns} FROM {KV_TABLE} WHERE key >= ? ORDER BY key", (prefix,))
        else:
            cursor = self._conn.query(
                f"SELECT {columns} FROM {KV_TABLE} WHERE key >= ? AND key < ? ORDER BY key", (prefix, end)
            )
        try:
            return [
                (row[0], json.loads(row[1])) if with_values else row[0]
                for row in cursor.fetchall()
                if row[0].startswith(prefix)
            ]
        finally:
            cursor.close()

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys starting with ``prefix`` (all keys by default), sorted."""
        _check_key(prefix)
        return await self._run(self._scan, prefix, False)

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """``(key, value)`` for the keys starting with ``prefix`` (all by default), sorted by key."""
        _check_key(prefix)
        return await self._run(self._scan, prefix, True)

    async def incr(self, key: str, by: int = 1) -> int:
        """Atomically add ``by`` to the integer stored under ``key`` (0 if absent) and return the new value.

        Raises:
            TypeError: ``by`` is not an integer, or the value stored under ``key`` is not one.
        """
        _check_key(key)
        if not isinstance(by, int) or isinstance(by, bool):
            raise TypeError(f"incr(): 'by' must be an integer, got {type(by).__name__}")

        def step(conn: Any) -> int:
            row = conn.execute(_KV_GET, (key,)).fetchone()
            current = 0 if row is None else json.loads(row[0])
            if not isinstance(current, int) or isinstance(current, bool):
                raise TypeError(f"incr(): the value stored under {key!r} is not an integer")
            new = current + by
            conn.execute(_KV_PUT, (key, json.dumps(new), _now_ms()))
            return new

        return await self._run(lambda: self._conn.transact(step, internal=True))

    # -- SQL -------------------------------------------------------------------------------------------------

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one SQL statement (committed at once) and return the number of rows it changed (-1 for a query).

        Use ``?`` placeholders with a sequence, or ``:name`` placeholders with a dict, never string formatting.
        """

        def work() -> int:
            cursor = self._conn.run_statement(sql, params)
            try:
                return cursor.rowcount
            finally:
                cursor.close()

        return await self._run(work)

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any] | dict[str, Any]]) -> int:
        """Run one SQL statement once per parameter set, all in one transaction; returns the rows changed."""
        rows = list(seq)  # consumed here, not on the worker thread
        return await self._run(self._conn.executemany, sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None if it returns no rows."""

        def work() -> tuple[Any, ...] | None:
            cursor = self._conn.run_statement(sql, params)
            try:
                return cursor.fetchone()
            finally:
                cursor.close()

        return await self._run(work)

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""

        def work() -> list[tuple[Any, ...]]:
            cursor = self._conn.run_statement(sql, params)
            try:
                return cursor.fetchall()
            finally:
                cursor.close()

        return await self._run(work)

    async def transaction(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` on the worker thread in one transaction and return its result.

        ``fn`` is a plain (not async) function given the connection (a ``sqlite3.Connection``, or on PostgreSQL a
        :class:`~bot.storage.pg_connection.SqlConnection` that runs the same portable SQL); everything it does is
        committed together when it returns, or rolled back if it raises (the exception then propagates). It must
        not use BEGIN/COMMIT/ROLLBACK, ``commit()`` or ``executescript()`` (SAVEPOINT is fine), nor keep the
        connection::

            def move(conn):
                conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
                conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))

            await self.storage.transaction(move)
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError("transaction() takes a plain (not async) function: it runs on the storage's thread")
        return await self._run(self._conn.transact, fn)


def _discard(job: Future[tuple[Session, int]]) -> None:
    """Close the connection an abandoned open job made (runs on the worker thread, after the job)."""
    if job.cancelled() or job.exception() is not None:
        return
    job.result()[0].close()


# ================================================================================================== SQLite


class _Connection:
    """The sqlite3 connection and what goes with it; only ever touched on the storage's worker thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: Transaction statements (BEGIN, COMMIT, ROLLBACK) are refused unless the storage itself issues them.
        self.tx_allowed = False
        #: A transaction statement was refused during the current unit of work.
        self.refused = False
        conn.set_authorizer(self._authorize)

    def _authorize(self, action: int, *_args: Any) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and not self.tx_allowed:
            self.refused = True
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def control(self, sql: str) -> None:
        """Run one of the storage's own transaction statements."""
        self.tx_allowed = True
        try:
            self.conn.execute(sql)
        finally:
            self.tx_allowed = False

    def transact(self, fn: Callable[[sqlite3.Connection], T], *, internal: bool = False) -> T:
        """Run ``fn(conn)`` in one write transaction: committed if it returns, rolled back if it raises."""
        self.refused = False
        self.control("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn)
            refuse_awaitable(result, "the function must be a plain (not async) function taking a sqlite3.Connection")
            self.control("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                self.control("ROLLBACK")
            if self.refused and isinstance(exc, sqlite3.Error):
                raise StorageError(
                    "BEGIN, COMMIT, ROLLBACK and executescript() are not allowed: this runs in a transaction of its "
                    "own (SAVEPOINT is fine)"
                ) from exc
            raise
        return result

    def run_statement(self, sql: str, params: Any) -> sqlite3.Cursor:
        self.refused = False
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            if self.refused:
                raise StorageError(
                    "BEGIN, COMMIT and ROLLBACK are not allowed in execute(): use transaction() or executemany()"
                ) from exc
            raise

    def query(self, sql: str, params: Any) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[Any]) -> int:
        return self.transact(lambda conn: conn.executemany(sql, rows).rowcount)

    def close(self) -> None:
        self.conn.close()


def _apply_migration(conn: sqlite3.Connection, step: Migration, version: int) -> None:
    part = migration_for(step, "sqlite")
    if isinstance(part, str):
        for statement in split_script(part):
            conn.execute(statement)
    else:
        refuse_awaitable(part(conn), "a migration must be a plain (not async) function")
    conn.execute(f"PRAGMA user_version = {int(version)}")


def _prepare_file(path: Path) -> None:
    """Create the folder (0700) and the database file (0600) if needed; tighten the file's mode."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    if not path.exists():
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)


def _open_sync(path: Path, migrations: tuple[Migration, ...], label: str) -> tuple[_Connection, int]:
    """Open and migrate the database (runs on the worker thread)."""
    try:
        _prepare_file(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"plugin {label}: cannot open its database {path}: {exc}") from exc
    try:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StorageError(f"plugin {label}: cannot open its database {path}: {exc}") from exc
        if version > len(migrations):
            raise StorageError(downgrade_message(label, f"its database {path}", version, len(migrations)))
        try:
            conn.execute(_KV_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"plugin {label}: cannot create the key-value table in {path}: {exc}") from exc
        wrapped = _Connection(conn)
        for number in range(version + 1, len(migrations) + 1):
            step = migrations[number - 1]
            try:
                wrapped.transact(lambda c, step=step, number=number: _apply_migration(c, step, number))
            except Exception as exc:
                raise StorageError(migration_failed_message(label, number, len(migrations), exc)) from exc
        return wrapped, len(migrations)
    except BaseException:
        conn.close()
        raise


def downgrade_message(label: str, where: str, version: int, count: int) -> str:
    """The error for a database at a higher version than the plugin has migrations."""
    return (
        f"plugin {label}: {where} is at version {version}, but the plugin only has "
        f"{count} migration{'' if count == 1 else 's'}; it was written by a newer version "
        "of the plugin (downgrades are not supported: restore a backup or upgrade the plugin)"
    )


def migration_failed_message(label: str, number: int, count: int, exc: BaseException) -> str:
    """The error for migration ``number`` (of ``count``) that raised ``exc``."""
    reason = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
    return (
        f"plugin {label}: migration {number} of {count} failed ({reason}); "
        f"the database stays at version {number - 1}"
    )


class PluginStorage(BasePluginStorage):
    """A plugin's own SQLite database: a key-value store plus SQL on the plugin's tables.

    See :class:`BasePluginStorage` for the interface. Errors from SQLite (``sqlite3.IntegrityError``,
    ``sqlite3.OperationalError``...) propagate unchanged; transaction functions and callable migrations get the
    ``sqlite3.Connection``.
    """

    dialect: ClassVar[str] = "sqlite"

    def __init__(self, conn: _Connection, executor: ThreadPoolExecutor, path: Path, plugin: str, version: int) -> None:
        super().__init__(conn, executor, plugin, plugin or path.stem, version)
        #: The database file.
        self.path = path

    @property
    def location(self) -> str:
        """The database file."""
        return str(self.path)

    @property
    def Error(self) -> type[Exception]:
        """``sqlite3.Error``."""
        return sqlite3.Error

    @property
    def IntegrityError(self) -> type[Exception]:
        """``sqlite3.IntegrityError``."""
        return sqlite3.IntegrityError

    @property
    def ProgrammingError(self) -> type[Exception]:
        """``sqlite3.ProgrammingError``."""
        return sqlite3.ProgrammingError

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        migrations: Sequence[Migration] = (),
        plugin: str = "",
    ) -> PluginStorage:
        """Open (creating if needed) the database at ``path`` and apply the pending ``migrations``.

        Args:
            path: the database file, normally ``data_dir/plugins/<name>.db`` (see :func:`plugin_db_path`). Missing
                folders are created (mode 0700); the file is made readable by its owner only (0600).
            migrations: the plugin's migrations, oldest first. Each is a SQL script (one or more statements, run one
                by one), a function taking the ``sqlite3.Connection``, or a dict ``{"sqlite": ..., "postgresql":
                ...}`` of those (this engine runs the ``"sqlite"`` one). The database's version (``PRAGMA
                user_version``) counts the migrations applied; each pending one runs in its own transaction together
                with the version bump, so a failure leaves the database intact at the last good version. Migrations
                must not use BEGIN/COMMIT/ROLLBACK or ``executescript()`` (SAVEPOINT is fine); note that
                ``PRAGMA foreign_keys`` cannot be changed inside a transaction.
            plugin: the plugin's name, used in error messages and the worker thread's name.

        Raises:
            StorageError: the file cannot be opened; a migration failed (the message names the plugin and the
                migration's number, counted from 1); or the database is at a higher version than there are
                migrations (a downgrade of the plugin), which is refused.
            TypeError: a migration is neither a string nor a plain function (nor a dict of those).
        """
        path = Path(path)
        label = plugin or path.stem
        steps = check_migrations(migrations, label)
        session, executor, version = await cls._start(label, _open_sync, path, steps, label)
        assert isinstance(session, _Connection)
        return cls(session, executor, path, plugin, version)
