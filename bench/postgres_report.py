"""Scenario 5's tables (PostgreSQL vs SQLite, ``bench/postgres.py``): the section of ``results.md`` that
:func:`bench.report.write_report` adds, and the same tables in docs/performance.md's generated block.

``python -m bench.postgres_report --docs`` rewrites ``results.md`` from ``results.json`` and replaces the block
between :data:`DOCS_BEGIN` and :data:`DOCS_END` in docs/performance.md, so the page's figures are never edited by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, log
from bench.report import _num, _spread, _table, write_report


def section(r: dict[str, Any], heading: str = "## PostgreSQL vs SQLite (pg-offline, pg-startup)") -> list[str]:
    """The PostgreSQL-vs-SQLite tables (scenarios ``pg-offline`` and ``pg-startup``, ``bench/postgres.py``), as in
    ``results.md``; also what ``python -m bench.postgres_report --docs`` puts into docs/performance.md."""
    off = r.get("pg-offline") or {}
    st = r.get("pg-startup") or {}
    if not off and not st:
        return []
    lines = ["", heading, ""] if heading else [""]
    for name, part in (("pg-offline", off), ("pg-startup", st)):
        if part.get("failed"):
            lines += [f"Scenario {name} failed: {part['failed'][:1500]}", ""]
    rows: list[list[str]] = []
    if off.get("ratios"):
        ra = off["ratios"]
        n = f"{_count(off['processes'], 'process', 'processes')} × {_count(off['passes'], 'pass', 'passes')}"
        rows += [
            [f"CPU per handled encrypted event, bot process ({n})", _spread(ra["bot CPU postgresql/sqlite"])],
            [f"CPU per handled encrypted event, bot + PostgreSQL server ({n})",
             _spread(ra["bot+server CPU postgresql/sqlite"])],
            [f"wall time per handled event, offline batch ({n})", _spread(ra["wall postgresql/sqlite"])],
        ]
        if "bot CPU pg-state/sqlite" in ra:
            rows += [
                ["the split (diagnostic): CPU per event, only the crypto store left on SQLite / SQLite: bot process, "
                 "bot + server", f"{_spread(ra['bot CPU pg-state/sqlite'])}, "
                 f"{_spread(ra['bot+server CPU pg-state/sqlite'])}"],
                ["the split (diagnostic): CPU per event, PostgreSQL / only the crypto store left on SQLite: bot "
                 "process, bot + server", f"{_spread(ra['bot CPU postgresql/pg-state'])}, "
                 f"{_spread(ra['bot+server CPU postgresql/pg-state'])}"],
            ]
    if st.get("ratios"):
        ra = st["ratios"]
        n = f"{st['rooms']} rooms, {st['sessions']:,} sessions, {_count(st['repeats'], 'run', 'runs')} each"
        rows += [
            [f"start-up: process start → first handled message ({n})", _spread(ra["startup postgresql/sqlite"])],
            [f"start-up: peak RSS of the bot process ({n})", _spread(ra["peak RSS postgresql/sqlite"])],
            [f"start-up: CPU until the first handled message, bot process ({n})",
             _spread(ra["bot CPU postgresql/sqlite"])],
            [f"start-up: CPU until the first handled message, bot + PostgreSQL server ({n})",
             _spread(ra["bot+server CPU postgresql/sqlite"])],
        ]
        if "settled bot+server CPU postgresql/sqlite" in ra:
            rows.append([f"start-up, {_num(st.get('settle_s'), 0)} s after the process started: peak RSS, CPU of the "
                         "bot process, CPU of bot + server", f"{_spread(ra['settled peak RSS postgresql/sqlite'])}, "
                         f"{_spread(ra['settled bot CPU postgresql/sqlite'])}, "
                         f"{_spread(ra['settled bot+server CPU postgresql/sqlite'])}"])
        if "startup postgresql-peer/sqlite-peer" in ra:
            rows.append(["start-up with the peers' settings (no key backup, no cross-signing, trust all): time to "
                         "first handled message, peak RSS, bot + server CPU",
                         f"{_spread(ra['startup postgresql-peer/sqlite-peer'])}, "
                         f"{_spread(ra['peak RSS postgresql-peer/sqlite-peer'])}, "
                         f"{_spread(ra['bot+server CPU postgresql-peer/sqlite-peer'])}"])
    if rows:
        lines += _table(["figure", "PostgreSQL / SQLite (median, min–max)"], rows)
    absolute: list[list[str]] = []
    if off.get("us_per_event"):
        u = off["us_per_event"]
        for engine, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"),
                              ("pg-state", "PostgreSQL, crypto store on SQLite (diagnostic)")):
            if engine not in u:
                continue
            e = u.get(engine) or {}
            absolute.append([f"per handled event (µs), {label}", _spread(e.get("bot_us"), 1),
                             _spread(e.get("server_us"), 1) if engine != "sqlite" else "–",
                             _spread(e.get("total_us"), 1), _spread(e.get("wall_us"), 1), ""])
    if st.get("startup_s"):
        for engine, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"),
                              ("sqlite-peer", "SQLite, peers' settings"),
                              ("postgresql-peer", "PostgreSQL, peers' settings")):
            if not (st["startup_s"].get(engine) or {}).get("n"):
                continue
            absolute.append([f"start-up, {st['sessions']:,} sessions (s), {label}", _spread(st["cpu_s"].get(engine)),
                             _spread(st["server_cpu_s"].get(engine)) if engine.startswith("postgresql") else "–",
                             _spread(st["total_cpu_s"].get(engine)), _spread(st["startup_s"].get(engine)),
                             _spread(st["peak_rss_mb"].get(engine), 0)])
    if st.get("settled_cpu_s"):
        for engine, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"),
                              ("sqlite-peer", "SQLite, peers' settings"),
                              ("postgresql-peer", "PostgreSQL, peers' settings")):
            if not (st["settled_cpu_s"].get(engine) or {}).get("n"):
                continue
            absolute.append([f"start-up, the first {_num(st.get('settle_s'), 0)} s (s), {label}",
                             _spread(st["settled_cpu_s"].get(engine)),
                             _spread(st["settled_server_cpu_s"].get(engine)) if engine.startswith("postgresql")
                             else "–", _spread(st["settled_total_cpu_s"].get(engine)), "",
                             _spread(st["settled_peak_rss_mb"].get(engine), 0)])
    if absolute:
        lines += ["", "Medians (min–max) of the same runs:", ""]
        lines += _table(["", "bot CPU", "server CPU", "bot + server CPU", "wall (per event) / to first message",
                         "bot peak RSS (MiB)"], absolute)
    probe = off.get("probe_us") or {}
    if probe:
        names = {"mark_handled": "`StateStore.mark_handled` (INSERT, one commit)",
                 "is_handled": "`StateStore.is_handled` (SELECT)",
                 "insert_unfenced": "the same INSERT into a table without the lease's fence trigger"}
        prow = []
        for call, label in names.items():
            sq = (probe.get("sqlite") or {}).get(call)
            pg = (probe.get("postgresql") or {}).get(call)
            if not sq and not pg:
                continue
            prow.append([label,
                         " / ".join(_spread(sq[k], 1) for k in ("bot_us", "wall_us")) if sq else "–",
                         " / ".join(_spread(pg[k], 1) for k in ("bot_us", "server_us", "wall_us")) if pg else "–"])
        extras = off.get("extras") or {}
        calls = extras.get("postgresql", {}).get("statements_per_event") or {}
        calls_sq = extras.get("sqlite", {}).get("statements_per_event") or {}
        calls_st = extras.get("pg-state", {}).get("statements_per_event") or {}
        lines += ["", f"The runtime's two per-event storage calls alone, {PROBE_CALLS_TEXT} calls each, after the "
                  "passes in every process (µs per call):", ""]
        lines += _table(["call", "SQLite: bot CPU / wall", "PostgreSQL: bot CPU / server CPU / wall"], prow)
        if calls:
            lines += ["", "SQL statements per handled event (counted in the warm-up pass): SQLite "
                      + ", ".join(f"{k} {v:g}" for k, v in calls_sq.items()) + "; PostgreSQL "
                      + ", ".join(f"{k} {v:g}" for k, v in calls.items())
                      + ("; the diagnostic variant, to PostgreSQL only (its crypto store is the SQLite file) "
                         + ", ".join(f"{k} {v:g}" for k, v in calls_st.items()) if calls_st else "") + "."]
    notes = []
    for part, name in ((off, "pg-offline"), (st, "pg-startup")):
        if part.get("postgres"):
            pgs = part["postgres"]
            when = f" (finished {part['finished']})" if part.get("finished") else ""
            server = ", ".join(f"{k} {pgs.get(k)}" for k in ("fsync", "synchronous_commit", "full_page_writes",
                                                            "wal_sync_method", "shared_buffers"))
            load = part.get("loadavg", {})
            note = (f"{name}{when}: PostgreSQL {pgs.get('server_version', '?').split()[0]} on this machine over TCP "
                    f"127.0.0.1 ({server}); load average {_load(load.get('start'))} at the start, "
                    f"{_load(load.get('end'))} at the end; commit {part.get('commit', '?')}")
            if part.get("bot_uncommitted"):
                files = ", ".join(part["bot_uncommitted"])
                note += f" with uncommitted changes in {files} (the working tree is shared)"
            notes.append(note)
    tpl = st.get("template") or {}
    if tpl:
        notes.append("pg-startup's store moved to PostgreSQL by `ratchet db migrate` in "
                     f"{_num(tpl.get('migrate_s'), 1)} s ({tpl.get('sessions', 0):,} sessions, "
                     f"{tpl.get('backed_up', 0):,} backed up; {_num(tpl.get('database_mb'), 0)} MiB in PostgreSQL, "
                     f"the SQLite data dir {_num(tpl.get('sqlite_data_dir_mb'), 0)} MiB)")
    for engine, why in (st.get("errors") or {}).items():
        notes.append(f"pg-startup {engine} failed in a run: {why[:500]}")
    if notes:
        lines += [""] + [f"- {note}." for note in notes]
    return lines


PROBE_CALLS_TEXT = "2,000"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _load(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


DOCS_BEGIN = "<!-- generated by `python -m bench.postgres_report --docs` from bench/results/results.json -->"
DOCS_END = "<!-- end of generated tables -->"


def update_docs(r: dict[str, Any], path: Path) -> bool:
    """Replace the generated block of ``path`` (between :data:`DOCS_BEGIN` and :data:`DOCS_END`) with
    :func:`section`; returns False if the page has no such block."""
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    block = "\n".join(section(r, heading="")).strip("\n")
    path.write_text(f"{head}{DOCS_BEGIN}\n\n{block}\n\n{DOCS_END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.postgres_report [--docs]``: rewrite results.md from results.json (and docs/performance.md's
    generated block)."""
    parser = argparse.ArgumentParser(prog="python -m bench.postgres_report")
    parser.add_argument("--docs", action="store_true", help="also regenerate docs/performance.md's generated block")
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
