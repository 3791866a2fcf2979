"""Training-dynamics statistics against brute-force numpy, and the emergence fit on known curves."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from analysis import emergence as adyn
from proxies import dynamics as dyn

EDGES = dyn.hist_edges()


def np_histogram(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin layout of hist_edges' docstring, one interval at a time, in float32."""
    x = np.asarray(x, np.float32).reshape(-1)
    x = x[np.isfinite(x)]
    p = edges[len(edges) // 2:].astype(np.float32)
    P = len(p)
    masks = [x <= -p[-1]]
    masks += [(-p[j + 1] < x) & (x <= -p[j]) for j in reversed(range(P - 1))]
    masks += [(-p[0] < x) & (x < p[0])]
    masks += [(p[j] <= x) & (x < p[j + 1]) for j in range(P - 1)]
    masks += [x >= p[-1]]
    counts = np.array([m.sum() for m in masks])
    assert counts.sum() == x.size  # the intervals tile the real line
    return counts


def planted(rng: np.random.Generator, n: int = 64, c: int = 16, std: float = 0.1) -> np.ndarray:
    x = rng.normal(0, std, (n, c)).astype(np.float32)
    x[5, 3], x[40, 11], x[17, 3], x[60, 7] = 50.0, -30.0, 20.0, 10.0
    return x


# --- histograms ----------------------------------------------------------------------------------

def test_edges_are_symmetric_log_spaced_and_fixed():
    e = dyn.hist_edges()
    assert len(e) == 98 and np.all(np.diff(e) > 0)
    np.testing.assert_array_equal(e, -e[::-1])
    pos = e[49:]
    np.testing.assert_allclose([pos[0], pos[-1]], [1e-8, 1e4])
    np.testing.assert_allclose(np.diff(np.log10(pos)), 0.25)
    np.testing.assert_array_equal(dyn.hist_edges(), e)  # same edges every call


def test_histogram_matches_brute_force_at_edges_zeros_and_beyond_range():
    rng = np.random.default_rng(0)
    p32 = EDGES[49:].astype(np.float32)
    x = np.concatenate([
        p32, -p32,  # exactly on every edge
        [0.0, -0.0, 1e-12, -1e-12, 3e4, -3e4, 1e30, -1e30],  # central bin and beyond ±hi
        rng.standard_normal(500) * 10.0 ** rng.uniform(-9, 5, 500),
    ]).astype(np.float32)
    counts = np.asarray(dyn.histogram(jnp.asarray(x), EDGES))
    assert counts.dtype == np.int32 and counts.shape == (99,)
    np.testing.assert_array_equal(counts, np_histogram(x, EDGES))
    np.testing.assert_array_equal(np.asarray(dyn.histogram(-x, EDGES)), counts[::-1])  # mirror
    # The layout: |x| < lo in the centre (bin 49), from lo up in bin 50, ±hi and beyond outermost.
    fixed = np.asarray(dyn.histogram(np.array([0, -0.0, 1e-12, -9e-9, 1e-8, 1.5e-8, -1e-8, 1e4,
                                               1e9, -1e4, 9.9e3], np.float32), EDGES))
    assert fixed[49] == 4 and fixed[50] == 2 and fixed[48] == 1
    assert fixed[0] == 1 and fixed[-1] == 2 and fixed[-2] == 1 and fixed.sum() == 11


def test_histogram_excludes_nan_and_inf_and_counts_every_finite_entry():
    x = np.array([1.0, np.nan, np.inf, -np.inf, -2.0, 0.0], np.float32)
    counts = np.asarray(dyn.histogram(x, EDGES))
    assert counts.sum() == 3 == np.isfinite(x).sum()


def test_merged_histograms_equal_the_histogram_of_the_concatenation():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 16)).astype(np.float32) * 100
    b = rng.standard_cauchy(200).astype(np.float32)
    merged = dyn.merge_histograms(dyn.histogram(a, EDGES), dyn.histogram(b, EDGES))
    whole = dyn.histogram(np.concatenate([a.reshape(-1), b]), EDGES)
    np.testing.assert_array_equal(np.asarray(merged), np.asarray(whole))
    assert int(merged.sum()) == a.size + b.size


