"""Per-plugin storage (bot.storage.plugin_storage, bot.storage.pg_plugin_storage): key-value API, SQL, migrations,
threading, closing on both engines (SQLite files, PostgreSQL schemas); file modes and pragmas of the SQLite engine.

The tests that take ``place`` or ``storage`` run once per engine: the behaviour is engine-independent. PostgreSQL's
own (schemas, the dialect, settings, the after-migrations hook) is in tests/test_pg_plugin_storage.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.storage.plugin_storage import (
    KV_TABLE,
    BasePluginStorage,
    Migration,
    PluginStorage,
    StorageError,
    plugin_db_path,
    prefix_end,
)

ENGINES = ["sqlite", "postgresql"]


@dataclass
class Place:
    """Where a test's storage lives: a SQLite file, or a fresh PostgreSQL database (one schema per plugin)."""

    engine: str
    path: Path
    dsn: str = ""

    async def open(self, migrations: Sequence[Migration] = (), plugin: str = "reminders") -> BasePluginStorage:
        """Open the storage (on SQLite ``plugin`` is only the label: the file is always ``path``)."""
        if self.engine == "sqlite":
            return await PluginStorage.open(self.path, migrations=migrations, plugin=plugin)
        from bot.storage.pg_plugin_storage import PostgresPluginStorage

        return await PostgresPluginStorage.open(self.dsn, plugin=plugin, migrations=migrations)

    def version(self, plugin: str = "reminders") -> int:
        """The stored migration version, read without the storage."""
        if self.engine == "sqlite":
            return raw_version(self.path)
        return int(self.sql(f"SELECT version FROM ratchet_plugin_{plugin}.ratchet_schema_version")[0][0])

    def exists(self, plugin: str = "reminders") -> bool:
        """Whether anything was created: the file, or the plugin's schema."""
        if self.engine == "sqlite":
            return self.path.exists()
        return bool(self.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (f"ratchet_plugin_{plugin}",)))

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``query`` on the PostgreSQL database, on a connection of the test's own."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params or None).fetchall()


