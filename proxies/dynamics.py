"""On-device statistics of activations, weights and gradients for the training-dynamics studies.

Pure jax.numpy functions, jit- and vmap-friendly: no Python control flow on values, and every
quantile or top-fraction uses a size computed from static shapes, so each compiles once per shape.
Inputs have channels on the last axis; leading axes are flattened to N (batch·positions), so
x_BxLxC and x_NxC give the same answer, and a weight d_in×d_out reads as N = d_in rows.
Everything is computed in float32 whatever the input dtype (bf16 medians and sums are too coarse).

Static arguments (`k`, `top_frac`, `top_k`, cutoffs) must stay Python numbers under jax.jit:
close over them (functools.partial) rather than passing them as traced arguments.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Stats = Dict[str, jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST  # TF32/bf16 matmuls would break E ⊙ R = A @ B


def _flat_NxC(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x


def n_top(n: int, top_frac: float, top_k: Optional[int] = None) -> int:
    """Static count of 'top' entries: top_k if given, else round(top_frac · n), in [1, n]."""
    k = top_k if top_k is not None else int(round(top_frac * n))
    return max(1, min(int(k), n))


def _top_mask(v_M: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
    """Indices of the k largest entries of a flat vector and a boolean mask of them."""
    _, idx_k = jax.lax.top_k(v_M, k)
    return idx_k, jnp.zeros(v_M.shape, bool).at[idx_k].set(True)


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation of two flat vectors; nan when either is constant."""
    a, b = a - jnp.mean(a), b - jnp.mean(b)
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


def _ranks(v: jax.Array) -> jax.Array:
    # Ordinal ranks (ties broken by position): Spearman equals scipy's when there are no ties.
    # One sort and a scatter, not argsort(argsort(v)): sorting dominates the cost.
    return jnp.zeros(v.shape, jnp.float32).at[jnp.argsort(v)].set(
        jnp.arange(v.shape[0], dtype=jnp.float32))


