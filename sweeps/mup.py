"""μParam (paper §3.2.4, Fig. 8; Fig. E.4 without qk-layernorm): standard parametrization (SP)
vs μParam (simple) across widths at a fixed depth, from the §2.1 baseline (qk-layernorm on,
z-loss 1e-4, independent decay 1e-4).

The paper: "As illustrated by Figure 8, μParam does succeed in stabilizing the optimal LR at the
scale we test. However, μParam does not improve loss or reduce LR sensitivity in our
experiments." Its variant: "For μParam (simple) we make the following changes from our standard
baseline: scale the LR for linear layers by base-fan-in/fan-in", with base-fan-in "the fan-in
values for the smallest model we test" (`model.parametrization=mup_simple`, base =
`model.mup_base_width` = the scale's smallest width; proxies/optim.py). The fuller
`parametrization=mup` is close to the paper's μParam (full), Fig. E.5, and is not run here.
Fig. E.4 repeats the comparison without qk-layernorm: μParam does not remove the need for it
at high LR (paper: it "does not alleviate the need for" qk-layernorm).

The claim has two halves, and the verdict needs both (true when both are true, false when
either is false, inconclusive otherwise); every statistic is per seed with a t interval
over seeds (sweeps/verdicts.py), and every threshold below is fixed before any data:

(A) the best LR stays put under μParam (simple): the slope of log10(interpolated best LR) per
    doubling of width, per seed. True when its interval lies inside ±DRIFT_MARGIN, false when it
    lies wholly outside, else inconclusive. SP's slope is reported beside it.
(B) loss and LR sensitivity are not improved: per seed, SP minus μParam (simple) averaged over
    the widths above the base (at the base the two are the same model), for LR sensitivity and
    for the best loss (positive = μParam better). Each is "not improved" (true) when its interval
    lies below NEGLIGIBLE, "improved" (false) when it lies above, else inconclusive; (B) is true
    when both are, false when either is false.

Fig. E.4 (no qk-layernorm) is a second part with its own line in `measured`, never the verdict:
does qk-layernorm still lower LR sensitivity under μParam (simple) at every width
(`panels.every_size_verdict` on no-qk-LN minus qk-LN, paired by seed)?
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from analysis.dashboard.panels import lr_vs_loss, sensitivity_vs_params
from analysis.figures import log_axes
from proxies.config import Parametrization, unhandled
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main

MP = "model.parametrization"
QK = "model.qk_layernorm"
WIDTH = "model.d_model"
SP, MUP = "sp", "mup_simple"
CLAIM = ("with qk-layernorm, μParam (simple) keeps the best LR put across widths, but does not "
         "improve loss or LR sensitivity over SP")

# (A) The best LR "stays put" when it moves less than half the drift SP's Adam rule predicts:
# under SP the best Adam LR falls ∝ 1/width, log10(2) ≈ 0.30 decades per doubling of width, and
# μParam's is flat (0). Half-way between the two (0.15 decades ≈ a factor √2 per doubling)
# separates "put" from "moves like SP".
DRIFT_MARGIN = 0.5 * float(np.log10(2.0))
# (B) An improvement below 0.01 nats, in LR sensitivity or in the best loss, is no improvement:
# the smallest differences between interventions measured at laptop scale (0.010-0.013 in LR
# sensitivity) are what a change of seed moves, so a smaller gain is not one a
# reader of the paper's figures could see or rely on.
NEGLIGIBLE = 0.01


def parts(s: ScaleSpec) -> List[Part]:
    """SP and μParam (simple) at the scale's widths (fixed depth, fixed head dim); the main part
    keeps the baseline's qk-layernorm, Fig. E.4 turns it off."""
    base_width = s.widths[0]["d_model"]
    sweep = {"lrs": s.lrs, "sizes": s.widths, "variants": [
        {"model": {"parametrization": SP}},
        {"model": {"parametrization": MUP, "mup_base_width": base_width}}]}
    return [Part("main", {"sweep": sweep}),
            Part("no_qk_layernorm", {"model": {"qk_layernorm": False}, "sweep": sweep})]


def label(v: Parametrization | str) -> str:
    match v:
        case Parametrization.mup_simple:
            return "μP (simple)"
        case Parametrization.mup:
            return "μP (full)"
        case Parametrization.sp:
            return "SP"
        case _:
            unhandled(MP, v)


