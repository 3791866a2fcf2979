"""Scaling-trend fits that predict instabilities at sizes not yet trained.

- Attention-logit growth: max attention logit as a quadratic in ln(params), extrapolated.
- Gradient RMS vs AdamW ε: a power law of gradient RMS in params, and the size where it reaches ε.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_SIZES = 3


class FitError(ValueError):
    """Too little or unusable data for a fit; the message says what is missing."""


@dataclass(frozen=True)
class QuadraticLogFit:
    """values ≈ coef[0]·x² + coef[1]·x + coef[2] with x = ln(n_params)."""

    coef: np.ndarray  # highest power first
    residuals: np.ndarray  # data minus fit, at the fitted points
    n_points: int

    @property
    def dof(self) -> int:
        """Residual degrees of freedom: 0 means the curve passes through every point and its
        residuals say nothing about how well it extrapolates."""
        return self.n_points - 3

    def predict(self, n_params: float | Sequence[float] | np.ndarray) -> np.ndarray | float:
        x = np.log(np.asarray(n_params, float))
        y = np.polyval(self.coef, x)
        return float(y) if np.ndim(y) == 0 else y


def fit_quadratic_log(n_params: Sequence[float], values: Sequence[float]) -> QuadraticLogFit:
    """Least-squares quadratic of `values` in ln(n_params); needs three distinct sizes."""
    n = np.asarray(n_params, float)
    v = np.asarray(values, float)
    ok = np.isfinite(n) & np.isfinite(v) & (n > 0)
    n, v = n[ok], v[ok]
    if len(np.unique(n)) < MIN_SIZES:
        raise FitError(f"a quadratic in log(params) needs at least {MIN_SIZES} model sizes with "
                       f"finite values, got {len(np.unique(n))}; sweep more sizes")
    coef = np.polyfit(np.log(n), v, 2)
    return QuadraticLogFit(coef=coef, residuals=v - np.polyval(coef, np.log(n)),
                           n_points=len(n))


def eps_crossover(n_params: Sequence[float], grad_rms: Sequence[float], eps: float) -> float:
    """Params at which a power-law fit grad_rms ≈ a·N^b reaches `eps` (inf if it never does).

    Gradient RMS falls with model size; once it nears AdamW's ε the update m/(√v+ε) shrinks and
    the layer stops learning. Needs two distinct sizes with positive finite gradient RMS.
    """
    n = np.asarray(n_params, float)
    g = np.asarray(grad_rms, float)
    ok = np.isfinite(n) & np.isfinite(g) & (n > 0) & (g > 0)
    n, g = n[ok], g[ok]
    if len(np.unique(n)) < 2:
        raise FitError("a power law of gradient RMS in params needs at least 2 model sizes")
    b, log_a = np.polyfit(np.log(n), np.log(g), 1)
    if eps <= 0:
        return float("inf")
    if b > -1e-9:  # not falling with size: reaches ε only if already below it
        return float(n.min()) if np.exp(log_a) * n.min() ** b <= eps else float("inf")
    log_n = (np.log(eps) - log_a) / b
    return float(np.exp(log_n)) if log_n < 700 else float("inf")  # past float range: never