# --- outliers ------------------------------------------------------------------------------------

def test_outlier_stats_against_numpy_and_scipy():
    x = planted(np.random.default_rng(2))
    s = jax.device_get(dyn.outlier_stats(x, k=3))
    a = np.abs(x)
    assert s["kurtosis"] == pytest.approx(scipy.stats.kurtosis(x, axis=None, fisher=False),
                                          rel=1e-4)
    assert s["max_abs"] == pytest.approx(50.0)
    assert s["max_median_ratio"] == pytest.approx(50.0 / np.median(a), rel=1e-5)
    assert s["max_rms_ratio"] == pytest.approx(50.0 / np.sqrt(np.mean(x.astype(float) ** 2)),
                                               rel=1e-5)
    # Channels by max |x| over rows: 3 (50), 11 (30), 7 (10); rows by max over channels: 5, 40, 17.
    np.testing.assert_array_equal(s["top_channels"], np.argsort(-a.max(0))[:3])
    np.testing.assert_array_equal(s["top_channels"], [3, 11, 7])
    np.testing.assert_allclose(s["top_channel_values"], [50, 30, 10])
    np.testing.assert_array_equal(s["top_positions"], [5, 40, 17])
    np.testing.assert_allclose(s["top_position_values"], [50, 30, 20])


def test_outlier_stats_flattens_leading_axes():
    x = planted(np.random.default_rng(3))
    a, b = dyn.outlier_stats(x), dyn.outlier_stats(x.reshape(4, 16, 16))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_massive_activation_rule_finds_a_planted_500():
    rng = np.random.default_rng(4)
    h = rng.normal(0, 0.1, (32, 64)).astype(np.float32)
    h[7, 9] = 500.0
    h[3, 1] = 80.0  # >= 1000·median|h| (≈ 67) but not > 100: only the relative rule
    s = jax.device_get(dyn.massive_activations(h))
    med = np.median(np.abs(h))
    assert int(s["count"]) == 1 and s["share"] == pytest.approx(1 / h.size)
    assert int(s["rel_count"]) == int((np.abs(h) >= 1000 * med).sum()) == 2
    assert s["ratio"] == pytest.approx(500.0 / med, rel=1e-5)
    assert s["median_abs"] == pytest.approx(med, rel=1e-6)
    assert int(dyn.massive_activations(rng.normal(0, 0.1, (32, 64)))["count"]) == 0


