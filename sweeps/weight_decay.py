"""Independent weight decay (paper §3.2.2): decaying by λ, not η·λ, lowers LR sensitivity.

Coupled is AdamW as optax/PyTorch do it with its usual λ = 0.1 (θ ← θ − s_t·η·(Δ + λθ));
independent is the paper's λ = 1e-4 (θ ← θ − s_t·η·Δ − s_t·λ·θ). The two match at η = 1e-3.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

IND = "optim.independent_wd"
CLAIM = "independent weight decay lowers LR sensitivity vs coupled (η-scaled) decay"
COUPLED = {"optim": {"independent_wd": False, "weight_decay": 0.1}}
INDEPENDENT = {"optim": {"independent_wd": True, "weight_decay": 1e-4}}


def parts(s: ScaleSpec):
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "variants": [COUPLED, INDEPENDENT]}})]


def wd_label(v) -> str:
    return "independent λ=1e-4" if bool(v) else "coupled λ=0.1"


def judge(t: Tables, s: ScaleSpec):
    stats = P.series_stats(t["main"], [IND])
    pairs = P.compare_sensitivity(stats, IND, False, True)
    lower = [b < a for a, b in pairs.values()]
    measured = {"LR sensitivity coupled → independent, per size": P.fmt_pairs(pairs)}
    if lower and all(lower):
        return "true", f"independent decay lowers LR sensitivity at every size ({P.fmt_pairs(pairs)})", measured
    if lower and not any(lower):
        return "false", f"independent decay lowers LR sensitivity at no size ({P.fmt_pairs(pairs)})", measured
    return "inconclusive", (f"independent decay lowers LR sensitivity at {sum(lower)}/{len(lower)} "
                            f"sizes ({P.fmt_pairs(pairs)})"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 3.8))
    for ax, ind in zip(axs[:2], (False, True)):
        P.lr_loss_panel(ax, df[df[IND].astype(bool) == ind], wd_label(ind))
    axs[0].set_ylabel("final eval loss (× diverged)")
    axs[1].sharey(axs[0])
    P.sensitivity_panel(axs[2], P.series_stats(df, [IND]), IND, wd_label,
                        {False: {"color": "C3"}, True: {"color": "C0"}})
    axs[2].set_title("LR sensitivity", fontsize=10)
    fig.suptitle("Weight decay, coupled to the LR vs independent of it", fontsize=11)
    fig.tight_layout()
    return fig


RESULT = Result("weight_decay", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
