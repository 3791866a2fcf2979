"""Statistics and figure panels the paper's figures share (LR curves, LR sensitivity, logits).

Every loss drawn is the loss LR sensitivity counts: min(final eval loss, loss at init), with
diverged or NaN runs at the loss at init, marked ×.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from analysis.figures import (log_axes, lr_colour, lr_colourbar, lr_norm,  # noqa: F401
                              size_label)
from analysis.load import load_metrics
from analysis.sensitivity import best_lr_interp, capped_losses, lr_sensitivity
from proxies.config import DEFAULT_LR_RANGE

SHAPE = ["model.d_model", "model.n_layers"]  # a model size, whatever its toggles add


def counted_loss(g: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
    """(loss as LR sensitivity counts it, diverged-or-NaN mask) of a series' rows."""
    div = (g["diverged"].astype(bool) | g["final_eval_ce"].isna()).to_numpy()
    l0 = float(g["loss_at_init"].max())
    loss = capped_losses(np.where(div, np.nan, g["final_eval_ce"].to_numpy(float)), l0)
    return loss, div


def series_stats(df: pd.DataFrame, by: Sequence[str],
                 lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> pd.DataFrame:
    """Per (size, *by): params, LRs, best LR (grid and interpolated), best loss, LR sensitivity.
    Sorted by `by` then size."""
    keys = list(dict.fromkeys(list(by) + SHAPE))
    rows = []
    for vals, g in df.groupby(keys, sort=True, dropna=False):
        g = g.sort_values("optim.lr")
        loss, _ = counted_loss(g)
        lrs = g["optim.lr"].to_numpy(float)
        finite = np.where(g["diverged"].astype(bool), np.nan, g["final_eval_ce"].to_numpy(float))
        i = int(np.nanargmin(finite)) if np.isfinite(finite).any() else None
        rows.append({**dict(zip(keys, vals if isinstance(vals, tuple) else (vals,))),
                     "n_params_nonembed": float(g["n_params_nonembed"].max()),
                     "lrs": len(lrs),
                     "best_lr": lrs[i] if i is not None else np.nan,
                     "best_lr_interp": best_lr_interp(lrs, finite),
                     "best_loss": finite[i] if i is not None else np.nan,
                     "lr_sensitivity": lr_sensitivity(lrs, loss, float(g["loss_at_init"].max()),
                                                      lr_range)})
    return pd.DataFrame(rows).sort_values(list(by) + ["n_params_nonembed"], ignore_index=True)


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
        g = g.sort_values("optim.lr")
        loss, div = counted_loss(g)
        ax.plot(g["optim.lr"], loss, "o-", ms=3.5, color=col[v], label=label(v))
        if div.any():
            ax.plot(g["optim.lr"][div], loss[div], "x", ms=9, mew=2, color=col[v])
    log_axes(ax)
    ax.set_xlabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title, fontsize=7, title_fontsize=7)


def sensitivity_panel(ax: plt.Axes, stats: pd.DataFrame, by: str,
                      label: Callable[[Any], str], styles: Optional[Dict[Any, dict]] = None,
                      x: str = "n_params_nonembed") -> None:
    """LR sensitivity vs non-embedding params (log x), a line per value of `by`."""
    for v, g in stats.groupby(by, sort=True):
        g = g.sort_values(x)
        ax.plot(g[x], g["lr_sensitivity"], "o-", label=label(v), **(styles or {}).get(v, {}))
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
            g = g.sort_values("optim.lr")
            ax.plot(g["optim.lr"], g[column], styles[j % 4], marker="o", ms=3, color=col[n],
                    label=f"{size_label(n)}, {label(v)}")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("max attention logit")
    ax.legend(fontsize=6, ncol=2)


def lr_colour_norm(lrs: Sequence[float]) -> LogNorm:
    return LogNorm(vmin=min(lrs), vmax=max(lrs))


def compare_sensitivity(stats: pd.DataFrame, by: str, a: Any, b: Any) -> Dict[str, Any]:
    """Per model shape (d, L), in size order: (LR sensitivity under `a`, under `b`). Shapes,
    not param counts, pair the runs: a toggle such as qk-layernorm adds a few parameters."""
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


def monotone_increasing(values: List[float]) -> bool:
    v = [x for x in values if np.isfinite(x)]
    return len(v) >= 2 and all(b > a for a, b in zip(v, v[1:]))


def curve(row: pd.Series, metric: str) -> pd.Series:
    """One run's `metric` over steps (empty if never logged)."""
    m = load_metrics(Path(row["sweep_dir"]), row["run_dir"])
    return m[metric].dropna() if metric in m.columns else pd.Series(dtype=float)


def curves_panel(ax: plt.Axes, df: pd.DataFrame, metric: str, style_by: Optional[str] = None,
                 style_label: Callable[[Any], str] = str) -> None:
    """`metric` vs step, colour by LR (log colour bar), line style by `style_by`."""
    norm = lr_norm(df["optim.lr"])
    styles = ["-", "--", ":", "-."]
    values = sorted(df[style_by].unique()) if style_by else [None]
    for _, r in df.sort_values("optim.lr").iterrows():
        c = curve(r, metric)
        if c.empty:
            continue
        j = values.index(r[style_by]) if style_by else 0
        ax.plot(c.index, c.values, styles[j % 4], color=lr_colour(norm, r["optim.lr"]),
                lw=1.3, alpha=0.9)
    lr_colourbar(ax.figure, ax, norm)
    if style_by:
        for j, v in enumerate(values):
            ax.plot([], [], styles[j % 4], color="gray", label=style_label(v))
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, lw=0.5)


def sensitivity_verdict(pairs: Dict[str, Tuple[float, float]], subject: str
                        ) -> Tuple[str, str]:
    """(reproduced, why) for "`subject` lowers LR sensitivity at every size", from per-size
    (without, with) pairs."""
    lower = [b < a for a, b in pairs.values()]
    if not lower:
        return "inconclusive", "no size has finished runs of both settings"
    if all(lower):
        return "true", f"{subject} lowers LR sensitivity at every size ({fmt_pairs(pairs)})"
    if not any(lower):
        return "false", f"{subject} lowers LR sensitivity at no size ({fmt_pairs(pairs)})"
    return "inconclusive", (f"{subject} lowers LR sensitivity at {sum(lower)}/{len(lower)} "
                            f"sizes ({fmt_pairs(pairs)})")


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
