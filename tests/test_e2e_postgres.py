"""Issue 17: a bot whose everything lives in PostgreSQL (``database: postgresql://...``), against a real Synapse and a
real PostgreSQL: it answers in an encrypted room, keeps nothing in data_dir, and another machine with an empty
data_dir and the same database is the same device with the same keys."""

from __future__ import annotations

import re

import psycopg
import pytest
import yaml

from bot.testing.harness import BotProcess

pytestmark = pytest.mark.e2e


def _device(log: str) -> list[str]:
    return re.findall(r"(?:new device|restored session \S+, device) (\w+)", log)


async def test_a_bot_on_postgresql_answers_and_is_the_same_device_from_an_empty_data_dir(
    synapse, tmp_path, bot_in_room, postgres_dsn
):
    t = await bot_in_room(synapse, plugins={"ping": {}, "reminders": {}}, database=postgres_dsn)
    reply = await t.ask("!ping")
    assert reply.decrypted and reply.body.startswith("pong")
    reply = await t.ask("!remind 1h water the plants")
    assert reply.decrypted and "remind" in reply.body.lower()
    assert await t.proc.stop() == 0
    first_device = _device(t.proc.log_text())
    assert len(first_device) == 1

    # Nothing but the control socket's folder in data_dir: the login, keys and state are in PostgreSQL.
    left = sorted(p.name for p in t.data_dir.rglob("*") if p.is_file())
    assert not [name for name in left if name != "control.sock"], left
    with psycopg.connect(postgres_dsn) as conn:
        stored = conn.execute("SELECT name, data FROM ratchet.files").fetchall()
        names = {name for name, _ in stored}
        assert {"credentials.json", "secrets.json"} <= names
        # The access token is not stored in the clear (encrypted under the pickle key).
        assert all("syt_" not in data and "access_token" not in data for _, data in stored)
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ratchet%'")}
        assert {"ratchet", "ratchet_crypto", "ratchet_plugin_reminders"} <= schemas
        assert conn.execute("SELECT count(*) FROM ratchet_plugin_reminders.reminder").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM ratchet_crypto.megolminboundsessions").fetchone()[0] >= 1

    # Another machine: the same config, an empty data_dir.
    config = yaml.safe_load(t.config_path.read_text())
    config["data_dir"] = str(tmp_path / "elsewhere")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = BotProcess(other, tmp_path / "other.log")
    await proc.run_ready()
    try:
        assert _device(proc.log_text()) == first_device
        reply = await t.ask("!ping")
        assert reply.decrypted and reply.body.startswith("pong")
        # an old message's key is still there: the member's earlier room key is in the shared crypto store
        assert "cannot decrypt" not in proc.log_text()
        assert await proc.stop() == 0
    finally:
        proc.kill()
