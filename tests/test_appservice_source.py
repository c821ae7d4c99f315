"""The transaction-fed event source without a homeserver: outcomes, retries of the same id, persistence of handled
ids across a restart (one row per id in ``state.db`` or PostgreSQL, the list earlier versions kept moved to rows), and
what reaches the runtime (bot/appservice/source.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.appservice.ghosts import Ghosts
from bot.appservice.registration import Namespaces
from bot.appservice.source import LEGACY_SEEN_KEY, TransactionSource
from bot.appservice.transactions import SEEN_LIMIT, SeenTransactions, Transaction
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


def open_store(engine: str, tmp_path: Path, request: pytest.FixtureRequest, dsn: list[str]) -> StateStore:
    """The state store as a (re)started process opens it: the same file, or the same PostgreSQL database."""
    if engine == "sqlite":
        return StateStore.open(tmp_path / "state.db")
    if not dsn:
        dsn.append(request.getfixturevalue("postgres_dsn"))
    return StateStore.open_postgres(dsn[0])


def txn_rows(state: StateStore) -> list[str]:
    return [row[0] for row in state._db.execute("SELECT txn_id FROM appservice_txn ORDER BY seq").fetchall()]


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_handled_transaction_ids_are_appended_rows_bounded_and_kept_across_a_restart(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dsn: list[str] = []
    state = open_store(engine, tmp_path, request, dsn)
    assert state.recent_transactions(4) == []
    for n in range(1, 9):
        state.record_transaction(str(n), keep=4)
        assert len(txn_rows(state)) < 8, "pruned every `keep` records: fewer than 2 * keep rows"
        if n == 7:
            assert txn_rows(state) == ["1", "2", "3", "4", "5", "6", "7"]  # appended in order
    assert txn_rows(state) == ["5", "6", "7", "8"]  # the 8th record pruned all but the newest 4
    state.record_transaction("5", keep=4)  # recorded again (it had left the window): now the newest
    assert txn_rows(state) == ["5", "6", "7", "8", "5"]
    assert list(SeenTransactions(state.recent_transactions(8))) == ["6", "7", "8", "5"]  # its last place counts
    state.close()

    state = open_store(engine, tmp_path, request, dsn)  # a restart
    try:
        assert state.recent_transactions(3) == ["7", "8", "5"]  # the newest 3, oldest first; the rest removed
        assert txn_rows(state) == ["7", "8", "5"]
        state.record_transaction("9", keep=3)
        assert state.recent_transactions(3) == ["8", "5", "9"]
    finally:
        state.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_handled_id_is_answered_at_once_after_a_restart_and_the_old_list_is_moved_to_rows(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dsn: list[str] = []
    client = make_appservice_client("http://127.0.0.1:9", BOT, "t" * 40)
    ghosts = Ghosts(client, Namespaces("x", "bridge", "irc_", None))

    def source_on(state: StateStore) -> TransactionSource:
        source = TransactionSource(client, state, ghosts, invite_allowed=lambda _: True)
        source._state_loaded.add(ROOM)
        return source

    state = open_store(engine, tmp_path, request, dsn)
    state.set(LEGACY_SEEN_KEY, json.dumps(["old1", "old2"]))  # what an earlier version left
    try:
        source = source_on(state)
        assert state.get(LEGACY_SEEN_KEY) is None and txn_rows(state) == ["old1", "old2"]
        assert await asyncio.wait_for(source.submit(Transaction("old2", [_msg("$0")])), 1) is True
        answer = asyncio.create_task(source.submit(Transaction("20", [_msg("$1")])))
        batch = await source.fetch(None, timeout_ms=1000)
        source.acknowledge(batch.token)
        assert await answer is True
        assert txn_rows(state) == ["old1", "old2", "20"]
        state.close()

        state = open_store(engine, tmp_path, request, dsn)  # a restart: the ids come from the rows
        again = source_on(state)
        assert list(again.seen) == ["old1", "old2", "20"]
        for txn_id in ("20", "old1"):
            assert await asyncio.wait_for(again.submit(Transaction(txn_id, [_msg("$1")])), 1) is True
        assert (await again.fetch(None, timeout_ms=50)).token == "", "nothing handled twice"
    finally:
        state.close()
        await client.close()


def test_the_seen_ids_are_bounded_by_the_limit_across_restarts(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        for n in range(SEEN_LIMIT + 10):
            state.record_transaction(str(n), keep=SEEN_LIMIT)
        recent = state.recent_transactions(SEEN_LIMIT)
        assert recent == [str(n) for n in range(10, SEEN_LIMIT + 10)] and txn_rows(state) == recent
    finally:
        state.close()


def test_pruning_keeps_the_newest_rows_even_with_gaps_in_their_numbers(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        for n in range(6):
            state.record_transaction(str(n), keep=100)
        state._db.execute("UPDATE appservice_txn SET seq = seq * 10")  # as a PostgreSQL sequence may number them
        assert state.recent_transactions(4) == ["2", "3", "4", "5"]
    finally:
        state.close()


async def test_a_rejected_transaction_is_answered_try_again_and_can_come_back(make_source):
    source = await make_source()
    txn = Transaction("8", [_msg("$1")])
    answer = asyncio.create_task(source.submit(txn))
    batch = await source.fetch(None, timeout_ms=1000)
    first_token = source.client.next_batch
    source.reject(batch.token, "the bot is stopping")
    assert await answer is False
    retry = asyncio.create_task(source.submit(txn))
    batch = await source.fetch(None, timeout_ms=1000)
    assert batch.token == "8" and [e.event_id for e in batch.rooms[0].events] == ["$1"]
    # nio handled it again: it skips a body whose next_batch is the one it has
    assert source.client.next_batch.startswith("as-8-") and source.client.next_batch != first_token
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
