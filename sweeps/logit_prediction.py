"""Predicting attention-logit growth (paper §3.4, Fig 9): block 0's max attention logit early in
training, fitted as a quadratic in log(params) on small models without qk-layernorm, predicts a
larger model's logit and whether it crosses ~1e4, above which the paper's runs diverged.

Each choice and the sentence behind it (paper.md, the spec's digest of arXiv 2309.14322; the
paper's own text was not at hand, so these are its words as the spec gives them):

- qk-layernorm off, every other §2.1 default. "Every experiment below starts from this baseline
  and changes only what its figure varies"; Fig 9: "sizes × LR, no qk-LN".
- The statistic: "max attention logit of **block 0 at step 2e3** (of 1e5), a quadratic in
  log(params) per LR". Here block 0 at 2% of the run (`attn_max_logit_block0_early`; the loop
  makes that update a log step, see proxies/metric_names.py: early_step). The max over layers at
  that step (`attn_max_logit_early`) and over layers and the whole run (`max_attn_logit`) are
  kept as extra columns.
- The held-out check: "extrapolate to a larger model. Runs whose max attention logit exceeded
  ~1e4 all diverged; the fit predicted that a 4.8B model without qk-layernorm at LR 1e-2 would
  exceed it, and it did." The largest size is left out of each fit and trained; the fit is also
  extrapolated to the paper's 4.8B target (at paper scale the held-out size *is* 4.8B).
- LRs from 3e-3 up (ours): below it block 0's logit at 2% of the run barely leaves its value
  at init, so those fits say nothing about growth.

Seeds: one fit per (LR, seed) on that seed's runs, checked on that seed's held-out run; the
verdict's statistics carry a t interval over seeds (sweeps/verdicts.py).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec
from analysis.fits import FitError, fit_quadratic_log
from analysis.figures import log_axes
from proxies import metric_names as M
from proxies.config import LR_KEY, DEFAULT_THRESHOLD
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main, size_params

CLAIM = ("block 0's max attention logit at 2% of training, fitted as a quadratic in log(params) "
         "on small models without qk-layernorm, predicts a larger model's logit and whether it "
         "crosses ~1e4 (and so diverges)")
LOGIT = M.LOGIT_BLOCK0_EARLY  # the fitted statistic
N = "n_params_nonembed"
THRESHOLD = DEFAULT_THRESHOLD  # sweep.threshold's default, the paper's ~1e4
# A held-out run that diverged counts as having crossed 1e4 only if its logit (max over layers
# and over the run, up to divergence) reached THRESHOLD / NEAR_FACTOR: its logit is probed
# every train.log_every updates, so the last probe before it broke can trail the logit it broke
# at, and the paper states its threshold as "~1e4", half a decade at most on its log axis. A
# run that diverged with its logit far below that diverged for some other reason: it did not
# cross, and a prediction of "crosses" for it is wrong.
NEAR_FACTOR = 3.0
# The fit predicts the held-out logit when the median over LRs of |log10(predicted/measured)|
# is at most log10(PRED_TOLERANCE): a factor 2 is a tenth of the four decades (1 to 1e4) over
# which the paper's logits range across sizes and LRs, and well inside the 1e3-1e4 gap between
# "loss degrades" and "worse than a bigram model" (κ experiment) that the prediction must tell.
PRED_TOLERANCE = 2.0
MIN_LR = 3e-3


def fit_sizes(s: ScaleSpec) -> List[Dict[str, int]]:
    return s.sizes + ([s.extra_size] if s.extra_size else [])


def parts(s: ScaleSpec) -> List[Part]:
    lrs = [lr for lr in s.lrs if lr >= MIN_LR] or s.lrs
    return [Part("main", {"model": {"qk_layernorm": False},
                          "sweep": {"lrs": lrs, "sizes": fit_sizes(s) + [s.held_out],
                                    "hold_out": [size_params(s.held_out)],
                                    "threshold": THRESHOLD}})]


# ---------------------------------------------------------------------------- the statistics

def crossed(early: float, reached: float, diverged: bool) -> bool:
    """Did a held-out run cross ~1e4? Its early logit (the predicted statistic) above THRESHOLD,
    or it diverged with its logit at least THRESHOLD / NEAR_FACTOR before it stopped."""
    if np.isfinite(early) and early > THRESHOLD:
        return True
    return bool(diverged) and np.isfinite(reached) and reached >= THRESHOLD / NEAR_FACTOR


def log_error(predicted: float, measured: float) -> float:
    """|log10(predicted / measured)|; a fit that predicts ≤ 0 is off by at least 9 decades."""
    if not (np.isfinite(measured) and measured > 0 and np.isfinite(predicted)):
        return float("nan")
    return float(abs(np.log10(max(predicted, 1e-9) / measured)))


def fit_one(g: pd.DataFrame, held: float) -> Optional[Any]:
    """The quadratic-in-log fit of one (LR, seed) on every size below `held` (None if fewer
    than three sizes have an early logit)."""
    pts = g[g[N] < held].dropna(subset=[LOGIT])
    try:
        return fit_quadratic_log(pts[N], pts[LOGIT])
    except FitError:
        return None


def predictions(df: pd.DataFrame, s: ScaleSpec) -> pd.DataFrame:
    """Per (LR, seed): the fit on every size but the largest, its prediction there and at the
    target, the held-out run's early logit (block 0 and over layers), its max over layers and
    the run, whether it diverged and crossed ~1e4, and whether the 1e4 flag was right."""
    if df.empty or LOGIT not in df.columns:
        return pd.DataFrame()
    df = P.with_seed(df)
    held = float(df[N].max())
    rows = []
    for (lr, seed), g in df.groupby([LR_KEY, P.SEED], sort=True):
        fit = fit_one(g, held)
        ho = g[g[N] == held]
        if fit is None or ho.empty:
            continue
        r = ho.iloc[0]
        early, reached = float(r[LOGIT]), float(r["max_attn_logit"])
        div = bool(r["diverged"])
        pred = float(fit.predict(held))
        hit = crossed(early, reached, div)
        rows.append({"lr": lr, "seed": seed, "fit_points": fit.n_points, "dof": fit.dof,
                     "held_out": held, "predicted": pred, "measured": early,
                     "early_all_layers": float(r.get(M.LOGIT_EARLY, np.nan)),
                     "max_over_run": reached, "diverged": div, "crossed": hit,
                     "pred_over_1e4": pred > THRESHOLD, "flag_right": (pred > THRESHOLD) == hit,
                     "log_error": log_error(pred, early),
                     "at_target": float(fit.predict(s.target_params)), "fit": fit})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the verdict

def seed_errors(pr: pd.DataFrame) -> pd.Series:
    """Per seed, the median over LRs of |log10(predicted / measured)| (NaN-free seeds only)."""
    out = {}
    for seed, g in pr.groupby("seed", sort=True):
        e = g["log_error"].dropna()
        if len(e):
            out[seed] = float(e.median())
    return pd.Series(out, dtype=float)


def decide(pr: pd.DataFrame) -> Tuple[Reproduced, str]:
    """The rule, fixed before any data: with two seeds or more,
    true: the 1e4 flag is right at every (LR, seed) and the interval of the median log error
      lies within log10(PRED_TOLERANCE);
    false: at some LR the flag is wrong in every seed, or the error's interval lies above
      log10(PRED_TOLERANCE);
    inconclusive otherwise (flags that differ between seeds, an interval across the tolerance,
      one seed, no held-out run)."""
    if pr.empty:
        return "inconclusive", "the held-out size has not finished (or too few sizes to fit)"
    seeds = int(pr["seed"].nunique())
    err = V.interval(seed_errors(pr))
    tol = np.log10(PRED_TOLERANCE)
    wrong_always = [lr for lr, g in pr.groupby("lr")
                    if len(g) >= V.MIN_SEEDS and not g["flag_right"].any()]
    flags = f"1e4 flag right at {int(pr['flag_right'].sum())}/{len(pr)} (LR, seed)"
    shown = f"median |log10(pred/measured)| {err}, tolerance {tol:.3f} (×{PRED_TOLERANCE:g})"
    if seeds < V.MIN_SEEDS:
        return "inconclusive", (f"{seeds} seed(s); a verdict needs {V.MIN_SEEDS}: {flags}; "
                                f"{shown}")
    if wrong_always:
        return "false", (f"the 1e4 flag is wrong in every seed at LR "
                         f"{', '.join(f'{lr:g}' for lr in wrong_always)}: {flags}; {shown}")
    if err.decided and err.lo > tol:
        return "false", f"the held-out logit is missed by more than ×{PRED_TOLERANCE:g}: {shown}"
    if pr["flag_right"].all() and err.decided and err.hi <= tol:
        return "true", (f"the held-out {P.size_label(pr['held_out'].iloc[0])} model's block-0 "
                        f"logit is predicted within ×{PRED_TOLERANCE:g} ({shown}) and the 1e4 "
                        f"flag is right at every LR and seed")
    why = ("the flag differs between seeds" if not pr["flag_right"].all() else
           "the error's interval crosses the tolerance" if err.decided else
           "too few seeds with a held-out logit for an interval")
    return "inconclusive", f"{why}: {flags}; {shown}"


def early_update(df: pd.DataFrame) -> str:
    """' (update u)': the update the statistic was read at, from the completed runs' length."""
    done = pd.to_numeric(df.loc[~df["diverged"].astype(bool), "steps_done"], errors="coerce")
    return f" (update {M.early_step(int(done.max()))})" if done.notna().any() else ""


