"""Hostile room members against the real bot and the real Synapse (issue 12, findings 1, 4 and 5).

Each scenario runs ``ratchet run`` in its own process and attacks it with a real client
(:mod:`tests.security.attacker`); what is asserted is what members and operators see: the bot's answers as a member
decrypts them, and the bot's log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.testing.scenario import BotInRoom, register_user

from .attacker import publish_copycat_device, send_encrypted_bytes, send_encrypted_plaintext, send_in_the_clear

pytestmark = [pytest.mark.e2e]

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


async def _wait_log(t: BotInRoom, text: str, timeout: float = 30) -> str:
    log = t.tmp_path / "bot.log"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in the bot's log within {timeout}s")


async def _second_member(t: BotInRoom, name: str):
    """A second member joined to the bot's room (invited by the first); returns the member and the account."""
    user = register_user(t.synapse, name)
    other = await t.add_member(user, name)
    resp = await t.member.client.room_invite(t.room, other.user_id)
    assert not hasattr(resp, "status_code"), resp
    joined = await other.accept_invite()
    assert joined == t.room
    await t.member.wait_joined(t.room, other.user_id)
    return other, user


async def test_an_encrypted_power_levels_event_does_not_make_a_member_a_moderator(synapse, bot_in_room):
    t = await bot_in_room(synapse, plugins={"typed": {}}, plugin_dirs=[PLUGINS])
    mallory, _ = await _second_member(t, "mallory")
    forged = await send_encrypted_plaintext(mallory, t.room, {
        "type": "m.room.power_levels",
        "state_key": "",
        "content": {"users": {mallory.user_id: 100, t.member.user_id: 100}, "users_default": 0},
    })
    reply = await t.ask("!mods", member=mallory)  # after the forged event, in the same room's order
    assert "needs power level 50" in reply.body, reply.body
    log = await _wait_log(t, forged)  # the bot said why it changed nothing
    assert "state is never encrypted" in log


async def test_a_payload_that_decrypts_but_does_not_parse_does_not_stall_the_bot(synapse, bot_in_room):
    # Any member can Megolm-encrypt any bytes. These two used to raise out of nio's decryption, so the sync batch
    # carrying them failed on every retry and the bot answered nobody again. (The kit's members survive them as
    # Element does; plain nio would stall the asking member too.)
    t = await bot_in_room(synapse, plugins={"ping": {}}, plugin_dirs=[PLUGINS])
    mallory, _ = await _second_member(t, "mallory")
    not_utf8 = await send_encrypted_bytes(mallory, t.room, b'{"type":"m.room.message","content":{"body":"\xff"}}')
    too_deep = await send_encrypted_bytes(mallory, t.room, b"[" * 20_000)
    reply = await t.ask("!ping")  # sent after them: the bot got past both
    assert reply.body.startswith("pong"), reply.body
    log = await _wait_log(t, too_deep)
    assert f"could not decrypt {not_utf8} from {mallory.user_id} in {t.room}: its payload is not UTF-8" in log
    assert f"could not decrypt {too_deep} from {mallory.user_id} in {t.room}: its payload is JSON nested too" in log
    assert "[[[[" not in log


async def test_a_command_sent_in_the_clear_into_an_encrypted_room_is_ignored(synapse, bot_in_room):
    t = await bot_in_room(synapse, plugins={"typed": {}, "ping": {}}, plugin_dirs=[PLUGINS])
    # the room's creator (power 100) in the clear: a stolen access token without device keys could do this
    clear = await send_in_the_clear(t.member, t.room, "!mods")
    await _wait_log(t, "sent unencrypted into an encrypted room")
    sentinel = await t.ask("!ping")  # answered: the bot is alive and has handled everything before it
    assert sentinel.body.startswith("pong")
    replies_to_clear = [
        e for e in t.bot_messages()
        if (e.source.get("content", {}).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id") == clear
    ]
    assert replies_to_clear == []
    assert not [e for e in t.bot_messages() if "hello moderator" in getattr(e, "body", "")]


async def test_admin_commands_from_an_untrusted_device_are_refused(synapse, bot_in_room):
    # trust: cross-signed, and the admin's device is not cross-signed (a new login nobody verified)
    admin = register_user(synapse, "admin")
    t = await bot_in_room(
        synapse, plugins={"typed": {}}, plugin_dirs=[PLUGINS], member_user=admin,
        admins=[admin.user_id], e2ee={"trust": "cross-signed"},
    )
    await t.send("!secret")
    log = await _wait_log(t, "denied !secret to")
    assert "does not trust" in log


async def test_a_copied_curve25519_key_does_not_silence_its_owner(synapse, bot_in_room):
    t = await bot_in_room(synapse, plugins={"ping": {}})
    mallory, mallory_user = await _second_member(t, "mallory")
    alice_curve = t.member.client.olm.account.identity_keys["curve25519"]
    await publish_copycat_device(synapse.url, mallory.user_id, mallory_user.password, alice_curve)
    # make sure the bot has fetched mallory's new device list before alice speaks: mallory says something, and the
    # bot needs her devices to check who sent it
    await mallory.send(t.room, "hello from mallory")
    await asyncio.sleep(2)
    reply = await t.ask("!ping")
    assert reply.body.startswith("pong")
    log = (t.tmp_path / "bot.log").read_text()
    assert "refusing" not in log
