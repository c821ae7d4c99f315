"""E2EE faults: a backlog of room keys, Megolm rotation, and a forged ``sender``."""

from __future__ import annotations

import asyncio
import time

import pytest
from nio import RoomCreateResponse

from bot.testing.member import Member

from .support import assert_exactly_once_in_order, wait_handled_then_sentinels

pytestmark = pytest.mark.e2e

#: Fault 7: members x messages each, every message under a new Megolm session (one to-device room key each).
SENDERS = 3
PER_SENDER = 40


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_more_than_100_room_keys_queued_while_offline_all_decrypt(
    synapse, tmp_path, test_plugins_dir, bot_in_room
):
    ledger = tmp_path / "ledger.tsv"
    t = await bot_in_room(
        synapse, plugins={"ledger": {"path": str(ledger)}}, plugin_dirs=[test_plugins_dir], member_name="m0",
        room=False,
    )
    proc = t.proc
    members = [t.member] + [await t.add_member(name=f"m{i}") for i in range(1, SENDERS)]
    sent: dict[str, list[str]] = {}
    rooms = []
    for member in members:
        room = await t.create_room(member)
        rooms.append(room)
        sent[room] = []
    assert await proc.stop() == 0

    async def send_rotating(member: Member, room: str, n: int) -> None:
        for i in range(PER_SENDER):
            member.client.olm.outbound_group_sessions.pop(room, None)  # a new session (and room key) each time
            sent[room].append(await member.send(room, f"count m{n} {i}"))

    await asyncio.gather(*(send_rotating(m, r, n) for n, (m, r) in enumerate(zip(members, rooms, strict=True))))
    t0 = time.monotonic()
    await proc.run_ready()
    lines = await wait_handled_then_sentinels(ledger, sent, dict(zip(rooms, members, strict=True)), timeout=90)
    print(f"{SENDERS * PER_SENDER} messages, as many room keys: handled {time.monotonic() - t0:.1f}s after start")
    assert await proc.stop() == 0
    assert_exactly_once_in_order(lines, sent)


async def _create_room(member: Member, invite: list[str], encryption: dict) -> str:
    resp = await member.client.room_create(
        invite=invite,
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": encryption}],
    )
    assert isinstance(resp, RoomCreateResponse), resp
    await member.wait_for(lambda: resp.room_id in member.client.rooms, 30, "the room")
    return resp.room_id


async def test_bot_rotates_its_megolm_session_on_leave_and_by_room_settings_not_on_renames(synapse, bot_in_room):
    t = await bot_in_room(synapse, room=False)
    proc, alice, bot_user = t.proc, t.member, t.bot_user
    bob = await t.add_member(name="bob")

    async def ask(room: str) -> tuple[str, str]:
        ping = await alice.send(room, "!ping")
        reply = await alice.expect_reply(room, ping, sender=bot_user.user_id)
        assert reply.decrypted, "the bot's reply is readable"
        return reply.session_id, reply.sender_key

    megolm = {"algorithm": "m.megolm.v1.aes-sha2"}
    room = await _create_room(alice, [bot_user.user_id, bob.user_id], megolm)
    await alice.wait_joined(room, bot_user.user_id)
    await bob.wait_for(lambda: room in bob.client.invited_rooms, 30, "the invite")
    await bob.client.join(room)
    await alice.wait_joined(room, bob.user_id)

    first, bot_key = await ask(room)
    await bob.wait_for(
        lambda: bob.client.olm.inbound_group_store.get(room, bot_key, first) is not None, 30, "bob's copy"
    )
    # A display-name change is no reason to rotate.
    await alice.client.set_displayname("Alice Renamed")
    await bob.wait_for(
        lambda: bob.client.rooms[room].user_name(alice.user_id) == "Alice Renamed", 30, "the rename"
    )
    assert (await ask(room))[0] == first, "no rotation on a display-name change"
    # A member leaves: the next message is under a session the leaver never gets.
    await bob.client.room_leave(room)
    await alice.wait_for(lambda: bob.user_id not in alice.client.rooms[room].users, 30, "bob to leave")
    after_leave, _ = await ask(room)
    assert after_leave != first, "rotated when a member left"
    # The bot shares a room key before it sends under it; alice's invite to bob goes out after that reply, and
    # nio handles a sync's to-device events before its invites: once bob sees the invite, he would have the key.
    later = await alice.create_room(invite=[bob.user_id])
    await bob.wait_for(lambda: later in bob.client.invited_rooms, 30, "alice's later invite")
    assert bob.client.olm.inbound_group_store.get(room, bot_key, after_leave) is None, "the leaver has no key"

    # rotation_period_msgs from the room's m.room.encryption: a new session every 2 messages.
    small = await _create_room(alice, [bot_user.user_id], {**megolm, "rotation_period_msgs": 2})
    await alice.wait_joined(small, bot_user.user_id)
    sessions = [(await ask(small))[0] for _ in range(5)]
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3] != sessions[4], sessions

    # nio keeps outbound sessions in memory only: a restart starts a new one (documented).
    assert await proc.stop() == 0
    await proc.run_ready()
    assert (await ask(small))[0] not in sessions
    assert await proc.stop() == 0


async def test_a_forged_sender_in_sync_is_refused_and_runs_no_command(
    synapse, new_user, test_plugins_dir, fault_proxy, bot_in_room
):
    """Fault 9: the proxy rewrites the ``sender`` of an encrypted ``!secret`` (an admin-only command) from alice to
    the bot's admin. Megolm does not cover ``sender``; the bot must notice that alice's device encrypted it."""
    alice_user, admin = new_user("alice"), new_user("admin")
    proxy = await fault_proxy(synapse.url)
    forging = {"on": False, "done": []}

    def forge(body, _request):
        if not forging["on"]:
            return None
        for info in (body.get("rooms", {}).get("join", {}) or {}).values():
            for event in info.get("timeline", {}).get("events", []):
                if event.get("sender") == alice_user.user_id and event.get("type") == "m.room.encrypted":
                    event["sender"] = admin.user_id
                    forging["done"].append(event["event_id"])
        return body

    proxy.rewrite(r"/sync$", forge)
    t = await bot_in_room(
        synapse, connect_via=proxy, member_user=alice_user, plugins={"ping": {}, "typed": {}},
        plugin_dirs=[test_plugins_dir], admins=[admin.user_id],
    )
    proc, alice, room, bot_user = t.proc, t.member, t.room, t.bot_user
    ok = await alice.send(room, "!ping")
    await alice.expect_reply(room, ok, sender=bot_user.user_id)

    forging["on"] = True
    forged = await alice.send(room, "!secret")
    await proc.wait_for_log(f"refusing {forged}", timeout=30)
    forging["on"] = False
    assert forging["done"] == [forged]
    # Still alive and answering the real alice; the forged command never ran.
    again = await alice.send(room, "!ping")
    await alice.expect_reply(room, again, sender=bot_user.user_id)
    assert await proc.stop() == 0
    bot_messages = [e.body for e in alice.messages(room, sender=bot_user.user_id)]
    assert not any("secret is 42" in b for b in bot_messages), bot_messages
    assert not any("admins only" in b for b in bot_messages), "no answer at all to the forged event"
    assert f"claims to come from {admin.user_id}" in proc.log_text()

