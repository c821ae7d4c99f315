"""The appservice-vs-relay tables (``bench/appservice.py``): the section of ``results.md`` that
:func:`bench.report.write_report` adds, and the same tables in docs/performance.md's "Appservice vs relay" block.

``python -m bench.appservice_report --docs`` rewrites ``results.md`` from ``results.json`` and replaces the block
between :data:`DOCS_BEGIN` and :data:`DOCS_END` in docs/performance.md, so the page's figures are never edited by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, log
from bench.report import _spread, _table, write_report

KIND_LABEL = {"plain": "unencrypted rooms", "encrypted": "encrypted rooms (Megolm)"}

def _signed(s: dict[str, Any] | None, digits: int = 0) -> str:
    """A difference's median and spread, with signs."""
    if not s or not s.get("n"):
        return "n/a"

    def fmt(v: float) -> str:
        return f"{v:+.{digits}f}"

    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])} to {fmt(s['max'])})"

def section(r: dict[str, Any], heading: str = "## Appservice vs relay") -> list[str]:
    """The tables of scenario ``appservice`` as in ``results.md``; also what ``--docs`` puts into the page."""
    a = r.get("appservice") or {}
    if not a:
        return []
    lines = ["", heading, ""] if heading else [""]
    if a.get("failed"):
        return [*lines, f"The scenario failed: {a['failed'][:1500]}"]
    p = a.get("params") or {}
    ra = a.get("ratios") or {}
    fig = a.get("figures") or {}
    runs = (a.get("runs") or {}).get("appservice", {}).get("plain", [])
    n_runs = len(runs) or p.get("repeats") or 0
    plural = "" if n_runs == 1 else "s"
    lines += [f"{p.get('messages', '?'):,} `!asb <i>` messages per burst in {p.get('rooms', '?')} rooms (one send "
              f"loop per room), handler `asbench` (records the time, no reply); {n_runs} run{plural} of each "
              "mode, "
              "interleaved, the order reversed each repetition. Ratio = appservice / relay: the median, and the "
              "min–max of the per-run ratios. No target, no verdict.", ""]
    rows: list[list[str]] = []
    for kind in ("plain", "encrypted"):
        label = KIND_LABEL[kind]
        for f, what, digits in (
            ("handled_per_s", "handled messages per second (first send → last handled)", 2),
            ("bot_cpu_us_per_msg", "bot process CPU per handled message", 2),
            ("synapse_cpu_us_per_msg", "Synapse CPU per handled message (includes accepting the sends)", 2),
            ("total_cpu_us_per_msg", "bot + Synapse CPU per handled message", 2),
            ("latency_p50_ms", "send answered → handled, p50", 2),
            ("latency_p95_ms", "send answered → handled, p95", 2),
        ):
            s = ra.get(f"{kind} {f} appservice/relay")
            if s:
                rows.append([label, what, _spread(s, digits)])
    if rows:
        lines += _table(["rooms", "figure", "appservice / relay (median, min–max)"], rows)
    diff_rows = []
    for kind in ("plain", "encrypted"):
        cells = [_signed(ra.get(f"{kind} {f} appservice-relay"))
                 for f in ("bot_cpu_us_per_msg", "synapse_cpu_us_per_msg", "total_cpu_us_per_msg")]
        if any(c != "n/a" for c in cells):
            diff_rows.append([KIND_LABEL[kind], *cells])
    if diff_rows:
        lines += ["", "The same CPU figures as differences, appservice − relay, µs per handled message (median, "
                  "min to max of the per-run differences):", ""]
        lines += _table(["rooms", "bot", "Synapse", "bot + Synapse"], diff_rows)
    absolute = []
    for mode in ("appservice", "relay"):
        for kind in ("plain", "encrypted"):
            f = (fig.get(mode) or {}).get(kind) or {}
            if not f:
                continue
            absolute.append([mode, KIND_LABEL[kind], _spread(f.get("handled_per_s"), 1),
                             _spread(f.get("sent_per_s"), 1), _spread(f.get("bot_cpu_us_per_msg"), 0),
                             _spread(f.get("synapse_cpu_us_per_msg"), 0),
                             _spread(f.get("latency_p50_ms"), 0) + " / " + _spread(f.get("latency_p95_ms"), 0)])
    if absolute:
        lines += ["", "Medians (min–max) of the same runs:", ""]
        lines += _table(["mode", "rooms", "handled msg/s", "sent msg/s (member)", "bot CPU µs/msg",
                         "Synapse CPU µs/msg", "send answered → handled p50 / p95 (ms)"], absolute)
    shares = []
    for mode in ("appservice", "relay"):
        for kind in ("plain", "encrypted"):
            f = (fig.get(mode) or {}).get(kind) or {}
            hs, bot = (f.get("synapse_cpu_us_per_msg") or {}).get("median"), (f.get("bot_cpu_us_per_msg") or {}).get(
                "median")
            if hs and bot:
                shares.append(f"{mode}, {KIND_LABEL[kind]} {hs / (hs + bot):.0%} (Synapse {hs / bot:.0f}× the bot)")
    if shares:
        lines += ["", "Synapse's share of bot + Synapse CPU per message in the bursts (medians): "
                  + "; ".join(shares) + "."]
    longest = []
    for mode in ("appservice", "relay"):
        lat = [r_.get("latency_max_ms") for rs in ((a.get("runs") or {}).get(mode) or {}).values() for r_ in rs]
        lat = [v for v in lat if isinstance(v, (int, float))]
        if lat:
            longest.append(f"{mode} {max(lat):.0f} ms")
    if longest:
        lines += ["", "Longest send answered → handled in any burst: " + ", ".join(longest) + "."]
    within = []
    for mode in ("appservice", "relay"):
        s = ra.get(f"{mode} bot_cpu_us_per_msg encrypted/plain")
        if s and s.get("n"):
            within.append(f"{mode} {_spread(s)}")
    if within:
        lines += ["", "Bot CPU per message, encrypted / unencrypted rooms, same bot process: " + ", ".join(within)
                  + "."]
    bl = a.get("backlog") or {}
    if bl.get("ratios"):
        bp, bra, bfig = bl.get("params") or {}, bl["ratios"], bl.get("figures") or {}
        lines += ["", f"**Backlog**: the bot process stopped (SIGSTOP) while {bp.get('messages', '?'):,} messages are "
                  f"sent into the same {bp.get('rooms', '?')} rooms, then continued {bp.get('settle_s', '?')} s after "
                  "the last send; the window runs from continuing it to the last handled message, so the sends are "
                  "outside it and Synapse's CPU is delivery only. Same runs, same bot processes:", ""]
        brows = []
        for kind in ("plain", "encrypted"):
            for f, what in (("handled_per_s", "handled messages per second (continued → last handled)"),
                            ("bot_cpu_us_per_msg", "bot process CPU per handled message"),
                            ("synapse_cpu_us_per_msg", "Synapse CPU per handled message (delivery only)"),
                            ("total_cpu_us_per_msg", "bot + Synapse CPU per handled message")):
                s_ = bra.get(f"{kind} {f} appservice/relay")
                if s_:
                    brows.append([KIND_LABEL[kind], what, _spread(s_)])
        lines += _table(["rooms", "figure", "appservice / relay (median, min–max)"], brows)
        babs = []
        for mode in ("appservice", "relay"):
            for kind in ("plain", "encrypted"):
                f = (bfig.get(mode) or {}).get(kind) or {}
                if f:
                    babs.append([mode, KIND_LABEL[kind], _spread(f.get("handled_per_s"), 0),
                                 _spread(f.get("bot_cpu_us_per_msg"), 0),
                                 _spread(f.get("synapse_cpu_us_per_msg"), 0),
                                 _spread(f.get("total_cpu_us_per_msg"), 0)])
        lines += ["", "Backlog, medians (min–max):", ""]
        lines += _table(["mode", "rooms", "handled msg/s", "bot CPU µs/msg", "Synapse CPU µs/msg (delivery)",
                         "bot + Synapse CPU µs/msg"], babs)
        short = [f"{m} {k} run {r_['rep'] + 1}: {r_['handled']}/{r_['messages']} handled"
                 for m, kinds in (bl.get("runs") or {}).items() for k, rs in kinds.items() for r_ in rs
                 if r_["handled"] < r_["messages"] or r_["send_errors"]]
        if short:
            lines += ["", "Backlog runs that lost messages: " + "; ".join(short) + "."]
    notes = []
    load = a.get("loadavg") or {}
    if load:
        note = (f"appservice (finished {a.get('finished', '?')}): load average {_load(load.get('start'))} at the "
                f"start, {_load(load.get('end'))} at the end; commit {a.get('commit', '?')}")
        if a.get("bot_uncommitted"):
            note += f" with uncommitted changes in {', '.join(a['bot_uncommitted'])} (the working tree is shared)"
        notes.append(note)
    lost = [f"{m} {k} run {r_['rep'] + 1}: {r_['handled']}/{r_['messages']} handled, {r_['send_errors']} send errors"
            for m, kinds in (a.get("runs") or {}).items() for k, rs in kinds.items() for r_ in rs
            if r_["handled"] < r_["messages"] or r_["send_errors"]]
    notes += lost
    notes += [f"{k} failed: {v[:500]}" for k, v in (a.get("errors") or {}).items()]
    if notes:
        lines += [""] + [f"- {note}." for note in notes]
    return lines

def _load(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"

DOCS_BEGIN = "<!-- generated by `python -m bench.appservice_report --docs` from bench/results/results.json -->"
DOCS_END = "<!-- end of the appservice tables -->"

def update_docs(r: dict[str, Any], path: Path) -> bool:
    """Replace the block between :data:`DOCS_BEGIN` and :data:`DOCS_END` of ``path`` with :func:`section`."""
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    block = "\n".join(section(r, heading="")).strip("\n")
    path.write_text(f"{head}{DOCS_BEGIN}\n\n{block}\n\n{DOCS_END}{tail}")
    return True

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.appservice_report")
    parser.add_argument("--docs", action="store_true", help="also regenerate docs/performance.md's appservice block")
    args = parser.parse_args(argv)
    r = json.loads((RESULTS / "results.json").read_text())
    log(f"wrote {write_report(r, RESULTS / 'results.md')}")
    if args.docs:
        docs = ROOT / "docs" / "performance.md"
        if (r.get("environment") or {}).get("mode") != "full":
            log("warning: results.json is from a quick run")
        log(f"updated {docs}" if update_docs(r, docs) else f"{docs} has no generated block ({DOCS_BEGIN})")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
