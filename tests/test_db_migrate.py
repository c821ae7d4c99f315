"""Issue 17, part 2: ``ratchet db migrate`` moves a stopped SQLite deployment to PostgreSQL with nothing lost.

End to end (a real Synapse, a real PostgreSQL, the bot as a process): a bot on SQLite answers, keeps a reminder and
is stopped; a member writes while it is down; after the migration a bot with ``database:`` and an empty data_dir is
the same device, answers the message sent while it was down (sync token and Megolm session moved) and the reminder is
in PostgreSQL. The refusals (a running bot, a plugin database not in the config, a non-empty target, a held lease)
and ``--force`` run the real command. A larger synthetic store (5,000 Megolm sessions made with vodozemac and saved
by the lazy SQLite store) checks every kind of row, the progress lines and the summary in process.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
import vodozemac
import yaml
from nio.crypto import InboundGroupSession, OlmAccount, OlmDevice

from bot.cli.db import MigrateError, ProgressLine, migrate
from bot.cli.main import main
from bot.config import load_config
from bot.e2ee.key_backup import UploadTracker
from bot.matrix.pg_store import postgres_crypto_store
from bot.matrix.store import LazySqliteStore
from bot.plugin.loader import import_plugin
from bot.storage.credentials import Credentials
from bot.storage.plugin_storage import PluginStorage, plugin_db_path
from bot.storage.postgres import PostgresStorage
from bot.storage.state import StateStore
from bot.testing.harness import BotProcess

USER = "@bot:example.org"
DEVICE = "MIGRATEDEV"
PICKLE_KEY = "db-migrate-test-pickle-key"
SESSIONS = 5000


def _ratchet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _devices(log: str) -> list[str]:
    return re.findall(r"(?:new device|restored session \S+, device) (\w+)", log)


def _with(config_path: Path, path: Path, **changes: object) -> Path:
    """A copy of the YAML config at ``config_path`` with ``changes`` (None removes a key), written to ``path``."""
    config = yaml.safe_load(config_path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ============================================================================================ end to end


@pytest.mark.e2e
async def test_a_sqlite_bot_migrated_to_postgresql_is_the_same_device_and_loses_nothing(
    synapse, tmp_path, bot_in_room, postgres_dsn
):
    t = await bot_in_room(synapse, plugins={"ping": {}, "reminders": {}})
    assert (await t.ask("!ping")).body.startswith("pong")
    reply = await t.ask("!remind 1h water the plants")
    assert reply.decrypted and "remind" in reply.body.lower()

    # Refused while the SQLite bot runs: its control socket answers.
    running = _ratchet("db", "migrate", "-c", str(t.config_path), "--to", postgres_dsn)
    assert running.returncode == 1, running.stderr
    assert "the bot is running" in running.stderr

    assert await t.proc.stop() == 0
    [device] = _devices(t.proc.log_text())
    # Written while the bot is down: the migrated bot must find it (sync token) and decrypt it (Megolm session).
    waiting = await t.send("!ping")

    # A plugin database whose plugin is not in the config: refused, named, nothing written.
    no_reminders = _with(t.config_path, tmp_path / "no-reminders.yaml", plugins={"ping": {}})
    refused = _ratchet("db", "migrate", "-c", str(no_reminders), "--to", postgres_dsn)
    assert refused.returncode == 2, refused.stderr
    assert "reminders" in refused.stderr and "--skip-plugin reminders" in refused.stderr

    started = time.monotonic()
    done = _ratchet("db", "migrate", "-c", str(t.config_path), "--from", str(t.data_dir), "--to", postgres_dsn)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr + done.stdout
    assert "verified:" in done.stdout and "MISMATCH" not in done.stdout
    assert re.search(r"ratchet_plugin_reminders\.reminder\s+1\s+1\s+ok", done.stdout), done.stdout
    assert re.search(r"ratchet\.kv\s+\d+\s+\d+\s+ok", done.stdout)
    assert f"device {device}" in done.stdout
    print(f"\nmigration of the bot's store: {took:.1f} s\n{done.stdout}")

    # Again without --force: the target holds a bot now.
    again = _ratchet("db", "migrate", "-c", str(t.config_path), "--to", postgres_dsn)
    assert again.returncode == 2
    assert "is not empty" in again.stderr and "--force" in again.stderr
    # With --force: emptied and copied again (how a failed migration is re-run).
    forced = _ratchet("db", "migrate", "-c", str(t.config_path), "--to", postgres_dsn, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: emptying" in forced.stderr and "verified:" in forced.stdout

    # The bot on PostgreSQL, from an empty data_dir: same device, same room, same keys.
    pg_config = _with(
        t.config_path, tmp_path / "pg.yaml", database=postgres_dsn, data_dir=str(tmp_path / "empty-data")
    )
    pg_bot = BotProcess(pg_config, tmp_path / "pg.log")
    await pg_bot.run_ready()
    try:
        assert _devices(pg_bot.log_text()) == [device]
        answer = await t.member.expect_reply(t.room, waiting, sender=t.bot_user.user_id, timeout=30)
        assert answer.decrypted and answer.body.startswith("pong")
        assert (await t.ask("!ping")).body.startswith("pong")

        # Refused while a bot holds the target's lease.
        held = _ratchet("db", "migrate", "-c", str(t.config_path), "--to", postgres_dsn, "--force")
        assert held.returncode == 1 and "holds the lease" in held.stderr, held.stderr
        assert await pg_bot.stop() == 0
    finally:
        pg_bot.kill()
    log = pg_bot.log_text()
    assert "cannot decrypt" not in log.lower() and "logged in as" not in log
    with psycopg.connect(postgres_dsn) as conn:
        [(text,)] = conn.execute("SELECT text FROM ratchet_plugin_reminders.reminder").fetchall()
        assert text == "water the plants"
    assert not [p for p in (tmp_path / "empty-data").rglob("*") if p.is_file() and p.name != "control.sock"]


# ============================================================================================ a larger store


def _sqlite_deployment(data_dir: Path, sessions: int = SESSIONS) -> dict[str, object]:
    """A stopped SQLite deployment made by Ratchet's own code: login, crypto store with ``sessions`` Megolm sessions,
    state, key-backup tracker, secrets and the reminders plugin's database. Returns what to look for afterwards."""
    data_dir.mkdir(mode=0o700)
    (data_dir / "crypto").mkdir(mode=0o700)
    Credentials("https://example.org", USER, DEVICE, "syt_secret_token").save(data_dir / "credentials.json")
    store = LazySqliteStore(USER, DEVICE, str(data_dir / "crypto"), PICKLE_KEY)
    store.save_account(OlmAccount())
    sender = vodozemac.Account()
    curve, ed = sender.curve25519_key.to_base64(), sender.ed25519_key.to_base64()
    outbound = {}
    with store.database.atomic():
        for i in range(sessions):
            group = vodozemac.GroupSession()
            chain = [curve] if i % 50 == 0 else None
            session = InboundGroupSession(group.session_key.to_base64(), ed, curve, f"!room{i % 9}:x", chain)
            store.save_inbound_group_session(session)
            if i % 1000 == 0:
                outbound[session.id] = (f"!room{i % 9}:x", group)
    device = OlmDevice("@alice:x", "ALICEDEV", {"ed25519": ed, "curve25519": curve})
    store.save_device_keys({"@alice:x": {"ALICEDEV": device}})
    store.verify_device(device)
    store.save_encrypted_rooms([f"!room{i}:x" for i in range(9)])
    store.save_sync_token("nio-token")
    store.database.close()

    state = StateStore.open(data_dir / "state.db")
    state.save_sync_token("s123_456", 1_700_000_000_000)
    state.set("trust.pin:@alice:x", json.dumps({"master": "abc"}))
    for n in range(3):
        state.mark_handled(f"$handled{n}", "ping")
    for n in (2, 0, 1):  # arrival order is not the ids' order
        state.add_pending(f"$wait{n}", "!room0:x", f"sess{n}", {"event_id": f"$wait{n}"})
    pending = [e.event_id for e in state.pending()]
    for txn_id in ("t1", "t3", "t2"):  # appservice mode's handled transaction ids, in the order handled
        state.record_transaction(txn_id, keep=512)
    state.close()
    UploadTracker(data_dir / "key_backup.db", "7").add_many([("!room0:x", f"s{n}") for n in range(40)])
    (data_dir / "secrets.json").write_text('{"version": 1, "secrets": {}}')

    async def reminders() -> None:
        migrations = import_plugin("reminders").migrations
        db = await PluginStorage.open(plugin_db_path(data_dir, "reminders"), migrations=migrations, plugin="reminders")
        for n in range(1, 31):
            await db.execute(
                "INSERT INTO reminder (id, room_id, user_id, due, text) VALUES (?, ?, ?, ?, ?)",
                (n * 10, "!room0:x", "@alice:x", 1_700_000_000.25 + n, f"reminder {n}"),
            )
        await db.set("counter", {"n": 3})
        await db.close()

    asyncio.run(reminders())
    return {"outbound": outbound, "pending": pending, "device": device}


