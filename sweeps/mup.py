"""μParam (paper §3.2.3): under μP the best LR stays put as width grows, under standard
parametrization it moves; and LR sensitivity with μP."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

from analysis.dashboard import lr_vs_loss, sensitivity_vs_params
from analysis.figures import log_axes
from proxies.config import Parametrization, unhandled
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

MP = "model.parametrization"
CLAIM = ("under μParam the best LR stays put across width, under SP it moves; LR sensitivity "
         "with μP")


def parts(s: ScaleSpec):
    base_width = s.widths[0]["d_model"]
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": s.widths, "variants": [
        {"model": {"parametrization": "sp"}},
        {"model": {"parametrization": "mup", "mup_base_width": base_width}}]}})]


def label(v: Parametrization | str) -> str:
    match v:
        case Parametrization.mup:
            return "μP"
        case Parametrization.sp:
            return "SP"
        case _:
            unhandled(MP, v)


def colour(v: Parametrization | str) -> str:
    match v:
        case Parametrization.mup:
            return "C0"
        case Parametrization.sp:
            return "C3"
        case _:
            unhandled(MP, v)


def drift(stats, which) -> float:
    """Spread of the (interpolated) best LR across widths, in decades."""
    b = stats.loc[stats[MP] == which, "best_lr_interp"].to_numpy(float)
    b = b[np.isfinite(b)]
    return float(np.log10(b.max() / b.min())) if len(b) > 1 else float("nan")


def judge(t: Tables, s: ScaleSpec):
    stats = P.series_stats(t["main"], [MP, "model.d_model"])
    best = {label(w): {int(d): float(f"{b:.3g}") for d, b in zip(g["model.d_model"],
                                                                 g["best_lr_interp"])}
            for w, g in stats.groupby(MP)}
    d_sp, d_mup = drift(stats, "sp"), drift(stats, "mup")
    sens = {label(w): [round(x, 3) for x in g.sort_values("model.d_model")["lr_sensitivity"]]
            for w, g in stats.groupby(MP)}
    measured = {"best LR by width (interpolated)": best,
                "best-LR drift across widths, decades (SP / μP)": [round(d_sp, 2),
                                                                   round(d_mup, 2)],
                "LR sensitivity by width": sens}
    if not (np.isfinite(d_sp) and np.isfinite(d_mup)):
        return "inconclusive", "too few finished widths to compare best LRs", measured
    if d_sp <= 0.25:
        return "inconclusive", (f"under SP the best LR moves only {d_sp:.2f} decades across these "
                                f"widths (μP: {d_mup:.2f}), too little to tell the two "
                                "apart"), measured
    if d_mup < 0.5 * d_sp and d_mup <= 0.25:
        return "true", (f"the best LR moves {d_sp:.2f} decades across widths under SP and "
                        f"{d_mup:.2f} under μP"), measured
    if d_mup >= d_sp:
        return "false", (f"the best LR moves as much or more under μP ({d_mup:.2f} decades) "
                         f"as under SP ({d_sp:.2f})"), measured
    return "inconclusive", (f"the best LR moves less under μP ({d_mup:.2f} decades) than under "
                            f"SP ({d_sp:.2f}), but not clearly stays put"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, axs = plt.subplots(1, 4, figsize=(17.5, 3.8))
    width = lambda d: f"d={int(d)}"  # noqa: E731
    for ax, w in zip(axs[:2], ("sp", "mup")):
        P.lr_loss_panel(ax, df[df[MP] == w], label(w), by="model.d_model", label=width,
                        legend_title="width")
    axs[0].set_ylabel("final eval loss (× diverged)")
    P.same_y(axs[:2])
    stats = P.series_stats(df, [MP, "model.d_model"])
    widths = sorted(int(d) for d in df["model.d_model"].unique())
    for w, g in stats.groupby(MP):
        g = g.sort_values("model.d_model")
        c = colour(w)
        axs[2].plot(g["model.d_model"], g["best_lr_interp"], "o-", color=c, label=label(w))
        axs[3].plot(g["model.d_model"], g["lr_sensitivity"], "o-", color=c, label=label(w))
    log_axes(axs[2], x=False, y=True)
    axs[2].set_ylabel("best LR (interpolated)")
    axs[3].set_ylabel("LR sensitivity")
    for ax, title in zip(axs[2:], ("best LR vs width", "LR sensitivity vs width")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("width d_model")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(f"μParam vs standard parametrization, widths {widths} at depth "
                 f"{int(df['model.n_layers'].iloc[0])}", fontsize=11)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(MP,)),
             sensitivity_vs_params("LR sensitivity vs width", x="config:model.d_model")]

RESULT = Result("mup", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
