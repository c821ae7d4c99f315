"""Plugin storage on PostgreSQL (bot.storage.pg_plugin_storage) against a real server: what only this engine has
(schemas, search_path, settings, the after-migrations hook, the portable dialect's checks and translations,
reconnection), and the bundled plugins' migrations and SQL on both engines.

The engine-independent behaviour (key-value API, SQL helpers, migrations, closing) runs on both engines in
tests/test_storage.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from bot.errors import StorageError
from bot.storage.pg_connection import SqlConnection, ensure_schema
from bot.storage.pg_plugin_storage import PostgresPluginStorage, portable_sql
from bot.storage.plugin_storage import BasePluginStorage, Migration, PluginStorage, plugin_db_path


def server_rows(dsn: str, query: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on a connection of the test's own (not the storage's)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


# -- schemas, search_path, settings, the hook -----------------------------------------------------------------------


async def test_each_plugin_has_its_own_schema_as_search_path(postgres_dsn: str) -> None:
    migrations: list[Migration] = ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"]
    alpha = await PostgresPluginStorage.open(postgres_dsn, plugin="alpha", migrations=migrations)
    beta = await PostgresPluginStorage.open(postgres_dsn, plugin="beta", migrations=migrations)
    try:
        await alpha.execute("INSERT INTO notes (text) VALUES (?)", ("from alpha",))
        await alpha.set("k", "alpha's")
        await beta.set("k", "beta's")
        assert await beta.fetchall("SELECT text FROM notes") == []  # the same table name, another table
        assert await alpha.get("k") == "alpha's" and await beta.get("k") == "beta's"
        assert await alpha.fetchone("SELECT current_schema()") == ("ratchet_plugin_alpha",)
        assert await beta.fetchone("SHOW search_path") == ("ratchet_plugin_beta",)
        assert alpha.schema == "ratchet_plugin_alpha" and alpha.location.endswith("schema ratchet_plugin_alpha")
        assert alpha.dialect == "postgresql" and alpha.IntegrityError is psycopg.IntegrityError
    finally:
        await alpha.close()
        await beta.close()
    tables = server_rows(
        postgres_dsn,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema LIKE 'ratchet_plugin_%' ORDER BY 1, 2",
    )
    assert tables == [
        (schema, table)
        for schema in ("ratchet_plugin_alpha", "ratchet_plugin_beta")
        for table in ("notes", "ratchet_kv", "ratchet_schema_version")
    ]
    assert server_rows(postgres_dsn, "SELECT text FROM ratchet_plugin_alpha.notes") == [("from alpha",)]


async def test_settings_are_applied_to_the_storage_connection(postgres_dsn: str) -> None:
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="fenced", settings={"ratchet.epoch": "7"})
    try:
        assert await store.fetchone("SELECT current_setting('ratchet.epoch')") == ("7",)
        assert await store.transaction(lambda c: c.execute("SELECT current_setting('ratchet.epoch')").fetchone()) == (
            "7",
        )
    finally:
        await store.close()


def _install_fence(conn: SqlConnection, schema: str) -> None:
    """A write fence like the lease's: every table refuses writes unless the session's epoch is 7."""
    conn.execute(
        "CREATE OR REPLACE FUNCTION public.epoch_fence() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF current_setting('ratchet.epoch', true) IS DISTINCT FROM '7' THEN RAISE EXCEPTION 'stale epoch' "
        "USING ERRCODE = 'R0001'; END IF; RETURN NULL; END $$"
    )
    for (table,) in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = ? AND NOT EXISTS ("
        "SELECT 1 FROM pg_trigger t WHERE t.tgrelid = format('%I.%I', schemaname, tablename)::regclass "
        "AND t.tgname = 'fence')",
        (schema,),
    ).fetchall():
        conn.execute(
            f'CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON "{schema}"."{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION public.epoch_fence()"
        )


async def test_after_migrations_gets_each_schema_once_migrated_and_can_fence_it(postgres_dsn: str) -> None:
    calls: list[tuple[str, set[str]]] = []

    def hook(conn: SqlConnection, schema: str) -> None:
        assert isinstance(conn, SqlConnection)
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = ?", (schema,))}
        calls.append((schema, tables))
        _install_fence(conn, schema)

    migrations: list[Migration] = ["CREATE TABLE t (x INTEGER)"]
    current = await PostgresPluginStorage.open(
        postgres_dsn, plugin="one", migrations=migrations, settings={"ratchet.epoch": "7"}, after_migrations=hook
    )
    other = await PostgresPluginStorage.open(
        postgres_dsn, plugin="two", settings={"ratchet.epoch": "7"}, after_migrations=hook
    )
    stale = await PostgresPluginStorage.open(
        postgres_dsn, plugin="one", migrations=migrations, settings={"ratchet.epoch": "6"}
    )
    try:
        assert calls == [
            ("ratchet_plugin_one", {"t", "ratchet_kv", "ratchet_schema_version"}),
            ("ratchet_plugin_two", {"ratchet_kv", "ratchet_schema_version"}),
        ]
        await current.execute("INSERT INTO t VALUES (1)")
        await current.set("k", 1)
        with pytest.raises(psycopg.Error, match="stale epoch"):
            await stale.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(psycopg.Error, match="stale epoch"):
            await stale.incr("k")
        assert await stale.fetchall("SELECT x FROM t") == [(1,)]  # reads are not fenced
    finally:
        for store in (current, other, stale):
            await store.close()


async def test_a_failing_after_migrations_hook_is_a_storage_error(postgres_dsn: str) -> None:
    class LeaseLost(StorageError):
        pass

    def lost(conn: SqlConnection, schema: str) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise LeaseLost("this process no longer holds the lease")

    def broken(conn: SqlConnection, schema: str) -> None:
        conn.execute("SELECT no_such_function()")

    with pytest.raises(StorageError, match="plugin gone: this process no longer holds the lease"):
        await PostgresPluginStorage.open(postgres_dsn, plugin="gone", after_migrations=lost)
    with pytest.raises(StorageError, match=r"plugin gone: the after-migrations hook failed .*UndefinedFunction"):
        await PostgresPluginStorage.open(postgres_dsn, plugin="gone", after_migrations=broken)
    assert server_rows(postgres_dsn, "SELECT 1 FROM pg_tables WHERE tablename = 'half_done'") == []


async def test_unreachable_server_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError, match=r"plugin p: cannot connect to postgresql://u:\*\*\*@127\.0\.0\.1:1/db"):
        await PostgresPluginStorage.open("postgresql://u:secret@127.0.0.1:1/db", plugin="p")
    with pytest.raises(ValueError):
        await PostgresPluginStorage.open("postgresql://u@127.0.0.1:1/db", plugin="no spaces")


# -- migrations -------------------------------------------------------------------------------------------------


async def test_migrations_resume_after_a_failure(postgres_dsn: str) -> None:
    ran: list[str] = []
    fail = {"now": True}

    def second(conn: Any) -> None:
        ran.append("second")
        conn.execute("CREATE TABLE second (x INTEGER)")
        if fail["now"]:
            raise RuntimeError("disk on fire")

    migrations: list[Migration] = [
        "CREATE TABLE first (x INTEGER); INSERT INTO first VALUES (1);",
        second,
        "INSERT INTO first VALUES (3)",
    ]
    with pytest.raises(StorageError, match=r"plugin resume: migration 2 of 3 failed \(RuntimeError: disk on fire\)"):
        await PostgresPluginStorage.open(postgres_dsn, plugin="resume", migrations=migrations)
    assert server_rows(postgres_dsn, "SELECT version FROM ratchet_plugin_resume.ratchet_schema_version") == [(1,)]
    assert server_rows(postgres_dsn, "SELECT 1 FROM pg_tables WHERE tablename = 'second'") == []

    fail["now"] = False
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="resume", migrations=migrations)
    try:
        assert store.version == 3 and ran == ["second", "second"]
        assert await store.fetchall("SELECT x FROM first ORDER BY x") == [(1,), (3,)]  # the first ran once
    finally:
        await store.close()


async def test_two_processes_opening_at_once_apply_each_migration_once(postgres_dsn: str) -> None:
    migrations: list[Migration] = ["CREATE TABLE once (x INTEGER); INSERT INTO once VALUES (1);", "SELECT 1"]
    stores = await asyncio.gather(
        *(PostgresPluginStorage.open(postgres_dsn, plugin="race", migrations=migrations) for _ in range(4))
    )
    try:
        assert await stores[0].fetchall("SELECT x FROM once") == [(1,)]
    finally:
        for store in stores:
            await store.close()


def test_a_schema_created_by_another_session_at_the_same_moment_is_not_an_error(postgres_dsn: str) -> None:
    # The race behind the test above, made certain: session A has created the schema but not committed, so B's
    # CREATE SCHEMA IF NOT EXISTS waits on pg_namespace's unique index and, once A commits, fails with a unique
    # violation (IF NOT EXISTS is not atomic). ensure_schema takes that as "it exists".
    import threading

    schema = f"race_{time.monotonic_ns()}"
    first = psycopg.connect(postgres_dsn)  # a transaction, left open
    second = psycopg.connect(postgres_dsn, autocommit=True)
    watcher = psycopg.connect(postgres_dsn, autocommit=True)
    outcome: list[BaseException | None] = []
    try:
        first.execute(f'CREATE SCHEMA "{schema}"')

        def create() -> None:
            try:
                ensure_schema(second, schema)
                outcome.append(None)
            except BaseException as exc:  # reported below
                outcome.append(exc)

        thread = threading.Thread(target=create)
        thread.start()
        pid = second.info.backend_pid
        for _ in range(500):  # until B waits for A's lock (not a timing assertion: the loop only waits)
            row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the second session never waited for the first one's schema")
        first.commit()
        thread.join(30)
        assert outcome == [None], outcome
        assert second.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (1,)
    finally:
        first.rollback()
        watcher.execute(f'DROP SCHEMA IF EXISTS "{schema}"')
        for conn in (first, second, watcher):
            conn.close()


# -- the dialect ------------------------------------------------------------------------------------------------


def test_ddl_translation() -> None:
    assert portable_sql(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL DEFAULT 'REAL', "
        "at REAL, n INTEGER, data BLOB, code VARCHAR(20), nick TEXT COLLATE \"C\", UNIQUE (name, at)) WITHOUT ROWID;"
    ) == (
        "CREATE TABLE IF NOT EXISTS t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY , "
        "name TEXT COLLATE \"C\" NOT NULL DEFAULT 'REAL', at DOUBLE PRECISION, n BIGINT, data BYTEA, "
        "code VARCHAR(20), nick TEXT COLLATE \"C\", UNIQUE (name, at)) ;"
    )
    assert portable_sql("CREATE TABLE k (a INTEGER NOT NULL PRIMARY KEY)") == (
        "CREATE TABLE k (a BIGINT GENERATED BY DEFAULT AS IDENTITY NOT NULL PRIMARY KEY)"
    )
    assert portable_sql("CREATE TABLE k (a INTEGER, b TEXT, PRIMARY KEY (a, b))") == (
        'CREATE TABLE k (a BIGINT, b TEXT COLLATE "C", PRIMARY KEY (a, b))'
    )
    assert portable_sql("ALTER TABLE t ADD COLUMN flag INTEGER NOT NULL DEFAULT 0") == (
        "ALTER TABLE t ADD COLUMN flag BIGINT NOT NULL DEFAULT 0"
    )
    assert portable_sql("ALTER TABLE t ADD seen REAL") == "ALTER TABLE t ADD seen DOUBLE PRECISION"
    for untouched in [
        "CREATE INDEX t_name ON t (name)",
        "CREATE TABLE copy AS SELECT * FROM t",
        "SELECT 'INTEGER PRIMARY KEY', CAST(x AS REAL) FROM t",
        "INSERT INTO t (name) VALUES ('a;b') ON CONFLICT (name) DO UPDATE SET at = excluded.at RETURNING id",
    ]:
        assert portable_sql(untouched) == untouched


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("PRAGMA user_version", "PRAGMA"),
        ("INSERT OR IGNORE INTO t (x) VALUES (1)", "INSERT OR IGNORE"),
        ("INSERT OR REPLACE INTO t (x) VALUES (1)", "INSERT OR REPLACE"),
        ("REPLACE INTO t (x) VALUES (1)", "REPLACE INTO"),
        ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END", "CREATE TRIGGER"),
        ("SELECT last_insert_rowid()", "last_insert_rowid"),
        ("SELECT name FROM sqlite_master", "sqlite_master"),
        ("SET search_path TO public", "SET"),
        ("ATTACH DATABASE 'x.db' AS x", "ATTACH"),
        ("CREATE TABLE t2 (x INTEGER AUTOINCREMENT)", "AUTOINCREMENT"),
        ("CREATE TABLE t2 (x)", "column x without a type"),
    ],
)
async def test_sql_outside_the_subset_is_named_with_the_plugin_and_the_statement(
    postgres_dsn: str, sql: str, named: str
) -> None:
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="dialect")
    try:
        with pytest.raises(StorageError) as info:
            await store.execute(sql)
        message = str(info.value)
        assert message.startswith(f"plugin dialect: {named} is not portable to PostgreSQL (")
        assert message.endswith(sql)
        with pytest.raises(StorageError, match=f"plugin dialect: {named} is not portable"):
            await store.transaction(lambda conn: conn.execute(sql))
    finally:
        await store.close()


async def test_lastrowid_is_refused_and_returning_gives_the_id(postgres_dsn: str) -> None:
    store = await PostgresPluginStorage.open(
        postgres_dsn, plugin="ids", migrations=["CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"]
    )
    try:
        with pytest.raises(StorageError, match=r"plugin ids: cursor\.lastrowid is not portable .*RETURNING id"):
            await store.transaction(lambda c: c.execute("INSERT INTO t (x) VALUES (?)", ("a",)).lastrowid)
        assert await store.fetchall("SELECT x FROM t") == []  # that transaction rolled back
        first = await store.transaction(lambda c: c.execute("INSERT INTO t (x) VALUES ('a') RETURNING id").fetchone())
        second = await store.fetchone("INSERT INTO t (x) VALUES ('b') RETURNING id")
        # Ids come from the identity's sequence: increasing, but one a rolled-back insert took is not given again.
        assert await store.fetchall("SELECT id, x FROM t ORDER BY id") == [(first[0], "a"), (second[0], "b")]
        assert 0 < first[0] < second[0]
    finally:
        await store.close()


async def test_engine_errors_carry_the_plugin_and_the_statement(postgres_dsn: str) -> None:
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="noted")
    try:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            await store.fetchall("SELECT * FROM missing WHERE x = ?", (1,))
        assert "plugin noted, statement: SELECT * FROM missing WHERE x = ?" in info.value.__notes__
    finally:
        await store.close()


async def test_types_behave_as_on_sqlite(postgres_dsn: str) -> None:
    migrations: list[Migration] = [
        "CREATE TABLE v (id INTEGER PRIMARY KEY, at REAL, big INTEGER, flag INTEGER, name TEXT, data BLOB)"
    ]
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="types", migrations=migrations)
    try:
        now = time.time()
        rows = [(now, 2**40, True, "b", b"\x00\xff"), (1.5, -1, False, "a", None), (0.0, 0, False, "é", None),
                (0.0, 0, False, "B", None)]
        assert await store.executemany("INSERT INTO v (at, big, flag, name, data) VALUES (?, ?, ?, ?, ?)", rows) == 4
        assert await store.fetchone("SELECT at, big, flag, data FROM v WHERE id = 1") == (now, 2**40, 1, b"\x00\xff")
        # sum() of integers is an int, avg() a float; text sorts by code point (as SQLite's BINARY collation).
        assert await store.fetchone("SELECT sum(big), avg(flag) FROM v") == (2**40 - 1, 0.25)
        assert [r[0] for r in await store.fetchall("SELECT name FROM v ORDER BY name")] == ["B", "a", "b", "é"]
        assert await store.execute("SELECT * FROM v") == -1
        assert await store.execute("UPDATE v SET flag = ? WHERE flag = ?", (True, False)) == 3
    finally:
        await store.close()


async def test_a_caught_failure_inside_a_transaction_undoes_only_its_statement(postgres_dsn: str) -> None:
    store = await PostgresPluginStorage.open(
        postgres_dsn, plugin="caught", migrations=["CREATE TABLE u (name TEXT PRIMARY KEY, n INTEGER)"]
    )

    def upsert_by_hand(conn: Any) -> int:
        conn.execute("INSERT INTO u VALUES ('a', 1)")
        try:
            conn.execute("INSERT INTO u VALUES ('a', 2)")  # a duplicate: fails, caught, as sqlite3 code does
        except store.IntegrityError:
            conn.execute("UPDATE u SET n = n + 1 WHERE name = 'a'")
        return conn.execute("SELECT n FROM u WHERE name = 'a'").fetchone()[0]

    try:
        assert await store.transaction(upsert_by_hand) == 2
        assert await store.fetchall("SELECT name, n FROM u") == [("a", 2)]
        kept: list[Any] = []
        await store.transaction(kept.append)
        with pytest.raises(StorageError, match="used after it ended"):
            kept[0].execute("SELECT 1")
    finally:
        await store.close()


async def test_a_broken_connection_is_opened_again_with_its_settings(postgres_dsn: str) -> None:
    store = await PostgresPluginStorage.open(postgres_dsn, plugin="again", settings={"ratchet.epoch": "9"})
    try:
        await store.set("k", 1)
        (pid,) = await store.fetchone("SELECT pg_backend_pid()")
        server_rows(postgres_dsn, "SELECT pg_terminate_backend(%s)", (pid,))  # the server drops the connection
        with pytest.raises(psycopg.OperationalError):
            await store.get("k")
        assert await store.get("k") == 1  # the next call reconnects
        assert await store.fetchone("SELECT current_setting('ratchet.epoch'), current_schema()") == (
            "9",
            "ratchet_plugin_again",
        )
    finally:
        await store.close()


# -- the bundled plugins ----------------------------------------------------------------------------------------

#: sha256 of the SQLite text of each released migration: deployed SQLite databases went through exactly these, so
#: they must never change (a change for PostgreSQL goes into the migration's "postgresql" half).
RELEASED_SQLITE_MIGRATIONS = {
    "reminders": ["5202553764caa93a7298ceb7473b0df930a866f99974c2ca427ad97ba9ec046b"],
    "report": [
        "1edb9d21029c1098ee003e061a85b3914e69657133744588bf7a1d29ec062ca6",
        "da1fa77538a44758e89b686bfa38e9592d62f1a72836ae1712e8b7829a8ad9fd",
    ],
    "protections": ["a571c32b2b11bb705feff5c546233e2efb74eeb27f7c6afc690959cf31b5d5e8"],
}


def _plugin_class(name: str) -> Any:
    if name == "reminders":
        from plugins.reminders import Reminders

        return Reminders
    if name == "report":
        from plugins.report import Report

        return Report
    from plugins.protections import Protections

    return Protections


@pytest.mark.parametrize("name", sorted(RELEASED_SQLITE_MIGRATIONS))
def test_released_sqlite_migrations_are_unchanged(name: str) -> None:
    migrations = _plugin_class(name).migrations
    texts = [step["sqlite"] if isinstance(step, dict) else step for step in migrations]
    released = RELEASED_SQLITE_MIGRATIONS[name]
    assert [hashlib.sha256(t.encode()).hexdigest() for t in texts[: len(released)]] == released


@pytest.fixture(params=["sqlite", "postgresql"])
def open_plugin_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """``await open_plugin_storage(name)``: plugin ``name``'s storage with its own migrations, on each engine."""

    async def open_(name: str) -> BasePluginStorage:
        migrations = _plugin_class(name).migrations
        if request.param == "sqlite":
            return await PluginStorage.open(plugin_db_path(tmp_path, name), plugin=name, migrations=migrations)
        dsn = request.getfixturevalue("postgres_dsn")
        return await PostgresPluginStorage.open(dsn, plugin=name, migrations=migrations)

    return open_