# --- matmul decomposition ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["random", "planted", "zero_row"])
def test_energy_times_correlation_is_the_matmul(kind):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((12, 8)).astype(np.float32)
    B = rng.standard_normal((8, 10)).astype(np.float32)
    if kind == "planted":
        A[3] *= 40.0
        B[:, 6] = A[7] * 5.0  # column 6 aligned with row 7: R = 1 there
    if kind == "zero_row":
        A[2] = 0.0
        B[:, 4] = 0.0
    E, R = jax.device_get(dyn.energy_correlation(A, B))
    C = A.astype(np.float64) @ B
    np.testing.assert_allclose(E * R, C, rtol=1e-5, atol=1e-4 * np.abs(C).max())
    np.testing.assert_allclose(E, np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=0)),
                               rtol=1e-5)
    assert np.all(np.abs(R) <= 1 + 1e-5)
    if kind == "planted":
        assert R[7, 6] == pytest.approx(1.0, abs=1e-5)
    if kind == "zero_row":
        assert np.all(R[2] == 0) and np.all(R[:, 4] == 0) and np.all(E[2] == 0)
    # The numpy twin agrees.
    E64, R64 = adyn.energy_correlation(A, B)
    np.testing.assert_allclose(E64 * R64, C, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(R64, R, atol=1e-5)


def test_energy_correlation_summary_against_numpy():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((40, 16)).astype(np.float32)
    A[:4] *= 10.0  # high-energy rows with unaligned directions
    B = rng.standard_normal((16, 30)).astype(np.float32)
    B[:, :5] = A[10:15].T * 2  # aligned pairs: large |R| at ordinary energies
    k = 12
    s = jax.device_get(dyn.energy_correlation_summary(A, B, top_k=k, spearman=True))
    E, R = adyn.energy_correlation(A, B)
    absC, absR = np.abs(E * R).ravel(), np.abs(R).ravel()
    E = E.ravel()

    def top(v):
        return set(np.argsort(-v)[:k])

    assert s["pearson_E"] == pytest.approx(np.corrcoef(absC, E)[0, 1], abs=1e-4)
    assert s["pearson_R"] == pytest.approx(np.corrcoef(absC, absR)[0, 1], abs=1e-4)
    assert s["spearman_E"] == pytest.approx(scipy.stats.spearmanr(absC, E)[0], abs=1e-4)
    assert s["spearman_R"] == pytest.approx(scipy.stats.spearmanr(absC, absR)[0], abs=1e-4)
    assert s["top_overlap_E"] == pytest.approx(len(top(absC) & top(E)) / k)
    assert s["top_overlap_R"] == pytest.approx(len(top(absC) & top(absR)) / k)
    assert int(s["top_k"]) == k and s["chance_overlap"] == pytest.approx(k / absC.size)
    # The default k is round(1e-3 · N·M), at least 1.
    default = dyn.energy_correlation_summary(A, B)
    assert int(default["top_k"]) == 1 and "spearman_E" not in default  # ranks cost sorts: opt-in
    assert int(dyn.energy_correlation_summary(A, B, top_frac=0.1)["top_k"]) == 120


# --- normalisation and MLP -----------------------------------------------------------------------

def test_norm_compression_on_a_hand_built_example():
    x_in = np.array([[1, -1, 1, -1], [8, 0, 0, 0]], np.float32)
    normed = x_in / np.sqrt(np.mean(x_in ** 2, axis=1, keepdims=True))  # RMSNorm, no scale
    scaled = normed * np.array([1, 1, 1, 5], np.float32)  # the learned scale lifts channel 3
    np.testing.assert_array_equal(normed, [[1, -1, 1, -1], [2, 0, 0, 0]])
    s = jax.device_get(dyn.norm_compression(x_in, normed, scaled))
    # in: max 8, rms √(68/8), median 1; normed: max 2, rms 1, median 1; scaled: max 5, rms 2, med 1.
    expected = {"max_rms_in": 8 / np.sqrt(8.5), "max_median_in": 8.0,
                "max_rms_normed": 2.0, "max_median_normed": 2.0,
                "max_rms_scaled": 2.5, "max_median_scaled": 5.0,
                "compression": 4 / np.sqrt(8.5), "reamplification": 1.25}
    assert set(s) == set(expected)
    for key, v in expected.items():
        assert s[key] == pytest.approx(v, rel=1e-6), key


def np_swiglu(g: np.ndarray, u: np.ndarray, k: int) -> dict:
    s = g / (1 + np.exp(-g.astype(np.float64)))
    h = (s * u).ravel()

    def top(v):
        return set(np.argsort(-np.abs(v).ravel())[:k])

    th, ts, tu = top(h), top(s), top(u)
    return {"coincidence": len(th & ts & tu) / k, "gate_share": len(th & ts) / k,
            "up_share": len(th & tu) / k,
            "near_zero_swish": np.mean(np.abs(s) < 1e-2 * np.sqrt(np.mean(s ** 2))),
            "near_zero_gate": np.mean(np.abs(g) < 1e-2 * np.sqrt(np.mean(g.astype(float) ** 2)))}


def test_swiglu_coincident_outliers_vs_independent_ones():
    rng = np.random.default_rng(7)
    N, H, k = 128, 32, 16
    g = rng.standard_normal((N, H)).astype(np.float32)
    u = rng.standard_normal((N, H)).astype(np.float32)
    cells = rng.choice(N * H, 2 * k, replace=False)
    sign = rng.choice([-1.0, 1.0], 2 * k)

    together_g, together_u = g.copy().ravel(), u.copy().ravel()
    together_g[cells[:k]] = 8 + rng.uniform(0, 2, k)
    together_u[cells[:k]] = sign[:k] * (8 + rng.uniform(0, 2, k))
    apart_g, apart_u = g.copy().ravel(), u.copy().ravel()
    apart_g[cells[:k]] = 8 + rng.uniform(0, 2, k)  # gate outliers here ...
    apart_u[cells[k:]] = sign[k:] * (8 + rng.uniform(0, 2, k))  # ... up outliers elsewhere

    for gg, uu, want in ((together_g, together_u, 1.0), (apart_g, apart_u, 0.0)):
        gg, uu = gg.reshape(N, H), uu.reshape(N, H)
        s = jax.device_get(dyn.swiglu_coincidence(gg, uu, top_k=k))
        ref = np_swiglu(gg, uu, k)
        for key, v in ref.items():
            assert s[key] == pytest.approx(v, abs=1e-6), key
        assert s["coincidence"] == want
        assert s["chance"] == pytest.approx((k / (N * H)) ** 2)
    # Negative gates are squashed toward 0: Swish has more values near zero than its input.
    wide = rng.normal(0, 4, (N, H)).astype(np.float32)
    s = dyn.swiglu_coincidence(wide, u)
    assert s["near_zero_swish"] > 2 * s["near_zero_gate"]
    assert int(s["top_k"]) == 4  # round(1e-3 · 4096)


def test_swiglu_coincidence_of_independent_factors_is_far_above_k_over_nh_squared():
    # The null the dynamics verdict uses (sweeps/dynamics.py): at init gate and up are
    # independent, yet h = swish(g)·u makes coincident outliers likely by construction (a top
    # |h| needs large factors), so (k/NH)² is a baseline no SwiGLU can fall to. The model at
    # init, like a permutation of up against gate, measures the construction's own level.
    rng = np.random.default_rng(3)
    N, H = 512, 256
    k = N * H // 100  # the top 1%: enough coincidences to measure their share
    g = rng.standard_normal((N, H)).astype(np.float32)
    u = rng.standard_normal((N, H)).astype(np.float32)
    at_init = float(dyn.swiglu_coincidence(g, u, top_k=k)["coincidence"])
    chance = float(dyn.swiglu_coincidence(g, u, top_k=k)["chance"])
    permuted = [float(dyn.swiglu_coincidence(g, rng.permutation(u.ravel()).reshape(N, H),
                                             top_k=k)["coincidence"]) for _ in range(5)]
    assert at_init > 100 * chance  # the old rule (10 × chance) holds by construction
    assert abs(at_init - np.mean(permuted)) < 3 * np.std(permuted) + 0.01
    # Planted coincident outliers (trained-like) rise above both.
    cells = rng.choice(N * H, k // 2, replace=False)
    g2, u2 = g.ravel().copy(), u.ravel().copy()
    g2[cells], u2[cells] = 6.0, 6.0
    trained = float(dyn.swiglu_coincidence(g2.reshape(N, H), u2.reshape(N, H),
                                           top_k=k)["coincidence"])
    assert trained > at_init + 0.2


# --- jit and vmap --------------------------------------------------------------------------------

def test_every_statistic_compiles_under_jit_and_vmaps_over_a_leading_axis():
    rng = np.random.default_rng(8)
    x = jnp.asarray(planted(rng))
    y = jnp.asarray(rng.standard_normal((16, 24)).astype(np.float32))
    calls = {
        "histogram": (functools.partial(dyn.histogram, edges=EDGES), (x,)),
        "outlier_stats": (dyn.outlier_stats, (x,)),
        "massive_activations": (dyn.massive_activations, (x,)),
        "energy_correlation": (dyn.energy_correlation, (x, y)),
        "energy_correlation_summary": (
            functools.partial(dyn.energy_correlation_summary, top_frac=0.01, spearman=True),
            (x, y)),
        "norm_compression": (dyn.norm_compression, (x, x, x)),
        "swiglu_coincidence": (functools.partial(dyn.swiglu_coincidence, top_frac=0.01), (x, x)),
    }
    for name, (fn, args) in calls.items():
        eager, jitted = fn(*args), jax.jit(fn)(*args)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name),
                     eager, jitted)
    # vmap over 3 stacked tensors equals three separate calls.
    xs = jnp.stack([x, 2 * x, -x])
    for fn in (dyn.outlier_stats, functools.partial(dyn.histogram, edges=EDGES)):
        batched = jax.vmap(fn)(xs)
        for i in range(3):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5),
                         batched, fn(xs[i]))


