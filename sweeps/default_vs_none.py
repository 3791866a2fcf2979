"""The §2.1 default vs none of its stabilisers (ours: no figure of the paper).

The paper's §2.1 default is the baseline of every figure: "We use an independent weight decay of
1e-4 and auxiliary z-loss with coefficient 1e-4", "pre-normalization Transformers with
qk-layernorm". Its §1 says of two of them: "These interventions—qk-layernorm and z-loss
regularization—reduce LR sensitivity and enable successful training across three orders of
magnitude of LR variation", and of the rest "the independent scaling of learning rate and weight
decay recommended by Loshchilov and Hutter" also reduces it. No figure of the paper removes all
three at once; this result does, as a summary of how much the baseline's stabilisers buy
together. It replaces the earlier `recipe` result (which also lengthened the warm-up).

Setup: the scale's baseline (qk-layernorm, z-loss 1e-4, independent decay λ=1e-4; its runs are
the baseline's own) against "none": qk-layernorm off, z-loss 0, and the common AdamW decay
("without independent decay we set λ=0.1", coupled to the LR as in PyTorch and Optax). Warm-up
(5% of the run) and everything else are the baseline's in both arms: warm-up is a schedule, not
one of the three stabilisers.

Verdict: the stabilisers lower LR sensitivity at every size (none − baseline, paired by seed:
every interval above 0 true, one below 0 false, else inconclusive).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt

from analysis.dashboard.panels import lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main

R = "model.qk_layernorm"  # the three stabilisers move together; qk-layernorm names the arm
CLAIM = ("ours, no paper figure: the §2.1 default (qk-layernorm, z-loss 1e-4, independent decay "
         "1e-4) lowers LR sensitivity at every size against none of these stabilisers")
NONE = {"model": {"qk_layernorm": False},
        "optim": {"z_loss": 0.0, "independent_wd": False, "weight_decay": 0.1}}
BASELINE = {"model": {"qk_layernorm": True},  # the scale's base: the same runs
            "optim": {"z_loss": 1e-4, "independent_wd": True, "weight_decay": 1e-4}}


def parts(s: ScaleSpec) -> List[Part]:
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "variants": [NONE, BASELINE]}})]


def label(v: Any) -> str:
    return "§2.1 default" if bool(v) else "none of its stabilisers"


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    stats = P.series_stats(t["main"], [R])
    effects = P.paired_effects(stats, R, False, True)  # none − default: > 0 when they help
    loss = P.paired_effects(stats, R, False, True, column="best_loss")
    reproduced, why = V.every_size_verdict(effects, "the §2.1 default")
    return reproduced, why, {
        "LR sensitivity none − default, per size (mean [95% interval])": effects,
        "LR sensitivity none → default (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, R, False, True)),
        "best loss none − default, per size": loss}


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, _ = P.comparison_figure(
        t["main"], R, [False, True], label,
        "Ours: none of the §2.1 stabilisers vs all (qk-layernorm, z-loss 1e-4, independent "
        "decay 1e-4)")
    fig.tight_layout()
    return fig


# The figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(R,)), sensitivity_vs_params()]

RESULT = Result("default_vs_none", CLAIM, parts, judge, figure, DASHBOARD, paper="ours")

if __name__ == "__main__":
    main(RESULT)
