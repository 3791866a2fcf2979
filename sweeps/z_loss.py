"""z-loss (paper §3.1.2): without weight decay, output logits diverge (log Z drifts far from 0)
at high LR; z-loss 1e-4 keeps log Z near 0 and prevents it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from analysis.dashboard import PanelSpec, lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

Z = "optim.z_loss"
CLAIM = ("without weight decay, output logits diverge (log Z drifts far from 0) at high LR; "
         "z-loss 1e-4 prevents it")


def parts(s: ScaleSpec):
    return [Part("main", {"optim": {"weight_decay": 0.0},
                          "sweep": {"lrs": s.lrs, "sizes": s.sizes,
                                    "axes": {"optim": {"z_loss": [0.0, 1e-4]}}}})]


def z_label(v) -> str:
    return f"z-loss {v:g}" if v else "no z-loss"


def final_log_z(df):
    """Mean log Z at the last probe of each run (NaN where never probed)."""
    curves = [P.curve(r, "logits/log_z_mean") for _, r in df.iterrows()]
    return np.array([c.iloc[-1] if len(c) else np.nan for c in curves])


def judge(t: Tables, s: ScaleSpec):
    df = t["main"].copy()
    df["final_log_z"] = final_log_z(df)
    stats = P.series_stats(df, [Z])
    pairs = P.compare_sensitivity(stats, Z, 0.0, 1e-4)
    big = df[df["n_params_nonembed"] == df["n_params_nonembed"].max()]
    high = big[big["optim.lr"] >= sorted(big["optim.lr"].unique())[-2]]
    lz_off = high.loc[high[Z] == 0, "final_log_z"].abs().max()
    lz_on = high.loc[high[Z] > 0, "final_log_z"].abs().max()
    lower = [b < a for a, b in pairs.values()]
    measured = {"LR sensitivity no z-loss → z-loss, per size": P.fmt_pairs(pairs),
                "|final mean log Z|, two highest LRs, largest size, no z-loss": round(lz_off, 2),
                "same with z-loss 1e-4": round(lz_on, 2)}
    drift = lz_off > max(2 * lz_on, 10.0)
    if drift and lower and all(lower):
        return "true", (f"without z-loss |log Z| reaches {lz_off:.1f} at high LR vs {lz_on:.1f} "
                        f"with it, and z-loss lowers LR sensitivity at every size "
                        f"({P.fmt_pairs(pairs)})"), measured
    if not drift:
        return "inconclusive", (f"log Z did not drift at this scale: |log Z| {lz_off:.1f} without "
                                f"z-loss vs {lz_on:.1f} with it at the highest LRs (the paper's "
                                "divergence comes late in long runs); LR sensitivity "
                                f"{P.fmt_pairs(pairs)}"), measured
    return "inconclusive", (f"log Z drifts without z-loss ({lz_off:.1f} vs {lz_on:.1f}) but "
                            f"LR sensitivity is lower with z-loss at only {sum(lower)}/"
                            f"{len(lower)} sizes"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, (ax,) = P.comparison_figure(df, Z, [0.0, 1e-4], lambda v: f"{z_label(v)}, no weight decay",
                                     "z-loss without weight decay: LR vs loss, LR sensitivity, "
                                     "output log Z", extra=1)
    big = df[df["n_params_nonembed"] == df["n_params_nonembed"].max()]
    lrs = sorted(big["optim.lr"].unique())
    big = big[big["optim.lr"] >= lrs[max(0, len(lrs) - 4)]]  # the four highest LRs
    P.curves_panel(ax, big, "logits/log_z_mean", Z, z_label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("mean log Z (held-out batch)")
    ax.set_title(f"log Z over training, {P.size_label(big['n_params_nonembed'].max())} "
                 "params, highest LRs", fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(Z,)), sensitivity_vs_params(),
             PanelSpec("log Z over training, largest model", "logits/log_z_mean", split=(Z,),
                       largest=True)]

RESULT = Result("z_loss", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
