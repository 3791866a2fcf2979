"""Statistics and figure panels the paper's figures share (LR curves, LR sensitivity, logits,
per-seed effects); the rules that read them into verdicts are sweeps/verdicts.py.

Every loss drawn is the loss LR sensitivity counts: min(final eval loss, loss at init), with
diverged or NaN runs at the loss at init, marked ×.

Seeds (`sweep.seeds`): statistics are computed per seed (`series_stats` keeps a `train.seed`
column) and effects paired by seed (`paired_effects`, `trend_effect`: a `verdicts.Effect`
with its interval over seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures import (log_axes, lr_colour, lr_colourbar, lr_norm,  # noqa: F401
                              size_label)
from analysis.load import load_metrics
from analysis.sensitivity import counted_loss, series_lr_stats
from proxies.config import DEFAULT_LR_RANGE, LR_KEY
from proxies.config import SEED_KEY as SEED  # a column only when sweep.seeds > 1
from sweeps.verdicts import Effect, interval

SHAPE = ["model.d_model", "model.n_layers"]  # a model size, whatever its toggles add
# A run "trains" when its counted loss has covered at least this share of the way from the loss
# at init ℓ0 down to the best loss of its series ℓ*: a diverged or collapsed run sits near ℓ0,
# a trained one near ℓ*, and halfway separates the two whatever the scale of the loss.
TRAINED_SHARE = 0.5


def with_seed(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `train.seed` column (0 where the sweep ran one seed)."""
    return df if SEED in df.columns else df.assign(**{SEED: 0})


def seed_mean_curve(g: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LRs, counted loss averaged over seeds, diverged in any seed) of one series' rows."""
    g = with_seed(g).sort_values(LR_KEY)
    loss, div = counted_loss(g)
    per = pd.DataFrame({"lr": g[LR_KEY].to_numpy(float), "loss": loss, "div": div})
    agg = per.groupby("lr", sort=True).agg(loss=("loss", "mean"), div=("div", "any"))
    return agg.index.to_numpy(float), agg["loss"].to_numpy(float), agg["div"].to_numpy(bool)


