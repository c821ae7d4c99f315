"""The loop-lag scenario (``bench/looplag.py``) in ``results.md`` and ``looplag.png`` (drawn by
``bench/plot_looplag.py`` in the plot venv, like ``bench.png``)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from bench.common import BENCH, RESULTS, log

LABELS = {
    "idle": "idle (1 s of nothing: the sampler's floor)",
    "upload": "100 MB attachment: read, encrypt, upload, send",
    "download": "100 MB attachment: download, verify, decrypt",
    "restore": "key backup restore, 50,000 keys",
    "startup": "start-up key work: tracker + first scan of 50,000 stored keys",
    "burst": "500-message burst, one sync batch, handled",
}
#: The figures of the code before this work, recorded by running the scenario on that commit (see docs).
MAIN_RECORD = RESULTS / "looplag-main.json"


def _num(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def _spread(s: dict[str, Any] | None, digits: int = 1) -> str:
    if not s or not s.get("n"):
        return "n/a"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _num(s["median"], digits)
    return f"{_num(s['median'], digits)} ({_num(s['min'], digits)}–{_num(s['max'], digits)})"


def verdict(item: dict[str, Any], p99_target: float, max_target: float, min_runs: int = 3) -> str:
    """"met" when every run's p99 and max are within the targets, "missed" when every run misses one of them."""
    p99, mx = item["p99_ms"], item["max_ms"]
    if p99["n"] < min_runs:
        return f"inconclusive ({p99['n']} run{'' if p99['n'] == 1 else 's'})"
    if p99["max"] <= p99_target and mx["max"] <= max_target:
        return "met"
    if p99["min"] > p99_target or mx["min"] > max_target:
        return "**missed**"
    return "inconclusive (spread straddles the target)"


def section(r: dict[str, Any]) -> list[str]:
    ll = r.get("looplag") or {}
    if ll.get("failed"):
        return ["", "## Event-loop lag under heavy work", "", f"The scenario failed: {ll['failed']}"]
    if not ll.get("summary"):
        return []
    p = ll["params"]
    out = [
        "",
        "## Event-loop lag under heavy work (issue 20, target 2)",
        "",
        f"A task on the bot's event loop wakes every {p['interval_ms']:g} ms and records how late it woke; each piece "
        f"of work runs alone and its samples are its figures (ms: median over {p['repeats']} run(s), spread "
        "min–max over the runs). *before*: the code paths this target changed patched back to what they were "
        "(`bench/looplag_before.py`); *after*: the code as it is; runs interleaved. *max without GC time*: the largest "
        "lag once the time CPython's full garbage collections took during that sample is taken off (a collection "
        "stops every thread). Target: p99 ≤ "
        f"{p['target_p99_ms']:g} ms and max ≤ {p['target_max_ms']:g} ms in every run.",
        "",
    ]
    rows = []
    for name, label in LABELS.items():
        for variant in ("before", "after"):
            item = (ll["summary"].get(variant) or {}).get(name)
            if not item:
                continue
            rows.append([label if variant == "before" or not (ll["summary"].get("before") or {}).get(name) else "",
                         variant, _spread(item["p50_ms"]), _spread(item["p99_ms"]), _spread(item["max_ms"]),
                         _spread(item["duration_s"], 2),
                         f"{_spread(item.get('gc2_n'), 0)}; {_spread(item.get('gc2_max_ms'), 0)}",
                         _spread(item.get("max_outside_gc_ms")),
                         "" if name == "idle" else verdict(item, p["target_p99_ms"], p["target_max_ms"])])
    out += ["| work | code | p50 | p99 | max | duration (s) | full GCs; longest (ms) | max without GC time | target |",
            "|---|---|---|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    if MAIN_RECORD.exists():
        rec = json.loads(MAIN_RECORD.read_text())
        s = (rec.get("summary") or {}).get("after") or {}
        if s:
            out += ["", f"Recorded first, on the unchanged code (commit {rec.get('code', {}).get('commit', '?')[:7]}, "
                    "`bench/results/looplag-main.json`): " + "; ".join(
                        f"{name} p99 {_spread(s[name]['p99_ms'])}, max {_spread(s[name]['max_ms'])} ms"
                        for name in LABELS if name in s) + "."]
    gil = ll.get("gil") or {}
    if gil:
        out += ["", "Which heavy calls let go of the GIL (the call in a thread; the main thread's longest pause while "
                "it ran):", "", "| call | alone (ms) | main thread's longest pause (ms) | releases the GIL |",
                "|---|---|---|---|"]
        for name, g in gil.items():
            answer = {True: "yes", False: "**no**", None: "n/a (short calls: handed over at the switch interval)"}
            out.append(f"| `{name}` | {_num(g['alone_ms'])} | {_num(g['longest_gap_ms'])} | "
                       f"{answer[g['releases_gil']]} |")
    for name, why in (ll.get("errors") or {}).items():
        out.append(f"- {name}: {why[:500]}")
    return out


def write_looplag_plot(json_path: Path, png_path: Path) -> Path | None:
    from bench.report import _plot_python

    python = _plot_python()
    if python is None:
        return None
    proc = subprocess.run([str(python), str(BENCH / "plot_looplag.py"), str(json_path), str(png_path)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        log(f"loop-lag plot failed: {proc.stderr[-1500:]}")
        return None
    return png_path
