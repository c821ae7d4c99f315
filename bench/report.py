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


#: A verdict needs at least this many paired runs; with fewer the figure is shown, the verdict is "inconclusive".
MIN_RUNS = 3


def _verdict(s: dict[str, Any] | None, target: float, *, below: bool = True) -> str:
    """"met" when the whole spread (min–max over the runs) is on the right side of the target, "missed" when all of it
    is on the wrong side, "inconclusive" when the spread straddles the target or there are fewer than MIN_RUNS runs."""
    if not s or not s.get("n") or s.get("median") is None or math.isnan(s["median"]):
        return "not measured"
    if s["n"] < MIN_RUNS:
        return f"inconclusive ({s['n']} run{'' if s['n'] == 1 else 's'})"
    lo, hi = s["min"], s["max"]
    good = hi <= target if below else lo >= target
    bad = lo > target if below else hi < target
    if good:
        return "met"
    if bad:
        return "**missed**"
    return "inconclusive (spread straddles the target)"


def _target_rows(r: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    off = r.get("offline") or {}
    if "ratios" in off:
        ra = off["ratios"]
        for mine, label in (("ratchet", "Ratchet (defaults)"), ("ratchet-peer", "Ratchet (peers' settings)")):
            if f"{mine}/nio" not in ra:
                continue
            rows.append(["1 offline", f"CPU per event, {label} / bare nio", _spread(ra[f"{mine}/nio"], 3), "≤ 0.4",
                         _verdict(ra[f"{mine}/nio"], 0.4)])
            rows.append(["1 offline", f"CPU per event, {label} / vodozemac floor", _spread(ra[f"{mine}/floor"]),
                         "≤ 1.6", _verdict(ra[f"{mine}/floor"], 1.6)])
        if "ratchet/ratchet-peer" in ra:
            rows.append(["1 offline", "CPU per event, defaults / peers' settings (the tofu trust check)",
                         _spread(ra["ratchet/ratchet-peer"], 3), "", ""])
    rt = (r.get("roundtrip") or {}).get("summary") or {}
    ratios = rt.get("ratios") or {}
    n_rooms = ((r.get("roundtrip") or {}).get("params") or {}).get("rooms", 50)
    for kind, label in (("single", "1 room"), ("multi", f"{n_rooms} rooms")):
        for mine, mine_label in (("ratchet", "Ratchet (defaults)"), ("ratchet-peer", "Ratchet (peers' settings)")):
            for key, target in (("p50", 1.05), ("p99", 1.2)):
                s = ratios.get(f"{kind} {key} {mine}/nio")
                if s:
                    rows.append(["2 round trip", f"{label} {key}, {mine_label} / bare-nio echo", _spread(s),
                                 f"≤ {target}", _verdict(s, target)])
        for other in (rt.get("bots") or {}):
            if other in ("ratchet", "nio") or other.startswith("ratchet-"):
                continue
            for key in ("p50", "p99"):
                s = ratios.get(f"{kind} {key} ratchet/{other}")
                if s:
                    label_other = rt["bots"][other]["label"]
                    rows.append(["2 round trip", f"{label} {key}, Ratchet (defaults) / {label_other}", _spread(s),
                                 "< 1", _verdict(s, 0.999999)])
        for key in ("p50", "p99"):
            s = ratios.get(f"{kind} {key} ratchet/ratchet-peer")
            if s:
                rows.append(["2 round trip", f"{label} {key}, defaults / peers' settings", _spread(s), "", ""])
    for scale in (r.get("startup") or {}).get("scales", []):
        name = f"{scale['rooms']} rooms, {scale['sessions']:,} sessions"
        ratios_ = scale["ratios"]
        # each scale says which targets it has (bench/startup.py); older results: the 50,000-session ones
        targets = scale.get("targets")
        if targets is None:
            targets = {"startup_s": 3.0, "startup_ratio": 0.25, "peak_rss_ratio": 0.6} if scale["sessions"] >= 50_000 \
                else {}
        for mine, mine_label in (("ratchet", "Ratchet (defaults)"), ("ratchet-peer", "Ratchet (peers' settings)")):
            s = ratios_.get(f"startup {mine}/nio")
            m = ratios_.get(f"peak RSS {mine}/nio")
            if not s:
                continue
            if not targets:
                if m:
                    rows.append(["3 start-up", f"{name} (scaling reference, no target): start-up, peak RSS, "
                                 f"{mine_label} / bare nio", f"{_spread(s)}, {_spread(m)}", "", ""])
                continue
            target = targets.get("startup_ratio")
            rows.append(["3 start-up", f"{name}: time to first handled message, {mine_label} / bare nio", _spread(s),
                         f"≤ {target}" if target else "", _verdict(s, target) if target else ""])
            own = ratios_.get(f"startup without Synapse's sync {mine}/nio")
            if own:
                rows.append(["3 start-up", f"{name}: the same without Synapse's time for the first sync, {mine_label}"
                             " / bare nio", _spread(own), "", ""])
            if "startup_s" in targets:
                abs_s = scale["startup_s"].get(mine)
                rows.append(["3 start-up", f"{name}: {mine_label}'s time to first handled message (s)",
                             _spread(abs_s), f"< {_num(targets['startup_s'], 0)} s",
                             _verdict(abs_s, targets["startup_s"])])
                own_s = (scale.get("without_synapse_sync_s") or {}).get(mine)
                if own_s:
                    rows.append(["3 start-up", f"{name}: {mine_label}'s own share of it, Synapse's first sync taken "
                                 "off (s)", _spread(own_s), "", ""])
            if m and "peak_rss_ratio" in targets:
                rows.append(["3 start-up", f"{name}: peak RSS, {mine_label} / bare nio", _spread(m),
                             f"≤ {targets['peak_rss_ratio']}", _verdict(m, targets["peak_rss_ratio"])])
    ld = (r.get("load") or {}).get("ratios") or {}
    if ld:
        s = ld["throughput ratchet/nio"]
        rows.append(["4 load", "sustained messages/s, Ratchet (defaults) / bare-nio echo", _spread(s), "≥ 1",
                     _verdict(s, 1.0, below=False)])
        s = ld["CPU per message ratchet/nio"]
        rows.append(["4 load", f"bot CPU per message at {_num(r['load'].get('cpu_rate'), 0)} msg/s, Ratchet "
                     "(defaults) / bare nio", _spread(s), "≤ 0.5", _verdict(s, 0.5)])
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
        "taken side by side in this run: the median, and in brackets the spread (min–max) over the repeated runs. "
        f"A verdict is given only where the whole spread clears the target (at least {MIN_RUNS} runs); otherwise it "
        "is inconclusive. Ratchet (defaults) runs as shipped: `e2ee.trust: tofu`, cross-signing and key backup on; "
        "Ratchet (peers' settings) runs with `trust: all` and neither, which is what bare nio and the peers do.",
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
            "ratchet": "Ratchet (defaults: tofu), full pipeline to a no-op command",
            "ratchet-peer": "Ratchet (peers' settings: trust all), same pipeline",
            "ratchet-before": "Ratchet (peers' settings) without bot.matrix.schemas / lazy store (before)",
            "nio": "bare nio: from_dict + receive_response + no-op callback",
            "ratchet-nio-part": "Ratchet (defaults) stopped after nio: parse, decrypt, nio's event objects",
        }
        rows = [[names[v], _spread(off["us_per_event"][v], 1)]
                for v in ("floor", "ratchet-nio-part", "ratchet", "ratchet-peer", "ratchet-before", "nio")
                if v in off["us_per_event"]]
        lines += _table(["variant", "µs CPU per event"], rows)
        ra = off["ratios"]
        if "ratchet-peer/ratchet-before" in ra:
            lines += ["", f"Before/after (peers' settings): Ratchet before the fast path cost "
                      f"{_spread(ra['ratchet-before/nio'])}× bare nio per event; after, "
                      f"{_spread(ra['ratchet-peer/nio'], 3)}× (after / before: "
                      f"{_spread(ra['ratchet-peer/ratchet-before'], 3)}). The tofu trust check (defaults / peers' "
                      f"settings): {_spread(ra['ratchet/ratchet-peer'], 3)}×."]
        if "ratchet-nio-part/floor" in ra:
            us = off["us_per_event"]
            runtime = us["ratchet"]["median"] - us["ratchet-nio-part"]["median"]
            lines += ["", f"Where Ratchet's time per event goes (medians): the floor {_num(us['floor']['median'], 1)} "
                      f"µs; nio's part in Ratchet's client {_num(us['ratchet-nio-part']['median'], 1)} µs "
                      f"({_spread(ra['ratchet-nio-part/floor'])}× the floor); Ratchet's runtime (routing, trust, "
                      f"dispatch, the handler, exactly-once records) the remaining {_num(runtime, 1)} µs."]
    rt = r.get("roundtrip") or {}
    if rt.get("summary"):
        p = rt["params"]
        lines += ["", "## 2. Round trip `!ping` → `pong` through Synapse (ms, at the member)", "",
                  f"1 room: {p['pings_1_room']} pings one after another; {p['rooms']} rooms: "
                  f"{p['pings_per_room']} pings each, all rooms at once. Every bot: {p['repeats']} run(s), "
                  "interleaved, the order reversed each repetition.",
                  ""]
        rows = []
        for b in rt["summary"]["bots"].values():
            rows.append([b["label"], _spread(b["single"]["p50"], 1), _spread(b["single"]["p95"], 1),
                         _spread(b["single"]["p99"], 1), _spread(b["multi"]["p50"], 1),
                         _spread(b["multi"]["p95"], 1), _spread(b["multi"]["p99"], 1),
                         _spread(b["single"]["bot_cpu_ms_per_ping"], 2),
                         f"{_num(b['single']['failed']['median'], 0)}/{_num(b['multi']['failed']['median'], 0)}"])
        lines += _table(["bot", "1 room p50", "p95", "p99", f"{p['rooms']} rooms p50", "p95", "p99",
                         "bot CPU ms/ping (1 room)", "lost"], rows)
        peer = [(k, v) for k, v in rt["summary"].get("ratios", {}).items() if " ratchet-peer/" in k]
        if peer:
            lines += ["", "Ratchet with the peers' settings (`trust: all`, no cross-signing, no key backup) against "
                      "the others, same run:", ""]
            rows = []
            for key, value in peer:
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
            for name in ("ratchet", "ratchet-peer", "nio", "ratchet-before"):
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
    from bench.postgres_report import section as postgres_section  # scenario 5, bench/postgres.py

    lines += postgres_section(r)
    from bench.looplag_report import section as looplag_section

    lines += looplag_section(r)
    from bench.appservice_report import section as appservice_section  # bench/appservice.py

    lines += appservice_section(r)
    from bench.concurrency import section as concurrency_section  # bench/concurrency.py

    lines += concurrency_section(r)
    from bench.scale_report import section as scale_section  # bench/scale.py

    lines += scale_section(r)
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
