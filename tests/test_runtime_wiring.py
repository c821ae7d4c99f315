"""The runtime is built whole: every collaborator exists from construction, and a plugin's ``start()`` already sees
the trust policy, the bot's identity, the counters, the plugin directory and the moderation tools. No network: the
client points at a closed port and is never used."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.config import load_config
from bot.e2ee.identity import Identity
from bot.e2ee.trust import TrustPolicy
from bot.matrix.client import make_client
from bot.runtime.runtime import Runtime
from bot.stats import BotStats
from bot.storage.backend import SqliteStorage

BOT = "@bot:localhost"
TESTS = Path(__file__).resolve().parent


def _runtime(tmp: Path) -> Runtime:
    cfg = tmp / "bot.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "homeserver": "http://127.0.0.1:9",
                "user_id": BOT,
                "password": "not-used-password",
                "data_dir": str(tmp / "data"),
                "pickle_key": "wiring-pickle-key",
                "plugins": {"startprobe": {}},
                "plugin_dirs": [str(TESTS / "plugins")],
            }
        )
    )
    (tmp / "data" / "crypto").mkdir(parents=True)
    client = make_client("http://127.0.0.1:9", BOT, tmp / "data" / "crypto", "wiring-pickle-key", "WIREDEV")
    client.restore_login(BOT, "WIREDEV", "not-a-real-token")
    return Runtime(load_config(cfg), client, SqliteStorage(tmp / "data"))


async def test_collaborators_exist_from_construction(tmp_path):
    runtime = _runtime(tmp_path)
    try:
        assert isinstance(runtime.trust, TrustPolicy) and runtime.client.trust is runtime.trust
        assert isinstance(runtime.identity, Identity)
        assert isinstance(runtime.stats, BotStats)
        api = runtime.api
        assert api is runtime.host.api and api.plugins is runtime.manager
        assert api.trust is runtime.trust and api.identity is runtime.identity and api.stats is runtime.stats
        assert (tmp_path / "data" / "state.db").exists()
    finally:
        runtime.state.close()
        await runtime.client.close()


async def test_a_plugin_sees_trust_identity_and_stats_in_start(tmp_path):
    runtime = _runtime(tmp_path)
    try:
        await runtime.manager.start_all()
        seen = runtime.host.plugins["startprobe"].instance.at_start
        assert seen["trust"] is runtime.trust
        assert seen["identity"] is runtime.identity
        assert seen["stats"] is runtime.stats
        assert seen["plugins"] is runtime.manager and seen["configured"] == ["startprobe"]
        assert seen["moderation"] is runtime.api.moderation
        assert seen["user_id"] == BOT
        assert (tmp_path / "data" / "plugins" / "startprobe.db").exists()  # its storage came from the storage seam
    finally:
        await runtime.host.unload_all()
        await runtime.dispatcher.close()
        runtime.state.close()
        await runtime.client.close()
