"""The dispatcher without a network: lane order, concurrency, timeouts, isolation, shutdown."""

import asyncio

import pytest

from bot.plugin.dispatch import Dispatcher


async def test_lane_order_is_kept_and_lanes_run_concurrently():
    d = Dispatcher(max_concurrency=4, timeout=5)
    seen: list[tuple[str, int]] = []

    def job(lane: str, i: int, delay: float):
        async def run():
            await asyncio.sleep(delay)
            seen.append((lane, i))
        return run

    futs = [d.submit(("r1", "p"), job("r1", i, 0.02 * (3 - i)), "x") for i in range(3)]
    futs += [d.submit(("r2", "p"), job("r2", i, 0.001), "x") for i in range(3)]
    outcomes = await asyncio.gather(*futs)
    assert all(o.status == "ok" for o in outcomes)
    assert [i for lane, i in seen if lane == "r1"] == [0, 1, 2]
    # r2 was not held up behind r1's slow jobs
    assert seen.index(("r2", 2)) < seen.index(("r1", 2))


async def test_timeout_and_exception_are_contained():
    errors = []
    d = Dispatcher(max_concurrency=2, timeout=0.2, on_error=lambda lane, label, o: errors.append(o.status))

    async def hang():
        await asyncio.sleep(60)

    async def boom():
        raise RuntimeError("plugin bug")

    async def fine():
        return None

    results = await asyncio.gather(
        d.submit(("r", "hang"), hang, "hang"),
        d.submit(("r", "boom"), boom, "boom"),
        d.submit(("r", "fine"), fine, "fine"),
    )
    assert [o.status for o in results] == ["timeout", "error", "ok"]
    assert sorted(errors) == ["error", "timeout"]
    # the lane that timed out keeps working
    assert (await d.submit(("r", "hang"), fine, "again")).status == "ok"


async def test_concurrency_bound():
    d = Dispatcher(max_concurrency=2, timeout=5)
    running = 0
    peak = 0

    async def run():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    await asyncio.gather(*(d.submit((f"room{i}", "p"), run, "x") for i in range(10)))
    assert peak == 2


@pytest.mark.parametrize("grace", [0.05])
async def test_close_cancels_and_resolves(grace):
    d = Dispatcher(max_concurrency=1, timeout=30)

    async def hang():
        await asyncio.sleep(60)

    f1 = d.submit(("r", "p"), hang, "x")
    f2 = d.submit(("r", "p"), hang, "y")
    assert not await d.drain(grace)
    await d.close()
    assert (await f1).status == "cancelled"
    assert (await f2).status == "cancelled"


async def test_on_done_runs_once_with_the_outcome_before_the_future_resolves():
    """``on_done`` replaces done-callbacks (issue 20): called in the step the job ends, for every way a job ends."""
    d = Dispatcher(max_concurrency=2, timeout=0.2)
    seen: list[tuple[str, str, bool]] = []
    futures: dict[str, asyncio.Future] = {}

    def on_done(name: str):
        def done(outcome):
            seen.append((name, outcome.status, futures[name].done()))
        return done

    async def fine():
        return None

    async def boom():
        raise RuntimeError("plugin bug")

    async def hang():
        await asyncio.sleep(60)

    async def bad_callback_job():
        return None

    for name, run in (("ok", fine), ("error", boom), ("timeout", hang)):
        futures[name] = d.submit(("r", name), run, name, on_done=on_done(name))

    def raising(outcome):
        raise ValueError("callback bug")

    futures["raising"] = d.submit(("r", "x"), bad_callback_job, "x", on_done=raising)
    futures["queued"] = d.submit(("r", "timeout"), fine, "queued", on_done=on_done("queued"))
    outcomes = await asyncio.gather(futures["ok"], futures["error"], futures["timeout"], futures["raising"])
    assert [o.status for o in outcomes] == ["ok", "error", "timeout", "ok"], "a failing callback changes nothing"
    assert ("ok", "ok", False) in seen and ("error", "error", False) in seen and ("timeout", "timeout", False) in seen
    await d.close()
    await asyncio.sleep(0)
    statuses = {name: status for name, status, _ in seen}
    assert statuses["queued"] in ("ok", "cancelled")
    assert len(seen) == 4, "once per job"
    late: list[str] = []
    fut = d.submit(("r", "after"), fine, "after", on_done=lambda o: late.append(o.status))
    assert fut.done() and fut.result().status == "cancelled" and late == ["cancelled"]
