"""The report's other figures: outliers, energy vs correlation, norm compression, SwiGLU."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from analysis.emergence import EmergenceFit  # noqa: E402
from analysis.dynamics_report.summary import ec_scatter_projections, fmt  # noqa: E402
from analysis.dynamics_report.records import (N_EC_SAMPLE, Records)  # noqa: E402
from analysis.dynamics_report.summary import (finite_median, ec_projections)  # noqa: E402


LAYER_CMAP = plt.cm.plasma


E_COLOUR, R_COLOUR = "tab:orange", "tab:blue"


def _layer_colour(i: int, n: int) -> Any:
    return LAYER_CMAP(0.05 + 0.8 * i / max(1, n - 1))


def _log_if_spans(ax: plt.Axes, values: np.ndarray, decades: float = 1.0) -> None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and np.log10(v.max() / v.min()) >= decades:
        ax.set_yscale("log")


def fig_outliers(rec: Records, fits: Dict[int, EmergenceFit]) -> Figure:
    fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    L = rec.n_layers
    t = np.linspace(rec.steps[0], rec.steps[-1], 200)
    all_r, all_k = [], []
    for i in range(L):
        c = _layer_colour(i, L)
        r = rec.series(f"massive/block_{i}/resid_out/ratio")
        kurt = rec.series(f"act/block_{i}/resid_out/kurtosis")
        ax_r.plot(rec.steps, r, "o-", ms=3, lw=1.2, color=c, label=f"block {i}")
        if fits[i].ok:
            ax_r.plot(t, fits[i].predict(t), "--", lw=1, color=c)
        ax_k.plot(rec.steps, kurt, "o-", ms=3, lw=1.2, color=c, label=f"block {i}")
        all_r.append(r)
        all_k.append(kurt)
    ax_r.plot([], [], "--", color="0.4", label="emergence fit")
    _log_if_spans(ax_r, np.concatenate(all_r))
    _log_if_spans(ax_k, np.concatenate(all_k))
    ax_k.axhline(3, color="0.5", lw=0.8, ls=":", label="Gaussian (3)")
    ax_r.set_title("r = max|h| / median|h| of the residual stream out of each block\n"
                   "dashed: f(t) = A·exp(−λx)·log x + K, x = γt + t₀", fontsize=10)
    ax_r.set_ylabel("r (ratio)")
    ax_k.set_title("kurtosis of the residual stream out of each block", fontsize=10)
    ax_k.set_ylabel("kurtosis (Pearson; Gaussian = 3)")
    for ax in (ax_r, ax_k):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(fontsize=8, ncol=2 if L > 6 else 1)
    return fig


def _plain_log_ticks(ax: plt.Axes, which: str) -> None:
    """Log ticks printed as plain numbers at 1, 2, 5 × 10^k, or at every integer multiple when
    the data span less than a decade (E often does): matplotlib's default labels such a range
    with overlapping 6×10^0-style minor labels, or with one tick only."""
    ax.autoscale_view()
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if hi / lo >= 10 else tuple(float(k) for k in range(1, 10))
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ec_scatter(ax: plt.Axes, sample: np.ndarray, col: int, xlabel: str) -> None:
    k = max(0, sample.shape[0] - N_EC_SAMPLE)  # the first k rows are C's top-|C| entries
    c, x = sample[:, 0], sample[:, col]
    ok = (c > 0) & (x > 0)
    rest, top = ok & (np.arange(len(c)) >= k), ok & (np.arange(len(c)) < k)
    ax.scatter(x[rest], c[rest], s=6, color="0.6", alpha=0.6, lw=0,
               label=f"strided sample ({int(rest.sum())})")
    ax.scatter(x[top], c[top], s=12, color="tab:red", lw=0, label=f"top-|C| entries ({k})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, "x")
    _plain_log_ticks(ax, "y")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("|C| = E·|R|", fontsize=9)
    ax.grid(alpha=0.3, lw=0.5)
    ax.tick_params(labelsize=8)


def _dumbbell(ax: plt.Axes, names: List[str], e: np.ndarray, r: np.ndarray, xlabel: str,
              chance: Optional[np.ndarray] = None) -> None:
    order = np.argsort(r - e, kind="stable")  # R's lead over E, smallest at the bottom
    y = np.arange(len(names))
    ax.hlines(y, e[order], r[order], color="0.75", lw=1)
    ax.plot(e[order], y, "o", color=E_COLOUR, ms=5, label="E (energy: norm products)")
    ax.plot(r[order], y, "s", color=R_COLOUR, ms=5, label="|R| (correlation: cosines)")
    if chance is not None:
        ax.plot(chance[order], y, "|", color="0.3", ms=7, label="chance overlap")
    ax.set_yticks(y, [names[i] for i in order], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3,
              frameon=False)


def fig_energy_vs_correlation(rec: Records) -> Figure:
    projs = ec_scatter_projections(rec)
    fig = plt.figure(figsize=(13, 4.0 + 3.6 + 0.16 * len(ec_projections(rec))),
                     layout="constrained")
    top_h = 3.6
    sub = fig.subfigures(2, 1, height_ratios=[top_h, 0.16 * len(ec_projections(rec)) + 1.5])
    ax_top = sub[0].subplots(1, max(2, 2 * len(projs)), squeeze=False)[0]
    arrays = rec.arrays(rec.last_step)
    for j, p in enumerate(projs):
        sample = arrays[f"ec_sample/{p}"]
        _ec_scatter(ax_top[2 * j], sample, 1, "E = ‖a_i‖·‖b_j‖")
        _ec_scatter(ax_top[2 * j + 1], sample, 2, "|R| = |cos θ_ij|")
        ax_top[2 * j].set_title(f"{p}: |C| vs E", fontsize=9)
        ax_top[2 * j + 1].set_title(f"{p}: |C| vs |R|", fontsize=9)
    ax_top[0].legend(fontsize=7, loc="upper left")
    sub[0].suptitle(f"C = A·B = E ⊙ R at step {rec.last_step} (log-log)", fontsize=10)
    names = ec_projections(rec)
    ax_p, ax_o = sub[1].subplots(1, 2)
    get = {k: np.array([rec.last(f"ec/{n}/{k}") for n in names])
           for k in ("pearson_E", "pearson_R", "top_overlap_E", "top_overlap_R", "chance_overlap")}
    _dumbbell(ax_p, names, get["pearson_E"], get["pearson_R"], "Pearson correlation with |C|")
    _dumbbell(ax_o, names, get["top_overlap_E"], get["top_overlap_R"],
              "share of C's top-|C| entries also top in E / in |R|", get["chance_overlap"])
    ax_p.set_title("which factor |C| follows, per projection (sorted by R − E)", fontsize=9)
    ax_o.set_title("top-entry overlap, per projection (sorted by R − E)", fontsize=9)
    return fig


def fig_norm_compression(rec: Records) -> Figure:
    norms = rec.names("norm", "compression")
    n = len(norms)
    fig = plt.figure(figsize=(13, 8), layout="constrained")
    gs = fig.add_gridspec(2, 2)
    ax_b = fig.add_subplot(gs[0, :])
    x = np.arange(n)
    parts = (("in", "before the norm", "tab:red"),
             ("normed", "after normalising", "tab:grey"),
             ("scaled", "after the learned scale", "tab:green"))
    for j, (k, label, colour) in enumerate(parts):
        v = [rec.last(f"norm/{m}/max_rms_{k}") for m in norms]
        ax_b.bar(x + (j - 1) * 0.27, v, width=0.27, color=colour, label=label, bottom=0)
    tops = [max(rec.last(f"norm/{m}/max_rms_{k}") for k in ("in", "normed", "scaled"))
            for m in norms]
    for i, m in enumerate(norms):  # the two ratios the lower panels follow over training
        ax_b.annotate(f"÷{rec.last(f'norm/{m}/compression'):.2f}\n"
                      f"×{rec.last(f'norm/{m}/reamplification'):.2f}", (x[i], tops[i]),
                      xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                      fontsize=7)
    ax_b.set_yscale("log")
    # max|x| >= RMS always, so 1 (all entries equally large) is the natural baseline.
    ax_b.set_ylim(1, np.nanmax(tops) * 1.6 if np.isfinite(tops).any() else 10)
    _plain_log_ticks(ax_b, "y")
    ax_b.set_xticks(x, norms, rotation=30, ha="right", fontsize=8)
    ax_b.set_ylabel("dynamic range max|x| / RMS")
    ax_b.set_title(f"Dynamic range at each norm layer (depth order), step {rec.last_step}; "
                   "labels: ÷compression, ×reamplification", fontsize=10)
    ax_b.legend(fontsize=8)
    ax_b.grid(axis="y", which="both", alpha=0.3, lw=0.5)
    for col, (k, title) in enumerate((
            ("compression", "compression = (max/RMS before) ÷ (max/RMS normalised)"),
            ("reamplification", "reamplification = (max/RMS scaled) ÷ (max/RMS normalised)"))):
        ax = fig.add_subplot(gs[1, col])
        for i, m in enumerate(norms):
            ax.plot(rec.steps, rec.series(f"norm/{m}/{k}"), "o-", ms=2.5, lw=1,
                    color=_layer_colour(i, n), label=m)
        ax.axhline(1, color="0.4", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{k} (ratio; 1 = unchanged)")
        ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, ncol=2 if n > 8 else 1, title="norm layer (shallow → deep)",
              title_fontsize=7, loc="best")
    return fig


def _style_legend(ax: plt.Axes, layers: Sequence[int], L: int,
                  styles: Sequence[Tuple[str, dict]]) -> None:
    """One entry per layer (colour) and one per line style: not layers × styles entries."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_layer_colour(i, L), lw=2, label=f"block {i}")
               for i in layers]
    handles += [Line2D([], [], color="0.3", label=label, **kw) for label, kw in styles]
    ax.legend(handles=handles, fontsize=7, ncol=2 if len(handles) > 8 else 1, loc="best")