def series_stats(df: pd.DataFrame, by: Sequence[str],
                 lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> pd.DataFrame:
    """Per (size, *by, seed): params, LRs, best LR (grid and interpolated), best loss, LR
    sensitivity. Sorted by `by`, size, then seed; `seed_mean` averages over seeds."""
    df = with_seed(df)
    keys = list(dict.fromkeys(list(by) + SHAPE + [SEED]))
    rows = []
    for vals, g in df.groupby(keys, sort=True, dropna=False):
        rows.append({**dict(zip(keys, vals if isinstance(vals, tuple) else (vals,))),
                     "n_params_nonembed": float(g["n_params_nonembed"].max()),
                     "lrs": len(g), **series_lr_stats(g, lr_range)})
    return pd.DataFrame(rows).sort_values(list(dict.fromkeys(list(by) + ["n_params_nonembed",
                                                                          SEED])),
                                          ignore_index=True)


def seed_mean(stats: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`series_stats` averaged over seeds per (size, *by); `seeds` counts them and
    `lr_sensitivity_sd` is their spread (NaN for one seed)."""
    keys = list(dict.fromkeys(list(by) + SHAPE))
    num = [c for c in stats.columns if c not in keys + [SEED] and
           pd.api.types.is_numeric_dtype(stats[c])]
    g = stats.groupby(keys, sort=True, dropna=False)
    out = g[num].mean().reset_index()
    out["seeds"] = g[SEED].nunique().to_numpy()
    out["lr_sensitivity_sd"] = g["lr_sensitivity"].std(ddof=1).to_numpy()
    return out.sort_values(list(dict.fromkeys(list(by) + ["n_params_nonembed"])),
                           ignore_index=True)


# ---------------------------------------------------------------- effects with their noise

def paired_effects(stats: pd.DataFrame, by: str, a: Any, b: Any,
                   column: str = "lr_sensitivity") -> Dict[str, Effect]:
    """Per model shape (d, L), in size order: `column` under `a` minus under `b`, paired by seed
    (positive: `b` lowers it). Shapes, not param counts, pair the runs: a toggle such as
    qk-layernorm adds a few parameters."""
    stats = with_seed(stats)
    out = {}
    order = stats.groupby(SHAPE)["n_params_nonembed"].min().sort_values()
    for shape in order.index:
        g = stats[(stats[SHAPE[0]] == shape[0]) & (stats[SHAPE[1]] == shape[1])]
        va = g[g[by] == a].set_index(SEED)[column]
        vb = g[g[by] == b].set_index(SEED)[column]
        seeds = va.index.intersection(vb.index)
        if len(seeds):
            out[size_label(order[shape])] = interval((va[seeds] - vb[seeds]).astype(float))
    return out


def trend_effect(stats: pd.DataFrame, column: str = "lr_sensitivity") -> Effect:
    """Slope of `column` per decade of non-embedding params (least squares), per seed, with its
    interval: does the statistic rise with size?"""
    stats = with_seed(stats)
    slopes = {}
    for seed, g in stats.groupby(SEED):
        g = g.dropna(subset=[column])
        if g["n_params_nonembed"].nunique() >= 2:
            slopes[seed] = float(np.polyfit(np.log10(g["n_params_nonembed"]), g[column], 1)[0])
    return interval(pd.Series(slopes, dtype=float))


def top_trained_lr(g: pd.DataFrame) -> float:
    """Highest LR of one series (one size, one seed) whose run trains (see TRAINED_SHARE); NaN
    when none does."""
    g = g.sort_values(LR_KEY)
    loss, div = counted_loss(g)
    l0, best = float(g["loss_at_init"].max()), float(np.nanmin(loss))
    trained = ~div & (loss <= l0 - TRAINED_SHARE * (l0 - best))
    lrs = g[LR_KEY].to_numpy(float)[trained]
    return float(lrs.max()) if len(lrs) else float("nan")


def step_above(lr: float, grid: Sequence[float]) -> float:
    """Decades from `lr` to the next LR of the grid (at the top, the step below it): how far
    the true edge may lie above a grid's "highest LR that trains"."""
    grid = np.unique(np.asarray(grid, float))
    if len(grid) < 2:
        return 0.0
    i = min(int(np.searchsorted(grid, lr * (1 - 1e-9))), len(grid) - 2)
    return float(np.log10(grid[i + 1] / grid[i]))


def rounding_sd(lrs: Sequence[float], grid: Sequence[float]) -> float:
    """The sd (decades) of a grid LR's rounding error, each known only to its step above:
    uniform over the step, variance step²/12, averaged over `lrs` (NaN ones dropped)."""
    steps = [step_above(x, grid) for x in np.asarray(lrs, float) if np.isfinite(x)]
    return float(np.sqrt(np.mean(np.square(steps)) / 12)) if steps else 0.0


def colours(values: Sequence[Any], cmap: str = "viridis") -> Dict[Any, Any]:
    """Ordered values -> colours along a sequential map (small to large)."""
    values = sorted(set(values))
    cm = plt.get_cmap(cmap)
    return {v: cm(0.1 + 0.8 * i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def lr_loss_panel(ax: plt.Axes, df: pd.DataFrame, title: str, by: str = "n_params_nonembed",
                  label: Callable[[Any], str] = size_label, cmap: str = "viridis",
                  legend_title: str = "non-emb. params") -> None:
    """Final loss vs LR (log x), a line per value of `by` coloured small to large."""
    col = colours(df[by].dropna().unique(), cmap)
    for v, g in df.groupby(by, sort=True):
        lrs, loss, div = seed_mean_curve(g)
        ax.plot(lrs, loss, "o-", ms=3.5, color=col[v], label=label(v))
        if div.any():
            ax.plot(lrs[div], loss[div], "x", ms=9, mew=2, color=col[v])
    log_axes(ax)
    ax.set_xlabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title, fontsize=7, title_fontsize=7)


def sensitivity_panel(ax: plt.Axes, stats: pd.DataFrame, by: str,
                      label: Callable[[Any], str], styles: Optional[Dict[Any, dict]] = None,
                      x: str = "n_params_nonembed") -> None:
    """LR sensitivity vs non-embedding params (log x), a line per value of `by`: the mean over
    seeds, with ± one seed standard deviation as error bars when there are several."""
    if SEED in stats.columns and stats[SEED].nunique() > 1:
        stats = seed_mean(stats, [by])
    for v, g in stats.groupby(by, sort=True):
        g = g.sort_values(x)
        sd = g["lr_sensitivity_sd"] if "lr_sensitivity_sd" in g.columns else None
        ax.errorbar(g[x], g["lr_sensitivity"], yerr=sd, fmt="o-", capsize=3, label=label(v),
                    **(styles or {}).get(v, {}))
    log_axes(ax)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("LR sensitivity")
    ax.legend(fontsize=7)


def logit_vs_lr_panel(ax: plt.Axes, df: pd.DataFrame, by: str, label: Callable[[Any], str],
                      column: str = "max_attn_logit") -> None:
    """Max attention logit vs LR (log-log), a colour per size, a line style per `by` value."""
    col = colours(df["n_params_nonembed"].dropna().unique())
    styles = ["-", "--", ":", "-."]
    for j, (v, gv) in enumerate(df.groupby(by, sort=True)):
        for n, g in gv.groupby("n_params_nonembed", sort=True):
            per_lr = g.groupby(LR_KEY, sort=True)[column].median()  # over seeds
            ax.plot(per_lr.index, per_lr.to_numpy(), styles[j % 4], marker="o", ms=3,
                    color=col[n], label=f"{size_label(n)}, {label(v)}")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("max attention logit")
    ax.legend(fontsize=6, ncol=2)


def compare_sensitivity(stats: pd.DataFrame, by: str, a: Any, b: Any) -> Dict[str, Any]:
    """Per model shape (d, L), in size order: (LR sensitivity under `a`, under `b`), means over
    seeds (`paired_effects` gives their difference with its interval)."""
    stats = seed_mean(stats, [by])
    rows = {}
    order = stats.groupby(SHAPE)["n_params_nonembed"].min().sort_values()
    for shape in order.index:
        g = stats[(stats[SHAPE[0]] == shape[0]) & (stats[SHAPE[1]] == shape[1])]
        sa = g.loc[g[by] == a, "lr_sensitivity"]
        sb = g.loc[g[by] == b, "lr_sensitivity"]
        if len(sa) and len(sb):
            rows[size_label(order[shape])] = (float(sa.iloc[0]), float(sb.iloc[0]))
    return rows


def fmt_pairs(pairs: Dict[str, Tuple[float, float]]) -> str:
    return "; ".join(f"{k}: {a:.3f} → {b:.3f}" for k, (a, b) in pairs.items())




def curve(row: pd.Series, metric: str) -> pd.Series:
    """One run's `metric` over steps (empty if never logged)."""
    m = load_metrics(Path(row["sweep_dir"]), row["run_dir"])
    return m[metric].dropna() if metric in m.columns else pd.Series(dtype=float)




def comparison_figure(df: pd.DataFrame, key: str, values: Sequence[Any],
                      label: Callable[[Any], str], title: str, extra: int = 0
                      ) -> Tuple[plt.Figure, List[plt.Axes]]:
    """The paper's two-setting layout: LR vs loss under each setting (shared y), then LR
    sensitivity vs params (red: first setting, blue: second); `extra` more axes returned."""
    fig, axs = plt.subplots(1, 3 + extra, figsize=(4.5 * (3 + extra), 3.8))
    for ax, v in zip(axs[:2], values):
        lr_loss_panel(ax, df[df[key] == v], label(v))
    axs[0].set_ylabel("final eval loss (× diverged)")
    same_y(axs[:2])
    sensitivity_panel(axs[2], series_stats(df, [key]), key, label,
                      {values[0]: {"color": "C3"}, values[1]: {"color": "C0"}})
    axs[2].set_title("LR sensitivity", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig, list(axs[3:])


def same_y(axs: Sequence[plt.Axes]) -> None:
    """One y range over panels already drawn (sharing after plotting would clip the later
    panels to the first one's range)."""
    lo = min(ax.get_ylim()[0] for ax in axs)
    hi = max(ax.get_ylim()[1] for ax in axs)
    for ax in axs:
        ax.set_ylim(lo, hi)