async def test_reminders_storage(open_plugin_storage: Any) -> None:
    from plugins.reminders import Reminders

    plugin = Reminders()
    plugin.config = Reminders.Config()
    plugin.storage = await open_plugin_storage("reminders")
    sent: list[tuple[str, str]] = []

    async def send_text(room_id: str, text: str, mentions: Any = None) -> str:
        sent.append((room_id, text))
        return "$sent"

    async def reply(text: str, notice: bool = False) -> str:
        return "$confirmation"

    plugin.bot = SimpleNamespace(send_text=send_text)
    ctx = SimpleNamespace(room_id="!r:x", sender="@ann:x", reply=reply)
    try:
        await plugin.remind(ctx, "10m", "tea")  # INSERT ... RETURNING id, then the confirmation's id on that row
        await plugin.remind(ctx, "20m", "cake")
        rows = await plugin.storage.fetchall("SELECT id, confirmation, text FROM reminder ORDER BY id")
        assert rows == [(1, "$confirmation", "tea"), (2, "$confirmation", "cake")]
        await plugin.storage.execute("UPDATE reminder SET due = ? WHERE id = 1", (time.time() - 1,))
        await plugin.deliver()
        assert sent == [("!r:x", "⏰ @ann:x: tea")]
        assert await plugin.storage.fetchall("SELECT text FROM reminder") == [("cake",)]
        assert (await plugin.storage.get("created"), await plugin.storage.get("delivered")) == (2, 1)
    finally:
        await plugin.storage.close()