# --- emergence fit -------------------------------------------------------------------------------

def emergence(t, A, lam, gamma, t0, K):
    x = gamma * t + t0
    return A * np.exp(-lam * x) * np.log(x) + K


def test_fit_recovers_a_peaked_emergence_curve():
    t = np.linspace(0, 1000, 40)
    true = dict(A=5.0, lam=0.05, gamma=0.02, t0=2.0, K=1.0)
    clean = emergence(t, **true)
    r = clean * (1 + 0.02 * np.random.default_rng(9).standard_normal(t.size))
    fit = adyn.fit_emergence(t, r)
    assert fit.ok, fit.message
    assert fit.r2 > 0.95 and fit.lam > 0
    # peak at x* = exp(W(1/λ)) ≈ 9.07, t* = (x* − t₀)/γ ≈ 353.6
    x_star = np.exp(np.real(scipy.special.lambertw(1 / true["lam"])))
    assert true["lam"] * x_star * np.log(x_star) == pytest.approx(1.0)
    assert fit.peak_t == pytest.approx((x_star - true["t0"]) / true["gamma"], rel=0.1)
    tt = np.linspace(0, 1000, 200)
    assert np.max(np.abs(fit.predict(tt) - emergence(tt, **true))) < 0.05 * np.ptp(clean)
    assert isinstance(fit.predict(500.0), float)


