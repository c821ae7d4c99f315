"""Shared helpers of the benchmarks: paths, quick mode, statistics, subprocesses, process accounting."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
PLUGINS = BENCH / "plugins"
PYTHON = sys.executable

#: BENCH_QUICK=1: the smoke run (small sizes, one or two repetitions).
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def log(msg: str) -> None:
    """Progress on stderr (stdout of the sub-benchmarks is their JSON result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of ``values``."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    if lo == hi:
        return data[lo]
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated measurements."""
    data = [v for v in values if v is not None and not math.isnan(v)]
    if not data:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(data), "min": min(data), "max": max(data), "n": len(data)}


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Ratio of medians, with the spread of the per-repetition ratios (paired by repetition)."""
    n = summary(num)
    d = summary(den)
    if not n["n"] or not d["n"] or not d["median"]:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    pairs = [a / b for a, b in zip(num, den, strict=False) if b]
    return {
        "median": n["median"] / d["median"],
        "min": min(pairs) if pairs else math.nan,
        "max": max(pairs) if pairs else math.nan,
        "n": len(pairs),
    }


def run_json(args: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Any:
    """Run a sub-benchmark process and parse the last line of its stdout as JSON."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONHASHSEED", "0")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, timeout=timeout, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(args[:4])} printed nothing:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running process, in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
