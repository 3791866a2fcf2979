"""Figures of a sweep (matplotlib). Each function returns its Figure so notebooks can restyle it."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.fits import QuadraticLogFit  # noqa: E402
from analysis.load import load_metrics, toggle_keys  # noqa: E402


def _label(keys: Sequence[str], vals) -> str:
    vals = vals if isinstance(vals, tuple) else (vals,)
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, vals)) or "all runs"


def _panels(df: pd.DataFrame):
    keys = toggle_keys(df)
    return keys, (list(df.groupby(keys, sort=False, dropna=False)) if keys else [((), df)])


def lr_curves(df: pd.DataFrame) -> plt.Figure:
    """Final eval loss vs LR: one panel per toggle setting, one line per model size; diverged
    points (plotted at the loss at init) marked x."""
    keys, panels = _panels(df)
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True,
                            squeeze=False)
    for ax, (tvals, pdf) in zip(axs[0], panels):
        for n, g in pdf.groupby("n_params_nonembed", sort=True):
            g = g.sort_values("optim.lr")
            div = g["diverged"].astype(bool) | g["final_eval_ce"].isna()
            loss = g["final_eval_ce"].where(~div, g["loss_at_init"])
            line, = ax.plot(g["optim.lr"], loss, marker="o", label=f"{n / 1e6:.3g}M")
            ax.scatter(g["optim.lr"][div], loss[div], marker="x", s=60, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(_label(keys, tvals), fontsize=9)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("final eval loss (x: diverged)")
    axs[0][-1].legend(title="non-emb. params", fontsize=8)
    fig.tight_layout()
    return fig


def sensitivity_vs_params(series: pd.DataFrame) -> plt.Figure:
    """LR sensitivity vs non-embedding params, one line per toggle setting (paper Fig. 1)."""
    keys = [k for k in toggle_keys(series) if k in series.columns]
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    groups = series.groupby(keys, sort=False, dropna=False) if keys else [((), series)]
    for tvals, g in groups:
        g = g.sort_values("n_params_nonembed")
        ax.plot(g["n_params_nonembed"], g["lr_sensitivity"], marker="o", label=_label(keys, tvals))
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("LR sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attn_logit_fits(df: pd.DataFrame, fits: Dict[tuple, QuadraticLogFit],
                    target_params: Sequence[float], threshold: float) -> plt.Figure:
    """Max attention logit vs params per LR (points), quadratic-in-log fits extrapolated to the
    target sizes (lines), and the divergence threshold."""
    keys, panels = _panels(df)
    fig, axs = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), sharey=True,
                            squeeze=False)
    n_all = df["n_params_nonembed"].dropna()
    hi = max([n_all.max()] + list(target_params)) if len(n_all) else 1.0
    for ax, (tvals, pdf) in zip(axs[0], panels):
        tvals = tvals if isinstance(tvals, tuple) else (tvals,)
        for lr, g in pdf.groupby("optim.lr", sort=True):
            line, = ax.plot(g["n_params_nonembed"], g["max_attn_logit"], "o", label=f"lr {lr:g}")
            fit = fits.get(tvals + (lr,))
            if fit is not None:
                xs = np.geomspace(g["n_params_nonembed"].min(), hi, 50)
                ax.plot(xs, fit.predict(xs), "-", color=line.get_color(), alpha=0.7)
        ax.axhline(threshold, color="k", ls="--", lw=1)
        for t in target_params:
            ax.axvline(t, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_xlabel("non-embedding params")
        ax.set_title(_label(keys, tvals), fontsize=9)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("max attention logit")
    axs[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_over_training(sweep_dir: Path, df: pd.DataFrame, metric: str, by: str,
                         ylabel: Optional[str] = None) -> plt.Figure:
    """`metric` vs step for each run, coloured by the value of column `by` (e.g. log Z mean for
    z-loss on/off, or train/eval CE for one series); diverged runs dashed."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    values = list(pd.unique(df[by])) if by in df.columns else [None]
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(values)}
    labelled = set()
    for _, r in df.iterrows():
        m = load_metrics(sweep_dir, r["run_dir"])
        if m.empty or metric not in m.columns:
            continue
        s = m[metric].dropna()
        v = r[by] if by in df.columns else None
        lab = None if v in labelled else f"{by.split('.')[-1]}={v}"
        labelled.add(v)
        ax.plot(s.index, s.values, color=colours[v], alpha=0.75, label=lab,
                ls="--" if bool(r.get("diverged")) else "-")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or metric)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grad_rms_vs_params(df: pd.DataFrame, eps_by_series: Dict[str, float]) -> plt.Figure:
    """Median gradient RMS and update RMS (update / LR) vs params, per LR; AdamW ε as a line."""
    fig, axs = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for lr, g in df.groupby("optim.lr", sort=True):
        g = g.sort_values("n_params_nonembed")
        axs[0].plot(g["n_params_nonembed"], g["grad_rms_median"], "o-", label=f"lr {lr:g}")
        axs[1].plot(g["n_params_nonembed"], g["update_rms_median"], "o-", label=f"lr {lr:g}")
    for eps in sorted(set(eps_by_series.values())):
        axs[0].axhline(eps, color="k", ls="--", lw=1, label=f"AdamW ε {eps:g}")
    axs[0].set_ylabel("median gradient RMS")
    axs[1].set_ylabel("median update RMS / LR")
    for ax in axs:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("non-embedding params")
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