def by_lr(pr: pd.DataFrame, column: str) -> pd.Series:
    return pr.groupby("lr", sort=True)[column].mean()


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    pr = predictions(t["main"], s)
    reproduced, why = decide(pr)
    if pr.empty:
        return reproduced, why, {}
    measured = {
        "held-out size (non-emb params)": P.size_label(pr["held_out"].iloc[0]),
        "statistic": f"block 0's max attention logit at 2% of the run{early_update(t['main'])}",
        "fit points / residual dof": f"{int(pr['fit_points'].iloc[0])} / "
                                     f"{int(pr['dof'].iloc[0])}",
        "seeds": int(pr["seed"].nunique()),
        "predicted / measured, mean over seeds, by LR": {
            f"{lr:g}": f"{p:.4g} / {m:.4g}" for lr, p, m in zip(
                by_lr(pr, "predicted").index, by_lr(pr, "predicted"), by_lr(pr, "measured"))},
        "held-out max logit over layers at 2% / over the run, by LR": {
            f"{lr:g}": f"{a:.4g} / {b:.4g}" for lr, a, b in zip(
                by_lr(pr, "early_all_layers").index, by_lr(pr, "early_all_layers"),
                by_lr(pr, "max_over_run"))},
        "held-out diverged (seeds) / counted as crossed, by LR": {
            f"{lr:g}": f"{int(g['diverged'].sum())} / {int(g['crossed'].sum())}"
            for lr, g in pr.groupby("lr", sort=True)},
        "1e4 flag right (LR × seed)": f"{int(pr['flag_right'].sum())}/{len(pr)}",
        "median |log10(pred/measured)| (interval over seeds)": V.interval(seed_errors(pr)),
        f"predicted at {s.target_params:.2g} params by LR": {
            f"{lr:g}": f"{v:.3g}" for lr, v in by_lr(pr, "at_target").items()},
        "rule": f"crossed = early logit > {THRESHOLD:g}, or diverged with logit ≥ "
                f"{THRESHOLD / NEAR_FACTOR:.3g}; tolerance ×{PRED_TOLERANCE:g}"}
    return reproduced, why, measured


