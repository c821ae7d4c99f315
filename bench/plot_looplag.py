"""Draws bench/results/looplag.png from results.json (the loop-lag scenario). Runs in bench/.venvs/plot (matplotlib
only, no project code):

    python bench/plot_looplag.py bench/results/results.json bench/results/looplag.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ITEMS = ("upload", "download", "restore", "startup", "burst", "idle")
TITLES = {"upload": "100 MB attachment: encrypt + upload", "download": "100 MB attachment: download + decrypt",
          "restore": "key backup restore, 50,000 keys", "startup": "start-up key work (50,000 keys)",
          "burst": "500-message burst", "idle": "idle (sampler floor)"}
COLORS = {"before": "#e6550d", "after": "#2a7ab9"}


def main(src, dst):
    r = json.load(open(src))
    ll = r["looplag"]
    edges = ll["params"]["edges_ms"]
    labels = [f"≤{e:g}" for e in edges] + [f">{edges[-1]:g}"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, name in zip(axes.flat, ITEMS, strict=True):
        width = 0.4
        for k, variant in enumerate(("before", "after")):
            item = (ll["summary"].get(variant) or {}).get(name)
            if not item:
                continue
            total = sum(item["hist"]) or 1
            share = [100 * h / total for h in item["hist"]]
            xs = [i + (k - 0.5) * width for i in range(len(share))]
            ax.bar(xs, share, width, color=COLORS[variant],
                   label=f"{variant}: p99 {item['p99_ms']['median']:.1f} ms, max {item['max_ms']['median']:.0f} ms")
        ax.axvline(edges.index(20) + 0.5, color="#999999", ls="--", lw=0.8)
        ax.axvline(edges.index(50) + 0.5, color="#555555", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(0.01, 100)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, fontsize=7)
        ax.set_title(TITLES[name], fontsize=10)
        ax.set_ylabel("% of 5 ms samples (log)", fontsize=8)
        ax.set_xlabel("loop lag, ms (dashed: 20 and 50 ms)", fontsize=8)
        ax.legend(fontsize=7)
    env = r.get("environment", {})
    fig.suptitle(f"Event-loop lag during heavy work, before / after (issue 20 target 2; "
                 f"{ll['params']['repeats']} run(s) each, {env.get('date')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