def _kth_smallest_nonneg(a: jax.Array, k: int) -> jax.Array:
    """The k-th smallest (0-based) of non-negative float32 values, exactly, by bisection on their
    bit patterns (ordered like the values for x >= 0): 32 counting passes instead of a sort,
    which is ~25x slower on CPU for the tensor sizes probes see. NaNs count as largest."""
    bits_N = jax.lax.bitcast_convert_type(a.reshape(-1), jnp.int32)

    def halve(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits_N <= mid) >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.int32(0), jnp.max(bits_N)))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def median_abs(x: jax.Array) -> jax.Array:
    """median |x| over all entries (the mean of the two middle values when their count is even,
    as numpy's), without sorting."""
    a = jnp.abs(jnp.asarray(x, jnp.float32)).reshape(-1)
    n = a.shape[0]
    return 0.5 * (_kth_smallest_nonneg(a, (n - 1) // 2) + _kth_smallest_nonneg(a, n // 2))


def _range_stats(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Dynamic range of all entries: (max|x| / rms, max|x| / median|x|)."""
    a = jnp.abs(jnp.asarray(x, jnp.float32))
    mx = jnp.max(a)
    return mx / jnp.sqrt(jnp.mean(a * a)), mx / median_abs(a)


# --- histograms ----------------------------------------------------------------------------------

def hist_edges(lo: float = 1e-8, hi: float = 1e4, per_decade: int = 4) -> np.ndarray:
    """Fixed symmetric log-spaced edges, the same for every site, step and run.

    With p = logspace(log10 lo, log10 hi, decades·per_decade + 1) (P = len(p) magnitudes), the
    edges are [-p[::-1], p] (2P values) and a histogram has 2P + 1 bins, binned by |x| so that
    the layout is an exact mirror (histogram(-x) == histogram(x)[::-1]):

      bin 0               x <= -hi                    (everything beyond -hi)
      bin P - 1 - j       -p[j+1] < x <= -p[j]        (j = 0 … P-2, negative log bins)
      bin P               -lo < x < lo                (the central bin, zeros included)
      bin P + 1 + j       p[j] <= x < p[j+1]          (positive log bins)
      bin 2P (the last)   x >= hi                     (everything beyond +hi)

    Edges are compared in float32. NaN and ±inf are not counted (see `histogram`).
    The defaults give 49 magnitudes, 98 edges and 99 bins.
    """
    n = int(round(np.log10(hi / lo) * per_decade))
    p = np.logspace(np.log10(lo), np.log10(hi), n + 1)
    return np.concatenate([-p[::-1], p])


def histogram(x: jax.Array, edges: np.ndarray) -> jax.Array:
    """Counts (int32 [len(edges) + 1]) of the finite entries of x in the bins of `hist_edges`.

    NaN and ±inf are excluded, so x.size - counts.sum() is the number of non-finite entries.
    `edges` must come from `hist_edges` (only its positive half is read).
    """
    x = jnp.asarray(x, jnp.float32).reshape(-1)
    pos_P = jnp.asarray(np.asarray(edges)[len(edges) // 2:], jnp.float32)
    P = pos_P.shape[0]
    # j = number of magnitudes <= |x|: 0 is the central bin, P is beyond hi.
    j = jnp.searchsorted(pos_P, jnp.abs(x), side="right")
    idx = jnp.where(x < 0, P - j, P + j)
    finite = jnp.isfinite(x)
    return jax.ops.segment_sum(finite.astype(jnp.int32), jnp.where(finite, idx, P),
                               num_segments=2 * P + 1)


def merge_histograms(*counts: jax.Array) -> jax.Array:
    """Histograms on the same edges merge by adding counts (steps, sites, hosts or runs)."""
    return sum(counts[1:], counts[0])


# --- outliers ------------------------------------------------------------------------------------

def outlier_stats(x_NxC: jax.Array, k: int = 4) -> Stats:
    """Heavy-tail statistics of all entries, and where the largest |x| sit.

    Keys: kurtosis (Pearson, 3 for a Gaussian), max_abs, max_median_ratio (max|x| / median|x|,
    inf when the median is 0), max_rms_ratio (max|x| / rms), top_channels / top_channel_values
    (the k channels with the largest max |x| over N, largest first, int32 [k] / float32 [k]) and
    top_positions / top_position_values (the k rows of N with the largest max |x| over C).
    k is clipped to the number of channels / rows.
    """
    x = _flat_NxC(x_NxC)
    a = jnp.abs(x)
    d = x - jnp.mean(x)
    m2 = jnp.mean(d * d)
    max_rms, max_med = _range_stats(a)
    ch_vals, ch_idx = jax.lax.top_k(jnp.max(a, axis=0), min(k, x.shape[1]))
    pos_vals, pos_idx = jax.lax.top_k(jnp.max(a, axis=1), min(k, x.shape[0]))
    return {
        "kurtosis": jnp.mean(d ** 4) / (m2 * m2),
        "max_abs": jnp.max(a),
        "max_median_ratio": max_med,
        "max_rms_ratio": max_rms,
        "top_channels": ch_idx.astype(jnp.int32),
        "top_channel_values": ch_vals,
        "top_positions": pos_idx.astype(jnp.int32),
        "top_position_values": pos_vals,
    }


def massive_activations(h_NxC: jax.Array, abs_cutoff: float = 100.0,
                        rel_cutoff: float = 1000.0) -> Stats:
    """Massive activations (Sun et al. 2024) of one hidden state: |a| > 100 and >= 1000·median|a|.

    The median is over all entries passed in; vmap over the batch for per-sequence medians.
    Keys: count (int32) and share of entries meeting both rules, rel_count (the relative rule
    alone: small models rarely reach the absolute cutoff), ratio (max|h| / median|h|, the
    statistic that works at small scale), max_abs, median_abs.
    """
    a = jnp.abs(jnp.asarray(h_NxC, jnp.float32))
    med = median_abs(a)
    rel = a >= rel_cutoff * med
    both = (a > abs_cutoff) & rel
    return {
        "count": jnp.sum(both, dtype=jnp.int32),
        "share": jnp.mean(both.astype(jnp.float32)),
        "rel_count": jnp.sum(rel, dtype=jnp.int32),
        "ratio": jnp.max(a) / med,
        "max_abs": jnp.max(a),
        "median_abs": med,
    }


# --- matmul decomposition ------------------------------------------------------------------------

def energy_correlation(A_NxK: jax.Array, B_KxM: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """C = A @ B split as E ⊙ R: E_ij = ‖a_i‖·‖b_j‖ (row i of A, column j of B), R_ij = cos θ_ij.

    R is the matmul of the unit rows and unit columns, so |R| <= 1 up to rounding; a zero row or
    column has R = 0 there (and E = 0), which keeps E ⊙ R = A @ B exact in that case too.
    """
    A = jnp.asarray(A_NxK, jnp.float32)
    B = jnp.asarray(B_KxM, jnp.float32)
    na_N = jnp.sqrt(jnp.sum(A * A, axis=1))
    nb_M = jnp.sqrt(jnp.sum(B * B, axis=0))
    unit_A = A / jnp.where(na_N > 0, na_N, 1.0)[:, None]
    unit_B = B / jnp.where(nb_M > 0, nb_M, 1.0)[None, :]
    return na_N[:, None] * nb_M[None, :], jnp.matmul(unit_A, unit_B, precision=_HIGHEST)


def energy_correlation_summary(A_NxK: jax.Array, B_KxM: jax.Array, top_frac: float = 1e-3,
                               top_k: Optional[int] = None, spearman: bool = False) -> Stats:
    """Do the large entries of C = A @ B follow the energy E or the correlation R?

    Keys: pearson_E / pearson_R (Pearson correlation of |C| with E and with |R| over all N·M
    entries), top_overlap_E / top_overlap_R (the share of C's k largest-|C| entries that are also
    among the k largest of E, of |R|), chance_overlap (k / (N·M), the overlap of unrelated sets)
    and top_k (int32); k = top_k if given, else round(top_frac · N·M), at least 1.
    With spearman=True also spearman_E / spearman_R (rank correlations, ordinal ranks): three
    sorts of N·M entries, seconds on a CPU for N·M of a few million, hence off by default.
    """
    E, R = energy_correlation(A_NxK, B_KxM)
    absC = jnp.abs(E * R).reshape(-1)
    E, absR = E.reshape(-1), jnp.abs(R).reshape(-1)
    k = n_top(absC.shape[0], top_frac, top_k)
    idx_C, _ = _top_mask(absC, k)
    _, in_E = _top_mask(E, k)
    _, in_R = _top_mask(absR, k)
    out = {
        "pearson_E": _pearson(absC, E),
        "pearson_R": _pearson(absC, absR),
        "top_overlap_E": jnp.mean(in_E[idx_C].astype(jnp.float32)),
        "top_overlap_R": jnp.mean(in_R[idx_C].astype(jnp.float32)),
        "chance_overlap": jnp.float32(k / absC.shape[0]),
        "top_k": jnp.int32(k),
    }
    if spearman:
        rC = _ranks(absC)
        out["spearman_E"] = _pearson(rC, _ranks(E))
        out["spearman_R"] = _pearson(rC, _ranks(absR))
    return out


# --- normalisation and MLP -----------------------------------------------------------------------

def norm_compression(x_in_NxC: jax.Array, x_normed_NxC: jax.Array,
                     x_scaled_NxC: jax.Array) -> Stats:
    """Dynamic range before a norm, after normalising (before the learned scale), after the scale.

    Keys: max_rms_{in,normed,scaled} and max_median_{in,normed,scaled} (max|x|/rms and
    max|x|/median|x| over all entries), compression = max_rms_in / max_rms_normed (> 1: the norm
    compressed the outliers) and reamplification = max_rms_scaled / max_rms_normed (> 1: the
    learned per-channel scale re-amplified some channels).
    """
    out: Stats = {}
    for name, x in (("in", x_in_NxC), ("normed", x_normed_NxC), ("scaled", x_scaled_NxC)):
        out[f"max_rms_{name}"], out[f"max_median_{name}"] = _range_stats(x)
    out["compression"] = out["max_rms_in"] / out["max_rms_normed"]
    out["reamplification"] = out["max_rms_scaled"] / out["max_rms_normed"]
    return out


def swiglu_coincidence(gate_pre_NxH: jax.Array, up_NxH: jax.Array, top_frac: float = 1e-3,
                       top_k: Optional[int] = None, near_zero: float = 1e-2) -> Stats:
    """Where do the outliers of the down-projection input h = swish(gate) ⊙ up come from?

    The k largest |h| (k = top_k, else round(top_frac · N·H), at least 1) are compared with the k
    largest |swish(gate)| and the k largest |up|. Keys: coincidence (share of h's top entries
    where gate and up are both in their own top k), gate_share / up_share (where each one is),
    chance (k/(N·H))², the share of both under independence), near_zero_swish (share of
    |swish(gate)| < near_zero · rms(swish(gate)), the pile-up of Swish near zero),
    near_zero_gate (the same band for the pre-activation gate, the baseline it piles up from),
    top_k (int32).
    """
    g = _flat_NxC(gate_pre_NxH)
    u = _flat_NxC(up_NxH)
    s = jax.nn.swish(g)
    h = (s * u).reshape(-1)
    k = n_top(h.shape[0], top_frac, top_k)
    idx_h, _ = _top_mask(jnp.abs(h), k)
    _, in_s = _top_mask(jnp.abs(s).reshape(-1), k)
    _, in_u = _top_mask(jnp.abs(u).reshape(-1), k)
    s_top, u_top = in_s[idx_h], in_u[idx_h]

    def near0(v: jax.Array) -> jax.Array:
        return jnp.mean((jnp.abs(v) < near_zero * jnp.sqrt(jnp.mean(v * v))).astype(jnp.float32))

    return {
        "coincidence": jnp.mean((s_top & u_top).astype(jnp.float32)),
        "gate_share": jnp.mean(s_top.astype(jnp.float32)),
        "up_share": jnp.mean(u_top.astype(jnp.float32)),
        "chance": jnp.float32((k / h.shape[0]) ** 2),
        "near_zero_swish": near0(s),
        "near_zero_gate": near0(g),
        "top_k": jnp.int32(k),
    }
