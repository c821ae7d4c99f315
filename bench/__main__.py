"""``make bench`` / ``python -m bench``: run the scenarios and write ``bench/results/``.

``BENCH_QUICK=1`` is the smoke run (about 4 minutes once the caches exist); ``--only offline,startup`` runs a subset
(the others are kept from the previous ``results.json`` when it exists, so a report can be completed scenario by
scenario).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any

from bench.common import QUICK, RESULTS, log, write_json

SCENARIOS = (
    "offline", "roundtrip", "startup", "load", "looplag", "pg-offline", "pg-startup", "appservice", "scale",
    "concurrency",
)


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    import nio
    import vodozemac  # noqa: F401

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if QUICK else "full",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "matrix-nio": getattr(nio, "__version__", None) or version("matrix-nio"),
        "vodozemac": version("vodozemac"),
        "synapse": version("matrix-synapse"),
        "jsonschema": version("jsonschema"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib venv)")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    for name in wanted:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name}")
    logging.basicConfig(level=logging.ERROR)  # nio's warnings in the member client are not results
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "results.json"
    results: dict[str, Any] = {}
    if args.only and out_json.exists():
        results = json.loads(out_json.read_text())
    results["environment"] = _environment()
    timings = results.setdefault("timings_s", {})
    started = time.monotonic()
    for name in wanted:
        t0 = time.monotonic()
        log(f"=== scenario {name} ({'quick' if QUICK else 'full'})")
        try:
            if name == "offline":
                from bench import offline

                results["offline"] = offline.scenario()
            elif name == "roundtrip":
                from bench import roundtrip

                results["roundtrip"] = roundtrip.scenario()
            elif name == "startup":
                from bench import startup

                results["startup"] = startup.scenario()
            elif name == "load":
                from bench import load

                results["load"] = load.scenario()
            elif name == "looplag":
                from bench import looplag

                results["looplag"] = looplag.scenario()
            elif name == "pg-offline":  # PostgreSQL vs SQLite (bench/postgres.py)
                from bench import postgres

                results["pg-offline"] = postgres.offline_scenario()
            elif name == "pg-startup":
                from bench import postgres

                results["pg-startup"] = postgres.startup_scenario()
            elif name == "appservice":  # appservice vs relay mode (bench/appservice.py)
                from bench import appservice

                results["appservice"] = appservice.scenario()
            elif name == "scale":  # a bot in 2,000 encrypted rooms (bench/scale.py)
                from bench import scale

                results["scale"] = scale.scenario()
            elif name == "concurrency":  # the 50-room tail against max_concurrency (bench/concurrency.py)
                from bench import concurrency

                results["concurrency"] = concurrency.scenario()
        except Exception as exc:  # one broken scenario must not lose the others
            log(f"scenario {name} failed: {exc!r}")
            results[name] = {"failed": f"{type(exc).__name__}: {exc}"[:3000]}
        timings[name] = round(time.monotonic() - t0, 1)
        write_json(out_json, results)
    timings["this_invocation"] = round(time.monotonic() - started, 1)
    timings["total"] = round(sum(v for k, v in timings.items() if k in SCENARIOS), 1)  # kept ones included
    write_json(out_json, results)
    from bench.report import write_report

    md = write_report(results, RESULTS / "results.md")
    log(f"wrote {md}")
    if not args.no_plot:
        from bench.report import write_plot

        png = write_plot(RESULTS / "results.json", RESULTS / "bench.png")
        log(f"wrote {png}" if png else "no plot (see above)")
        if results.get("looplag", {}).get("summary"):
            from bench.looplag_report import write_looplag_plot

            png = write_looplag_plot(RESULTS / "results.json", RESULTS / "looplag.png")
            log(f"wrote {png}" if png else "no loop-lag plot (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