async def test_report_storage(open_plugin_storage: Any) -> None:
    from plugins.report import Report

    plugin = Report()
    plugin.storage = await open_plugin_storage("report")
    plugin.log = logging.getLogger("test.report")
    redacted: list[str] = []

    async def redact(room_id: str, event_id: str, reason: str) -> None:
        redacted.append(event_id)

    plugin.bot = SimpleNamespace(redact=redact)
    store = plugin.storage
    try:
        for event_id in ("$case", "$edit1", "$edit2", "$edit1"):  # the last one again: kept once
            await plugin._remember("!mods:x", event_id, "case", "C1")
        assert await plugin._redact_posted("case", "C1", "withdrawn") == 0
        assert redacted == ["$edit2", "$edit1", "$case"]  # newest first (SQLite's rowid; PostgreSQL's identity)
        assert await store.fetchall("SELECT * FROM posted") == []
        await store.execute(
            "INSERT INTO report_case (case_id, room_id, event_id, sender, status, created, case_json, evidence) "
            "VALUES ('C1', '!r:x', '$bad', '@m:x', 'open', ?, '{}', '{}')",
            (time.time(),),
        )
        for reason in ("spam", "again"):  # the plugin's statements: a reporter is kept once, a pending ban replaced
            await store.execute(
                "INSERT INTO case_reporter (case_id, reporter, reason, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                ("C1", "@ann:x", reason, 1.0),
            )
            await store.execute(
                "INSERT INTO pending_ban (case_id, moderator, reason, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (case_id) DO UPDATE SET moderator = excluded.moderator, reason = excluded.reason, "
                "expires = excluded.expires",
                ("C1", "@mod:x", reason, 2.0),
            )
        assert await store.fetchall("SELECT reason, homeserver FROM case_reporter") == [("spam", 0)]
        assert await store.fetchall("SELECT moderator, reason FROM pending_ban") == [("@mod:x", "again")]
    finally:
        await store.close()


