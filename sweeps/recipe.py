"""The paper's recipe (Fig. 11-style): qk-layernorm, z-loss 1e-4, independent weight decay and
a long warmup together, against none of them: LR sensitivity across sizes."""

from __future__ import annotations

import matplotlib.pyplot as plt

from analysis.dashboard import lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

R = "model.qk_layernorm"  # every knob moves together; qk-layernorm names the variant
CLAIM = ("the paper's full recipe (qk-LN, z-loss, independent WD, long warmup) vs none of it: "
         "LR sensitivity across sizes")


def variants(s: ScaleSpec):
    none = {"model": {"qk_layernorm": False},
            "optim": {"z_loss": 0.0, "independent_wd": False, "weight_decay": 0.1,
                      "warmup_steps": s.warmups[0]}}
    full = {"model": {"qk_layernorm": True},
            "optim": {"z_loss": 1e-4, "independent_wd": True, "weight_decay": 1e-4,
                      "warmup_steps": s.warmups[1]}}
    return [none, full]


def parts(s: ScaleSpec):
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes, "variants": variants(s)}})]


def label(v) -> str:
    return "full recipe" if bool(v) else "none of it"


def judge(t: Tables, s: ScaleSpec):
    stats = P.series_stats(t["main"], [R])
    pairs = P.compare_sensitivity(stats, R, False, True)
    best = stats.groupby(R)["best_loss"].min().to_dict()
    reproduced, why = P.sensitivity_verdict(pairs, "the full recipe")
    return reproduced, why, {"LR sensitivity none → full recipe, per size": P.fmt_pairs(pairs),
                             "best loss, none / full": [round(best.get(False, float("nan")), 3),
                                                        round(best.get(True, float("nan")), 3)]}


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, _ = P.comparison_figure(
        t["main"], R, [False, True], label,
        "The recipe: qk-layernorm + z-loss + independent weight decay + long warm-up")
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(R,)), sensitivity_vs_params()]

RESULT = Result("recipe", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
