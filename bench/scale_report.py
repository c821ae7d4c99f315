"""The tables of scenario ``scale`` (``bench/scale.py``, a bot in 2,000 encrypted rooms): the section of
``results.md`` that :func:`bench.report.write_report` adds."""

from __future__ import annotations

from typing import Any

from bench.report import _num, _spread, _table, _verdict

#: figure key -> (label, digits)
FIGURES: dict[str, tuple[str, int]] = {
    "first_sync_s": ("process start → first sync handled (s)", 1),
    "first_handled_s": ("process start → first `!ping` handled (s)", 1),
    "rss_rest_mb": ("RSS at rest, 10 s after (MiB)", 0),
    "peak_rss_mb": ("peak RSS, VmHWM (MiB)", 0),
    "idle_cpu_ms_per_sync": ("CPU per idle sync (ms)", 1),
    "idle_cpu_ms_per_min": ("CPU per idle minute (ms)", 0),
    "ping_p50_ms": ("busy-room round trip p50 (ms)", 0),
    "ping_p99_ms": ("busy-room round trip p99 (ms)", 0),
    "cpu_first_sync_s": ("CPU until the first sync was handled (s)", 1),
    "initial_sync_server_s": ("Synapse's time for the initial sync (s)", 1),
    "initial_sync_bytes": ("initial sync response (MB)", 1),
}
#: figure -> target for Ratchet / bare nio (issue 20, target 4)
TARGETS = {"first_sync_s": 0.5, "rss_rest_mb": 0.5, "peak_rss_mb": 0.5}


def _mb(s: dict[str, Any] | None) -> dict[str, Any] | None:
    if not s or not s.get("n"):
        return s
    return {k: (v / 1e6 if k in ("median", "min", "max") else v) for k, v in s.items()}


def section(r: dict[str, Any], heading: str = "## Scale: one bot in thousands of encrypted rooms (scale)") -> list[str]:
    sc = r.get("scale") or {}
    if not sc:
        return []
    lines = ["", heading, ""] if heading else [""]
    if sc.get("failed"):
        return [*lines, f"The scenario failed: {sc['failed'][:1500]}"]
    p = sc.get("params") or {}
    labels = sc.get("labels") or {}
    lines += [
        "One account joined to every room (each room: the bot and two of "
        f"{p.get('member_accounts', '?')} member accounts, one undecryptable message; the busy room has the pinging "
        "member too). Each bot starts from a fresh login on that account (new device, no sync token, empty stores), "
        f"so the first sync is an initial sync of all rooms. {p.get('repeats', '?')} run(s) per bot, interleaved, the "
        f"order reversed each repetition. RSS at rest: VmRSS {_num(p.get('rest_s'), 0)} s after the first `!ping` was "
        "answered; CPU per idle sync: bot CPU between two points 1 s after a /sync of the bot finished (Synapse's "
        f"access log), {p.get('idle_syncs', '?')} sync(s) apart, nothing sent; round trip: {p.get('pings', '?')} "
        "pings one after another in the busy room. Ratios: the median, and the min–max of the per-run ratios.",
        "",
    ]
    for scale in sc.get("scales", []):
        bots = [b for b in ("ratchet", "nio", "maubot") if scale["runs"].get(b)]
        figs = scale.get("figures") or {}
        lines += [f"### {scale['rooms']:,} rooms", ""]
        rows = []
        for key, (label, digits) in FIGURES.items():
            row = [label]
            for b in bots:
                s = figs.get(key, {}).get(b)
                row.append(_spread(_mb(s) if key == "initial_sync_bytes" else s, digits))
            rows.append(row)
        lines += _table(["figure", *[labels.get(b, b) for b in bots]], rows)
        ra = scale.get("ratios") or {}
        rows = []
        for key, (label, _digits) in FIGURES.items():
            if key == "initial_sync_bytes":
                continue
            vs_nio = ra.get(f"{key} ratchet/nio")
            vs_maubot = ra.get(f"{key} ratchet/maubot")
            if not vs_nio and not vs_maubot:
                continue
            target = TARGETS.get(key)
            rows.append([label, _spread(vs_nio), _spread(vs_maubot), f"≤ {target} × nio" if target else "",
                         _verdict(vs_nio, target) if target else ""])
        lines += ["", "Ratchet (shipped defaults) / the others:", ""]
        lines += _table(["figure", "Ratchet / bare nio", "Ratchet / maubot", "target", ""], rows)
        setup = scale.get("setup") or {}
        lines += ["", f"Set-up (once, cached): {scale['rooms']:,} rooms created in "
                  f"{_num(setup.get('rooms_created_s'), 0)} s ({_num(setup.get('rooms_per_s'), 2)} rooms/s); "
                  f"warm-up initial sync {_num(scale.get('warm_up_initial_sync_s'), 1)} s."]
        loads = [run.get("load1_at_start") for runs in scale["runs"].values() for run in runs]
        loads = [v for v in loads if v is not None]
        if loads:
            lines.append(f"1-minute load average at the runs' starts: {min(loads):.1f}–{max(loads):.1f} "
                         f"({sc.get('cpus', '?')} CPUs).")
        for name, why in (scale.get("errors") or {}).items():
            lines.append(f"- {name}: {why[:500]}")
    for rooms, why in (sc.get("skipped") or {}).items():
        lines += ["", f"{int(rooms):,} rooms: not measured; {why}."]
    return lines
