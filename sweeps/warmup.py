"""Warm-up (paper §3.2.1): a longer warm-up lowers LR sensitivity, more so for larger models."""

from __future__ import annotations

import matplotlib.pyplot as plt

from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

W = "optim.warmup_steps"
CLAIM = "longer warmup lowers LR sensitivity, more for larger models"


def parts(s: ScaleSpec):
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"optim": {"warmup_steps": list(s.warmups)}}}})]


def judge(t: Tables, s: ScaleSpec):
    short, long = s.warmups
    stats = P.series_stats(t["main"], [W])
    pairs = P.compare_sensitivity(stats, W, short, long)
    gains = [a - b for a, b in pairs.values()]
    lower = [g > 0 for g in gains]
    measured = {f"LR sensitivity warmup {short} → {long}, per size": P.fmt_pairs(pairs),
                "reduction per size (small → large)": [round(g, 3) for g in gains]}
    if not lower:
        return "inconclusive", "no finished pairs of runs to compare", measured
    more_for_larger = gains[-1] > gains[0]
    if all(lower) and more_for_larger:
        return "true", (f"warmup {long} lowers LR sensitivity at every size, by {gains[0]:.3f} at "
                        f"the smallest and {gains[-1]:.3f} at the largest"), measured
    if not any(lower):
        return "false", f"longer warmup lowers LR sensitivity at no size ({P.fmt_pairs(pairs)})", measured
    return "inconclusive", (f"longer warmup lowers LR sensitivity at {sum(lower)}/{len(lower)} "
                            f"sizes; reduction {gains[0]:.3f} at the smallest vs {gains[-1]:.3f} "
                            "at the largest"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 3.8))
    for ax, w in zip(axs[:2], s.warmups):
        P.lr_loss_panel(ax, df[df[W] == w], f"warmup {w} steps")
    axs[0].set_ylabel("final eval loss (× diverged)")
    axs[1].sharey(axs[0])
    P.sensitivity_panel(axs[2], P.series_stats(df, [W]), W, lambda v: f"warmup {v}",
                        {s.warmups[0]: {"color": "C3"}, s.warmups[1]: {"color": "C0"}})
    axs[2].set_title("LR sensitivity", fontsize=10)
    fig.suptitle("Warm-up length: LR vs final loss and LR sensitivity", fontsize=11)
    fig.tight_layout()
    return fig


RESULT = Result("warmup", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