# ---------------------------------------------------------------------------- the figure

def fit_panel(ax: plt.Axes, df: pd.DataFrame, pr: pd.DataFrame, s: ScaleSpec) -> None:
    """Block 0's early logit vs params per LR (seed means), each seed's fit (solid inside the
    fitted sizes, dashed beyond), the held-out run as a star (× at its max logit if it
    diverged)."""
    norm = P.lr_norm(df[LR_KEY].to_list())
    held = df[N].max()
    for lr, g in P.with_seed(df).groupby(LR_KEY, sort=True):
        c = P.lr_colour(norm, lr)
        pts = g.groupby(N, sort=True)[LOGIT].mean()
        ax.plot(pts.index[pts.index < held], pts[pts.index < held], "o", color=c,
                label=f"LR {lr:g}")
        ho = g[g[N] == held]
        div = ho["diverged"].astype(bool)
        ax.plot(ho[N][~div], ho[LOGIT][~div], "*", ms=12, mfc="none", color=c)
        ax.plot(ho[N][div], ho["max_attn_logit"][div], "X", ms=9, color=c)
        for r in (pr[pr["lr"] == lr].itertuples() if len(pr) else ()):
            xs = np.geomspace(g[N].min(), s.target_params * 1.5, 200)
            ys = np.asarray(r.fit.predict(xs))
            inside, ok = xs < held, ys > 0  # a quadratic can dip below 0; a log axis cannot
            ax.plot(xs[inside & ok], ys[inside & ok], "-", color=c, lw=0.8, alpha=0.8)
            ax.plot(xs[~inside & ok], ys[~inside & ok], "--", color=c, lw=0.8, alpha=0.8)
    ax.axhline(THRESHOLD, color="k", ls="--", lw=1)
    ax.axhline(THRESHOLD / NEAR_FACTOR, color="k", ls=":", lw=0.8)
    ax.annotate("1e4: the paper's runs diverged above", (0.99, THRESHOLD),
                xycoords=("axes fraction", "data"), fontsize=7, ha="right", va="bottom")
    ax.axvline(s.target_params, color="gray", ls=":", lw=1)
    ax.annotate(f"target {s.target_params:.2g}", (s.target_params, 0.02),
                xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right",
                va="bottom")
    ax.axvline(held, color="gray", ls="-", lw=0.5)
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("block 0 max attention logit at 2% of training")
    ax.set_title("fits per (LR, seed): solid fitted, dashed extrapolated; ☆ held out, "
                 "× diverged (at its max logit)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def check_panel(ax: plt.Axes, pr: pd.DataFrame, norm: Any) -> None:
    """Predicted vs measured held-out logit, one point per (LR, seed); diverged runs listed."""
    held = pr["held_out"].iloc[0]
    div = pr[pr["diverged"]]
    if len(div):
        ax.annotate("\n".join(f"LR {r.lr:g} seed {r.seed}: predicted {r.predicted:.2g}, "
                              f"diverged at logit {r.max_over_run:.2g}"
                              f" ({'crossed' if r.crossed else 'not crossed'})"
                              for r in div.itertuples()), (0.98, 0.04),
                    xycoords="axes fraction", ha="right", va="bottom", fontsize=6)
    ok = pr.dropna(subset=["measured"])
    ok = ok[ok["measured"] > 0]
    if len(ok):
        for r in ok.itertuples():
            y = max(r.predicted, 1e-1)
            ax.plot(r.measured, y, "o", color=P.lr_colour(norm, r.lr))
            ax.annotate(f"{r.lr:g}", (r.measured, y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        lo = max(1e-1, min(ok["measured"].min(), ok["predicted"].clip(lower=1e-1).min()) / 2)
        hi = max(ok["measured"].max(), ok["predicted"].max()) * 2
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8, label="y = x")
        ax.fill_between(xs, xs / PRED_TOLERANCE, xs * PRED_TOLERANCE, color="gray", alpha=0.2,
                        label=f"×{PRED_TOLERANCE:g}")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=7, loc="upper left")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("measured block-0 logit at 2%, held-out size")
    ax.set_ylabel("predicted")
    ax.set_title(f"held-out check at {P.size_label(held)} params (labels: LR)", fontsize=9)


def over_run_panel(ax: plt.Axes, df: pd.DataFrame) -> None:
    """The extra columns: block 0 at 2% against the max over layers and the whole run."""
    norm = P.lr_norm(df[LR_KEY].to_list())
    for lr, g in df.groupby(LR_KEY, sort=True):
        ax.plot(g[LOGIT], g["max_attn_logit"], "o", ms=4, color=P.lr_colour(norm, lr),
                label=f"LR {lr:g}")
    both = df[[LOGIT, "max_attn_logit"]].to_numpy(float)
    both = both[np.isfinite(both) & (both > 0)]
    if both.size:
        xs = np.array([both.min() / 2, both.max() * 2])
        ax.plot(xs, xs, "k-", lw=0.8)
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("block 0 at 2% of training")
    ax.set_ylabel("max over layers and the run")
    ax.set_title("the fitted statistic vs the max over the run", fontsize=9)
    ax.legend(fontsize=6)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = t["main"]
    fig, axs = plt.subplots(1, 3, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1.7, 1, 1]})
    if df.empty or LOGIT not in df.columns:
        return fig
    pr = predictions(df, s)
    fit_panel(axs[0], df, pr, s)
    if len(pr):
        check_panel(axs[1], pr, P.lr_norm(df[LR_KEY].to_list()))
    over_run_panel(axs[2], df)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [
    PanelSpec("block 0's max attention logit at 2% of training vs params (colour: LR)",
              f"summary:{LOGIT}", x="summary:n_params_nonembed", log_x=True, log_y=True),
    PanelSpec("max attention logit over layers and the run vs params (colour: LR)",
              "summary:max_attn_logit", x="summary:n_params_nonembed", log_x=True, log_y=True),
    PanelSpec("block 0's max attention logit over training, held-out size",
              M.per_layer(M.ATTN_MAX_LOGIT, 0), log_y=True, largest=True)]

RESULT = Result("logit_prediction", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 9")

if __name__ == "__main__":
    main(RESULT)
