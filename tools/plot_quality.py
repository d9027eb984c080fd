#!/usr/bin/env python3
"""Plots nq-eval JSON rows: perplexity delta (top) and next-token KL (bottom) against
the real compression ratio, one column per text and context, our presets and codec
points against the peer quantisers.

    python3 tools/plot_quality.py docs/quality.png eval-1024.json eval-2048.json

Needs matplotlib (not a dependency of the library or the tests).
"""
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PRESETS = ("lossless", "high", "balanced", "max")


def family(scheme: str) -> str:
    if scheme in PRESETS:
        return "nexusquant presets"
    if scheme.endswith("-generic") and scheme[:-len("-generic")] in PRESETS:
        return "nexusquant presets without the model profile"
    if scheme.startswith("e8-"):
        return "nexusquant E8, other settings"
    if scheme.startswith("scalar-"):
        return "nexusquant scalar codec"
    if scheme == "fp16":
        return "fp16 (reference)"
    return "peers"


STYLE = {
    "nexusquant presets": dict(color="tab:red", marker="o", s=60, zorder=5),
    "nexusquant presets without the model profile": dict(color="tab:red", marker="o", s=40, zorder=4,
                                                         facecolors="none"),
    "nexusquant E8, other settings": dict(color="tab:orange", marker="o", s=25, zorder=4),
    "nexusquant scalar codec": dict(color="tab:purple", marker="s", s=30, zorder=4),
    "peers": dict(color="tab:blue", marker="^", s=45, zorder=3),
    "fp16 (reference)": dict(color="black", marker="x", s=40, zorder=3),
}


def main(argv) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, files = argv[1], argv[2:]
    panels = defaultdict(list)
    for f in files:
        for r in json.load(open(f)):
            if "error" not in r:
                panels[(r["text"], r["context"])].append(r)
    keys = sorted(panels, key=lambda k: (k[1], k[0]))
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 7.5), squeeze=False)
    for col, key in enumerate(keys):
        top, bottom = axes[0][col], axes[1][col]
        for r in panels[key]:
            fam = family(r["scheme"])
            for ax, y in ((top, r["ppl_delta_pct"]), (bottom, r["kl"])):
                if ax is bottom and r["scheme"] == "fp16":
                    continue  # KL 0: off a log axis
                ax.scatter(r["ratio"], y, **STYLE[fam], label=fam)
                ax.annotate(r["scheme"], (r["ratio"], y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        top.set_title(f"{key[0].split('.')[0]}, {key[1]} tokens", fontsize=9)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_xlabel("real compression ratio (fp16 bytes / all bytes)", fontsize=8)
        top.axhline(0, color="grey", lw=0.5)
        top.set_ylabel("perplexity delta, %", fontsize=8)
        bottom.set_ylabel("next-token KL divergence", fontsize=8)
        bottom.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: quality against real compression ratio (nq-eval)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