def colour(v: Parametrization | str) -> str:
    match v:
        case Parametrization.mup_simple:
            return "C0"
        case Parametrization.mup:
            return "C2"
        case Parametrization.sp:
            return "C3"
        case _:
            unhandled(MP, v)


# --------------------------------------------------------------------- rules on intervals







# ------------------------------------------------------------------------------ statistics

def drift_slopes(stats: pd.DataFrame, arm: str) -> pd.Series:
    """Per seed: slope of log10(interpolated best LR) vs log2(width), decades per doubling."""
    g = P.with_seed(stats)
    g = g[g[MP] == arm].dropna(subset=["best_lr_interp"])
    out = {}
    for seed, s in g.groupby(P.SEED):
        if s[WIDTH].nunique() >= 2:
            x, y = np.log2(s[WIDTH].to_numpy(float)), np.log10(s["best_lr_interp"].to_numpy(float))
            out[seed] = float(np.polyfit(x, y, 1)[0])
    return pd.Series(out, dtype=float)


def improvement(stats: pd.DataFrame, column: str, base_width: int) -> V.Effect:
    """SP minus μParam (simple) in `column`, averaged over the widths above the base, per seed
    (positive: μParam is better), with its interval."""
    g = P.with_seed(stats)
    g = g[g[WIDTH] > base_width]
    wide = g.pivot_table(index=[P.SEED, WIDTH], columns=MP, values=column)
    if SP not in wide.columns or MUP not in wide.columns:
        return V.interval([])
    per_seed = (wide[SP] - wide[MUP]).dropna().groupby(level=0).mean()
    return V.interval(per_seed.astype(float))


# The verdict's sub-claims: (A) the best LR's drift, (B) loss and LR sensitivity not improved.
PARTS = 3


def judge_best_lr(stats: pd.DataFrame) -> Tuple[Reproduced, str, V.Effect, V.Effect]:
    mup, sp = V.interval(drift_slopes(stats, MUP)), V.interval(drift_slopes(stats, SP))
    r = V.within(mup, DRIFT_MARGIN, parts=PARTS)
    word = {"true": "stays put", "false": "moves"}.get(r, "may or may not stay put")
    return r, (f"under μP (simple) the best LR {word}: {mup} decades per doubling of width "
               f"(put: within ±{DRIFT_MARGIN:.2f}; SP {sp})"), mup, sp


def judge_not_improved(stats: pd.DataFrame, base_width: int
                       ) -> Tuple[Reproduced, str, Dict[str, V.Effect]]:
    eff = {"LR sensitivity": improvement(stats, "lr_sensitivity", base_width),
           "best loss": improvement(stats, "best_loss", base_width)}
    rs = {k: V.below(e, NEGLIGIBLE, parts=PARTS) for k, e in eff.items()}
    r = V.all_of(list(rs.values()))
    words = {"true": "not improved", "false": "improved", "inconclusive": "improved?"}
    why = "; ".join(f"{k} {words[rs[k]]} (SP − μP {e})" for k, e in eff.items())
    return r, f"{why} (improved: above {NEGLIGIBLE})", eff


def judge_e4(off: pd.DataFrame, on: pd.DataFrame) -> Tuple[Reproduced, str, Dict[str, Any]]:
    """Fig. E.4: under μParam (simple), LR sensitivity without minus with qk-layernorm per
    width, paired by seed (positive: qk-layernorm is still needed)."""
    if off.empty:
        return "inconclusive", "no finished runs without qk-layernorm", {}
    both = pd.concat([off.assign(**{QK: False}), on.assign(**{QK: True})], ignore_index=True)
    stats = P.series_stats(both[both[MP] == MUP], [QK])
    effects = P.paired_effects(stats, QK, False, True)
    r, why = V.every_size_verdict(effects, "qk-layernorm under μP (simple)")
    return r, why, effects


