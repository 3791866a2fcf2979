"""Figures of a sweep (matplotlib). Each function returns its Figure so notebooks can restyle it.

Conventions, the same in every figure: one panel per toggle setting (MAX_COLUMNS to a row, then
the next row), sizes coloured small to
large on a sequential map, LRs coloured on a log colour bar, losses drawn as LR sensitivity
counts them (min(loss, loss at init); diverged and NaN runs at the loss at init, marked ×),
log axes where the paper uses them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import (FuncFormatter, LogFormatterSciNotation, LogLocator,  # noqa: E402
                               MaxNLocator, NullFormatter, NullLocator)

from analysis.fits import QuadraticLogFit  # noqa: E402
from analysis.load import load_metrics, toggle_keys  # noqa: E402
from analysis.sensitivity import counted_loss  # noqa: E402
from proxies.config import LR_KEY

LINE_STYLES = ["-", "--", ":", "-."]
MAX_COLUMNS = 4  # more panels wrap: one row of 30 (16 settings × 2 seeds) is unreadable


def toggle_label(keys: Sequence[str], vals) -> str:
    vals = vals if isinstance(vals, tuple) else (vals,)
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, vals)) or "all runs"


def size_label(n: float) -> str:
    """Non-embedding params as 13k, 0.1M, 0.79M, 2.6M."""
    return f"{n / 1e6:.2g}M" if n >= 9.5e4 else f"{n / 1e3:.2g}k"


def panels(df: pd.DataFrame) -> Tuple[List[str], List[Tuple[tuple, pd.DataFrame]]]:
    """(toggle keys, [(their values, rows)]) sorted by the values; one panel per setting."""
    keys = toggle_keys(df)
    if not keys:
        return keys, [((), df)]
    out = []
    for vals, g in df.groupby(keys, sort=True, dropna=False):
        out.append((vals if isinstance(vals, tuple) else (vals,), g))
    return keys, out


def panel_grid(n: int, width: float, height: float, rows: int = 1, extra_width: float = 0.0,
               **kw: Any) -> Tuple[plt.Figure, List[List[plt.Axes]]]:
    """Axes for `n` panels, each `rows` axes tall, MAX_COLUMNS panels to a row: [panel][row of
    the panel]. The unused cells of the last row are hidden."""
    cols = min(n, MAX_COLUMNS)
    lines = -(-n // cols)
    fig, axs = plt.subplots(rows * lines, cols, figsize=(width * cols + extra_width,
                                                         height * lines), squeeze=False,
                            layout="constrained", **kw)
    pax = [[axs[(i // cols) * rows + r][i % cols] for r in range(rows)] for i in range(n)]
    for i in range(n, lines * cols):
        for r in range(rows):
            axs[(i // cols) * rows + r][i % cols].set_visible(False)
    return fig, pax


def every_axis(pax: List[List[plt.Axes]]) -> List[plt.Axes]:
    return [ax for panel in pax for ax in panel]


def panel_title(ax: plt.Axes, keys: Sequence[str], vals) -> None:
    """The panel's setting, wrapped: a sweep over many toggles names them all."""
    ax.set_title(textwrap.fill(toggle_label(keys, vals), 48), fontsize=8 if keys else 9)


def starts_row(i: int) -> bool:
    """Whether panel i is the first of its row (it carries the y label)."""
    return i % MAX_COLUMNS == 0


def size_colours(sizes: Sequence[float]) -> Dict[float, Any]:
    sizes = sorted(set(float(s) for s in sizes if np.isfinite(s)))
    return {s: plt.cm.viridis(0.1 + 0.8 * i / max(1, len(sizes) - 1))
            for i, s in enumerate(sizes)}


def lr_norm(lrs: Sequence[float]) -> LogNorm:
    lrs = [float(x) for x in lrs]
    return LogNorm(vmin=min(lrs), vmax=max(lrs) * (1.0001 if min(lrs) == max(lrs) else 1))


def lr_colour(norm: LogNorm, lr: float):
    return plt.cm.plasma(0.85 * float(norm(lr)))  # the top of plasma is too pale to read


def lr_colourbar(fig: plt.Figure, axs, norm: LogNorm) -> None:
    cmap = matplotlib.colors.ListedColormap(plt.cm.plasma(np.linspace(0, 0.85, 256)))
    one_lr = norm.vmax / norm.vmin < 1.01  # lr_norm widened a single LR by 1e-4
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axs,
                      label="learning rate", pad=0.01, fraction=0.03)
    if one_lr:
        cb.set_ticks([norm.vmin], labels=[f"{norm.vmin:g}"])
        cb.ax.yaxis.set_minor_locator(NullLocator())


