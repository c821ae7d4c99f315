"""bot.timeslice: a long loop on the event loop gives other tasks a turn every few milliseconds (issue 20)."""

from __future__ import annotations

import asyncio
import time

from bot.timeslice import TimeSlice


async def test_a_long_loop_lets_other_tasks_run_within_a_slice() -> None:
    ticks: list[float] = []
    stop = asyncio.Event()

    async def other() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    turn = TimeSlice(0.002)
    start = time.perf_counter()
    pauses = 0
    while pauses < 10:  # "work" in small items until the slice ran out ten times (however loaded the machine is)
        sum(range(2000))
        if turn.due():
            pauses += 1
            await turn.pause()
    end = time.perf_counter()
    stop.set()
    await task
    during = [t for t in ticks if start <= t <= end]
    assert len(during) >= pauses, "the other task ran at every pause"


async def test_a_slice_not_used_up_does_not_pause() -> None:
    turn = TimeSlice(60)
    assert not turn.due()
    await turn.pause()
    assert not turn.due()


async def test_nio_handling_a_big_sync_pauses_between_events() -> None:
    """RatchetClient: nio's timeline loop (one call for a whole sync) gives other tasks turns in between."""
    from nio import AsyncClientConfig, SyncResponse

    from bot.matrix.client import RatchetClient

    client = RatchetClient("http://127.0.0.1:9", "@bot:x", config=AsyncClientConfig(encryption_enabled=False))
    client.restore_login("@bot:x", "DEV", "token")
    client._event_turn = TimeSlice(0.001)
    room = "!r:x"
    events = [
        {"type": "m.room.message", "sender": "@a:x", "event_id": f"$e{n}", "origin_server_ts": n,
         "content": {"msgtype": "m.text", "body": f"message {n}"}}
        for n in range(3000)
    ]
    sync = {"next_batch": "s1", "rooms": {"join": {room: {"timeline": {"events": events, "limited": False}}}}}
    response = SyncResponse.from_dict(sync)
    seen: list[int] = []
    ticks = 0
    stop = False

    async def other() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    client.add_event_callback(lambda room, event: seen.append(1), object)  # type: ignore[arg-type]
    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = ticks
    await client.receive_response(response)
    during = ticks - before
    stop = True
    await task
    await client.close()
    assert len(seen) == 3000, "every event handed on, in one receive_response"
    assert during >= 2, "the other task ran while nio went through the timeline"
