"""One identity forever: token renewal keeps the device, and a damaged identity is a clear error, never a new
device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse

import pytest
import yaml

pytestmark = pytest.mark.e2e


def _device_ids(synapse, admin, user_id):
    path = f"/_synapse/admin/v2/users/{urllib.parse.quote(user_id)}/devices"
    return sorted(d["device_id"] for d in synapse.admin_request("GET", path, admin.access_token)["devices"])


async def test_rejected_token_logs_in_again_with_the_same_device(synapse, new_user, bot_in_room):
    admin = new_user("admin", admin=True)
    t = await bot_in_room(synapse)
    proc, member, room, bot_user, data = t.proc, t.member, t.room, t.bot_user, t.data_dir
    assert await proc.stop() == 0
    creds_path = data / "credentials.json"
    creds = json.loads(creds_path.read_text())
    devices = _device_ids(synapse, admin, bot_user.user_id)
    creds["access_token"] = "syt_this_token_is_not_valid"
    creds_path.write_text(json.dumps(creds))

    await proc.run_ready()
    renewed = json.loads(creds_path.read_text())
    assert renewed["device_id"] == creds["device_id"]
    assert renewed["access_token"] != creds["access_token"]
    assert _device_ids(synapse, admin, bot_user.user_id) == devices
    ping = await member.send(room, "!ping")
    reply = await member.expect_reply(room, ping, sender=bot_user.user_id)
    assert reply.decrypted and reply.body.startswith("pong")
    assert await proc.stop() == 0
    assert "stored access token rejected; logging in again as device" in proc.log_text()
    assert renewed["access_token"] not in proc.log_text()


def _run_once(cfg) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )


async def test_missing_store_or_wrong_pickle_key_is_a_clear_error_not_a_new_device(
    synapse, new_user, tmp_path, bot_in_room
):
    admin = new_user("admin", admin=True)
    t = await bot_in_room(synapse, member=False, room=False)
    proc, bot_user, data, cfg = t.proc, t.bot_user, t.data_dir, t.config_path
    assert await proc.stop() == 0
    devices = _device_ids(synapse, admin, bot_user.user_id)

    # Wrong pickle key: the store cannot be opened, and the bot says why.
    conf = yaml.safe_load(cfg.read_text())
    wrong = tmp_path / "wrong-key.yaml"
    wrong.write_text(yaml.safe_dump({**conf, "pickle_key": "a-different-pickle-key"}))
    res = _run_once(wrong)
    assert res.returncode == 1
    assert "pickle_key" in res.stderr and "Traceback" not in res.stderr

    # Lost crypto store: refuse to start rather than silently become a new device.
    shutil.rmtree(data / "crypto")
    res = _run_once(cfg)
    assert res.returncode == 1
    assert "crypto store" in res.stderr and "missing" in res.stderr
    assert _device_ids(synapse, admin, bot_user.user_id) == devices
