"""The transaction-fed event source without a homeserver: outcomes, retries of the same id, persistence of handled
ids across a restart, and what reaches the runtime (bot/appservice/source.py)."""

from __future__ import annotations

import asyncio

import pytest

from bot.appservice.ghosts import Ghosts
from bot.appservice.registration import Namespaces
from bot.appservice.source import TransactionSource
from bot.appservice.transactions import Transaction
from bot.matrix.client import make_appservice_client
from bot.storage.state import StateStore

BOT = "@bridge:x"
ROOM = "!room:x"


def _msg(event_id: str, sender: str = "@alice:x", body: str = "hi") -> dict:
    return {
        "type": "m.room.message", "room_id": ROOM, "event_id": event_id, "sender": sender, "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": body},
    }


@pytest.fixture
async def make_source(tmp_path):
    made = []

    async def make() -> TransactionSource:
        client = make_appservice_client("http://127.0.0.1:9", BOT, "t" * 40)
        state = StateStore.open(tmp_path / "state.db")
        source = TransactionSource(
            client, state, Ghosts(client, Namespaces("x", "bridge", "irc_", None)), invite_allowed=lambda _: True
        )
        source._state_loaded.add(ROOM)  # no homeserver to ask for the room's state
        made.append((client, state))
        return source

    yield make
    for client, state in made:
        await client.close()
        state.close()


async def test_a_transaction_is_answered_after_it_is_acknowledged_and_never_again(make_source):
    source = await make_source()
    txn = Transaction("7", [_msg("$1"), _msg("$2", sender="@irc_bob:x"), _msg("$3", body="!ping")])
    answer = asyncio.create_task(source.submit(txn))
    batch = await source.fetch(None, timeout_ms=1000)
    assert batch.token == "7"
    (room,) = batch.rooms
    assert [e.event_id for e in room.events] == ["$1", "$3"]  # the ghost's own message is not handed on
    assert ROOM in source.client.rooms and source.room_count() == 1
    await asyncio.sleep(0.05)
    assert not answer.done()  # not before the runtime says so
    source.acknowledge("7")
    assert await answer is True

    # After a restart (a new source on the same state.db) the same id is answered at once, without effect.
    source.state.close()
    again = await make_source()
    assert await asyncio.wait_for(again.submit(txn), 1) is True
    assert (await again.fetch(None, timeout_ms=50)).token == ""


async def test_a_rejected_transaction_is_answered_try_again_and_can_come_back(make_source):
    source = await make_source()
    txn = Transaction("8", [_msg("$1")])
    answer = asyncio.create_task(source.submit(txn))
    batch = await source.fetch(None, timeout_ms=1000)
    source.reject(batch.token, "the bot is stopping")
    assert await answer is False
    retry = asyncio.create_task(source.submit(txn))
    assert (await source.fetch(None, timeout_ms=1000)).token == "8"
    source.acknowledge("8")
    assert await retry is True


async def test_the_same_id_while_in_flight_waits_for_the_first_delivery(make_source):
    source = await make_source()
    txn = Transaction("9", [_msg("$1")])
    first = asyncio.create_task(source.submit(txn))
    await asyncio.sleep(0)
    second = asyncio.create_task(source.submit(txn))  # the homeserver timed out and sent it again
    batch = await source.fetch(None, timeout_ms=1000)
    assert (await source.fetch(None, timeout_ms=50)).token == ""  # queued once
    source.acknowledge(batch.token)
    assert await first is True and await second is True


async def test_closing_answers_waiting_transactions_try_again(make_source):
    source = await make_source()
    waiting = asyncio.create_task(source.submit(Transaction("10", [_msg("$1")])))
    await asyncio.sleep(0)
    source.close()
    assert await waiting is False
    assert await source.submit(Transaction("11", [_msg("$2")])) is False
    assert (await source.fetch(None, timeout_ms=50)).token == ""


async def test_an_invite_of_the_bot_is_an_invite_of_the_batch(make_source):
    source = await make_source()
    invite = {
        "type": "m.room.member", "room_id": "!new:x", "state_key": BOT, "sender": "@alice:x", "event_id": "$i",
        "origin_server_ts": 1, "content": {"membership": "invite"},
    }
    answer = asyncio.create_task(source.submit(Transaction("12", [invite])))
    source._state_loaded.add("!new:x")
    batch = await source.fetch(None, timeout_ms=1000)
    assert [(i.room_id, i.inviter) for i in batch.invites] == [("!new:x", "@alice:x")]
    assert batch.rooms == []
    source.acknowledge("12")
    assert await answer is True