def _config(tmp_path: Path, data_dir: Path, **extra: object) -> Path:
    path = tmp_path / "bot.yaml"
    config = {
        "homeserver": "https://example.org",
        "user_id": USER,
        "password": "unused",
        "data_dir": str(data_dir),
        "pickle_key": PICKLE_KEY,
        "plugins": {"ping": {}, "reminders": {}},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_store_of_5000_megolm_sessions_moves_whole_with_progress_and_summary(tmp_path, postgres_dsn):
    data_dir = tmp_path / "data"
    made = _sqlite_deployment(data_dir)
    config = load_config(_config(tmp_path, data_dir))

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    copies = migrate(config, data_dir, postgres_dsn, out=out, err=err)
    took = time.monotonic() - started
    rows = {c.table: (c.source, c.target) for c in copies}
    assert all(c.verified for c in copies), rows
    assert rows["ratchet_crypto.megolminboundsessions"] == (SESSIONS, SESSIONS)
    assert rows["ratchet_crypto.forwardedchains"] == (SESSIONS // 50, SESSIONS // 50)
    for table in ("accounts", "devicekeys", "devicetruststate", "keys", "synctokens", "storeversion"):
        assert rows[f"ratchet_crypto.{table}"][0] >= 1, table
    assert rows["ratchet_crypto.encryptedrooms"] == (9, 9)
    assert rows["ratchet.handled"] == (3, 3) and rows["ratchet.pending_utd"] == (3, 3)
    assert rows["ratchet.appservice_txn"] == (3, 3)
    assert rows["ratchet.uploaded"] == (40, 40)
    assert rows["ratchet_plugin_reminders.reminder"] == (30, 30)
    assert rows["ratchet_plugin_reminders.ratchet_kv"] == (1, 1)
    print(f"\n{sum(c.source for c in copies):,} rows in {took:.1f} s\n{out.getvalue()}{err.getvalue()}")

    # Progress: not a terminal, so one finished line per table, on stderr; the summary on stdout.
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    megolm = [line for line in lines if "ratchet_crypto.megolminboundsessions" in line]
    assert megolm == [megolm[0]] and f"{SESSIONS:,} / {SESSIONS:,} rows 100%" in megolm[0]
    assert len([line for line in lines if " rows " in line]) == len(copies)
    summary = out.getvalue()
    assert re.search(rf"ratchet_crypto\.megolminboundsessions\s+{SESSIONS:,}\s+{SESSIONS:,}\s+ok", summary)
    assert f"verified: {len(copies)} of {len(copies)} tables" in summary
    assert f"files: credentials.json ({USER}, device {DEVICE}), secrets.json: read back, identical" in summary
    assert "syt_secret_token" not in summary + err.getvalue()

    storage = PostgresStorage(postgres_dsn, pickle_key=PICKLE_KEY)
    storage.acquire()
    try:
        # Every session readable with the PostgreSQL crypto store, by nio's code; the trust state and rooms moved.
        crypto_store = postgres_crypto_store(postgres_dsn, storage.connection_settings)
        store = crypto_store(USER, DEVICE, str(tmp_path), PICKLE_KEY)
        try:
            sessions = store.load_inbound_group_sessions()
            sessions.load_all()
            assert sessions.in_memory == SESSIONS
            for session_id, (room, group) in made["outbound"].items():
                inbound = sessions.get(room, made["device"].curve25519, session_id)
                assert inbound is not None
                plaintext, _index = inbound.decrypt(group.encrypt(b"still readable").to_base64())
                assert plaintext == "still readable"
            assert store.is_device_verified(made["device"])
            assert store.load_encrypted_rooms() == {f"!room{i}:x" for i in range(9)}
            assert store.load_sync_token() == "nio-token"
            # sequences past the copied ids: nio's next rows insert
            other = OlmDevice("@bob:x", "BOBDEV", {"ed25519": "e", "curve25519": "c"})
            store.save_device_keys({"@bob:x": {"BOBDEV": other}})
        finally:
            store.database.close()

        assert storage.load_credentials() == Credentials("https://example.org", USER, DEVICE, "syt_secret_token")
        assert storage.private_file("secrets.json").read_text() == '{"version": 1, "secrets": {}}'
        state = storage.open_state()
        assert state.sync_token == "s123_456" and state.sync_token_ms == 1_700_000_000_000
        assert [e.event_id for e in state.pending()] == made["pending"]
        assert state.is_handled("$handled1", "ping")
        assert state.recent_transactions(512) == ["t1", "t3", "t2"]
        assert json.loads(state.get("trust.pin:@alice:x")) == {"master": "abc"}
        state.close()

        async def reminders() -> None:
            db = await storage.open_plugin_storage("reminders", import_plugin("reminders").migrations)
            try:
                row = await db.fetchone("SELECT text, due FROM reminder WHERE id = 30")
                assert row == ("reminder 3", 1_700_000_003.25)
                assert await db.get("counter") == {"n": 3}
                # the identity column continues past the copied ids
                row = await db.fetchone(
                    "INSERT INTO reminder (room_id, user_id, due, text) VALUES ('!r', '@u', 1, 'new') RETURNING id"
                )
                assert row == (301,)
            finally:
                await db.close()

        asyncio.run(reminders())
    finally:
        storage.release()

    # A target holding a bot is refused (exit code 2) and left alone; --force copies again.
    with pytest.raises(MigrateError) as refused:
        migrate(config, data_dir, postgres_dsn, out=io.StringIO(), err=io.StringIO())
    assert refused.value.code == 2 and "is not empty" in str(refused.value)
    copies = migrate(config, data_dir, postgres_dsn, force=True, out=io.StringIO(), err=io.StringIO())
    assert all(c.verified for c in copies)
    assert {c.table: c.target for c in copies}["ratchet_plugin_reminders.reminder"] == 30


def test_on_a_terminal_progress_is_one_line_per_table_updated_in_place():
    stream = _Terminal()
    progress = ProgressLine(stream)
    progress("ratchet_crypto.megolminboundsessions", 0, 3000)
    progress("ratchet_crypto.megolminboundsessions", 3000, 3000)
    progress("ratchet.kv", 0, 0)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\n") == 2
    first, second = text.split("\n")[:2]
    assert first.startswith("\r") and first.count("\r") == 3 and first.endswith("3,000 / 3,000 rows 100%")
    assert "ratchet.kv" in second and "0 / 0 rows 100%" in second


def test_check_config_and_plugin_refusal_need_no_database(tmp_path, capsys):
    """check-config accepts a ``database:`` config without reaching the server; migrate names the unknown plugin's
    database before connecting to anything (port 1: nothing listens)."""
    data_dir = tmp_path / "data"
    (data_dir / "plugins").mkdir(parents=True)
    (data_dir / "plugins" / "karma.db").touch()
    config = _config(tmp_path, data_dir, database="postgresql://ratchet:secret@127.0.0.1:1/bot")
    assert main(["check-config", "-c", str(config)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["db", "migrate", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "karma" in err and "--skip-plugin karma" in err and "secret" not in err
    assert main(["db", "migrate", "-c", str(config), "--skip-plugin", "karma"]) == 2
    assert "no login in" in capsys.readouterr().err
    Credentials("https://example.org", USER, DEVICE, "t").save(data_dir / "credentials.json")
    assert main(["db", "migrate", "-c", str(config), "--to", "mysql://x"]) == 2
    assert "postgresql://" in capsys.readouterr().err


def test_a_migration_that_fails_midway_leaves_the_target_unusable_and_force_runs_it_again(tmp_path, postgres_dsn):
    """A value SQLite accepted but PostgreSQL's column type does not (a plugin's REAL column holding text) stops the
    copy after the crypto store: the error names the table and says what to do, the target keeps what was copied but
    no login (a bot refuses to start on it), a plain re-run is refused, and --force completes it once the row is
    fixed."""
    data_dir = tmp_path / "data"
    _sqlite_deployment(data_dir, sessions=20)
    plugin_db = plugin_db_path(data_dir, "reminders")
    with closing(sqlite3.connect(plugin_db)) as conn, conn:
        conn.execute("UPDATE reminder SET due = 'tomorrow' WHERE id = 20")
    config = load_config(_config(tmp_path, data_dir))

    with pytest.raises(MigrateError) as failed:
        migrate(config, data_dir, postgres_dsn, out=io.StringIO(), err=io.StringIO())
    message = str(failed.value)
    assert failed.value.code == 1
    assert "tomorrow" in message and "left as it is" in message and "--force" in message

    storage = PostgresStorage(postgres_dsn, pickle_key=PICKLE_KEY)
    storage.acquire()
    try:
        assert storage.load_credentials() is None
        assert storage.crypto_stores() == [f"{USER} {DEVICE}"]  # the session refuses this: a store without a login
    finally:
        storage.release()
    with pytest.raises(MigrateError) as refused:
        migrate(config, data_dir, postgres_dsn, out=io.StringIO(), err=io.StringIO())
    assert refused.value.code == 2 and (
        "is not empty: ratchet.appservice_txn (3), ratchet.handled (3), ratchet.kv (3)" in str(refused.value)
    )

    with closing(sqlite3.connect(plugin_db)) as conn, conn:
        conn.execute("UPDATE reminder SET due = 1700000000 WHERE id = 20")
    copies = migrate(config, data_dir, postgres_dsn, force=True, out=io.StringIO(), err=io.StringIO())
    assert all(c.verified for c in copies)
    assert {c.table: c.target for c in copies}["ratchet_plugin_reminders.reminder"] == 30


def test_a_pickle_key_that_does_not_open_the_crypto_store_is_refused_before_anything_is_written(
    tmp_path, postgres_dsn
):
    data_dir = tmp_path / "data"
    _sqlite_deployment(data_dir, sessions=1)
    config = load_config(_config(tmp_path, data_dir, pickle_key="not-the-key-the-bot-ran-with"))
    with pytest.raises(MigrateError) as refused:
        migrate(config, data_dir, postgres_dsn, out=io.StringIO(), err=io.StringIO())
    assert refused.value.code == 2
    assert "cannot be unpickled with this pickle_key" in str(refused.value)
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ratchet%'").fetchone()[0] == 0
