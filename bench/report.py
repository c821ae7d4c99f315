"""Turns ``results.json`` into ``results.md`` (the tables) and ``bench.png`` (the plot, drawn by ``bench/plot.py`` in
its own venv with matplotlib, ``bench/.venvs/plot``)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

from bench.common import BENCH, VENVS, log

PLOT_REQUIREMENTS = ["matplotlib>=3.8"]


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _spread(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s or not s.get("n"):
        return "n/a"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{_num(s['median'], digits)}"
    return f"{_num(s['median'], digits)} ({_num(s['min'], digits)}–{_num(s['max'], digits)})"


def _verdict(value: float | None, target: float, *, below: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    ok = value <= target if below else value >= target
    return "met" if ok else "**missed**"


def _target_rows(r: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    off = r.get("offline") or {}
    if "ratios" in off:
        ra = off["ratios"]
        rows.append(["1 offline", "CPU per event, Ratchet / bare nio", _spread(ra["ratchet/nio"], 3), "≤ 0.4",
                     _verdict(ra["ratchet/nio"]["median"], 0.4)])
        rows.append(["1 offline", "CPU per event, Ratchet / vodozemac floor", _spread(ra["ratchet/floor"]), "≤ 2",
                     _verdict(ra["ratchet/floor"]["median"], 2.0)])
    rt = (r.get("roundtrip") or {}).get("summary") or {}
    ratios = rt.get("ratios") or {}
    n_rooms = ((r.get("roundtrip") or {}).get("params") or {}).get("rooms", 50)
    for kind, label in (("single", "1 room"), ("multi", f"{n_rooms} rooms")):
        for key, target in (("p50", 1.05), ("p99", 1.2)):
            s = ratios.get(f"{kind} {key} ratchet/nio")
            if s:
                rows.append(["2 round trip", f"{label} {key}, Ratchet / bare-nio echo", _spread(s), f"≤ {target}",
                             _verdict(s["median"], target)])
        for other in (rt.get("bots") or {}):
            if other in ("ratchet", "nio") or other.startswith("ratchet-"):
                continue
            for key in ("p50", "p99"):
                s = ratios.get(f"{kind} {key} ratchet/{other}")
                if s:
                    label_other = rt["bots"][other]["label"]
                    rows.append(["2 round trip", f"{label} {key}, Ratchet / {label_other}", _spread(s), "< 1",
                                 _verdict(s["median"], 0.999999)])
    scales = (r.get("startup") or {}).get("scales", [])
    for scale in scales:
        name = f"{scale['rooms']} rooms, {scale['sessions']:,} sessions"
        if scale is not scales[-1] or scale["sessions"] < 50_000:
            s = scale["ratios"]["startup ratchet/nio"]
            m = scale["ratios"]["peak RSS ratchet/nio"]
            rows.append(["3 start-up", f"{name} (scaling reference; the targets are for 50,000 sessions): start-up, "
                         "peak RSS, Ratchet / bare nio", f"{_spread(s)}, {_spread(m)}", "", ""])
            continue
        s = scale["ratios"]["startup ratchet/nio"]
        rows.append(["3 start-up", f"{name}: time to first handled message, Ratchet / bare nio", _spread(s),
                     "≤ 0.25", _verdict(s["median"], 0.25)])
        abs_s = scale["startup_s"].get("ratchet")
        rows.append(["3 start-up", f"{name}: Ratchet's time to first handled message (s)", _spread(abs_s),
                     "< 3 s", _verdict(abs_s["median"] if abs_s else None, 3.0)])
        s = scale["ratios"]["peak RSS ratchet/nio"]
        rows.append(["3 start-up", f"{name}: peak RSS, Ratchet / bare nio", _spread(s), "≤ 0.6",
                     _verdict(s["median"], 0.6)])
    ld = (r.get("load") or {}).get("ratios") or {}
    if ld:
        s = ld["throughput ratchet/nio"]
        rows.append(["4 load", "sustained messages/s, Ratchet / bare-nio echo", _spread(s), "≥ 1",
                     _verdict(s["median"], 1.0, below=False)])
        s = ld["CPU per message ratchet/nio"]
        rows.append(["4 load", f"bot CPU per message at {_num(r['load'].get('cpu_rate'), 0)} msg/s, Ratchet / "
                     "bare nio", _spread(s), "≤ 0.5", _verdict(s["median"], 0.5)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def write_report(r: dict[str, Any], path: Path) -> Path:
    env = r.get("environment", {})
    lines = [
        "# Ratchet benchmarks",
        "",
        f"Run: {env.get('date')}, mode **{env.get('mode')}**, {env.get('machine')}; Python {env.get('python')}, "
        f"matrix-nio {env.get('matrix-nio')}, vodozemac {env.get('vodozemac')}, Synapse {env.get('synapse')}. "
        "Generated by `make bench` (see docs/performance.md for the method). Every ratio compares measurements "
        "taken side by side in this run: the median, and in brackets the spread (min–max) over the repeated runs.",
        "",
        "## Ratchet against the targets",
        "",
    ]
    lines += _table(["scenario", "figure", "ratio", "target", ""], _target_rows(r))
    off = r.get("offline") or {}
    if "us_per_event" in off:
        lines += ["", "## 1. CPU per Megolm-encrypted event, offline",
                  "", f"{off['meta']['events']} events in {off['meta']['rooms']} rooms, one sync batch; "
                  f"{off['processes']} processes × {off['passes']} passes per variant.", ""]
        names = {
            "floor": "vodozemac decrypt + json (floor)",
            "ratchet": "Ratchet, full pipeline to a no-op command",
            "ratchet-before": "Ratchet without bot.matrix.schemas / lazy store (before)",
            "nio": "bare nio: from_dict + receive_response + no-op callback",
        }
        rows = [[names[v], _spread(off["us_per_event"][v], 1)] for v in ("floor", "ratchet", "ratchet-before", "nio")]
        lines += _table(["variant", "µs CPU per event"], rows)
        ra = off["ratios"]
        lines += ["", f"Before/after: Ratchet before the fast path cost {_spread(ra['ratchet-before/nio'])}× bare nio "
                  f"per event; after, {_spread(ra['ratchet/nio'], 3)}× (Ratchet after / before: "
                  f"{_spread(ra['ratchet/ratchet-before'], 3)})."]
    rt = r.get("roundtrip") or {}
    if rt.get("summary"):
        p = rt["params"]
        lines += ["", "## 2. Round trip `!ping` → `pong` through Synapse (ms, at the member)", "",
                  f"1 room: {p['pings_1_room']} pings one after another; {p['rooms']} rooms: "
                  f"{p['pings_per_room']} pings each, all rooms at once. Ratchet and bare nio: {p['repeats']} runs "
                  "(interleaved), peers 1 run.", ""]
        rows = []
        for b in rt["summary"]["bots"].values():
            rows.append([b["label"], _spread(b["single"]["p50"], 1), _spread(b["single"]["p95"], 1),
                         _spread(b["single"]["p99"], 1), _spread(b["multi"]["p50"], 1),
                         _spread(b["multi"]["p95"], 1), _spread(b["multi"]["p99"], 1),
                         _spread(b["single"]["bot_cpu_ms_per_ping"], 2),
                         f"{_num(b['single']['failed']['median'], 0)}/{_num(b['multi']['failed']['median'], 0)}"])
        lines += _table(["bot", "1 room p50", "p95", "p99", f"{p['rooms']} rooms p50", "p95", "p99",
                         "bot CPU ms/ping (1 room)", "lost"], rows)
        tuned = [(k, v) for k, v in rt["summary"].get("ratios", {}).items() if " ratchet-mc64/" in k]
        if tuned:
            lines += ["", "Ratchet with `max_concurrency: 64` (default 8; one run) against the others, same run:", ""]
            rows = []
            for key, value in tuned:
                kind, pct, pair = key.split(" ", 2)
                other = pair.split("/", 1)[1]
                label = rt["summary"]["bots"].get(other, {}).get("label", other)
                room_label = "1 room" if kind == "single" else f"{p['rooms']} rooms"
                rows.append([f"{room_label} {pct}", label, _spread(value)])
            lines += _table(["figure", "vs", "ratio"], rows)
        if rt.get("unavailable"):
            lines += ["", "Not measured:", ""]
            lines += [f"- **{n}**: {why}" for n, why in rt["unavailable"].items()]
    elif rt.get("failed"):
        lines += ["", "## 2. Round trip", "", f"The scenario failed: {rt['failed']}"]
    st = r.get("startup") or {}
    if st.get("scales"):
        lines += ["", "## 3. Start-up with a large store", ""]
        rows = []
        for scale in st["scales"]:
            for name in ("ratchet", "nio", "ratchet-before"):
                if name not in scale["runs"]:
                    continue
                rows.append([f"{scale['rooms']} rooms, {scale['sessions']:,} sessions", name,
                             _spread(scale["startup_s"].get(name)), _spread(scale["peak_rss_mb"].get(name), 0),
                             _spread(scale["cpu_s"].get(name))])
        lines += _table(["store", "bot", "process start → first handled message (s)", "peak RSS (MiB)",
                         "CPU until then (s)"], rows)
        created = [f"{s['rooms']} rooms in {_num(s.get('rooms_created_s'), 0)} s" for s in st["scales"]]
        lines += ["", f"Creating the rooms on Synapse (once, cached): {', '.join(created)}."]
        for scale in st["scales"]:
            for name, why in (scale.get("errors") or {}).items():
                lines.append(f"- {scale['rooms']} rooms, {name}: {why[:500]}")
    ld = r.get("load") or {}
    if ld.get("runs"):
        lines += ["", "## 4. Sustained load across 50 rooms", ""]
        rows = []
        for name, runs in ld["runs"].items():
            for i, run in enumerate(runs):
                steps = ", ".join(
                    f"{s['rate']:g}/s: p95 {_num(s['p95'], 0)} ms{'' if s.get('ok') else ' ✗'}" for s in run["steps"]
                )
                rows.append([name, str(i + 1), _num(run["sustained_handled_per_s"], 1), steps])
        lines += _table(["bot", "run", "sustained msg/s", "steps (✗: p95 > 2× the first step, or < 95% answered)"],
                        rows)
        cpu = ld.get("bot_cpu_ms_per_msg") or {}
        lines += ["", "Bot CPU per message at " + _num(ld.get("cpu_rate"), 0) + " msg/s: "
                  + ", ".join(f"{n} {_spread(s)} ms" for n, s in cpu.items()) + "."]
        for name, why in (ld.get("errors") or {}).items():
            lines.append(f"- {name}: {why[:500]}")
    timings = r.get("timings_s") or {}
    if timings:
        lines += ["", "Wall time of this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "."]
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot_python() -> Path | None:
    from bench.peers import base_python

    venv = VENVS / "plot"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    if stamp.exists() and python.exists():
        return python
    log(f"installing matplotlib into {venv}")
    try:
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *PLOT_REQUIREMENTS], check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"cannot install matplotlib: {exc}")
        return None
    stamp.write_text("ok")
    return python


def write_plot(json_path: Path, png_path: Path) -> Path | None:
    python = _plot_python()
    if python is None:
        return None
    proc = subprocess.run([str(python), str(BENCH / "plot.py"), str(json_path), str(png_path)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        log(f"plot failed: {proc.stderr[-1500:]}")
        return None
    return png_path