def test_fit_reads_pure_log_growth_as_lambda_zero():
    t = np.linspace(0, 2000, 40)
    true = dict(A=2.0, lam=0.0, gamma=0.05, t0=1.0, K=3.0)
    clean = emergence(t, **true)
    r = clean * (1 + 0.02 * np.random.default_rng(10).standard_normal(t.size))
    fit = adyn.fit_emergence(t, r)
    assert fit.ok, fit.message
    assert fit.r2 > 0.95
    assert fit.lam * (fit.gamma * t.max() + fit.t0) < 0.05  # exp(−λx) flat over the data
    assert fit.peak_t is None
    tt = np.linspace(0, 2000, 200)
    assert np.max(np.abs(fit.predict(tt) - emergence(tt, **true))) < 0.05 * np.ptp(clean)


@pytest.mark.parametrize("t, r, why", [
    ([0, 1, 2], [1.0, 2.0, 3.0], "too few points"),
    (np.arange(10), np.r_[np.ones(9), np.nan], "non-finite"),
    (np.arange(10), np.r_[np.inf, np.ones(9)], "non-finite"),
    (np.arange(-5, 5), np.arange(10.0), "t must be >= 0"),
    (np.arange(6), np.arange(5.0), "differ in length"),
])
def test_fit_refuses_bad_data_without_raising(t, r, why):
    fit = adyn.fit_emergence(t, r)
    assert not fit.ok and why in fit.message
    assert fit.peak_t is None and np.isnan(fit.predict(1.0))


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (4, 4), (3, 5, 2), (64, 33)])
def test_median_abs_is_numpys_median_without_a_sort(shape):
    from proxies.dynamics import median_abs
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32) * 10.0 ** rng.integers(-3, 3, shape)
    x.ravel()[0] = 0.0  # zeros and ties are ordinary values
    # Exact middle values; their mean may round one float32 ulp apart from numpy's.
    assert float(jax.jit(median_abs)(x)) == pytest.approx(float(np.median(np.abs(x))), rel=3e-7)