def log_axes(ax: plt.Axes, x: bool = True, y: bool = False) -> None:
    """Log axes (call after plotting). Over two or more powers of ten the minor ticks carry no
    labels (they collide: '3×10⁴×10⁵'); within about a decade only 2× and 5× are labelled, so
    the axis still has labels and they do not collide."""
    for on, axis, scale, lim in ((x, ax.xaxis, ax.set_xscale, ax.get_xlim),
                                 (y, ax.yaxis, ax.set_yscale, ax.get_ylim)):
        if on:
            scale("log")
            lo, hi = lim()
            if lo <= 0:
                continue
            powers = np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) + 1
            if hi / lo < 3:  # a few percent (one size's variants): log ticks would be linear
                axis.set_major_locator(MaxNLocator(3))  # ones, labelled 3.3×10³ 3.32×10³ …
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
                axis.set_minor_locator(NullLocator())
            elif powers >= 2:
                axis.set_minor_formatter(NullFormatter())
            else:  # within about a decade: label 2× and 5× only, so labels do not collide
                axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
                axis.set_minor_formatter(LogFormatterSciNotation(
                    labelOnlyBase=False, minor_thresholds=(np.inf, np.inf)))
    ax.grid(alpha=0.3, which="major", lw=0.5)


def lr_curves(df: pd.DataFrame) -> plt.Figure:
    """Final eval loss vs LR: one panel per toggle setting, one line per model size."""
    keys, pans = panels(df)
    fig, pax = panel_grid(len(pans), 4.3, 3.5, sharey=True)
    col = size_colours(df["n_params_nonembed"])
    for i, ((ax,), (tvals, pdf)) in enumerate(zip(pax, pans)):
        for n, g in pdf.groupby("n_params_nonembed", sort=True):
            g = g.sort_values(LR_KEY)
            loss, div = counted_loss(g)
            ax.plot(g[LR_KEY], loss, "o-", ms=3.5, color=col[float(n)], label=size_label(n))
            if div.any():
                ax.plot(g[LR_KEY][div], loss[div], "x", ms=9, mew=2, color=col[float(n)])
        log_axes(ax)
        ax.set_xlabel("learning rate")
        panel_title(ax, keys, tvals)
        if starts_row(i):
            ax.set_ylabel("final eval loss (×: diverged, at loss at init)")
    pax[-1][0].legend(title="non-emb. params", fontsize=7, title_fontsize=7)
    return fig


