"""qk-layernorm (paper Fig. 1): without it attention logits grow with LR and size and the loss
degrades at high LR; with it LR sensitivity is lower at every size."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from analysis.dashboard import PanelSpec, lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

QK = "model.qk_layernorm"
CLAIM = ("without qk-layernorm, attention logits grow with LR and size and loss degrades at "
         "high LR; qk-layernorm lowers LR sensitivity at every size")


def parts(s: ScaleSpec):
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"model": {"qk_layernorm": [False, True]}}}})]


def qk_label(v) -> str:
    return "qk-layernorm" if bool(v) else "no qk-layernorm"


def judge(t: Tables, s: ScaleSpec):
    df = t["main"]
    stats = P.series_stats(df, [QK])
    pairs = P.compare_sensitivity(stats, QK, False, True)
    off = df[~df[QK].astype(bool)]
    top_lr = off["optim.lr"].max()
    at_top = off[off["optim.lr"] == top_lr].sort_values("n_params_nonembed")
    largest = off[off["n_params_nonembed"] == off["n_params_nonembed"].max()]
    by_lr = largest.sort_values("optim.lr")["max_attn_logit"].to_list()
    grows_size = P.monotone_increasing(at_top["max_attn_logit"].to_list())
    grows_lr = len(by_lr) > 1 and np.nanmax(by_lr) > 10 * by_lr[0] and by_lr[-1] > by_lr[0]
    lower = [b < a for a, b in pairs.values()]
    measured = {"LR sensitivity off → on, per size": P.fmt_pairs(pairs),
                f"max attention logit at LR {top_lr:g}, no qk-LN, by size":
                    [round(x, 1) for x in at_top["max_attn_logit"]],
                "max attention logit vs LR, largest size, no qk-LN": [round(x, 1) for x in by_lr]}
    if lower and all(lower) and grows_size and grows_lr:
        return "true", (f"qk-layernorm lowers LR sensitivity at all {len(pairs)} sizes "
                        f"({P.fmt_pairs(pairs)}), and without it the max attention logit grows "
                        "with LR and with size"), measured
    if lower and not any(lower):
        return "false", (f"qk-layernorm does not lower LR sensitivity at any size "
                         f"({P.fmt_pairs(pairs)})"), measured
    return "inconclusive", (f"LR sensitivity lower with qk-layernorm at {sum(lower)}/{len(lower)} "
                            f"sizes; logit growth with size {'seen' if grows_size else 'not seen'}"
                            f", with LR {'seen' if grows_lr else 'not seen'}"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, (ax,) = P.comparison_figure(df, QK, [False, True], qk_label,
                                     "qk-layernorm: LR vs final loss, LR sensitivity, attention "
                                     "logits", extra=1)
    P.logit_vs_lr_panel(ax, df, QK, lambda v: "qk-LN" if bool(v) else "no qk-LN")
    ax.set_title("max attention logit (solid: no qk-LN)", fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(QK,)), sensitivity_vs_params(),
             PanelSpec("max attention logit vs LR", "summary:max_attn_logit", x="config:optim.lr",
                       log_x=True, log_y=True, colour="setting")]

RESULT = Result("qk_layernorm", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
