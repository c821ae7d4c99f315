"""Ratchet's cross-signing, secret storage and key backup against matrix-js-sdk (Element's crypto stack).

* The headline: a js client in "exclude insecure devices" mode (MSC4153) talks to a bot that cross-signs its device,
  and does not talk to one that does not.
* An operator who set up cross-signing for the bot account in Element hands its recovery key to ``ratchet verify``.
* The other way round: js reads Ratchet's secret storage with Ratchet's recovery key, cross-signs its own device with
  the seeds and restores room keys from the backup Ratchet uploaded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time

import olm
import pytest
from nio import MegolmEvent, RoomGetEventResponse, RoomMessageText

from bot.crypto.megolm_backup import BackupKey
from bot.testing.harness import write_bot_config

from .jspeer import JsPeerError
from .stack import InteropStack

# Node and the peer's packages are required by conftest.py (a skip, or a failure under CI=true).
pytestmark = [pytest.mark.e2e, pytest.mark.interop, pytest.mark.timeout(60)]

WAIT = 30





def _ed25519_public(seed_b64: str) -> str:
    seed = base64.b64decode(seed_b64 + "=" * (-len(seed_b64) % 4))
    return olm.PkSigning(seed).public_key


async def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _ratchet(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
    )


async def test_only_signed_js_talks_to_cross_signed_bot_not_to_unsigned_bot(synapse, new_user, tmp_path):
    alice, signed_user, plain_user = new_user("jsalice"), new_user("signedbot"), new_user("plainbot")
    signed_cfg = write_bot_config(
        tmp_path / "signed.yaml", server=synapse, user=signed_user, data_dir=tmp_path / "signed",
        e2ee={"cross_signing": True, "recovery_key_file": str(tmp_path / "signed.key")},
    )
    plain_cfg = write_bot_config(
        tmp_path / "plain.yaml", server=synapse, user=plain_user, data_dir=tmp_path / "plain",
        e2ee={"cross_signing": False},
    )
    async with InteropStack(tmp_path / "jspeer-logs") as stack:
        signed_bot = await stack.bot(signed_cfg)
        plain_bot = await stack.bot(plain_cfg)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await peer.set_isolation("only_signed")

        # The cross-signed bot: the js client shares its key, decrypts the reply, and sees the device as signed.
        room = await peer.create_room(invite=[signed_user.user_id], name="signed")
        await peer.wait_joined(room, signed_user.user_id, timeout=WAIT)
        ping = await peer.send_text(room, "!ping")
        reply = await peer.wait_message(room, sender=signed_user.user_id, reply_to=ping, timeout=WAIT, fail_on_utd=True)
        assert reply["body"].startswith("pong") and reply["encrypted"] is True, reply
        assert reply["decryption_failure"] is None
        status = await peer.device_status(signed_user.user_id, signed_bot.device_id, expect_signed=True)
        assert status["known"] and status["signed_by_owner"] is True, status
        assert signed_bot.runtime.stats.utd_total == 0

        # The bot without cross-signing: the js client withholds its key, so the ping never decrypts and no reply
        # comes; the device is "not signed by its owner".
        room2 = await peer.create_room(invite=[plain_user.user_id], name="plain")
        await peer.wait_joined(room2, plain_user.user_id, timeout=WAIT)
        await peer.send_text(room2, "!ping")
        await _wait_until(lambda: plain_bot.runtime.stats.utd_total >= 1, WAIT, "the unsigned bot to get the ping")
        with pytest.raises(JsPeerError) as failure:
            await peer.wait_message(room2, sender=plain_user.user_id, timeout=5, fail_on_utd=True)
        report = json.loads(failure.value.error)
        # Nothing at all came from the unsigned bot (it never had the key, so it had nothing to answer): a timeout
        # with no event of the bot's, decrypted or not. A reply would show up here as a UTD and fail the check.
        assert report["timeout"] is True and report["utd"] == [] and report["pending"] == [], report
        assert plain_bot.runtime.stats.utd_recovered == 0
        plain_status = await peer.device_status(plain_user.user_id, plain_bot.device_id)
        assert plain_status["known"] and plain_status["signed_by_owner"] is False, plain_status
        assert plain_bot.runtime.identity.status()["cross_signed"] is False


async def test_ratchet_verify_with_a_recovery_key_made_by_js(synapse, new_user, tmp_path):
    bot_user = new_user("bot")
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=synapse, user=bot_user, data_dir=tmp_path / "data",
        e2ee={"cross_signing": True, "key_backup": True},
    )
    async with InteropStack(tmp_path / "jspeer-logs") as stack:
        # The operator set the bot account up in Element: cross-signing, secret storage, key backup.
        element = await stack.peer(synapse, bot_user, "element")
        await element.bootstrap_cross_signing(bot_user.password)
        storage = await element.bootstrap_secret_storage()
        js_key, js_backup = storage["recovery_key"], storage["backup_version"]
        js_master = (await element.cross_signing_status())["master_key_id"]
        room = await element.create_room(name="history")
        old_event = await element.send_text(room, "written in element before the bot existed")
        await element.wait_backup_uploaded(timeout=WAIT)

        # The bot starts: keys it does not hold are left alone, it keeps running.
        bot = await stack.bot(cfg)
        st = bot.runtime.identity.status()
        assert st["state"] == "foreign" and st["master_key"] == js_master and st["cross_signed"] is False, st
        assert bot.runtime.identity.device_signing_uploads == 0
        device_id = bot.device_id
        await bot.stop()

        done = await _ratchet("verify", "-c", str(cfg), "--recovery-key", js_key)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"device {device_id}" in done.stdout and "is now cross-signed" in done.stdout, done.stdout
        assert f"key backup version {js_backup}: restored 1 new room keys of 1" in done.stdout, done.stdout

        # Element sees the bot's device signed by the keys it made, which did not change.
        status = await element.device_status(bot_user.user_id, device_id, expect_signed=True)
        assert status["signed_by_owner"] is True and status["cross_signing_verified"] is True, status
        assert (await element.cross_signing_status())["master_key_id"] == js_master
        shown = await _ratchet("recovery-key", "show", "-c", str(cfg))
        assert shown.stdout.strip() == js_key

        # Restarted, the bot uses those keys and Element's backup, and reads Element's history from it.
        bot = await stack.bot(cfg)
        st = bot.runtime.identity.status()
        assert st["state"] == "ok" and st["cross_signed"] is True and st["master_key"] == js_master, st
        assert st["backup_version"] == js_backup and bot.runtime.identity.device_signing_uploads == 0, st
        got = await bot.runtime.client.room_get_event(room, old_event)
        assert isinstance(got, RoomGetEventResponse), got
        event = got.event
        if isinstance(event, MegolmEvent):
            event.room_id = room
            event = bot.runtime.client.decrypt_event(event)
        assert isinstance(event, RoomMessageText) and event.body == "written in element before the bot existed"


async def test_js_uses_ratchet_recovery_key_secret_storage_and_backup(synapse, new_user, tmp_path):
    bot_user, alice = new_user("bot"), new_user("alice")
    key_file = tmp_path / "recovery.key"
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=synapse, user=bot_user, data_dir=tmp_path / "data",
        e2ee={"cross_signing": True, "key_backup": True, "recovery_key_file": str(key_file)},
    )
    async with InteropStack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        st = bot.runtime.identity.status()
        master, version = st["master_key"], st["backup_version"]
        member = await stack.member(synapse, alice, tmp_path / "alice")
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        await member.send(room, "kept in ratchet's key backup")
        await _wait_until(lambda: bot.runtime.identity.status()["keys_backed_up"] >= 1, WAIT, "the backup upload")
        await bot.stop()
        recovery_key = key_file.read_text().strip()

        # Element on the bot account, with nothing but Ratchet's recovery key.
        element = await stack.peer(synapse, bot_user, "element")
        seed = await element.get_secret("m.cross_signing.master", recovery_key)
        assert seed and _ed25519_public(seed) == master
        backup_secret = await element.get_secret("m.megolm_backup.v1", recovery_key)
        assert backup_secret and BackupKey.from_secret(backup_secret).public_key

        result = await element.verify_own_device_with_recovery_key(recovery_key)
        assert result["cross_signing_status"]["master_key_id"] == master, result
        assert result["device_status"]["signed_by_owner"] is True, result
        # Our backup's auth_data is signed by our master key: js trusts it and makes it its active backup.
        assert result["backup"]["check"]["trusted"] is True, result
        assert result["backup"]["active_version"] == version, result

        # What Ratchet uploaded, js decrypts.
        restored = await element.restore_backup(recovery_key)
        assert restored["imported"] >= 1, restored
        msg = await element.wait_message(room, sender=alice.user_id, timeout=WAIT)
        assert msg["body"] == "kept in ratchet's key backup", msg
