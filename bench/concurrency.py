"""Scenario ``concurrency``: the 50-room tail against ``max_concurrency``, to choose its default (issue 20, target 3).

The round trip's second part (``bench/roundtrip.py``: 50 rooms pinging at once, 6 pings each, measured at the member)
run for Ratchet with its shipped defaults except ``max_concurrency`` set to each of :data:`SETTINGS`, and for maubot,
the peer with the best 50-room tail. Every bot runs three times, interleaved, the order reversed each repetition (as
in the round trip); a short 1-room part (20 pings) is kept so that a setting that would cost the quiet case shows.

The default is the smallest setting whose 50-room p99 is at most maubot's over the whole spread: a larger one only
lets more handlers wait on the homeserver at once (see docs/performance.md, "Choosing max_concurrency").
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

from bench import roundtrip
from bench.common import QUICK
from bench.peers import MC_PREFIX

SETTINGS = (8, 16, 32, 64, 128)
BOTS = (*(f"{MC_PREFIX}{n}" for n in SETTINGS), "maubot")


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    result = asyncio.run(
        roundtrip._scenario(quick, BOTS, n_single=10 if quick else 20, variants=(), mine=BOTS[:-1])
    )
    result["settings"] = list(SETTINGS)
    result["choice"] = choose(result["summary"])
    return result


def choose(summary: dict[str, Any]) -> dict[str, Any]:
    """The smallest setting whose 50-room p99 ratio to maubot clears 1 over its whole spread (None if none does)."""
    verdicts = {}
    chosen = None
    for n in SETTINGS:
        ratio = summary.get("ratios", {}).get(f"multi p99 {MC_PREFIX}{n}/maubot")
        if not ratio or not ratio.get("n"):
            continue
        clears = ratio["n"] >= 3 and ratio["max"] <= 1.0
        verdicts[n] = {"median": ratio["median"], "max": ratio["max"], "clears": clears}
        if clears and chosen is None:
            chosen = n
    return {"chosen": chosen, "verdicts": verdicts}


if __name__ == "__main__":
    res = scenario()
    print(json.dumps(res, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    sys.exit(0)


def section(r: dict[str, Any]) -> list[str]:
    """The scenario's part of results.md."""
    c = r.get("concurrency") or {}
    if not c.get("summary"):
        return ["", "## Choosing max_concurrency", "", f"The scenario failed: {c['failed']}"] if c.get("failed") else []
    from bench.report import _num, _spread, _table

    p = c["params"]
    bots = c["summary"]["bots"]
    lines = ["", "## Choosing max_concurrency (the 50-room tail)", "",
             f"{p['rooms']} rooms pinging at once, {p['pings_per_room']} pings each (and {p['pings_1_room']} pings in "
             f"one room); Ratchet with its defaults but `max_concurrency` set as shown, and maubot; {p['repeats']} "
             "interleaved runs each (ms at the member; ratios to maubot paired by run).", ""]
    rows = []
    for name, b in bots.items():
        mine = name.startswith(MC_PREFIX)
        ratio = c["summary"]["ratios"].get(f"multi p99 {name}/maubot") if mine else None
        rows.append([b["label"], _spread(b["multi"]["p50"], 0), _spread(b["multi"]["p99"], 0),
                     _spread(ratio) if ratio else "", _spread(b["single"]["p50"], 1),
                     _spread(b["single"]["bot_cpu_ms_per_ping"], 2)])
    lines += _table(["bot", f"{p['rooms']} rooms p50", "p99", "p99 / maubot's", "1 room p50", "bot CPU ms/ping"],
                    rows)
    choice = c.get("choice") or {}
    chosen = choice.get("chosen")
    lines += ["", "Smallest setting whose 50-room p99 is at most maubot's in every run: "
              + (f"**{chosen}**." if chosen else "none.")]
    for n, v in (choice.get("verdicts") or {}).items():
        lines.append(f"- {n}: p99 / maubot's {_num(v['median'])} (worst run {_num(v['max'])})"
                     + (" — clears 1 in every run" if v["clears"] else ""))
    return lines