async def test_protections_storage(open_plugin_storage: Any) -> None:
    store = await open_plugin_storage("protections")
    try:
        # The plugin's statements: a policy ban and an ACL entry recorded once however often they are applied.
        key = ("!r:x", "@bad:x", "!list:x", "m.policy.rule.user", "rule1")
        for _ in range(2):
            await store.execute("INSERT INTO policy_ban VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING", key)
            await store.execute("INSERT INTO acl_deny VALUES (?, ?) ON CONFLICT DO NOTHING", ("!r:x", "*.evil"))
        assert await store.fetchall("SELECT user_id, case_id FROM policy_ban") == [("@bad:x", None)]
        assert await store.fetchall("SELECT glob FROM acl_deny WHERE room_id = ?", ("!r:x",)) == [("*.evil",)]
        for case_id, created in (("P1", 1.0), ("P2", 2.0)):
            await store.execute(
                "INSERT INTO pcase (case_id, protection, room_id, subject, status, created, case_json) "
                "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (case_id, "flood", "!r:x", "@bad:x", created, "{}"),
            )
        row = await store.fetchone(
            "SELECT case_id FROM pcase WHERE protection = ? AND room_id = ? AND subject = ? "
            "AND status = 'open' ORDER BY created DESC LIMIT 1",
            ("flood", "!r:x", "@bad:x"),
        )
        assert row == ("P2",)
    finally:
        await store.close()