def fig_swiglu(rec: Records) -> Figure:
    layers = [int(n.split("_")[1]) for n in rec.names("swiglu", "coincidence")]
    L = max(layers) + 1
    fig, (ax_c, ax_z) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    chance = np.concatenate([rec.series(f"swiglu/block_{i}/chance") for i in layers])
    for i in layers:
        c = _layer_colour(i, L)
        # Linear y: coincidence is often exactly 0 at small scale (k top entries: steps of
        # 1/k), and chance sits decades below; its value goes in the legend.
        ax_c.plot(rec.steps, rec.series(f"swiglu/block_{i}/coincidence"), "o-", ms=3, lw=1.2,
                  color=c)
        ax_c.plot(rec.steps, rec.series(f"swiglu/block_{i}/chance"), ":", lw=1, color=c)
        ax_z.plot(rec.steps, rec.series(f"swiglu/block_{i}/near_zero_swish"), "o-", ms=3,
                  lw=1.2, color=c)
        ax_z.plot(rec.steps, rec.series(f"swiglu/block_{i}/near_zero_gate"), "s--", ms=3,
                  lw=1, color=c, mfc="none")
    _style_legend(ax_c, layers, L, [
        ("coincidence", {"marker": "o", "ms": 3}),
        (f"chance (k/NH)² ≈ {fmt(finite_median(chance))}", {"ls": ":"})])
    _style_legend(ax_z, layers, L, [
        ("swish(gate)", {"marker": "o", "ms": 3}),
        ("gate pre-activation", {"marker": "s", "ms": 3, "ls": "--", "mfc": "none"})])
    ax_c.set_ylim(bottom=0)
    ax_c.set_title("share of the top-|h| entries of h = swish(gate) ⊙ up\n"
                   "where gate and up are both in their own top k", fontsize=10)
    ax_c.set_ylabel("coincidence share")
    ax_z.set_title("near zero: share of entries with |v| < 0.01·RMS(v)", fontsize=10)
    ax_z.set_ylabel("near-zero share")
    for ax in (ax_c, ax_z):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, lw=0.5)
    return fig
