"""A crash must not make the bot answer twice (issue 13, part 1), counted from the member's side.

A handler that has sent its answer but not yet returned is killed with -9: its handling was never recorded, so after
the restart it runs again. Its sends carry the transaction ids of the first run (derived from the event, the plugin
and the n-th send), so the homeserver returns the events it already made and the room shows each answer once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.e2e


def _relates_to(event) -> dict:
    rel = event.source.get("content", {}).get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def replies_to(member, room: str, sender: str, event_id: str) -> list:
    """``sender``'s rich replies to ``event_id`` that ``member`` has seen in ``room``."""
    return [
        e
        for e in member.messages(room, sender=sender)
        if (_relates_to(e).get("m.in_reply_to") or {}).get("event_id") == event_id
    ]


def reactions_to(member, room: str, sender: str, event_id: str) -> list:
    """``sender``'s reactions to ``event_id`` that ``member`` has seen (decrypted) in ``room``."""
    return [
        e
        for r, e in member.events
        if r == room
        and e.sender == sender
        and e.source.get("type") == "m.reaction"
        and _relates_to(e).get("event_id") == event_id
    ]


async def test_kill_9_after_the_reply_and_before_the_record_answers_once(
    synapse, tmp_path, test_plugins_dir, bot_in_room
):
    hold = tmp_path / "held"
    t = await bot_in_room(synapse, plugins={"acker": {"hold": str(hold)}}, plugin_dirs=[test_plugins_dir])
    proc, member, room, bot = t.proc, t.member, t.room, t.bot_user.user_id

    before = await member.send(room, "ack before")
    await member.expect_reply(room, before, sender=bot)
    held = await member.send(room, "ack hold react")
    reply = await member.expect_reply(room, held, sender=bot)
    assert reply.body.endswith("ack hold react")
    deadline = time.monotonic() + 30
    while not hold.exists():  # written after the sends returned: the handler is now blocked, not yet recorded
        assert time.monotonic() < deadline, "the handler did not reach its hold"
        await asyncio.sleep(0.05)
    await member.expect(
        lambda r, e: r == room and e.source.get("type") == "m.reaction" and _relates_to(e).get("event_id") == held,
        what="the reaction",
    )
    proc.kill()

    await proc.run_ready()
    # The replayed handling comes first on its lane; once the sentinel is answered, any second answer is in.
    sentinel = await member.send(room, "ack sentinel")
    await member.expect_reply(room, sentinel, sender=bot, timeout=60)
    await member.wait_synced()
    assert await proc.stop() == 0

    assert len(replies_to(member, room, bot, held)) == 1, "the replayed handler answered a second time"
    assert len(reactions_to(member, room, bot, held)) == 1, "the replayed handler reacted a second time"
    for event_id in (before, sentinel):
        assert len(replies_to(member, room, bot, event_id)) == 1
    assert member.undecryptable(room) == []


async def test_synapse_returns_the_first_event_for_a_repeated_transaction_id(synapse, bot_in_room):
    """What the guarantee rests on: the same device sending the same transaction id again gets the first event back
    (even with other, freshly encrypted content), and the room holds one event; likewise for a redaction."""
    from nio import RoomMessagesResponse, RoomRedactResponse, RoomSendResponse

    t = await bot_in_room(synapse, start=False, room=False)
    member = t.member
    room = await member.create_room()
    client = member.client

    async def send(body: str, tx_id: str) -> str:
        resp = await client.room_send(
            room, "m.room.message", {"msgtype": "m.text", "body": body}, tx_id=tx_id, ignore_unverified_devices=True
        )
        assert isinstance(resp, RoomSendResponse), resp
        return resp.event_id

    first = await send("once", "rt1-window-test")
    assert await send("twice", "rt1-window-test") == first
    other = await send("other", "rt1-window-test-2")
    assert other != first
    redactions = []
    for _ in range(2):
        resp = await client.room_redact(room, other, tx_id="rt1-window-redact")
        assert isinstance(resp, RoomRedactResponse), resp
        redactions.append(resp.event_id)
    assert redactions[0] == redactions[1]

    resp = await client.room_messages(room, start="", limit=100)
    assert isinstance(resp, RoomMessagesResponse), resp
    messages = [e.event_id for e in resp.chunk if e.source.get("type") in ("m.room.message", "m.room.encrypted")]
    assert sorted(messages) == sorted([first, other]), "one event per transaction id"
    assert [e.event_id for e in resp.chunk if e.source.get("type") == "m.room.redaction"] == redactions[:1]


async def _history(member, room: str) -> list:
    """Every event of ``room`` from the homeserver (``/messages``, newest first; decrypted where the member can)."""
    from nio import RoomMessagesResponse

    events: list = []
    start = ""
    while True:
        resp = await member.client.room_messages(room, start=start, limit=100)
        assert isinstance(resp, RoomMessagesResponse), resp
        events.extend(resp.chunk)
        if not resp.chunk or not resp.end or resp.end == start:
            return events
        start = resp.end


#: The issue's scale: 300 messages in 3 rooms, two kill -9 during the flood.
FLOOD_ROOMS = 3
FLOOD_PER_ROOM = 100


async def test_kill_9_twice_during_a_flood_every_message_is_answered_exactly_once(
    synapse, test_plugins_dir, bot_in_room
):
    """Counted from the room's history, not from the bot: each message has one ``ack`` reply, none has two."""
    t = await bot_in_room(synapse, plugins={"acker": {}}, plugin_dirs=[test_plugins_dir], room=False)
    proc, member, bot = t.proc, t.member, t.bot_user.user_id
    rooms = [await member.create_room(invite=[bot]) for _ in range(FLOOD_ROOMS)]
    for room in rooms:
        await member.wait_joined(room, bot)
    sent: dict[str, list[str]] = {room: [] for room in rooms}

    async def flood(room: str, index: int) -> None:
        for i in range(FLOOD_PER_ROOM):
            sent[room].append(await member.send(room, f"ack r{index} m{i}"))

    def answered() -> int:
        return sum(len(member.messages(room, sender=bot)) for room in rooms)

    senders = asyncio.gather(*(flood(room, n) for n, room in enumerate(rooms)))
    total = FLOOD_ROOMS * FLOOD_PER_ROOM
    for fraction in (3, 3 / 2):
        deadline = time.monotonic() + 60
        while answered() < total / fraction and time.monotonic() < deadline and not senders.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        proc.kill()  # in the middle of handling: some reply is sent, its record not yet written
        await proc.run_ready()
    await senders
    for n, room in enumerate(rooms):
        sentinel = await member.send(room, f"ack r{n} sentinel")
        await member.expect_reply(room, sentinel, sender=bot, timeout=120)
        sent[room].append(sentinel)
    assert await proc.stop() == 0

    for room in rooms:
        replies: dict[str, int] = {}
        for event in await _history(member, room):
            if event.sender != bot or "state_key" in event.source:
                continue
            target = (_relates_to(event).get("m.in_reply_to") or {}).get("event_id")
            assert target is not None, f"an event of the bot that is no reply: {event.source.get('type')}"
            replies[target] = replies.get(target, 0) + 1
        doubled = {e: n for e, n in replies.items() if n > 1}
        assert not doubled, f"answered more than once: {doubled}"
        assert set(replies) == set(sent[room]), f"missing {set(sent[room]) - set(replies)}"
