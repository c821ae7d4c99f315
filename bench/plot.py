"""Draws bench/results/bench.png from results.json. Runs in bench/.venvs/plot (matplotlib only, no project code):

    python bench/plot.py bench/results/results.json bench/results/bench.png
"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def med(s):
    return s["median"] if s and s.get("n") else math.nan


def err(s):
    if not s or not s.get("n"):
        return (0, 0)
    return (max(0.0, s["median"] - s["min"]), max(0.0, s["max"] - s["median"]))


def bars(ax, labels, stats, title, ylabel, log=False, colors=None):
    values = [med(s) for s in stats]
    errors = list(zip(*[err(s) for s in stats], strict=True)) if stats else [[], []]
    ax.bar(range(len(values)), values, yerr=errors, capsize=3, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
    for i, v in enumerate(values):
        if not math.isnan(v):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)


def main(src, dst):
    r = json.load(open(src))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    off = r.get("offline") or {}
    if "us_per_event" in off:
        order = [v for v in ["floor", "ratchet", "ratchet-peer", "ratchet-before", "nio"] if v in off["us_per_event"]]
        names = {"floor": "vodozemac floor", "ratchet": "Ratchet (defaults)",
                 "ratchet-peer": "Ratchet (peers'\nsettings)", "ratchet-before": "Ratchet before", "nio": "bare nio"}
        palette = {"floor": "#999999", "ratchet": "#2a7ab9", "ratchet-peer": "#6baed6", "ratchet-before": "#9ecae1",
                   "nio": "#e6550d"}
        bars(ax, [names[v] for v in order], [off["us_per_event"][v] for v in order],
             "1. CPU per encrypted event (offline)", "µs per event (log)", log=True, colors=[palette[v] for v in order])
    ax = axes[0][1]
    rt = (r.get("roundtrip") or {}).get("summary") or {}
    if rt.get("bots"):
        names = list(rt["bots"])
        x = range(len(names))
        width = 0.2
        for k, (kind, key, color) in enumerate(
            (("single", "p50", "#2a7ab9"), ("single", "p99", "#9ecae1"), ("multi", "p50", "#e6550d"),
             ("multi", "p99", "#fdae6b"))
        ):
            stats = [rt["bots"][n][kind][key] for n in names]
            ax.bar([i + (k - 1.5) * width for i in x], [med(s) for s in stats], width,
                   yerr=list(zip(*[err(s) for s in stats], strict=True)), capsize=2, color=color,
                   label=f"{'1 room' if kind == 'single' else '50 rooms'} {key}")
        ax.set_xticks(list(x))
        ax.set_xticklabels([rt["bots"][n]["label"] for n in names], rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)", fontsize=8)
        ax.set_title("2. !ping → pong round trip through Synapse", fontsize=10)
        ax.legend(fontsize=7)
    ax = axes[1][0]
    st = r.get("startup") or {}
    if st.get("scales"):
        labels, stats, colors = [], [], []
        shown = []
        for scale in st["scales"]:
            for name, color in (("ratchet", "#2a7ab9"), ("ratchet-peer", "#6baed6"), ("nio", "#e6550d"),
                                ("ratchet-before", "#9ecae1")):
                if not (scale["startup_s"].get(name) or {}).get("n"):
                    continue
                labels.append(f"{name}\n{scale['rooms']} rooms/{scale['sessions'] // 1000}k sessions")
                stats.append(scale["startup_s"].get(name))
                colors.append(color)
                shown.append((scale, name))
        bars(ax, labels, stats, "3. start → first handled message (peak RSS in MiB above)", "seconds",
             colors=colors)
        for i, (scale, name) in enumerate(shown):
            rss = med(scale["peak_rss_mb"].get(name))
            if not math.isnan(rss):
                ax.annotate(f"{rss:.0f} MiB", (i, 0), ha="center", va="bottom", fontsize=7, color="white")
    ax = axes[1][1]
    ld = r.get("load") or {}
    if ld.get("runs"):
        for name, color in (("ratchet", "#2a7ab9"), ("nio", "#e6550d")):
            for i, run in enumerate(ld["runs"].get(name, [])):
                rates = [s["rate"] for s in run["steps"]]
                p95 = [s["p95"] for s in run["steps"]]
                ax.plot(rates, p95, marker="o", color=color, alpha=0.9 if i == 0 else 0.5,
                        label=name if i == 0 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered messages/s across 50 rooms", fontsize=8)
        ax.set_ylabel("p95 latency, ms (log)", fontsize=8)
        ax.set_title("4. sustained load", fontsize=10)
        ax.legend(fontsize=7)
    env = r.get("environment", {})
    fig.suptitle(f"Ratchet benchmarks ({env.get('mode')} run, {env.get('date')}, {env.get('machine')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
