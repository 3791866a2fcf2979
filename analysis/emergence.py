"""Host-side statistics of training dynamics: emergence fits of massive activations, E ⊙ R split.

Emergence (Gallego-Feliciano et al. 2025): per layer, the max/median ratio r_t over checkpoints
is fitted by f(t) = A·exp(−λ·x)·log(x) + K with x = γ·t + t₀, λ >= 0; λ = 0 is pure log growth,
λ > 0 (with A > 0) rises to a peak at x* = exp(W(1/λ)) and decays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import least_squares
from scipy.special import lambertw

MIN_POINTS = 5
_TINY = 1e-9  # lower bound of γ and t₀ (in scaled time): keeps x = γ·t + t₀ > 0 for t >= 0
# Upper bound of γ and t₀: at λ = 0 scaling both by c only adds A·log c (absorbed by K), an
# unbounded ridge the optimizer would otherwise walk up.
_X_MAX_LOG = 6
_X_MAX = 10.0 ** _X_MAX_LOG


@dataclass(frozen=True)
class EmergenceFit:
    """f(t) = A·exp(−lam·x)·log(x) + K, x = gamma·t + t0, in the caller's units of t and r.

    peak_t: the t of the maximum, (exp(W(1/lam)) − t0)/gamma, when lam > 0 and A > 0; it may lie
    beyond the last t (an extrapolated peak). None for pure log growth (lam = 0), A <= 0 (no
    maximum) or a maximum before t = 0. On failure ok is False, message says why, the parameters
    are nan and predict returns nan. With lam = 0, gamma and K trade off (only their combination
    with t0 is identified); predict(t) is what to compare.
    """

    A: float
    lam: float
    gamma: float
    t0: float
    K: float
    r2: float
    peak_t: Optional[float]
    ok: bool
    message: str

    def predict(self, t: float | Sequence[float] | np.ndarray) -> np.ndarray | float:
        y = _curve(np.asarray(t, float), self.A, self.lam, self.gamma, self.t0, self.K)
        return float(y) if np.ndim(y) == 0 else y


def _curve(t, A, lam, gamma, t0, K):
    x = np.maximum(gamma * t + t0, 1e-300)  # belt and braces: the bounds already keep x > 0
    return A * np.exp(-lam * x) * np.log(x) + K


def _failed(message: str) -> EmergenceFit:
    nan = float("nan")
    return EmergenceFit(A=nan, lam=nan, gamma=nan, t0=nan, K=nan, r2=nan, peak_t=None, ok=False,
                        message=message)


def _linear_AK(basis: np.ndarray, y: np.ndarray) -> Tuple[float, float, float]:
    """Best A, K for y ≈ A·basis + K (the model is linear in them), and the squared error."""
    M = np.stack([basis, np.ones_like(basis)], axis=1)
    (A, K), *_ = np.linalg.lstsq(M, y, rcond=None)
    return A, K, float(np.sum((M @ np.array([A, K]) - y) ** 2))


def _starts(tau: np.ndarray, y: np.ndarray, n_keep: int) -> list:
    """Best grid points (A, λ, γ, t₀, K) in scaled time, A and K solved exactly at each."""
    found = []
    for x_end in np.logspace(0, 4, 13):  # x at the last t
        for frac in (1e-3, 1e-2, 0.1, 0.3, 0.7):  # x at t = 0, as a share of x_end
            t0 = x_end * frac
            x = (x_end - t0) * tau + t0
            for lam in np.logspace(-3, 1, 17) / x_end * 10:  # λ·x_end from 0.01 to 100
                A, K, sse = _linear_AK(np.exp(-lam * x) * np.log(x), y)
                found.append((sse, (A, lam, x_end - t0, t0, K)))
    found.sort(key=lambda f: f[0])
    return [p for _, p in found[:n_keep]]


def _least_squares(fun, x0, lb, ub):
    x0 = np.clip(x0, np.array(lb) * (1 + 1e-9) + 1e-12, ub)  # trf needs a strictly feasible start
    res = least_squares(fun, x0, bounds=(lb, ub), method="trf", x_scale="jac", max_nfev=1000)
    return float(np.sum(res.fun ** 2)), res.x


def _fit_log(tau: np.ndarray, y: np.ndarray):
    """Pure log growth A·log(γτ + 1) + K (λ = 0, t₀ = 1: general, as A·log(γτ + t₀) =
    A·log t₀ + A·log(γτ/t₀ + 1)): a profile over γ with A, K exact, then refined."""
    sse, g = min((_linear_AK(np.log1p(g * tau), y)[2], g) for g in np.logspace(-3, _X_MAX_LOG, 91))
    A, K, _ = _linear_AK(np.log1p(g * tau), y)
    sse, (A, g, K) = _least_squares(lambda p: _curve(tau, p[0], 0.0, p[1], 1.0, p[2]) - y,
                                    [A, g, K], [-np.inf, _TINY, -np.inf], [np.inf, _X_MAX, np.inf])
    return sse, (A, 0.0, g, 1.0, K)


def _fit_full(tau: np.ndarray, y: np.ndarray, p0):
    """Bounded least squares of all five parameters from p0 = (A, λ, γ, t₀, K)."""
    lb, ub = [-np.inf, 0.0, _TINY, _TINY, -np.inf], [np.inf, np.inf, _X_MAX, _X_MAX, np.inf]
    sse, p = _least_squares(lambda p: _curve(tau, *p) - y, p0, lb, ub)
    return sse, tuple(p)


def _peak_t(A: float, lam: float, gamma: float, t0: float) -> Optional[float]:
    if not (lam > 0 and A > 0):
        return None
    x_star = float(np.exp(lambertw(1.0 / lam).real))  # solves λ·x·log x = 1
    if not np.isfinite(x_star) or x_star < t0:
        return None
    return (x_star - t0) / gamma


def fit_emergence(t: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray,
                  n_starts: int = 4) -> EmergenceFit:
    """Fit f(t) = A·exp(−λ·x)·log(x) + K, x = γ·t + t₀, to r over t >= 0; never raises on data.

    Time is scaled to [0, 1] and r to unit spread inside, so the bounds and tolerances do not
    depend on units. The pure-log model (λ = 0) is fitted first (a profile over γ, then least
    squares). The full model is refined by bounded least squares (λ >= 0, 0 < γ, t₀ <= 1e6 in
    scaled time) from the log fit and from the best `n_starts` points of a grid over (x at the
    last t, x at t = 0, λ) with A, K solved linearly at each; the best is kept. The pure-log
    model wins unless the full one lowers the BIC (n·log(SSE/n) + p·log n, p = 5 vs 3), so
    data without a clear peak read as λ = 0 exactly.
    """
    t = np.asarray(t, float).reshape(-1)
    r = np.asarray(r, float).reshape(-1)
    if t.shape != r.shape:
        return _failed(f"t and r differ in length ({t.size} vs {r.size})")
    bad = ~(np.isfinite(t) & np.isfinite(r))
    if bad.any():
        return _failed(f"non-finite data at {int(bad.sum())} of {t.size} points (indices "
                       f"{np.flatnonzero(bad)[:5].tolist()}...); drop them before fitting")
    if t.size < MIN_POINTS:
        return _failed(f"too few points: {t.size}, the 5-parameter fit needs at least "
                       f"{MIN_POINTS}")
    if t.min() < 0:
        return _failed(f"t must be >= 0 (x = γ·t + t₀ must stay positive), got min {t.min()}")
    if len(np.unique(t)) < MIN_POINTS:
        return _failed(f"too few distinct t: {len(np.unique(t))}, need at least {MIN_POINTS}")

    t_scale = float(t.max())
    r_mid, r_scale = float(np.mean(r)), float(np.std(r))
    if r_scale == 0:  # constant data: a flat line fits exactly and there is no peak
        return EmergenceFit(A=0.0, lam=0.0, gamma=1.0 / t_scale, t0=1.0, K=r_mid, r2=1.0,
                            peak_t=None, ok=True, message="constant data: flat fit")
    tau, y = t / t_scale, (r - r_mid) / r_scale

    errors = []
    best = {}
    with np.errstate(all="ignore"):
        try:
            best[True] = _fit_log(tau, y)
        except (ValueError, np.linalg.LinAlgError) as e:
            errors.append(str(e))
        # The full model starts from the grid and from the log fit (λ = 0 is inside its bounds).
        starts = _starts(tau, y, n_starts) + ([best[True][1]] if best else [])
        for p0 in starts:
            try:
                sse, params = _fit_full(tau, y, p0)
            except (ValueError, np.linalg.LinAlgError) as e:
                errors.append(str(e))
                continue
            if np.isfinite(sse) and sse < best.get(False, (np.inf,))[0]:
                best[False] = (sse, params)
    best = {k: v for k, v in best.items() if np.isfinite(v[0])}
    if not best:
        return _failed("optimizer failed from every start" + (f": {errors[0]}" if errors else ""))

    n = t.size
    bic = {k: n * np.log(max(sse, 1e-300) / n) + (3 if k else 5) * np.log(n)
           for k, (sse, _) in best.items()}
    pure_log = min(bic, key=bic.get)
    sse, (A, lam, g, t0, K) = best[pure_log]
    # Back to the caller's units: x = g·τ + t₀ = (g / t_scale)·t + t₀; r = r_scale·y + r_mid.
    A, gamma, K = A * r_scale, g / t_scale, K * r_scale + r_mid
    r2 = 1.0 - sse / float(np.sum(y ** 2))  # y has mean 0, so Σy² is the total sum of squares
    peak_t = _peak_t(A, lam, gamma, t0)
    if pure_log:
        msg = "pure log curve (λ = 0): the full model does not lower the BIC"
    elif peak_t is None:
        msg = f"full fit (λ = {lam:.3g}, A = {A:.3g}) without a maximum at t >= 0"
    else:
        msg = f"peaked fit (λ = {lam:.3g}), maximum at t = {peak_t:.4g}"
    return EmergenceFit(A=float(A), lam=float(lam), gamma=float(gamma), t0=float(t0), K=float(K),
                        r2=float(r2), peak_t=peak_t, ok=True, message=msg)


def energy_correlation(A_NxK: np.ndarray, B_KxM: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """C = A @ B as E ⊙ R: E_ij = ‖a_i‖·‖b_j‖, R_ij = cos θ_ij (0 where a norm is 0), in float64.

    The numpy twin of proxies.dynamics.energy_correlation, for saved activations and weights.
    """
    A = np.asarray(A_NxK, np.float64)
    B = np.asarray(B_KxM, np.float64)
    na_N = np.linalg.norm(A, axis=1)
    nb_M = np.linalg.norm(B, axis=0)
    unit_A = A / np.where(na_N > 0, na_N, 1.0)[:, None]
    unit_B = B / np.where(nb_M > 0, nb_M, 1.0)[None, :]
    return np.outer(na_N, nb_M), unit_A @ unit_B
