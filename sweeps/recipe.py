"""The paper's recipe (Fig. 11-style): qk-layernorm, z-loss 1e-4, independent weight decay and
a long warmup together, against none of them: LR sensitivity across sizes."""

from __future__ import annotations

import matplotlib.pyplot as plt

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
    lower = [b < a for a, b in pairs.values()]
    best = stats.groupby(R)["best_loss"].min().to_dict()
    measured = {"LR sensitivity none → full recipe, per size": P.fmt_pairs(pairs),
                "best loss, none / full": [round(best.get(False, float("nan")), 3),
                                           round(best.get(True, float("nan")), 3)]}
    if lower and all(lower):
        return "true", f"the full recipe lowers LR sensitivity at every size ({P.fmt_pairs(pairs)})", measured
    if lower and not any(lower):
        return "false", f"the full recipe lowers LR sensitivity at no size ({P.fmt_pairs(pairs)})", measured
    return "inconclusive", (f"the full recipe lowers LR sensitivity at {sum(lower)}/{len(lower)} "
                            f"sizes ({P.fmt_pairs(pairs)})"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 3.8))
    for ax, v in zip(axs[:2], (False, True)):
        P.lr_loss_panel(ax, df[df[R].astype(bool) == v], label(v))
    axs[0].set_ylabel("final eval loss (× diverged)")
    axs[1].sharey(axs[0])
    P.sensitivity_panel(axs[2], P.series_stats(df, [R]), R, label,
                        {False: {"color": "C3"}, True: {"color": "C0"}})
    axs[2].set_title("LR sensitivity", fontsize=10)
    fig.suptitle("The recipe: qk-layernorm + z-loss + independent weight decay + long warm-up",
                 fontsize=11)
    fig.tight_layout()
    return fig


RESULT = Result("recipe", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