def by_width(stats: pd.DataFrame, column: str, digits: int = 3) -> Dict[str, Dict[int, float]]:
    """{arm: {width: seed mean of `column`}}."""
    m = P.seed_mean(stats, [MP])
    return {label(a): {int(d): round(float(v), digits) for d, v in zip(g[WIDTH], g[column])}
            for a, g in m.groupby(MP)}


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    base_width = int(s.widths[0]["d_model"])
    stats = P.series_stats(t["main"], [MP])
    a, a_why, mup, sp = judge_best_lr(stats)
    b, b_why, better = judge_not_improved(stats, base_width)
    e4, e4_why, e4_effects = judge_e4(t.get("no_qk_layernorm", pd.DataFrame()), t["main"])
    spread = P.seed_mean(stats, [MP])["lr_sensitivity_sd"]
    measured = {
        "(A) best LR stays put under μP (simple)": f"{a}: {a_why}",
        "(A) best-LR drift, decades per doubling of width": {"μP (simple)": mup, "SP": sp},
        "(B) loss and LR sensitivity not improved": f"{b}: {b_why}",
        "(B) SP − μP (simple), mean over the widths above the base": better,
        "best LR by width, interpolated (seed mean)": by_width(stats, "best_lr_interp", 4),
        "LR sensitivity by width (seed mean)": by_width(stats, "lr_sensitivity"),
        "best loss by width (seed mean)": by_width(stats, "best_loss"),
        "seed spread of LR sensitivity (sd, median over series)":
            round(float(np.nanmedian(spread)), 4) if spread.notna().any() else "1 seed",
        "Fig. E.4, no qk-layernorm (second part, not the verdict)": f"{e4}: {e4_why}",
        "Fig. E.4: LR sensitivity no qk-LN − qk-LN under μP (simple), per size": e4_effects,
        "verdict rule": "true when (A) and (B) are true, false when either is false",
    }
    return V.all_of([a, b]), f"(A) {a}: {a_why}. (B) {b}: {b_why}", measured


# -------------------------------------------------------------------------------- the figure

def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    rows = [("main", "qk-layernorm (Fig. 8)")]
    if not t.get("no_qk_layernorm", pd.DataFrame()).empty:
        rows.append(("no_qk_layernorm", "no qk-layernorm (Fig. E.4)"))
    fig, axs = plt.subplots(len(rows), 4, figsize=(17.5, 3.9 * len(rows)), squeeze=False)
    for ax_row, (part, title) in zip(axs, rows):
        draw_row(ax_row, t[part], title)
    df = t["main"]
    fig.suptitle(f"μParam (simple) vs SP across widths at depth "
                 f"{int(df['model.n_layers'].iloc[0]) if len(df) else '?'} "
                 f"(base width {s.widths[0]['d_model']}); seed means, bars ± 1 sd", fontsize=11)
    fig.tight_layout()
    return fig


def draw_row(axs: Sequence[plt.Axes], df: pd.DataFrame, title: str) -> None:
    width = lambda d: f"d={int(d)}"  # noqa: E731
    for ax, arm in zip(axs[:2], (SP, MUP)):
        P.lr_loss_panel(ax, df[df[MP] == arm], f"{label(arm)}, {title}", by=WIDTH, label=width,
                        legend_title="width")
    axs[0].set_ylabel("final eval loss (× diverged)")
    P.same_y(axs[:2])
    if df.empty:
        return
    stats = P.series_stats(df, [MP])
    m = P.seed_mean(stats, [MP])
    widths = sorted(int(d) for d in df[WIDTH].unique())
    for arm, g in m.groupby(MP):
        g = g.sort_values(WIDTH)
        c = colour(arm)
        axs[2].plot(g[WIDTH], g["best_lr_interp"], "o-", color=c, label=label(arm))
        per_seed = stats[stats[MP] == arm]  # each seed's best LR, so its spread shows
        axs[2].plot(per_seed[WIDTH], per_seed["best_lr_interp"], ".", color=c, alpha=0.4)
        axs[3].errorbar(g[WIDTH], g["lr_sensitivity"], yerr=g["lr_sensitivity_sd"], fmt="o-",
                        capsize=3, color=c, label=label(arm))
    log_axes(axs[2], x=False, y=True)
    axs[2].set_ylabel("best LR (interpolated)")
    axs[3].set_ylabel("LR sensitivity")
    for ax, name in zip(axs[2:], ("best LR vs width", "LR sensitivity vs width")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("width d_model")
        ax.set_title(f"{name}, {title}", fontsize=10)
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.legend(fontsize=8)


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(MP,)),
             sensitivity_vs_params("LR sensitivity vs width", x="config:model.d_model")]

RESULT = Result("mup", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 8")

if __name__ == "__main__":
    main(RESULT)
