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
    while time.perf_counter() - start < 0.05:  # 50 ms of "work" in small items
        sum(range(2000))
        if turn.due():
            pauses += 1
            await turn.pause()
    stop.set()
    await task
    during = [t for t in ticks if start <= t <= start + 0.05]
    assert pauses >= 10 and len(during) >= pauses, "the other task ran at every pause"


async def test_a_slice_not_used_up_does_not_pause() -> None:
    turn = TimeSlice(60)
    assert not turn.due()
    await turn.pause()
    assert not turn.due()
