"""Issue 17: two ``ratchet run`` processes on one PostgreSQL database, as on two machines (two ``data_dir``s): one
runs, the other waits; the standby takes over when the active one is killed or frozen, and members see every message
answered exactly once, in order.

Counted at the member's client from the room's history (``ack`` replies of the acker test plugin), not from the bot.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml

from bot.testing.harness import BotProcess
from bot.testing.tcp_proxy import TcpProxy

from .test_replay import _history, _relates_to

pytestmark = pytest.mark.e2e

#: The issue's flood: 500 messages in 5 rooms.
ROOMS = 5
PER_ROOM = 100
#: A short lease keeps the frozen-active test quick; production's default is 10 s.
LEASE_TTL = 3


def _standby(t, tmp_path: Path, name: str, **changes: object) -> BotProcess:
    """A second process with the same config and database, on its own (empty) data_dir: another machine."""
    config = yaml.safe_load(t.config_path.read_text())
    config["data_dir"] = str(tmp_path / f"data-{name}")
    config.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return BotProcess(path, tmp_path / f"{name}.log")


async def _answers(member, rooms: list[str], bot: str) -> dict[str, list[str]]:
    """Per room: the event each ``ack`` reply of the bot answers, in the room's order."""
    out: dict[str, list[str]] = {}
    for room in rooms:
        targets = []
        for event in reversed(await _history(member, room)):  # oldest first
            if event.sender != bot or "state_key" in event.source:
                continue
            target = (_relates_to(event).get("m.in_reply_to") or {}).get("event_id")
            assert target is not None, f"an event of the bot that is no reply: {event.source.get('type')}"
            targets.append(target)
        out[room] = targets
    return out


def _assert_exactly_once_in_order(answers: dict[str, list[str]], sent: dict[str, list[str]]) -> None:
    for room, targets in answers.items():
        doubled = sorted({e for e in targets if targets.count(e) > 1})
        assert not doubled, f"answered more than once: {doubled}"
        assert set(targets) == set(sent[room]), f"unanswered: {set(sent[room]) - set(targets)}"
        assert targets == sent[room], f"answers out of order in {room}"


def _handled_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ratchet.handled").fetchone()[0]


async def test_kill_9_of_the_active_during_a_flood_the_standby_answers_everything_once(
    synapse, tmp_path, test_plugins_dir, bot_in_room, postgres_dsn
):
    t = await bot_in_room(
        synapse,
        plugins={"acker": {}},
        plugin_dirs=[test_plugins_dir],
        room=False,
        database=postgres_dsn,
        database_lease_ttl=LEASE_TTL,
    )
    active, member, bot = t.proc, t.member, t.bot_user.user_id
    standby = _standby(t, tmp_path, "standby").start()
    try:
        await standby.wait_for_log("holds the lease; waiting", timeout=60)
        rooms = [await member.create_room(invite=[bot]) for _ in range(ROOMS)]
        for room in rooms:
            await member.wait_joined(room, bot)
        sent: dict[str, list[str]] = {room: [] for room in rooms}

        async def flood(room: str, index: int) -> None:
            for i in range(PER_ROOM):
                sent[room].append(await member.send(room, f"ack r{index} m{i}"))

        def answered() -> int:
            return sum(len(member.messages(room, sender=bot)) for room in rooms)

        senders = asyncio.gather(*(flood(room, n) for n, room in enumerate(rooms)))
        total = ROOMS * PER_ROOM
        deadline = time.monotonic() + 90
        while answered() < total // 3 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        answered_at_kill = answered()
        active.kill()  # the active machine is gone, mid-flood
        killed = time.monotonic()
        await standby.wait_for_log("synced;", timeout=60)
        takeover = time.monotonic() - killed
        while answered() <= answered_at_kill:
            assert time.monotonic() - killed < 60, "the standby answered nothing"
            await asyncio.sleep(0.01)
        first_answer = time.monotonic() - killed
        print(f"\nfailover: standby synced {takeover:.2f} s after kill -9 of the active, first answer after "
              f"{first_answer:.2f} s ({answered_at_kill} of {total} answered before the kill)")
        assert "took over the lease" in standby.log_text()
        await senders
        for n, room in enumerate(rooms):
            sentinel = await member.send(room, f"ack r{n} sentinel")
            await member.expect_reply(room, sentinel, sender=bot, timeout=120)
            sent[room].append(sentinel)
        assert await standby.stop() == 0
    finally:
        standby.kill()
    assert 0 < answered_at_kill < total
    _assert_exactly_once_in_order(await _answers(member, rooms, bot), sent)
    assert _handled_rows(postgres_dsn) >= total