def sensitivity_vs_params(series: pd.DataFrame) -> plt.Figure:
    """LR sensitivity vs non-embedding params, one line per toggle setting (paper Fig. 1)."""
    keys = [k for k in toggle_keys(series) if k in series.columns]
    groups = list(series.groupby(keys, sort=True, dropna=False)) if keys else [((), series)]
    labels = [textwrap.fill(toggle_label(keys, tvals), 60) for tvals, _ in groups]
    text_lines = sum(lb.count("\n") + 1 for lb in labels)
    # The legend sits beside the axes; the figure grows with it.
    widest = max(len(line) for lb in labels for line in lb.split("\n"))
    fig, ax = plt.subplots(figsize=(4.8 + 0.06 * widest, max(3.5, 0.15 * text_lines + 0.8)),
                           layout="constrained")
    for i, ((tvals, g), lb) in enumerate(zip(groups, labels)):
        g = g.sort_values("n_params_nonembed")
        ax.plot(g["n_params_nonembed"], g["lr_sensitivity"], marker="o", color=f"C{i % 10}",
                ls=LINE_STYLES[i // 10 % 4], label=lb)
    log_axes(ax)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("LR sensitivity")
    ax.legend(fontsize=7 if len(ax.lines) > 6 else 8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def attn_logit_fits(df: pd.DataFrame, fits: Dict[tuple, QuadraticLogFit],
                    target_params: Sequence[float], threshold: float,
                    held_out: Optional[pd.Series] = None) -> plt.Figure:
    """Max attention logit vs params per LR (log-log): fitted points (dots), held-out points
    (stars), quadratic-in-log fits (solid over the fitted sizes, dashed when extrapolated; drawn
    only where positive), the divergence threshold and the target sizes, labelled."""
    keys, pans = panels(df)
    fig, pax = panel_grid(len(pans), 5.0, 3.9, sharey=True)
    held_out = held_out if held_out is not None else pd.Series(False, index=df.index)
    norm = lr_norm(df[LR_KEY])
    n_all = df["n_params_nonembed"].dropna()
    hi = max([n_all.max()] + list(target_params)) * 1.5 if len(n_all) else 1.0
    for i, ((ax,), (tvals, pdf)) in enumerate(zip(pax, pans)):
        for lr, g in pdf.groupby(LR_KEY, sort=True):
            c = lr_colour(norm, lr)
            ho = held_out.loc[g.index]
            ax.plot(g["n_params_nonembed"][~ho], g["max_attn_logit"][~ho], "o", color=c)
            ax.plot(g["n_params_nonembed"][ho], g["max_attn_logit"][ho], "*", ms=11,
                    mfc="none", color=c)
            fit = fits.get(tuple(tvals) + (lr,))
            if fit is not None:
                lo, top = g["n_params_nonembed"][~ho].min(), g["n_params_nonembed"][~ho].max()
                xs = np.geomspace(lo, hi, 300)
                ys = np.asarray(fit.predict(xs), float)
                pos = ys > 0
                ax.plot(xs[pos & (xs <= top)], ys[pos & (xs <= top)], "-", color=c, lw=1.2)
                ax.plot(xs[pos & (xs > top)], ys[pos & (xs > top)], "--", color=c, lw=1)
        ax.axhline(threshold, color="k", ls="--", lw=1)
        ax.annotate(f"divergence threshold {threshold:g}", (0.01, threshold),
                    xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        for t in target_params:
            ax.axvline(t, color="gray", ls=":", lw=1)
            ax.annotate(f"target {t:.2g}", (t, 0.02), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, ha="right", va="bottom")
        log_axes(ax, x=True, y=True)
        ax.set_xlabel("non-embedding params")
        panel_title(ax, keys, tvals)
        if starts_row(i):
            ax.set_ylabel("max attention logit")
    lr_colourbar(fig, every_axis(pax), norm)
    first = pax[0][0]
    first.plot([], [], "k-", lw=1.2, label="fit (fitted sizes)")
    first.plot([], [], "k--", lw=1, label="fit, extrapolated")
    if held_out.any():
        first.plot([], [], "k*", mfc="none", label="held out of the fit")
    first.legend(fontsize=7, loc="upper left")
    return fig


def training_curves(sweep_dir: Path, df: pd.DataFrame, metric: str, ylabel: str,
                    markers: Optional[str] = None) -> plt.Figure:
    """`metric` vs step for each run: one panel per toggle setting, colour by LR (colour bar),
    line style by model size; `markers` (e.g. eval/ce) adds that metric's points on top.
    Diverged runs end with ×."""
    keys, pans = panels(df)
    fig, pax = panel_grid(len(pans), 4.6, 3.6, extra_width=0.8, sharey=True)
    norm = lr_norm(df[LR_KEY])
    sizes = sorted(df["n_params_nonembed"].dropna().unique())
    for i, ((ax,), (tvals, pdf)) in enumerate(zip(pax, pans)):
        for r in pdf.sort_values(["n_params_nonembed", LR_KEY]).itertuples():
            m = load_metrics(sweep_dir, r.run_dir)
            if m.empty or metric not in m.columns:
                continue
            c = lr_colour(norm, pdf.loc[r.Index, LR_KEY])
            ls = LINE_STYLES[sizes.index(r.n_params_nonembed) % 4] if len(sizes) > 1 else "-"
            s = m[metric].dropna()
            ax.plot(s.index, s.values, ls, color=c, lw=1.2, alpha=0.9)
            if markers and markers in m.columns:
                e = m[markers].dropna()
                ax.plot(e.index, e.values, "o", ms=2.5, color=c)
            if bool(r.diverged) and len(s):
                ax.plot(s.index[-1], s.values[-1], "x", ms=8, mew=2, color=c)
        ax.set_xlabel("step")
        panel_title(ax, keys, tvals)
        ax.grid(alpha=0.3, lw=0.5)
        if starts_row(i):
            ax.set_ylabel(ylabel)
    if len(sizes) > 1:
        for i, n in enumerate(sizes):
            pax[0][0].plot([], [], LINE_STYLES[i % 4], color="gray", label=size_label(n))
        pax[0][0].legend(title="non-emb. params", fontsize=7, title_fontsize=7)
    if markers:
        pax[-1][0].plot([], [], "o", ms=3, color="gray", label=markers)
        pax[-1][0].plot([], [], "-", color="gray", label=metric)
        pax[-1][0].legend(fontsize=7)
    lr_colourbar(fig, every_axis(pax), norm)
    return fig


def grad_rms_vs_params(df: pd.DataFrame, eps_by: Dict[str, float]) -> plt.Figure:
    """Median gradient RMS (top) and update RMS ÷ LR (bottom) vs params: one column per toggle
    setting, one line per LR (colour bar); AdamW ε drawn on the gradient panels."""
    keys, pans = panels(df)
    fig, pax = panel_grid(len(pans), 4.4, 3.2, rows=2, extra_width=0.8, sharex=True,
                          sharey="row")
    norm = lr_norm(df[LR_KEY])
    for j, ((grad_ax, upd_ax), (tvals, pdf)) in enumerate(zip(pax, pans)):
        for lr, g in pdf.groupby(LR_KEY, sort=True):
            g = g.sort_values("n_params_nonembed")
            for ax, col in ((grad_ax, "grad_rms_median"), (upd_ax, "update_rms_median")):
                if col in g.columns:
                    ax.plot(g["n_params_nonembed"], g[col], "o-", ms=3, color=lr_colour(norm, lr))
        for eps in sorted(set(pdf["optim.eps"].dropna())) if "optim.eps" in pdf else []:
            grad_ax.axhline(eps, color="k", ls="--", lw=1)
            grad_ax.annotate(f"AdamW ε {eps:g}", (0.01, eps), xycoords=("axes fraction", "data"),
                             fontsize=7, va="bottom")
        panel_title(grad_ax, keys, tvals)
        upd_ax.set_xlabel("non-embedding params")
        for ax in (grad_ax, upd_ax):
            log_axes(ax, x=True, y=True)
        if starts_row(j):
            grad_ax.set_ylabel("median gradient RMS")
            upd_ax.set_ylabel("median update RMS / LR")
    lr_colourbar(fig, every_axis(pax), norm)
    return fig
