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
    pairs = P.compare_sensitivity(P.series_stats(t["main"], [IND]), IND, False, True)
    reproduced, why = P.sensitivity_verdict(pairs, "independent decay")
    return reproduced, why, {"LR sensitivity coupled → independent, per size": P.fmt_pairs(pairs)}


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, _ = P.comparison_figure(t["main"], IND, [False, True], wd_label,
                                 "Weight decay, coupled to the LR vs independent of it")
    fig.tight_layout()
    return fig


RESULT = Result("weight_decay", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
