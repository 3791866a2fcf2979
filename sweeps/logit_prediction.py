"""Predicting attention-logit growth (paper §3.4): the max attention logit without qk-layernorm,
fitted as a quadratic in log(params) on small models, predicts a larger model's logit and
whether it crosses ~1e4 (where the paper's runs diverged).

The largest size is held out of the fit and trained to check the prediction; the fit is also
extrapolated to the paper's 4.8B target.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard import PanelSpec
from analysis.fits import FitError, fit_quadratic_log
from analysis.figures import log_axes
from proxies.config import DEFAULT_THRESHOLD
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main, nonembed_params

CLAIM = ("max attention logit, fitted as a quadratic in log(params) on small models, predicts a "
         "larger model's logit and whether it crosses ~1e4 (and so diverges)")
THRESHOLD = DEFAULT_THRESHOLD  # sweep.threshold's default, the paper's ~1e4


def fit_sizes(s: ScaleSpec):
    return s.sizes + ([s.extra_size] if s.extra_size else [])


def parts(s: ScaleSpec):
    lrs = [lr for lr in s.lrs if lr >= 3e-3] or s.lrs
    return [Part("main", {"model": {"qk_layernorm": False},
                          "sweep": {"lrs": lrs, "sizes": fit_sizes(s) + [s.held_out],
                                    "hold_out": [nonembed_params(s.held_out)],
                                    "threshold": THRESHOLD}})]


def predictions(df: pd.DataFrame, s: ScaleSpec) -> pd.DataFrame:
    """Per LR: the fit on all sizes but the largest, its prediction there and at the target."""
    held = df["n_params_nonembed"].max()
    rows = []
    for lr, g in df.groupby("optim.lr", sort=True):
        fit_pts = g[g["n_params_nonembed"] < held].dropna(subset=["max_attn_logit"])
        measured = g.loc[g["n_params_nonembed"] == held, "max_attn_logit"]
        try:
            fit = fit_quadratic_log(fit_pts["n_params_nonembed"], fit_pts["max_attn_logit"])
        except FitError:
            continue
        pred = fit.predict(held)
        m = float(measured.iloc[0]) if len(measured) else np.nan
        # A diverged run's max logit stops where it diverged: it counts as having crossed (the
        # claim is "crosses ~1e4, and so diverges"), and has no logit to compare.
        div = bool(g.loc[g["n_params_nonembed"] == held, "diverged"].astype(bool).any())
        rows.append({"lr": lr, "fit_points": fit.n_points, "dof": fit.dof, "held_out": held,
                     "predicted": pred, "measured": m, "diverged": div,
                     "ratio": pred / m if m > 0 and not div else np.nan,
                     "pred_over_1e4": pred > THRESHOLD,
                     "measured_over_1e4": div or m > THRESHOLD,
                     "at_target": fit.predict(s.target_params), "fit": fit})
    return pd.DataFrame(rows)


def judge(t: Tables, s: ScaleSpec):
    pr = predictions(t["main"], s)
    if pr.empty or pr["measured"].isna().all():
        return "inconclusive", "the held-out size has not finished (or too few sizes)", {}
    pr = pr.dropna(subset=["measured"])
    err = np.abs(np.log10(pr["ratio"].dropna().clip(lower=1e-9)))
    flags = (pr["pred_over_1e4"] == pr["measured_over_1e4"])
    measured = {"held-out size (non-emb params)": P.size_label(pr["held_out"].iloc[0]),
                "fit points / residual dof": f"{int(pr['fit_points'].iloc[0])} / "
                                             f"{int(pr['dof'].iloc[0])}",
                "predicted / measured max logit by LR": {
                    f"{r.lr:g}": f"{r.predicted:.4g} / "
                                 + ("diverged" if r.diverged else f"{r.measured:.4g}")
                    for r in pr.itertuples()},
                "1e4 flag right": f"{int(flags.sum())}/{len(flags)}",
                "median |log10(pred/measured)|": round(float(err.median()), 3),
                f"predicted at {s.target_params:.2g} params by LR": {
                    f"{r.lr:g}": f"{r.at_target:.3g}" for r in pr.itertuples()}}
    within2 = float(err.median()) <= np.log10(2)
    if flags.all() and within2:
        return "true", (f"held out of the fit, the {measured['held-out size (non-emb params)']} "
                        f"model's max logit is predicted within {10 ** err.median():.2f}× "
                        f"(median over {len(err)} LRs that did not diverge) and the 1e4 flag "
                        "(crossed or diverged) is right at every "
                        "LR"), measured
    if not flags.all():
        return "false", (f"the 1e4 flag is wrong at {int((~flags).sum())}/{len(flags)} LRs "
                         f"(median error {10 ** err.median():.2f}×)"), measured
    return "inconclusive", (f"the 1e4 flag is right at every LR but the held-out logit is off "
                            f"by {10 ** err.median():.2f}× (median)"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    pr = predictions(df, s)
    fig, axs = plt.subplots(1, 2, figsize=(12.5, 4.2), gridspec_kw={"width_ratios": [1.7, 1]})
    ax = axs[0]
    norm = P.lr_colour_norm(df["optim.lr"].to_list())
    held = df["n_params_nonembed"].max()
    for lr, g in df.groupby("optim.lr", sort=True):
        c = plt.cm.viridis(norm(lr))
        fit_pts = g[g["n_params_nonembed"] < held]
        ax.plot(fit_pts["n_params_nonembed"], fit_pts["max_attn_logit"], "o", color=c,
                label=f"LR {lr:g}")
        ho = g[g["n_params_nonembed"] == held]
        div = ho["diverged"].astype(bool)
        ax.plot(ho["n_params_nonembed"][~div], ho["max_attn_logit"][~div], "*", ms=12,
                mfc="none", color=c)
        if div.any():  # its logit stopped growing when it diverged: drawn at the threshold
            ax.plot([held], [THRESHOLD], "X", ms=10, color=c)
            ax.annotate(f"LR {lr:g} diverged", (held, THRESHOLD), fontsize=7,
                        xytext=(6, -10), textcoords="offset points")
        row = pr[pr["lr"] == lr]
        if len(row):
            fit = row["fit"].iloc[0]
            xs = np.geomspace(fit_pts["n_params_nonembed"].min(), s.target_params * 1.5, 200)
            ys = np.asarray(fit.predict(xs))
            inside = xs <= fit_pts["n_params_nonembed"].max()
            ok = ys > 0  # a quadratic can dip below zero; a logit plot on log axes cannot
            ax.plot(xs[inside & ok], ys[inside & ok], "-", color=c, lw=1)
            ax.plot(xs[~inside & ok], ys[~inside & ok], "--", color=c, lw=1)
    ax.axhline(THRESHOLD, color="k", ls="--", lw=1)
    ax.annotate("1e4: the paper's runs diverged above", (0.99, THRESHOLD),
                xycoords=("axes fraction", "data"), fontsize=7, ha="right", va="bottom")
    ax.axvline(s.target_params, color="gray", ls=":", lw=1)
    ax.annotate(f"target {s.target_params:.2g}", (s.target_params, 0.02),
                xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right",
                va="bottom")
    ax.axvline(held, color="gray", ls="-", lw=0.5)
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("max attention logit (no qk-layernorm)")
    ax.set_title("quadratic-in-log fits (solid: fitted, dashed: extrapolated); ☆ held out",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax = axs[1]
    diverged = pr[pr["diverged"]] if len(pr) else pr
    if len(diverged):
        ax.annotate("\n".join(f"LR {r.lr:g}: predicted {r.predicted:.2g}, diverged"
                              for r in diverged.itertuples()), (0.98, 0.04),
                    xycoords="axes fraction", ha="right", va="bottom", fontsize=7)
    if len(pr):
        pr = pr[~pr["diverged"]].dropna(subset=["measured"])
        for r in pr.itertuples():
            ax.plot(r.measured, max(r.predicted, 1e-1), "o", color=plt.cm.viridis(norm(r.lr)))
            ax.annotate(f"{r.lr:g}", (r.measured, max(r.predicted, 1e-1)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        lo = max(1e-1, min(pr["measured"].min(), pr["predicted"].clip(lower=1e-1).min()) / 2)
        hi = max(pr["measured"].max(), pr["predicted"].max()) * 2
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
        ax.axhline(THRESHOLD, color="k", ls="--", lw=0.8)
        ax.axvline(THRESHOLD, color="k", ls="--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("measured max logit, held-out size")
    ax.set_ylabel("predicted")
    ax.set_title(f"held-out check at {P.size_label(held)} params (labels: LR)", fontsize=9)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [
    PanelSpec("max attention logit vs params (colour: LR)", "summary:max_attn_logit",
              x="summary:n_params_nonembed", log_x=True, log_y=True),
    PanelSpec("max attention logit over training, held-out size", "attn/max_logit", log_y=True,
              largest=True)]

RESULT = Result("logit_prediction", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
