"""LR sensitivity, the paper's summary statistic of how much a recipe's final loss depends on LR.

    LR sensitivity = E_{η ∈ [a, b]} [ min(ℓ(η), ℓ_0) − ℓ* ],   ℓ* = min_{η ∈ [a, b]} ℓ(η)

ℓ_0 is the loss at initialization: diverged or NaN runs count as ℓ_0, never as +∞.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Sequence, Tuple

import numpy as np

from proxies.config import DEFAULT_LR_RANGE, LR_KEY

if TYPE_CHECKING:
    import pandas as pd


def capped_losses(final_losses: Sequence[float], loss_at_init: float) -> np.ndarray:
    """min(loss, ℓ0), with non-finite losses at ℓ0: the loss LR sensitivity counts (and the
    figures draw)."""
    losses = np.asarray(final_losses, float)
    return np.where(np.isfinite(losses), np.minimum(losses, loss_at_init), loss_at_init)


def counted_loss(rows: "pd.DataFrame") -> Tuple[np.ndarray, np.ndarray]:
    """(the loss LR sensitivity counts, diverged-or-NaN mask) of a series' table rows."""
    div = (rows["diverged"].astype(bool) | rows["final_eval_ce"].isna()).to_numpy()
    losses = np.where(div, np.nan, rows["final_eval_ce"].to_numpy(float))
    return capped_losses(losses, float(rows["loss_at_init"].max())), div


def lr_sensitivity(lrs: Sequence[float], final_losses: Sequence[float], loss_at_init: float,
                   lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> float:
    """Mean excess of the capped final loss over the best one, over grid points inside lr_range.

    Non-finite losses and losses above `loss_at_init` count as `loss_at_init`. Returns NaN when
    no grid point lies inside the range.
    """
    lrs = np.asarray(lrs, float)
    capped = capped_losses(final_losses, loss_at_init)
    lo, hi = lr_range
    inside = (lrs >= lo * (1 - 1e-9)) & (lrs <= hi * (1 + 1e-9))
    if not inside.any():
        return float("nan")
    capped = capped[inside]
    return float(np.mean(capped - capped.min()))


def best_lr(lrs: Sequence[float], final_losses: Sequence[float]) -> Tuple[float, float]:
    """(LR, loss) of the lowest finite final loss; (nan, nan) if none is finite."""
    losses = np.asarray(final_losses, float)
    if not np.isfinite(losses).any():
        return float("nan"), float("nan")
    i = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return float(np.asarray(lrs, float)[i]), float(losses[i])


def best_lr_interp(lrs: Sequence[float], final_losses: Sequence[float]) -> float:
    """Best LR between grid points: the vertex of a parabola in log10(LR) through the best grid
    point and its two neighbours (the grid point itself at an edge of the grid or when the
    three points do not curve upwards). NaN if no loss is finite."""
    lrs = np.asarray(lrs, float)
    losses = np.asarray(final_losses, float)
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    if not np.isfinite(losses).any():
        return float("nan")
    i = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    if i == 0 or i == len(lrs) - 1 or not np.isfinite(losses[[i - 1, i + 1]]).all():
        return float(lrs[i])
    x = np.log10(lrs[i - 1:i + 2])
    a, b, _ = np.polyfit(x, losses[i - 1:i + 2], 2)
    if a <= 0:
        return float(lrs[i])
    return float(10 ** np.clip(-b / (2 * a), x[0], x[2]))


def series_lr_stats(rows: "pd.DataFrame",
                    lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> Dict[str, float]:
    """One series' LR statistics from its finished runs' table rows: the best LR on the grid
    (the lowest LR of a tie) and interpolated, the best final loss, and LR sensitivity
    (diverged or NaN runs count as the loss at init). The one computation behind the analysis
    report's table and the paper scripts' statistics."""
    nan = float("nan")
    if not len(rows):
        return {"best_lr": nan, "best_lr_interp": nan, "best_loss": nan, "lr_sensitivity": nan}
    g = rows.sort_values(LR_KEY, kind="stable")
    lrs = g[LR_KEY].to_numpy(float)
    losses = np.where(g["diverged"].astype(bool), np.nan, g["final_eval_ce"].to_numpy(float))
    lr, loss = best_lr(lrs, losses)
    return {"best_lr": lr, "best_lr_interp": best_lr_interp(lrs, losses), "best_loss": loss,
            "lr_sensitivity": lr_sensitivity(lrs, losses, float(g["loss_at_init"].max()),
                                             lr_range)}