async def test_a_frozen_active_that_wakes_up_after_the_takeover_writes_nothing(
    synapse, tmp_path, test_plugins_dir, bot_in_room, postgres_dsn
):
    t = await bot_in_room(
        synapse,
        plugins={"acker": {}},
        plugin_dirs=[test_plugins_dir],
        database=postgres_dsn,
        database_lease_ttl=LEASE_TTL,
    )
    active, member, bot, room = t.proc, t.member, t.bot_user.user_id, t.room
    standby = _standby(t, tmp_path, "standby").start()
    sent: list[str] = []
    try:
        await standby.wait_for_log("holds the lease; waiting", timeout=60)
        first = await member.send(room, "ack before")
        sent.append(first)
        await member.expect_reply(room, first, sender=bot, timeout=30)

        active.proc.send_signal(signal.SIGSTOP)  # a VM freeze: sockets stay open, nothing runs
        frozen = time.monotonic()
        await standby.wait_for_log("took over the lease", timeout=LEASE_TTL + 30)
        print(f"\nfrozen active: standby took the lease {time.monotonic() - frozen:.2f} s after the freeze")
        await standby.wait_for_log("synced;", timeout=60)
        for i in range(5):
            sent.append(await member.send(room, f"ack while frozen {i}"))
        await member.expect_reply(room, sent[-1], sender=bot, timeout=60)
        deadline = time.monotonic() + 10
        while _handled_rows(postgres_dsn) < len(sent) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the record follows the reply
        rows_before = _handled_rows(postgres_dsn)
        assert rows_before == len(sent)

        active.proc.send_signal(signal.SIGCONT)  # the zombie wakes up, still believing it is active
        deadline = time.monotonic() + 30
        while active.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert active.proc.poll() == 1, "the old active did not stop after losing the lease"
        log = active.log_text()
        assert "lost the database lease" in log or "write refused" in log
        assert _handled_rows(postgres_dsn) == rows_before, "the zombie wrote handled-event records"

        after = await member.send(room, "ack after")
        sent.append(after)
        await member.expect_reply(room, after, sender=bot, timeout=30)
        assert await standby.stop() == 0
    finally:
        if active.proc is not None and active.proc.poll() is None:
            active.proc.send_signal(signal.SIGCONT)
        standby.kill()
    _assert_exactly_once_in_order(await _answers(member, [room], bot), {room: sent})


async def test_an_active_cut_off_from_the_database_is_replaced_and_stops(
    synapse, tmp_path, test_plugins_dir, bot_in_room, postgres, postgres_dsn
):
    """A partition between the active bot and PostgreSQL (the bot still reaches Synapse): the standby takes over when
    the lease expires, the cut-off one stops by itself, members see every message answered once."""
    proxy = await TcpProxy("127.0.0.1", postgres.port).start()
    parts = urlsplit(postgres_dsn)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    through_proxy = urlunsplit(parts._replace(netloc=netloc, query="tcp_user_timeout=2000"))
    try:
        t = await bot_in_room(
            synapse,
            plugins={"acker": {}},
            plugin_dirs=[test_plugins_dir],
            database=through_proxy,
            database_lease_ttl=LEASE_TTL,
        )
        active, member, bot, room = t.proc, t.member, t.bot_user.user_id, t.room
        standby = _standby(t, tmp_path, "standby", database=postgres_dsn).start()
        sent: list[str] = []
        try:
            await standby.wait_for_log("holds the lease; waiting", timeout=60)
            sent.append(await member.send(room, "ack before"))
            await member.expect_reply(room, sent[-1], sender=bot, timeout=30)

            proxy.cut()
            cut = time.monotonic()
            await standby.wait_for_log("took over the lease", timeout=LEASE_TTL + 30)
            print(f"\ncut network: standby took the lease {time.monotonic() - cut:.2f} s after the cut")
            await standby.wait_for_log("synced;", timeout=60)
            for i in range(5):
                sent.append(await member.send(room, f"ack during the cut {i}"))
            await member.expect_reply(room, sent[-1], sender=bot, timeout=60)

            deadline = time.monotonic() + 60
            while active.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            assert active.proc.poll() == 1, "the cut-off active did not stop"
            print(f"cut network: the cut-off active stopped {time.monotonic() - cut:.2f} s after the cut")
            after = await member.send(room, "ack after")
            sent.append(after)
            await member.expect_reply(room, after, sender=bot, timeout=30)
            assert await standby.stop() == 0
        finally:
            standby.kill()
    finally:
        await proxy.close()
    _assert_exactly_once_in_order(await _answers(member, [room], bot), {room: sent})
