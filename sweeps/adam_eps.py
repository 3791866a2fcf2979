"""Gradient RMS vs AdamW ε (paper §3.4): gradient RMS falls with model size and LR toward ε;
when it nears ε the update Δ = m/(√v + ε) shrinks (update RMS collapses) and the layer stops
learning; a smaller ε restores it. Update RMS is the update divided by the LR."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from analysis.dashboard import PanelSpec
from analysis.figures import log_axes
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

E = "optim.eps"
CLAIM = ("gradient RMS falls with size and LR toward ε; update RMS collapses when it nears ε; "
         "a smaller ε restores it")


def parts(s: ScaleSpec):
    return [Part("scaling", {"sweep": {"lrs": s.lrs, "sizes": s.sizes}}),
            Part("eps", {"sweep": {"lrs": [s.eps_lr], "sizes": [s.sizes[-1]],
                                   "axes": {"optim": {"eps": s.epsilons}}}})]


def slope(x, y) -> float:
    """d log10(y) / d log10(x) by least squares over the positive finite points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (y > 0)
    if len(np.unique(x[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log10(x[ok]), np.log10(y[ok]), 1)[0])


def judge(t: Tables, s: ScaleSpec):
    sc, ep = t["scaling"], t["eps"].sort_values(E)
    by_size = {lr: slope(g["n_params_nonembed"], g["grad_rms_median"])
               for lr, g in sc.groupby("optim.lr", sort=True)}
    by_lr = {n: slope(g["optim.lr"], g["grad_rms_median"])
             for n, g in sc.groupby("n_params_nonembed", sort=True)}
    eps, upd = ep[E].to_numpy(float), ep["update_rms_median"].to_numpy(float)
    grad = ep["grad_rms_median"].to_numpy(float)
    measured = {"final eval loss by ε": {f"{e:g}": round(float(v), 3)
                                       for e, v in zip(eps, ep["final_eval_ce"])},
                "d log grad RMS / d log params, by LR": {f"{k:g}": round(v, 2)
                                                        for k, v in by_size.items()},
                "d log grad RMS / d log LR, by size": {P.size_label(k): round(v, 2)
                                                      for k, v in by_lr.items()},
                f"update RMS by ε (LR {s.eps_lr:g})": {f"{e:g}": round(float(u), 4)
                                                       for e, u in zip(eps, upd)},
                "median gradient RMS in those runs": {f"{e:g}": float(f"{g:.3g}")
                                                      for e, g in zip(eps, grad)}}
    if len(eps) < 2 or not np.isfinite(upd).all():
        return "inconclusive", "the ε runs have not finished", measured
    falls = np.nanmedian(list(by_size.values())) < 0 and np.nanmedian(list(by_lr.values())) < 0
    near = eps >= 0.1 * grad  # ε within 10× of the gradient RMS or above it
    collapse = near.any() and upd[near].min() < 0.5 * upd[0]
    restores = all(b <= a * 1.05 for a, b in zip(upd, upd[1:]))  # smaller ε, larger update
    why = (f"gradient RMS slope vs params {np.nanmedian(list(by_size.values())):.2f}, vs LR "
           f"{np.nanmedian(list(by_lr.values())):.2f} (log-log, median); update RMS "
           f"{upd[0]:.3g} at ε={eps[0]:g} vs {upd[-1]:.3g} at ε={eps[-1]:g} "
           f"(gradient RMS ≈ {np.median(grad):.2g})")
    if falls and collapse and restores:
        return "true", why, measured
    if not falls:
        return "false", "gradient RMS does not fall with size and LR: " + why, measured
    return ("inconclusive", "update RMS does not collapse where ε nears the gradient RMS: " + why,
            measured)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    sc, ep = t["scaling"], t["eps"].sort_values(E)
    fig, axs = plt.subplots(1, 4, figsize=(19, 3.9))
    norm = P.lr_colour_norm(sc["optim.lr"].to_list())
    for lr, g in sc.groupby("optim.lr", sort=True):
        g = g.sort_values("n_params_nonembed")
        axs[0].plot(g["n_params_nonembed"], g["grad_rms_median"], "o-",
                    color=plt.cm.viridis(norm(lr)), label=f"LR {lr:g}")
    eps0 = float(sc[E].iloc[0]) if E in sc.columns and len(sc) else 1e-8
    axs[0].axhline(eps0, color="k", ls="--", lw=1)
    axs[0].text(sc["n_params_nonembed"].min(), eps0 * 1.5, f"AdamW ε = {eps0:g}", fontsize=7)
    log_axes(axs[0], x=True, y=True)
    axs[0].set_xlabel("non-embedding params")
    axs[0].set_ylabel("median gradient RMS (end of training)")
    axs[0].set_title("gradient RMS vs size", fontsize=10)
    axs[0].legend(fontsize=6, ncol=2)
    col = P.colours(sc["n_params_nonembed"].unique())
    for n, g in sc.groupby("n_params_nonembed", sort=True):
        g = g.sort_values("optim.lr")
        axs[1].plot(g["optim.lr"], g["grad_rms_median"], "o-", color=col[n],
                    label=P.size_label(n))
    log_axes(axs[1], x=True, y=True)
    axs[1].set_xlabel("learning rate")
    axs[1].set_title("gradient RMS vs LR", fontsize=10)
    axs[1].legend(title="non-emb. params", fontsize=7, title_fontsize=7)
    ax = axs[2]
    ax.plot(ep[E], ep["update_rms_median"], "o-", color="C0", label="update RMS (÷ LR)")
    ax.plot(ep[E], ep["grad_rms_median"], "s--", color="C1", label="gradient RMS")
    ax.plot(ep[E], ep[E], "k:", lw=0.8, label="ε")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("AdamW ε")
    ax.set_title(f"update collapse, {P.size_label(ep['n_params_nonembed'].max())} params, "
                 f"LR {s.eps_lr:g}", fontsize=10)
    ax.legend(fontsize=7)
    ax = axs[3]
    ax.plot(ep[E], ep["final_eval_ce"], "o-", color="C3")
    log_axes(ax)
    ax.set_xlabel("AdamW ε")
    ax.set_ylabel("final eval loss")
    ax.set_title("a collapsed update stops learning", fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [
    PanelSpec("gradient RMS vs size", "summary:grad_rms_median", x="summary:n_params_nonembed",
              log_x=True, log_y=True, part="scaling"),
    PanelSpec("gradient RMS vs LR", "summary:grad_rms_median", x="config:optim.lr", log_x=True,
              log_y=True, colour="size", part="scaling"),
    PanelSpec("update RMS (÷ LR) vs ε", "summary:update_rms_median", x="config:optim.eps",
              log_x=True, log_y=True, part="eps"),
    PanelSpec("gradient RMS vs ε", "summary:grad_rms_median", x="config:optim.eps", log_x=True,
              log_y=True, part="eps"),
    PanelSpec("final eval loss vs ε", "summary:final_eval_ce", x="config:optim.eps", log_x=True,
              part="eps")]

RESULT = Result("adam_eps", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
