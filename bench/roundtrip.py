"""Scenario 2: an encrypted ``!ping`` -> ``pong`` round trip through a local Synapse, measured at a member client.

For each bot (Ratchet, the bare-nio echo bot, and the peers that install and run here) the member creates its own
encrypted rooms, the bot's account joins them, the bot process starts, and every room is pinged until the bot
answers (keys exchanged). Then:

* **1 room**: N pings one after the other in one room;
* **50 rooms**: 50 rooms pinging concurrently, M pings each (one after the other within a room).

``ratchet`` runs with Ratchet's shipped defaults (``e2ee``: tofu trust, cross-signing, key backup), ``ratchet-peer``
with the peers' settings (``trust: all``, neither of the other two). Other values of ``max_concurrency`` are
``bench/concurrency.py``'s subject.

The latency of a ping is from just before the member's ``room_send`` to the moment its sync delivers the decrypted
pong. Every bot runs three times (once in quick mode), interleaved: each repetition runs all bots, in the opposite
order of the previous one, so that drift of the machine or of Synapse's database affects all alike and no bot always
runs first. The bot process's CPU time over the measured pings is recorded too.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, QUICK, log, percentile, proc_cpu_seconds, ratio_summary, summary
from bench.homeserver import start_server
from bench.member import BenchMember
from bench.peers import label, prepare_bot

ALL_BOTS = ("ratchet", "nio", "ratchet-peer", "niobot", "smbl", "maubot", "opsdroid")
#: Bots run once, after the interleaved repetitions of the others, and shown apart (none by default;
#: ``bench/concurrency.py`` passes its own).
VARIANTS: tuple[str, ...] = ()


def _pcts(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99), "n": len(ms)}


async def _measure(member: BenchMember, bot_user: str, rooms: list[str], n_single: int, per_room: int,
                   proc_pid: int) -> dict[str, Any]:
    single_room, multi_rooms = rooms[0], rooms[1:]
    cpu0 = proc_cpu_seconds(proc_pid)
    single: list[float] = []
    fails = 0
    for _ in range(n_single):
        lat = await member.ping(single_room, bot_user)
        if lat is None:
            fails += 1
        else:
            single.append(lat)
    cpu1 = proc_cpu_seconds(proc_pid)

    async def room_loop(room: str) -> tuple[list[float], int]:
        out, bad = [], 0
        for _ in range(per_room):
            lat = await member.ping(room, bot_user)
            if lat is None:
                bad += 1
            else:
                out.append(lat)
        return out, bad

    t0 = time.perf_counter()
    results = await asyncio.gather(*(room_loop(r) for r in multi_rooms))
    wall = time.perf_counter() - t0
    cpu2 = proc_cpu_seconds(proc_pid)
    multi = [lat for out, _ in results for lat in out]
    multi_fails = sum(bad for _, bad in results)
    return {
        "single": _pcts(single) | {"failed": fails, "bot_cpu_ms_per_ping": 1000 * (cpu1 - cpu0) / max(1, len(single))},
        "multi": _pcts(multi)
        | {
            "failed": multi_fails,
            "rooms": len(multi_rooms),
            "wall_s": wall,
            "bot_cpu_ms_per_ping": 1000 * (cpu2 - cpu1) / max(1, len(multi)),
        },
    }


async def _scenario(
    quick: bool,
    bots: tuple[str, ...],
    *,
    n_single: int | None = None,
    per_room: int | None = None,
    variants: tuple[str, ...] = VARIANTS,
    mine: tuple[str, ...] = ("ratchet", "ratchet-peer"),
) -> dict[str, Any]:
    """Run the bots; ``variants`` run once, after the interleaved repetitions of the others; ratios are computed
    for the bots in ``mine`` and ``variants`` against the rest."""
    # full mode: 3 runs of every bot; 100 pings in 1 room and 6 per room keep the scenario near 12 minutes
    n_single = n_single if n_single is not None else (30 if quick else 100)
    n_rooms = 10 if quick else 50
    per_room = per_room if per_room is not None else (3 if quick else 6)
    repeats = 1 if quick else 3
    base = Path(tempfile.mkdtemp(prefix="ratchet-bench-rt-", dir=CACHE if CACHE.exists() else None))
    result: dict[str, Any] = {
        "params": {"pings_1_room": n_single, "rooms": n_rooms, "pings_per_room": per_room, "repeats": repeats},
        "runs": {},
        "unavailable": {},
    }
    server = start_server(base / "synapse")
    member = None
    try:
        member_user = server.register_user("member", "member-password-123")
        member = BenchMember(server.url, member_user.user_id, member_user.password, base / "member")
        await member.start()
        setups: dict[str, Any] = {}
        rooms: dict[str, list[str]] = {}
        users: dict[str, str] = {}
        for name in bots:
            user = server.register_user(f"bot-{name}", f"bot-{name}-password-123")
            users[name] = user.user_id
            rooms[name] = await member.create_rooms(1 + n_rooms, user.user_id)
            for room in rooms[name]:
                server.join(user, room)
            try:
                setups[name] = prepare_bot(
                    name, base / name, homeserver=server.url, user_id=user.user_id, password=user.password,
                    rooms=rooms[name],
                )
            except Exception as exc:
                result["unavailable"][name] = f"cannot install/configure: {exc}"
                log(f"roundtrip: {name} unavailable: {exc}")
        for name in setups:
            await member.wait_rooms(rooms[name], users[name])
        schedule: list[str] = []
        for rep in range(repeats):  # alternating order; the single-setting variants once, last
            names = [n for n in setups if n not in variants]
            schedule += names if rep % 2 == 0 else names[::-1]
        schedule += [n for n in setups if n in variants]
        for name in schedule:
            if name in result["unavailable"]:
                continue
            run = setups[name].start(base / name / "bot.log")
            try:
                answered = await member.warm_up(rooms[name], users[name], timeout=60 if quick else 120)
                if not run.alive():
                    raise RuntimeError(f"exited with {run.proc.returncode}: {run.log_tail()}")
                if answered < len(rooms[name]):
                    raise RuntimeError(
                        f"answered in {answered} of {len(rooms[name])} rooms after warm-up; log: {run.log_tail(15)}"
                    )
                measured = await _measure(member, users[name], rooms[name], n_single, per_room, run.proc.pid)
                result["runs"].setdefault(name, []).append(measured)
                s, m = measured["single"], measured["multi"]
                log(
                    f"roundtrip {name}: 1 room p50 {s['p50']:.1f} p99 {s['p99']:.1f} ms ({s['failed']} lost); "
                    f"{m['rooms']} rooms p50 {m['p50']:.1f} p99 {m['p99']:.1f} ms ({m['failed']} lost)"
                )
            except Exception as exc:
                why = str(exc)
                if len(why) > 1500:
                    why = why[:1500] + " ..."
                result["unavailable"].setdefault(name, f"does not run here: {why}")
                log(f"roundtrip: {name} failed: {why[:300]}")
            finally:
                run.stop()
    finally:
        if member is not None:
            await member.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    result["summary"] = _summarize(result["runs"], mine=(*mine, *variants), variants=variants)
    return result


def _summarize(
    runs: dict[str, list[dict[str, Any]]],
    *,
    mine: tuple[str, ...] = ("ratchet", "ratchet-peer", *VARIANTS),
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    out: dict[str, Any] = {"bots": {}, "ratios": {}}
    for name, reps in runs.items():
        entry = {}
        for kind in ("single", "multi"):
            entry[kind] = {
                key: summary([r[kind][key] for r in reps])
                for key in ("p50", "p95", "p99", "failed", "bot_cpu_ms_per_ping")
            }
        entry["label"] = label(name)
        out["bots"][name] = entry
    for this in mine:
        if this not in runs:
            continue
        for other in runs:
            if other == this or other in variants or (this != "ratchet" and other.startswith("ratchet")):
                continue
            for kind in ("single", "multi"):
                for key in ("p50", "p99"):
                    out["ratios"][f"{kind} {key} {this}/{other}"] = ratio_summary(
                        [r[kind][key] for r in runs[this]], [r[kind][key] for r in runs[other]]
                    )
    return out


def scenario(quick: bool = QUICK, bots: tuple[str, ...] = ALL_BOTS) -> dict[str, Any]:
    return asyncio.run(_scenario(quick, bots))


if __name__ == "__main__":
    names = tuple(sys.argv[1:]) or ALL_BOTS
    res = scenario(bots=names)
    print(json.dumps(res["summary"], default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
