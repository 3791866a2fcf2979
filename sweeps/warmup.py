"""Warm-up (paper §3.2.1): a longer warm-up lowers LR sensitivity, more so for larger models."""

from __future__ import annotations

import matplotlib.pyplot as plt

from analysis.dashboard import lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

W = "optim.warmup_steps"
CLAIM = "longer warmup lowers LR sensitivity, more for larger models"


def parts(s: ScaleSpec):
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"optim": {"warmup_steps": list(s.warmups)}}}})]


def loss_gain_by_lr(df, short: int, long: int) -> dict:
    """{size: {LR: final loss with the short warmup − with the long}}: where along the LR axis
    the longer warmup helps (the sensitivity statistic averages it all)."""
    out = {}
    for n, g in df.groupby("n_params_nonembed", sort=True):
        p = g.pivot_table(index="optim.lr", columns=W, values="final_eval_ce")
        if short in p.columns and long in p.columns:
            out[P.size_label(n)] = {f"{lr:g}": round(float(d), 3)
                                    for lr, d in (p[short] - p[long]).items()}
    return out


def judge(t: Tables, s: ScaleSpec):
    short, long = s.warmups
    stats = P.series_stats(t["main"], [W])
    pairs = P.compare_sensitivity(stats, W, short, long)
    gains = [a - b for a, b in pairs.values()]
    lower = [g > 0 for g in gains]
    measured = {f"LR sensitivity warmup {short} → {long}, per size": P.fmt_pairs(pairs),
                "reduction per size (small → large)": [round(g, 3) for g in gains],
                "final-loss reduction by LR, per size": loss_gain_by_lr(t["main"], short, long)}
    if not lower:
        return "inconclusive", "no finished pairs of runs to compare", measured
    more_for_larger = gains[-1] > gains[0]
    if all(lower) and more_for_larger:
        return "true", (f"warmup {long} lowers LR sensitivity at every size, by {gains[0]:.3f} at "
                        f"the smallest and {gains[-1]:.3f} at the largest"), measured
    if not any(lower):
        return "false", (f"longer warmup lowers LR sensitivity at no size "
                         f"({P.fmt_pairs(pairs)})"), measured
    return "inconclusive", (f"longer warmup lowers LR sensitivity at {sum(lower)}/{len(lower)} "
                            f"sizes; reduction {gains[0]:.3f} at the smallest vs {gains[-1]:.3f} "
                            "at the largest"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, _ = P.comparison_figure(t["main"], W, list(s.warmups), lambda v: f"warmup {v} steps",
                                 "Warm-up length: LR vs final loss and LR sensitivity")
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(W,)), sensitivity_vs_params()]

RESULT = Result("warmup", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
