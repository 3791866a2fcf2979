"""Independent weight decay (paper Fig. 6, §3.2.2): independent λ=1e-4 vs coupled λ=0.1.

The paper: "Parameterizing weight decay independently of learning rate reduces LR sensitivity,
as illustrated in Figure 6." Loshchilov and Hutter "recommend the update" θ ← θ − s_t(ηΔ + λθ),
"which we refer to as independent decay", while "the default implementation in PyTorch or Optax"
scales both terms by η: θ ← θ − s_t·η(Δ + λθ) (the paper prints the decay term as −λθ). "When
using independent decay we set λ=1e-4, and without independent decay we set λ=0.1." And, for
the statistic: "When reporting LR sensitivity without independent decay in
Figure 6, we report the minimum LR sensitivity over ranges [1e-4, 1e-1] and [3e-4, 3e-1]
because the former is sometimes better centered on the minimum."

Setup: the independent arm is the scale's baseline (§2.1: "We use an independent weight decay of
1e-4", qk-layernorm, z-loss 1e-4), so its runs are the baseline's; the coupled arm changes only
the decay (`optim.independent_wd=false`, `optim.weight_decay=0.1`). The coupled arm's LR grid is
the scale's plus 1e-4, so that both of its ranges are on the grid; the independent arm keeps the
scale's grid and the paper's range [3e-4, 3e-1]. A range counts only when the grid has both of
its ends (the paper's grid has; a grid overridden to have neither falls back to [3e-4, 3e-1],
labelled); the range that gave each minimum is reported.

Verdict: independent decay lowers LR sensitivity at every size (coupled minimum − independent,
paired by seed, every interval above 0: true; one below 0: false; else inconclusive).

Note (ours, not the paper's): over the paper's 1e5 steps λ = 1e-4 shrinks weights by
e^(−Σ s_t λ) ≈ e^−5; over a proxy run of a few hundred steps it is almost no decay, so at the
laptop scale this compares coupled decay with nearly none; the verdict reports the total decay
each arm applies over the run.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main
from proxies.config import LR_KEY
from proxies.optim import learning_rate

IND = "optim.independent_wd"
CLAIM = ("independent weight decay (λ=1e-4) lowers LR sensitivity vs coupled decay (λ=0.1, "
         "its sensitivity the minimum over LR ranges [1e-4, 1e-1] and [3e-4, 3e-1]) at every "
         "size")
COUPLED = {"optim": {"independent_wd": False, "weight_decay": 0.1}}
INDEPENDENT = {"optim": {"independent_wd": True, "weight_decay": 1e-4}}  # the baseline's
COUPLED_RANGES: Tuple[Tuple[float, float], ...] = ((1e-4, 1e-1), (3e-4, 3e-1))
INDEPENDENT_RANGE = (3e-4, 3e-1)  # the paper's default range


def coupled_lrs(s: ScaleSpec) -> List[float]:
    """The scale's LR grid plus 1e-4, the low end of the coupled arm's first range."""
    return sorted(set(s.lrs) | {COUPLED_RANGES[0][0]})


def parts(s: ScaleSpec) -> List[Part]:
    # Two parts, so the independent (baseline) arm does not train an extra LR it never uses.
    return [Part("coupled", {"sweep": {"lrs": coupled_lrs(s), "sizes": s.sizes,
                                       "variants": [COUPLED]}}),
            Part("independent", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                           "variants": [INDEPENDENT]}})]


def wd_label(v: Any) -> str:
    return "independent λ=1e-4" if bool(v) else "coupled λ=0.1"


def on_grid(lrs: Sequence[float], r: Tuple[float, float]) -> bool:
    """Both ends of range `r` are grid LRs (a range the grid only partly covers would average
    fewer points than the paper's)."""
    return all(np.isclose(lrs, end, rtol=1e-6).any() for end in r)


def coupled_stats(df: pd.DataFrame) -> pd.DataFrame:
    """`P.series_stats` of the coupled runs with `lr_sensitivity` the minimum over the paper's
    two ranges (those on the grid) and `lr_range` the range that gave it."""
    lrs = df[LR_KEY].unique()
    # A grid overridden to miss both ranges' ends still gets a statistic (the paper's default
    # range, over the grid points inside it), labelled as such rather than failing the sweep.
    ranges = [r for r in COUPLED_RANGES if on_grid(lrs, r)] or [INDEPENDENT_RANGE]
    per = [P.series_stats(df, [IND], r).assign(
        lr_range=f"[{r[0]:g}, {r[1]:g}]" + ("" if on_grid(lrs, r) else " (partly on the grid)"))
        for r in ranges]
    both = pd.concat(per, ignore_index=True)
    best = both.groupby(P.SHAPE + [P.SEED])["lr_sensitivity"].idxmin()
    return both.loc[best].sort_values(["n_params_nonembed", P.SEED], ignore_index=True)


def total_decay(s: ScaleSpec, lr: float, independent: bool, weight_decay: float) -> float:
    """Σ over the run's updates of the decay each applies, on the scale's schedule at peak LR
    `lr`: s_t·λ independent, η_t·λ coupled (s_t = η_t / η). Decay alone shrinks the weights by
    e^−Σ."""
    o, steps = s.base["optim"], int(s.base["train"]["steps"])
    hp = {"lr": np.float32(lr), "min_lr": np.float32(o["min_lr"]),
          "warmup_steps": np.float32(o["warmup_steps"])}
    eta_t = np.asarray(learning_rate(np.arange(steps), hp, steps, "cosine"), np.float64)
    return float(np.sum(eta_t / lr if independent else eta_t) * weight_decay)


def decay_words(s: ScaleSpec, lrs: Sequence[float]) -> Dict[str, str]:
    """What each arm's decay does over a run: its Σ and the shrink e^−Σ."""
    ind = total_decay(s, 1e-2, True, INDEPENDENT["optim"]["weight_decay"])  # any LR: s_t
    coupled = {lr: total_decay(s, lr, False, COUPLED["optim"]["weight_decay"]) for lr in lrs}
    lo, hi = min(coupled), max(coupled)
    return {"independent λ=1e-4": f"Σ = {ind:.3g} (weights × {np.exp(-ind):.3g})",
            f"coupled λ=0.1, LR {lo:g} … {hi:g}": (
                f"Σ = {coupled[lo]:.3g} … {coupled[hi]:.3g} (weights × {np.exp(-coupled[lo]):.3g}"
                f" … {np.exp(-coupled[hi]):.3g})")}


def all_stats(t: Tables) -> pd.DataFrame:
    """Coupled (minimum over its ranges) and independent ([3e-4, 3e-1]) series statistics."""
    ind = P.series_stats(t["independent"], [IND], INDEPENDENT_RANGE)
    return pd.concat([coupled_stats(t["coupled"]),
                      ind.assign(lr_range=f"[{INDEPENDENT_RANGE[0]:g}, "
                                          f"{INDEPENDENT_RANGE[1]:g}]")], ignore_index=True)


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    stats = all_stats(t)
    effects = P.paired_effects(stats, IND, False, True)  # coupled − independent
    reproduced, why = V.every_size_verdict(effects, "independent decay (λ=1e-4)")
    coupled = stats[~stats[IND].astype(bool)]
    ranges = {P.size_label(n): ", ".join(f"{r}×{c}" for r, c in
                                         g["lr_range"].value_counts().sort_index().items())
              for n, g in coupled.groupby("n_params_nonembed", sort=True)}
    measured = {
        "LR sensitivity coupled (min over two ranges) − independent, per size (mean [95% "
        "interval])": effects,
        "LR sensitivity coupled → independent (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, IND, False, True)),
        "range giving the coupled minimum, per size (× seeds)": ranges,
        "total decay over the run, from decay alone": decay_words(s, coupled_lrs(s)),
    }
    return reproduced, why, measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 3.8))
    for ax, part in zip(axs[:2], ("coupled", "independent")):
        P.lr_loss_panel(ax, t[part], wd_label(part == "independent"))
    axs[0].set_ylabel("final eval loss (× diverged)")
    P.same_y(axs[:2])
    lo = min(ax.get_xlim()[0] for ax in axs[:2])  # one LR axis: the coupled grid adds 1e-4
    hi = max(ax.get_xlim()[1] for ax in axs[:2])
    for ax in axs[:2]:
        ax.set_xlim(lo, hi)
    P.sensitivity_panel(axs[2], all_stats(t), IND, wd_label,
                        {False: {"color": "C3"}, True: {"color": "C0"}})
    axs[2].set_title("LR sensitivity (coupled: min over [1e-4, 1e-1], [3e-4, 3e-1])",
                     fontsize=9)
    fig.suptitle("Weight decay coupled to the LR vs independent of it (paper Fig. 6)",
                 fontsize=11)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss("LR vs final eval loss, coupled λ=0.1", part="coupled"),
             lr_vs_loss("LR vs final eval loss, independent λ=1e-4", part="independent"),
             sensitivity_vs_params("LR sensitivity over [3e-4, 3e-1], coupled", part="coupled"),
             sensitivity_vs_params("LR sensitivity over [3e-4, 3e-1], independent",
                                   part="independent")]

RESULT = Result("weight_decay", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 6")

if __name__ == "__main__":
    main(RESULT)
