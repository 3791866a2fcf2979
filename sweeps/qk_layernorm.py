"""qk-layernorm (paper Fig. 1-2): qk-layernorm off vs on, from the §2.1 baseline, across sizes.

The paper's statements (§3.1.1), judged separately:

(a) "Without qk-layernorm, the learning rate at which models diverge becomes smaller with
    increasing model size."
(b) "By contrast, models with qk-layernorm exhibit considerably lower LR sensitivity and train to
    low loss at high learning rates." (Fig. 1: "Qk-layernorm reduces LR sensitivity".)
(c) "Both with and without qk-layernorm, LR sensitivity increases with scale."

Setup: the scale's baseline is the paper's §2.1 default ("We use pre-normalization Transformers
with qk-layernorm", z-loss 1e-4, independent decay 1e-4); this part only toggles
`model.qk_layernorm` ("applies LayerNorm to the queries and keys before computing the attention
logits"), so its "on" arm is the baseline's own runs. LR sensitivity over [3e-4, 3e-1], the
paper's range ("we use the learning rate range 3e-4 to 3e-1").

Verdict: (b) is the figure's main claim and decides "false" and "inconclusive"; "true" also needs
(a) true (a main claim seen with (a) not seen is "inconclusive"). (c) is reported, not judged:
the paper's own Fig. 1 shows it, but at a proxy scale a grid of two or three sizes over less than
a decade of params rarely resolves a slope, and the figure's claim does not rest on it.

The rule pattern (`outcome`, `overall`) lives in sweeps/verdicts.py with every other rule.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec, lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main
from proxies.config import LR_KEY

QK = "model.qk_layernorm"
CLAIM = ("without qk-layernorm the highest LR that trains falls as size grows; qk-layernorm "
         "lowers LR sensitivity at every size (and LR sensitivity rises with size in both arms)")



def parts(s: ScaleSpec) -> List[Part]:
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"model": {"qk_layernorm": [False, True]}}}})]


def qk_label(v: Any) -> str:
    return "qk-layernorm" if bool(v) else "no qk-layernorm"


# --------------------------------------------------------------- (a) the highest LR that trains

def top_trained_lrs(df: pd.DataFrame) -> pd.DataFrame:
    """Per (size, seed): non-embedding params, the highest LR that trains, its log10."""
    df = P.with_seed(df)
    rows = [{P.SHAPE[0]: k[0], P.SHAPE[1]: k[1], P.SEED: k[2],
             "n_params_nonembed": float(g["n_params_nonembed"].max()),
             "top_lr": P.top_trained_lr(g)}
            for k, g in df.groupby(P.SHAPE + [P.SEED], sort=True)]
    out = pd.DataFrame(rows, columns=P.SHAPE + [P.SEED, "n_params_nonembed", "top_lr"])
    out["log10_top_lr"] = np.log10(out["top_lr"])
    return out.sort_values(["n_params_nonembed", P.SEED], ignore_index=True)


def slope_rounding_sd(top: pd.DataFrame, off: pd.DataFrame) -> float:
    """The sd a least-squares slope of grid-rounded log10 LRs over log10 params has from the
    rounding alone (`P.rounding_sd` / √Σ(x − x̄)²): its seeds' floor, so that seeds landing on
    the same grid LRs at every size do not make the slope exact."""
    x = np.log10(top["n_params_nonembed"].unique().astype(float))
    sxx = float(np.sum((x - x.mean()) ** 2))
    return P.rounding_sd(top["top_lr"], off[LR_KEY].unique()) / np.sqrt(sxx) if sxx > 0 else 0.0


def judge_top_lr(off: pd.DataFrame) -> Tuple[Reproduced, str, V.Effect, Dict[str, float]]:
    """(a): the slope of log10(highest LR that trains) per decade of params, without qk-LN,
    per seed, its seeds' sd at least the LR grid's rounding (`slope_rounding_sd`); the claim is a
    negative slope. Censored grids say so: when every size trains at the grid's highest LR the
    grid cannot show where divergence starts."""
    top = top_trained_lrs(off)
    by_size = {P.size_label(n): float(f"{10 ** g['log10_top_lr'].mean():.3g}")
               for n, g in top.groupby("n_params_nonembed", sort=True)}
    slope = V.with_sd_floor(P.trend_effect(top, "log10_top_lr"), slope_rounding_sd(top, off))
    grid_top = float(off[LR_KEY].max())
    if len(top) and (top["top_lr"] >= grid_top).all():
        return "inconclusive", (f"without qk-LN every size trains at the grid's highest LR "
                                f"{grid_top:g}: the grid cannot show where divergence starts"
                                ), slope, by_size
    r = V.outcome(slope, claimed=-1)
    word = {"true": "falls", "false": "does not fall"}.get(r, "may or may not fall")
    return r, (f"without qk-LN the highest LR that trains {word} with size (slope {slope} "
               "decades of LR per decade of params)"), slope, by_size


# ------------------------------------------------------------------------------- the verdict

def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    df = t["main"]
    stats = P.series_stats(df, [QK])
    on = stats[stats[QK].astype(bool)]
    off = stats[~stats[QK].astype(bool)]
    effects = P.paired_effects(stats, QK, False, True)  # off − on: > 0 when qk-LN lowers it
    b, b_why = V.every_size_verdict(effects, "qk-layernorm")
    a, a_why, slope, top_by_size = judge_top_lr(df[~df[QK].astype(bool)])
    trend_off, trend_on = P.trend_effect(off), P.trend_effect(on)
    verdict = V.overall(b, [a])
    measured = {
        "(b) LR sensitivity off − on per size, mean [95% interval] over seeds":
            effects,
        "(b) LR sensitivity off → on per size (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, QK, False, True)),
        "(a) highest LR that trains without qk-LN, per size (geometric seed mean)": top_by_size,
        "(a) its slope, decades of LR per decade of params": slope,
        "(c) LR sensitivity slope per decade of params, no qk-LN": trend_off,
        "(c) same with qk-LN": trend_on,
        "max attention logit at the highest LR without qk-LN, per size (median over seeds)":
            top_lr_logits(df),
        "verdict rule": "(b) decides false/inconclusive; true needs (a) true; (c) reported",
    }
    why = (f"(b) {b}: {b_why}; (a) {a}: {a_why}; (c) reported: without qk-LN "
           f"{V.trend_words(trend_off)}, with qk-LN {V.trend_words(trend_on)}")
    return verdict, why, measured


def top_lr_logits(df: pd.DataFrame) -> Dict[str, float]:
    """Max attention logit of the no-qk-LN runs at the grid's highest LR, per size."""
    off = df[~df[QK].astype(bool)]
    top = off[off[LR_KEY] == off[LR_KEY].max()]
    return {P.size_label(n): round(float(g["max_attn_logit"].median()), 1)
            for n, g in top.groupby("n_params_nonembed", sort=True)}


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, (ax,) = P.comparison_figure(df, QK, [False, True], qk_label,
                                     "qk-layernorm (paper Fig. 1-2): LR vs final loss, LR "
                                     "sensitivity, attention logits", extra=1)
    P.logit_vs_lr_panel(ax, df, QK, lambda v: "qk-LN" if bool(v) else "no qk-LN")
    ax.set_title("max attention logit (solid: no qk-LN)", fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(QK,)), sensitivity_vs_params(),
             PanelSpec("max attention logit vs LR", "summary:max_attn_logit", x="config:optim.lr",
                       log_x=True, log_y=True, colour="setting")]

RESULT = Result("qk_layernorm", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 1–2")

if __name__ == "__main__":
    main(RESULT)
