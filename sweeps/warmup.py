"""Warm-up (paper Fig. 5, §3.2.1): short vs long warm-up from the §2.1 baseline, steps fixed.

The paper: "As illustrated by Figure 5, a longer warm-up period reduces LR sensitivity. This is
most clear for the larger models, which are not stable at LR 3e-1 without long warm-up. The
number of total steps is fixed to 1e5 in this experiment, and all models use qk-layernorm."
Caption: "Longer warm-up reduces LR sensitivity and loss, especially for the larger models we
test."

Setup: the scale's baseline (qk-layernorm, z-loss 1e-4, independent decay 1e-4; "The default
warmup is 5e3 steps, and the default number of total steps is 1e5") with `optim.warmup_steps`
at the scale's two lengths `ScaleSpec.warmups`: the short one is the baseline's 5% of the run
(so that arm is the baseline's own runs), the long one 4× it. The run length is the scale's
(steps fixed, as the paper's). The paper's text does not state Fig. 5's lengths (they are in the
figure's legend); it fixes only the total, 1e5 steps. It hints that the default 5e3 may be the
long arm rather than the short one: with it "qk-layernorm allows training a model with 1.2B
parameters at learning rate 0.3" (Fig. 1), while Fig. 5's larger models "are not stable at LR
3e-1 without long warm-up". `ScaleSpec.warmups` (sweeps/core.py) holds the lengths.

Verdict, each part a paired difference short − long per seed with its interval:
- main (decides false / inconclusive): the longer warm-up lowers LR sensitivity at the largest
  size, where the paper says the effect is clearest;
- required for true: the reduction grows with size (its slope per decade of params is above 0:
  "most clear for the larger models"), and the longer warm-up lowers the best loss at the
  largest size ("reduces LR sensitivity and loss").
Every size's difference is reported.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import pandas as pd

from analysis.dashboard.panels import lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main
from sweeps.verdicts import outcome, overall, trend_words

W = "optim.warmup_steps"
CLAIM = ("a longer warm-up lowers LR sensitivity and loss, most for the larger models "
         "(steps fixed)")


def parts(s: ScaleSpec) -> List[Part]:
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"optim": {"warmup_steps": list(s.warmups)}}}})]


def paired_table(stats: pd.DataFrame, by: str, a: Any, b: Any, column: str) -> pd.DataFrame:
    """Per (size, seed): non-embedding params and `column` under `a` minus under `b` (the
    per-seed differences `P.paired_effects` summarises, kept for a trend over size)."""
    stats = P.with_seed(stats)
    keys = P.SHAPE + [P.SEED]
    va = stats[stats[by] == a].set_index(keys)[column]
    vb = stats[stats[by] == b].set_index(keys)[column]
    n = stats.groupby(keys)["n_params_nonembed"].min()
    both = va.index.intersection(vb.index)
    return pd.DataFrame({"n_params_nonembed": n[both], column: va[both] - vb[both]}
                        ).reset_index()


def loss_gain_by_lr(df: pd.DataFrame, short: int, long: int) -> Dict[str, Dict[str, float]]:
    """{size: {LR: counted final loss, short − long, seed mean}}: where along the LR axis the
    longer warm-up helps (LR sensitivity averages it all)."""
    out = {}
    for n, g in df.groupby("n_params_nonembed", sort=True):
        curves = {w: P.seed_mean_curve(gw) for w, gw in g.groupby(W)}
        if short in curves and long in curves:
            (lrs, ls, _), (lrl, ll, _) = curves[short], curves[long]
            sl, lo = pd.Series(ls, lrs), pd.Series(ll, lrl)
            out[P.size_label(n)] = {f"{lr:g}": round(float(d), 3)
                                    for lr, d in (sl - lo).dropna().items()}
    return out


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    short, long = s.warmups
    df = t["main"]
    stats = P.series_stats(df, [W])
    sens = P.paired_effects(stats, W, short, long)  # > 0: the long warm-up lowers it
    loss = P.paired_effects(stats, W, short, long, column="best_loss")
    if not sens:
        return "inconclusive", "no size has finished runs of both warm-ups", {}
    largest = list(sens)[-1]
    main_r = outcome(sens[largest])
    slope = P.trend_effect(paired_table(stats, W, short, long, "lr_sensitivity"))
    trend_r = outcome(slope)
    loss_r = outcome(loss[largest]) if largest in loss else "inconclusive"
    measured = {
        f"LR sensitivity, warm-up {short} − {long}, per size (mean [95% interval])":
            sens,
        f"LR sensitivity, warm-up {short} → {long} (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, W, short, long)),
        "slope of that reduction per decade of params": slope,
        f"best loss, warm-up {short} − {long}, per size": loss,
        "counted final loss short − long by LR (seed means)": loss_gain_by_lr(df, short, long),
        "verdict rule": ("sensitivity at the largest size decides false/inconclusive; true "
                         "needs the reduction to grow with size and the best loss to drop"),
    }
    why = (f"at the largest size ({largest}) warm-up {long} vs {short} lowers LR sensitivity: "
           f"{main_r} ({sens[largest]}); the reduction grows with size: {trend_r} ("
           f"{trend_words(slope, 'the reduction')}); it lowers the best loss there: {loss_r} ("
           f"{loss.get(largest, 'no pair')})")
    return overall(main_r, [trend_r, loss_r]), why, measured


def warmup_label(v: Any) -> str:
    return f"warm-up {int(v)} step{'' if int(v) == 1 else 's'}"


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, _ = P.comparison_figure(t["main"], W, list(s.warmups), warmup_label,
                                 "Warm-up length (paper Fig. 5): LR vs final loss and LR "
                                 f"sensitivity, {s.base['train']['steps']} steps")
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(W,)), sensitivity_vs_params()]

RESULT = Result("warmup", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 5")

if __name__ == "__main__":
    main(RESULT)