@pytest.fixture(params=ENGINES)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    path = plugin_db_path(tmp_path / "data", "reminders")
    if request.param == "sqlite":
        return Place("sqlite", path)
    return Place("postgresql", path, request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return plugin_db_path(tmp_path / "data", "reminders")


@pytest.fixture
async def storage(place: Place):
    store = await place.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def sqlite_storage(db_path: Path):
    store = await PluginStorage.open(db_path, plugin="reminders")
    try:
        yield store
    finally:
        await store.close()


def mode(path: Path) -> int | None:
    """The permission bits of ``path``, or None if it does not exist."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def raw_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


async def tables(store: BasePluginStorage) -> set[str]:
    """The tables in the storage (its file, or its schema)."""
    if store.dialect == "sqlite":
        rows = await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await store.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {r[0] for r in rows}


# -- files ----------------------------------------------------------------------------------------------------------


def test_plugin_db_path(tmp_path: Path) -> None:
    assert plugin_db_path(tmp_path, "quotes") == tmp_path / "plugins" / "quotes.db"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            plugin_db_path(tmp_path, bad)


async def test_file_and_folder_modes(tmp_path: Path, db_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = await PluginStorage.open(db_path, plugin="reminders")
    finally:
        os.umask(old)
    await store.set("k", 1)
    assert mode(db_path.parent) == 0o700
    assert mode(db_path) == 0o600
    wal_mode = mode(db_path.with_name(db_path.name + "-wal"))
    assert wal_mode is None or wal_mode & 0o077 == 0
    await store.close()


async def test_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "loose.db"
    path.touch()
    os.chmod(path, 0o644)
    store = await PluginStorage.open(path)
    await store.close()
    assert mode(path) == 0o600


async def test_pragmas(sqlite_storage: PluginStorage) -> None:
    assert (await sqlite_storage.fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await sqlite_storage.fetchone("PRAGMA synchronous"))[0] == 1  # NORMAL
    assert (await sqlite_storage.fetchone("PRAGMA foreign_keys"))[0] == 1


async def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="plugin p: cannot open"):
        await PluginStorage.open(blocker / "plugins" / "p.db", plugin="p")


async def test_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StorageError, match="plugin garbage"):
        await PluginStorage.open(path)


# -- key-value ------------------------------------------------------------------------------------------------------


async def test_kv_round_trips(storage: BasePluginStorage) -> None:
    values = {
        "none": None,
        "bool": True,
        "int": -12345678901234567890,
        "float": 1.5,
        "str": "héllo \u2603 \x00 end",
        "list": [1, "two", [3.0], {"four": None}],
        "dict": {"a": {"b": [True, False]}},
        "empty": {},
    }
    for key, value in values.items():
        await storage.set(key, value)
    for key, value in values.items():
        got = await storage.get(key)
        assert got == value and type(got) is type(value)
    assert await storage.get("missing") is None
    assert await storage.get("missing", default=42) == 42
    await storage.set("int", 2)
    assert await storage.get("int") == 2


async def test_json_coercions(storage: BasePluginStorage) -> None:
    await storage.set("t", (1, 2))
    assert await storage.get("t") == [1, 2]
    await storage.set("d", {1: "a"})
    assert await storage.get("d") == {"1": "a"}


async def test_stored_as_json_text_with_timestamp(storage: BasePluginStorage) -> None:
    await storage.set("k", {"a": [1, 2]})
    row = await storage.fetchone(f"SELECT value, updated_at FROM {KV_TABLE} WHERE key = ?", ("k",))
    assert row is not None
    assert row[0] == '{"a":[1,2]}'
    assert isinstance(row[1], int) and row[1] > 1_600_000_000_000


async def test_delete(storage: BasePluginStorage) -> None:
    await storage.set("k", 1)
    assert await storage.delete("k") is True
    assert await storage.delete("k") is False
    assert await storage.get("k") is None


async def test_keys_and_items_by_prefix(storage: BasePluginStorage) -> None:
    for key in [
        "user:b",
        "user:a",
        "user",
        "user;x",
        "users:z",
        "room:1",
        "User:c",
        "user:%",
        "user:_x",
        "user:\u2603",
    ]:
        await storage.set(key, key.upper())
    assert await storage.keys("user:") == ["user:%", "user:_x", "user:a", "user:b", "user:\u2603"]
    assert await storage.keys("user:_") == ["user:_x"]  # no LIKE wildcards
    assert await storage.keys("User") == ["User:c"]  # case-sensitive
    assert await storage.keys("nothing") == []
    assert await storage.keys() == sorted(await storage.keys())
    assert len(await storage.keys()) == 10
    assert await storage.items("room:") == [("room:1", "ROOM:1")]
    assert await storage.items("user:a") == [("user:a", "USER:A")]


async def test_keys_must_be_strings(storage: BasePluginStorage) -> None:
    with pytest.raises(TypeError):
        await storage.set(1, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await storage.get(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", float("nan"), float("inf"), {"a": object()}])
async def test_non_serializable_value_rejected(storage: BasePluginStorage, value: object) -> None:
    await storage.set("k", "before")
    with pytest.raises(TypeError, match="JSON-serializable"):
        await storage.set("k", value)
    assert await storage.get("k") == "before"


async def test_circular_value_rejected(storage: BasePluginStorage) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError):
        await storage.set("k", loop)
    assert await storage.keys() == []


async def test_persistence_across_reopen(place: Place) -> None:
    store = await place.open()
    await store.set("a", {"x": 1})
    await store.incr("n", 5)
    await store.close()
    again = await place.open()
    try:
        assert await again.get("a") == {"x": 1}
        assert await again.get("n") == 5
        assert await again.keys() == ["a", "n"]
    finally:
        await again.close()


async def test_incr(storage: BasePluginStorage) -> None:
    assert await storage.incr("n") == 1
    assert await storage.incr("n", 10) == 11
    assert await storage.incr("n", -20) == -9
    assert await storage.get("n") == -9
    await storage.set("s", "text")
    with pytest.raises(TypeError, match="not an integer"):
        await storage.incr("s")
    assert await storage.get("s") == "text"
    await storage.set("b", True)
    with pytest.raises(TypeError):
        await storage.incr("b")
    with pytest.raises(TypeError):
        await storage.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await storage.incr("n", True)


async def test_incr_is_atomic_under_concurrency(storage: BasePluginStorage) -> None:
    results = await asyncio.gather(*(storage.incr("counter") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await storage.get("counter") == 200


async def test_incr_is_atomic_across_two_handles(place: Place) -> None:
    # Two storages of one plugin (two worker threads, two connections: a reload overlaps two versions): SQLite's
    # BEGIN IMMEDIATE serializes them, PostgreSQL's writer lock too.
    a = await place.open()
    b = await place.open()
    try:
        await asyncio.gather(*(s.incr("counter") for _ in range(100) for s in (a, b)))
        assert await a.get("counter") == 200
    finally:
        await a.close()
        await b.close()


# -- threading ------------------------------------------------------------------------------------------------------


async def test_work_runs_on_one_worker_thread(storage: BasePluginStorage) -> None:
    seen: set[str] = set()

    def where(conn: Any) -> str:
        seen.add(threading.current_thread().name)
        return threading.current_thread().name

    names = await asyncio.gather(*(storage.transaction(where) for _ in range(20)))
    assert len(seen) == 1
    assert names[0] != threading.current_thread().name
    assert "reminders" in names[0]


async def test_event_loop_is_not_blocked(storage: BasePluginStorage) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(conn: Any) -> int:
        started.set()
        release.wait(5)
        return 1

    task = asyncio.ensure_future(storage.transaction(slow))
    await asyncio.to_thread(started.wait, 5)
    # The worker is busy; the loop still runs other coroutines.
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 5 and not task.done()
    release.set()
    assert await task == 1


async def test_concurrent_use_from_many_coroutines(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE log (worker INTEGER, n INTEGER)")

    async def worker(i: int) -> None:
        for n in range(10):
            await storage.set(f"w:{i}:{n}", [i, n])
            await storage.execute("INSERT INTO log VALUES (?, ?)", (i, n))
            assert await storage.get(f"w:{i}:{n}") == [i, n]
            await storage.incr("total")
        await storage.delete(f"w:{i}:0")

    await asyncio.gather(*(worker(i) for i in range(30)))
    assert await storage.get("total") == 300
    assert len(await storage.keys("w:")) == 30 * 9
    assert await storage.fetchone("SELECT COUNT(*) FROM log") == (300,)


async def test_calls_run_in_order(storage: BasePluginStorage) -> None:
    ops = [storage.set("k", i) for i in range(50)]
    await asyncio.gather(*ops)
    assert await storage.get("k") == 49


# -- SQL helpers ----------------------------------------------------------------------------------------------------


async def test_sql_helpers(storage: BasePluginStorage) -> None:
    assert await storage.execute("CREATE TABLE quotes (id INTEGER PRIMARY KEY, room TEXT NOT NULL, text TEXT)") in (
        -1,
        0,
    )
    assert await storage.execute("INSERT INTO quotes (room, text) VALUES (?, ?)", ("!a", "one")) == 1
    changed = await storage.executemany(
        "INSERT INTO quotes (room, text) VALUES (?, ?)", (("!a", f"q{i}") for i in range(5))
    )
    assert changed == 5
    assert await storage.execute("UPDATE quotes SET text = upper(text) WHERE room = ?", ("!a",)) == 6
    assert await storage.fetchone("SELECT text FROM quotes WHERE id = ?", (1,)) == ("ONE",)
    assert await storage.fetchone("SELECT text FROM quotes WHERE id = ?", (999,)) is None
    rows = await storage.fetchall("SELECT id, text FROM quotes WHERE room = :room ORDER BY id", {"room": "!a"})
    assert rows[0] == (1, "ONE") and len(rows) == 6 and all(isinstance(r, tuple) for r in rows)
    assert await storage.fetchall("SELECT * FROM quotes WHERE room = 'none'") == []


async def test_executemany_is_atomic(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    with pytest.raises(storage.IntegrityError):
        await storage.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (1,)])
    assert await storage.fetchall("SELECT x FROM t") == []


async def test_engine_errors_propagate(storage: BasePluginStorage) -> None:
    with pytest.raises(storage.Error):
        await storage.execute("SELECT * FROM no_such_table")
    with pytest.raises(storage.ProgrammingError):
        await storage.execute("SELECT 1; SELECT 2")
    assert await storage.fetchone("SELECT 1") == (1,)


def test_engine_error_classes() -> None:
    assert PluginStorage.dialect == "sqlite"
    store = PluginStorage.__new__(PluginStorage)
    assert (store.Error, store.IntegrityError, store.ProgrammingError) == (
        sqlite3.Error,
        sqlite3.IntegrityError,
        sqlite3.ProgrammingError,
    )


def test_prefix_end_bounds_exactly_the_keys_with_the_prefix() -> None:
    assert prefix_end("") is None
    assert prefix_end("user:") == "user;"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("\ud7ff") == "\ue000"  # surrogates are skipped
    for key in ["user:", "user:a", "user:\U0010ffff\U0010ffff"]:
        assert "user:" <= key < "user;"


async def test_foreign_keys_enforced(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    await storage.execute("CREATE TABLE child (pid INTEGER REFERENCES parent(id))")
    with pytest.raises(storage.IntegrityError):
        await storage.execute("INSERT INTO child VALUES (1)")


async def test_transaction_commits_and_returns(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE acct (id TEXT PRIMARY KEY, balance INTEGER)")
    await storage.executemany("INSERT INTO acct VALUES (?, ?)", [("a", 10), ("b", 0)])

    def move(conn: Any) -> int:
        conn.execute("UPDATE acct SET balance = balance - 4 WHERE id = 'a'")
        conn.execute("UPDATE acct SET balance = balance + 4 WHERE id = 'b'")
        return conn.execute("SELECT SUM(balance) FROM acct").fetchone()[0]

    assert await storage.transaction(move) == 10
    assert await storage.fetchall("SELECT id, balance FROM acct ORDER BY id") == [("a", 6), ("b", 4)]


async def test_transaction_rolls_back_on_error(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE t (x INTEGER)")

    def fail(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await storage.transaction(fail)
    assert await storage.fetchall("SELECT x FROM t") == []
    # The storage is still usable.
    assert await storage.execute("INSERT INTO t VALUES (2)") == 1


async def test_transaction_control_statements_are_refused(storage: BasePluginStorage) -> None:
    await storage.execute("CREATE TABLE t (x INTEGER)")

    def commits(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()

    with pytest.raises(StorageError, match="not allowed"):
        await storage.transaction(commits)
    assert await storage.fetchall("SELECT x FROM t") == []
    with pytest.raises(StorageError, match="not allowed"):
        await storage.execute("BEGIN")
    # Savepoints are fine inside a transaction.

    def nested(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES (5)")
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO t VALUES (6)")
        conn.execute("ROLLBACK TO s")
        conn.execute("RELEASE s")

    await storage.transaction(nested)
    assert await storage.fetchall("SELECT x FROM t") == [(5,)]


async def test_transaction_rejects_async_functions(storage: BasePluginStorage) -> None:
    async def not_allowed(conn: Any) -> None:
        pass

    with pytest.raises(TypeError):
        await storage.transaction(not_allowed)  # type: ignore[arg-type]


# -- migrations -----------------------------------------------------------------------------------------------------

MIGRATIONS: list[Migration] = [
    "CREATE TABLE quotes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);",
    # A trigger is not portable: the SQLite text, and a PostgreSQL equivalent (native, run as written).
    {
        "sqlite": """
    -- a comment; with a semicolon
    ALTER TABLE quotes ADD COLUMN room TEXT NOT NULL DEFAULT '';
    CREATE INDEX quotes_room ON quotes (room);
    CREATE TRIGGER quotes_trim AFTER INSERT ON quotes BEGIN
        UPDATE quotes SET text = trim(text) WHERE id = new.id;
    END;
    INSERT INTO quotes (text, room) VALUES ('  semi;colon  ', '!a')
    """,
        "postgresql": """
    -- a comment; with a semicolon
    ALTER TABLE quotes ADD COLUMN room TEXT COLLATE "C" NOT NULL DEFAULT '';
    CREATE INDEX quotes_room ON quotes (room);
    CREATE FUNCTION quotes_trim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.text := trim(NEW.text);
        RETURN NEW;
    END $$;
    CREATE TRIGGER quotes_trim BEFORE INSERT ON quotes FOR EACH ROW EXECUTE FUNCTION quotes_trim();
    INSERT INTO quotes (text, room) VALUES ('  semi;colon  ', '!a')
    """,
    },
]


async def test_migrations_applied_once_and_in_order(place: Place) -> None:
    calls: list[int] = []

    def third(conn: Any) -> None:
        calls.append(conn.execute("SELECT COUNT(*) FROM quotes").fetchone()[0])
        conn.execute("CREATE TABLE authors (name TEXT)")

    store = await place.open(migrations=[*MIGRATIONS, third])
    assert store.version == 3
    assert calls == [1]
    assert await store.fetchall("SELECT text, room FROM quotes") == [("semi;colon", "!a")]
    await store.close()
    assert place.version() == 3

    # Reopening runs nothing again; a new migration appended later runs alone.
    store = await place.open(migrations=[*MIGRATIONS, third, "INSERT INTO authors VALUES ('x');"])
    assert store.version == 4
    assert calls == [1]
    assert await store.fetchall("SELECT text FROM quotes") == [("semi;colon",)]
    assert await store.fetchall("SELECT name FROM authors") == [("x",)]
    await store.close()


async def test_migrations_applied_one_step_at_a_time(place: Place) -> None:
    store = await place.open(migrations=MIGRATIONS[:1])
    assert store.version == 1
    await store.execute("INSERT INTO quotes (text) VALUES ('old')")
    await store.close()
    store = await place.open(migrations=MIGRATIONS)
    assert store.version == 2
    assert await store.fetchall("SELECT text, room FROM quotes ORDER BY id") == [("old", ""), ("semi;colon", "!a")]
    await store.close()


async def test_no_migrations_means_version_zero(storage: BasePluginStorage) -> None:
    assert storage.version == 0


@pytest.mark.parametrize(
    "broken",
    [
        "CREATE TABLE ok_part (x INTEGER); INSERT INTO missing_table VALUES (1);",
        "CREATE TABLE ok_part (x INTEGER); SELEC nonsense;",
        "CREATE TABLE ok_part (x INTEGER); INSERT INTO ok_part VALUES ('unterminated);",
        "CREATE TABLE ok_part (x INTEGER); /* unterminated comment",
        "CREATE TABLE ok_part (x INTEGER); COMMIT; CREATE TABLE after_commit (y INTEGER);",
        "CREATE TABLE ok_part (x INTEGER); PRAGMA user_version = 99; SELECT raise_error();",
    ],
)
async def test_failing_migration_rolls_back_its_step(place: Place, broken: str) -> None:
    good = MIGRATIONS[:1]
    store = await place.open(migrations=good, plugin="quotes")
    await store.set("kept", 1)
    await store.close()

    with pytest.raises(StorageError) as info:
        await place.open(migrations=[*good, broken], plugin="quotes")
    message = str(info.value)
    assert "plugin quotes" in message
    assert "migration 2" in message
    assert "version 1" in message

    # The step left nothing behind, the version is the last good one, and the database is usable.
    assert place.version("quotes") == 1
    store = await place.open(migrations=good, plugin="quotes")
    try:
        assert store.version == 1
        assert await store.get("kept") == 1
        found = await tables(store)
        assert "ok_part" not in found and "after_commit" not in found
        assert "quotes" in found
    finally:
        await store.close()


async def test_failing_callable_migration(place: Place) -> None:
    def boom(conn: Any) -> None:
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise ValueError("bad data in row 7")

    with pytest.raises(StorageError, match=r"plugin p: migration 3 of 3 failed \(ValueError: bad data in row 7\)"):
        await place.open(migrations=[*MIGRATIONS, boom], plugin="p")
    assert place.version("p") == 2


async def test_callable_migration_may_not_commit(place: Place) -> None:
    def sneaky(conn: Any) -> None:
        conn.execute("CREATE TABLE half (x INTEGER)")
        conn.executescript("CREATE TABLE other (y INTEGER);")

    with pytest.raises(StorageError, match="migration 1") as info:
        await place.open(migrations=[sneaky], plugin="p")
    assert "not allowed" in str(info.value)
    assert place.version("p") == 0


async def test_downgrade_refused(place: Place) -> None:
    store = await place.open(migrations=MIGRATIONS, plugin="quotes")
    await store.close()
    with pytest.raises(StorageError) as info:
        await place.open(migrations=MIGRATIONS[:1], plugin="quotes")
    message = str(info.value)
    assert "plugin quotes" in message and "version 2" in message and "1 migration" in message
    assert "newer version" in message
    assert place.version("quotes") == 2


async def test_invalid_migrations_rejected_before_opening(place: Place) -> None:
    async def coro(conn: Any) -> None:
        pass

    with pytest.raises(TypeError, match="migration 2"):
        await place.open(migrations=["SELECT 1;", 42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="migration 1"):
        await place.open(migrations=[coro])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="migration 1 is a dict"):
        await place.open(migrations=[{"sqlite": "SELECT 1;"}])
    with pytest.raises(TypeError, match="migration 1"):
        await place.open(migrations=[{"sqlite": "SELECT 1;", "postgresql": coro}])  # type: ignore[dict-item]
    assert not place.exists()


# -- closing --------------------------------------------------------------------------------------------------------


async def test_close_is_idempotent(place: Place) -> None:
    store = await place.open()
    await store.set("k", 1)
    assert not store.closed
    await store.close()
    assert store.closed
    await store.close()
    await asyncio.gather(store.close(), store.close())
    with pytest.raises(StorageError, match="closed"):
        await store.get("k")
    with pytest.raises(StorageError, match="closed"):
        await store.execute("SELECT 1")


async def test_close_waits_for_pending_calls(place: Place) -> None:
    store = await place.open()
    pending = [asyncio.ensure_future(store.set(f"k{i}", i)) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    again = await place.open()
    try:
        assert len(await again.keys()) == 50
    finally:
        await again.close()


async def test_async_context_manager(place: Place) -> None:
    async with await place.open() as store:
        await store.set("k", "v")
    assert store.closed


async def test_worker_thread_ends_after_close(place: Place) -> None:
    before = {t.ident for t in threading.enumerate()}
    store = await place.open(plugin="threadcheck")
    await store.set("k", 1)
    await store.close()
    for _ in range(100):
        extra = [t for t in threading.enumerate() if t.ident not in before and "threadcheck" in t.name]
        if not extra:
            break
        await asyncio.sleep(0.01)
    assert not extra
