"""Scenario 4: sustained load across 50 rooms, Ratchet vs the bare-nio echo bot.

The member sends ``!ping`` open-loop (without waiting for answers) at a fixed total rate spread evenly over the 50
rooms, for a few seconds per step, and matches each pong to its ping through the reply relation (both bots answer
with ``m.in_reply_to``). Stepping stops once the p95 latency is more than twice that of
the first (lightest) step, or fewer than 95% of the pings were answered, or after the last step (the rate grows by
half per step). A bot's sustained throughput is the highest rate at which neither happened, as answered messages
per second.

The bot process's CPU time per answered message is taken at the highest rate both bots sustained (the same offered
load for both). Ratchet runs with its shipped defaults (tofu trust, cross-signing, key backup); three runs of each bot
in full mode, the order alternating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from nio import RoomSendResponse

from bench.common import CACHE, QUICK, log, percentile, proc_cpu_seconds, ratio_summary, summary
from bench.homeserver import start_server
from bench.member import BenchMember
from bench.peers import prepare_bot

BOTS = ("ratchet", "nio")


async def _step(member: BenchMember, rooms: list[str], rate: float, seconds: float, drain: float,
                pid: int) -> dict[str, Any]:
    member.replies.clear()
    sent: dict[str, float] = {}
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def send(room: str) -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            resp = await member.client.room_send(
                room, "m.room.message", {"msgtype": "m.text", "body": "!ping"}, ignore_unverified_devices=True
            )
        except Exception:
            errors += 1
            return
        if isinstance(resp, RoomSendResponse):
            sent[resp.event_id] = start
        else:
            errors += 1

    total = max(1, int(rate * seconds))
    interval = 1.0 / rate
    cpu0 = proc_cpu_seconds(pid)
    t0 = time.perf_counter()
    for i in range(total):
        target = t0 + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(rooms[i % len(rooms)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(list(tasks), timeout=drain)
    deadline = time.perf_counter() + drain
    while time.perf_counter() < deadline and any(e not in member.replies for e in sent):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu_seconds(pid) - cpu0
    lat = [(member.replies[e] - s) * 1000 for e, s in sent.items() if e in member.replies]
    answered = len(lat)
    return {
        "rate": rate,
        "offered": total,
        "sent": len(sent),
        "send_errors": errors,
        "answered": answered,
        "answered_frac": answered / total,
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "handled_per_s": answered / seconds,
        "bot_cpu_ms_per_msg": 1000 * cpu / answered if answered else float("nan"),
        "elapsed_s": elapsed,
    }


async def _run_bot(name: str, base: Path, server: Any, member: BenchMember, rates: list[float], seconds: float,
                   drain: float) -> dict[str, Any]:
    user = server.register_user(f"load-{name}-{int(time.time() * 1000) % 100000}", "load-bot-password-123")
    rooms = await member.create_rooms(50, user.user_id)
    for room in rooms:
        server.join(user, room)
    await member.wait_rooms(rooms, user.user_id)
    setup = prepare_bot(name, base / name, homeserver=server.url, user_id=user.user_id, password=user.password,
                        rooms=rooms, plugin="benchping")
    run = setup.start(base / name / "bot.log")
    try:
        answered = await member.warm_up(rooms, user.user_id, timeout=120)
        if answered < len(rooms):
            raise RuntimeError(f"{name} answered in {answered} of {len(rooms)} rooms: {run.log_tail(10)}")
        steps: list[dict[str, Any]] = []
        base_p95 = None
        for rate in rates:
            res = await _step(member, rooms, rate, seconds, drain, run.proc.pid)
            steps.append(res)
            log(f"load {name} {rate:g} msg/s: answered {res['answered']}/{res['offered']}, "
                f"p50 {res['p50']:.0f} p95 {res['p95']:.0f} ms, {res['bot_cpu_ms_per_msg']:.2f} ms CPU/msg")
            if base_p95 is None:
                base_p95 = res["p95"]
            res["ok"] = res["answered_frac"] >= 0.95 and res["p95"] <= 2 * base_p95
            if not res["ok"]:
                break
            await asyncio.sleep(1.0)
        sustained = [s for s in steps if s.get("ok")]
        return {
            "steps": steps,
            "baseline_p95_ms": base_p95,
            "sustained_rate": max((s["rate"] for s in sustained), default=0.0),
            "sustained_handled_per_s": max((s["handled_per_s"] for s in sustained), default=0.0),
        }
    finally:
        run.stop()


async def _scenario(quick: bool) -> dict[str, Any]:
    # the rate grows by half each step (doubling jumps straight past the knee on this machine)
    rates = [4.0, 8.0, 12.0, 18.0] if quick else [4.0, 6.0, 9.0, 13.5, 20.0, 30.0, 45.0, 67.5]
    seconds = 3.0 if quick else 6.0
    drain = 8.0
    repeats = 1 if quick else 3  # Ratchet (shipped defaults) and bare nio, alternating which goes first
    base = Path(tempfile.mkdtemp(prefix="ratchet-bench-load-", dir=CACHE))
    server = start_server(base / "synapse")
    member = None
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BOTS}
    errors: dict[str, str] = {}
    try:
        mu = server.register_user("loadmember", "loadmember-password-123")
        member = BenchMember(server.url, mu.user_id, mu.password, base / "member")
        member.track_replies = True
        await member.start()
        for rep in range(repeats):
            for name in BOTS if rep % 2 == 0 else tuple(reversed(BOTS)):
                try:
                    runs[name].append(await _run_bot(name, base / f"{name}-{rep}", server, member, rates, seconds,
                                                     drain))
                except Exception as exc:
                    errors[name] = str(exc)[:1500]
                    log(f"load {name}: {str(exc)[:300]}")
    finally:
        if member is not None:
            await member.close()
        server.stop()
        with contextlib.suppress(Exception):
            shutil.rmtree(base, ignore_errors=True)
    return _summarize(runs, errors, rates, seconds)


def _summarize(runs: dict[str, list[dict[str, Any]]], errors: dict[str, str], rates: list[float],
               seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"params": {"rates": rates, "seconds_per_step": seconds}, "runs": runs, "errors": errors}
    out["sustained_handled_per_s"] = {b: summary([r["sustained_handled_per_s"] for r in v]) for b, v in runs.items()}
    out["sustained_rate"] = {b: summary([r["sustained_rate"] for r in v]) for b, v in runs.items()}
    # CPU per message at the highest rate every run of both bots sustained
    common = [rate for rate in rates if all(
        any(s["rate"] == rate and s.get("ok") for s in r["steps"]) for v in runs.values() for r in v
    )] if all(runs.values()) else []
    cpu_rate = max(common) if common else None
    out["cpu_rate"] = cpu_rate
    cpu: dict[str, list[float]] = {}
    for b, v in runs.items():
        cpu[b] = [s["bot_cpu_ms_per_msg"] for r in v for s in r["steps"] if s["rate"] == cpu_rate]
    out["bot_cpu_ms_per_msg"] = {b: summary(c) for b, c in cpu.items()}
    if runs.get("ratchet") and runs.get("nio"):
        out["ratios"] = {
            "throughput ratchet/nio": ratio_summary(
                [r["sustained_handled_per_s"] for r in runs["ratchet"]],
                [r["sustained_handled_per_s"] for r in runs["nio"]],
            ),
            "CPU per message ratchet/nio": ratio_summary(cpu["ratchet"], cpu["nio"]),
        }
    return out


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    return asyncio.run(_scenario(quick))


if __name__ == "__main__":
    res = scenario()
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, default=str))
