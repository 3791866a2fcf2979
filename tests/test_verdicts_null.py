"""Each result's whole judge on simulated null tables: with nothing to find, a judge says "true"
or "false" at most 5% of the time (tests/test_verdicts_stats.py checks the shared rules one at a
time; here every rule a verdict combines is read together, on tables shaped as the judge reads
them).

Noise model, at the laptop scale (`SPECS["laptop"]`: its sizes, LR grid and 3 seeds). Every
run's final eval loss is

    2.0 + 0.05 · (log10 LR + 2)²  +  a per-(series, seed) offset (sd SERIES_SD)
                                  +  per-run noise (sd RUN_SD),

where a series is one arm at one size. RUN_SD is set so that the seed-to-seed standard
deviation of LR sensitivity is 0.03 nats (the laptop's measured seed spread is 0.029-0.043;
`test_the_null_noise_gives_the_laptops_seed_spread_of_lr_sensitivity` holds the calibration).
No run diverges unless a result's null says so, and every other column a judge reads (max
attention logit, mean logit and log Z, gradient and update RMS) is noisy and drawn from the same
distribution in every arm, with no trend over size or LR where a claim is one.

The null of each result (each test's docstring names its own): where a judge compares arms, the
arms are drawn from the same distribution; where it reads the sign of a quantity that is no arm
comparison (a drift from init, a slope over size), that quantity has zero mean; where a rule
compares a statistic with a bound other than 0 (an equivalence margin, a loss tolerance), the
statistic sits at that bound. Each null is the point at which no rule has anything to find.

Bound: the judge reads N independent null tables (a fixed numpy seed per test, so each count is
one fixed number); the count of "true" + "false" must not pass the 99.9% quantile of
Binomial(N, 0.05) (`allowed`), i.e. a judge whose true rate is 5% fails with chance 0.1%. The
default run reads N = FAST_N tables per result (STABILIZERS_FAST_N for stabilizers, whose judge
costs ~5× the others' per table); `-m slow` reads SLOW_N.

A verdict that is a conjunction of sub-claims says "false" when any one is false, so each
sub-claim says "false" only at Bonferroni's level for their number (sweeps/verdicts.py: `parts`);
before that, z_loss, mup, adam_eps and stabilizers decided 7-12% of their null tables, and
kappa 34.5% (it read a noisy argmin over the whole grid as the best κ). The last tests plant an
effect in the same harness, to show it reaches the judges' decisions.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from proxies import metric_names as M
from proxies.config import LR_KEY
from sweeps import adam_eps as AE
from sweeps import default_vs_none as DV
from sweeps import depth_width as DW
from sweeps import kappa as KA
from sweeps import logit_prediction as LP
from sweeps import mup as MU
from sweeps import onset as ON
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps import qk_layernorm as QK
from sweeps import stabilizers as S
from sweeps import warmup as WU
from sweeps import weight_decay as WD
from sweeps import z_loss as ZL
from sweeps.core import SPECS, ScaleSpec, Tables, half_decades, size_params

SPEC = SPECS["laptop"]
SEEDS = tuple(range(SPEC.seeds))
FAST_N, SLOW_N = 100, 1000
STABILIZERS_FAST_N = 30  # ~250 ms per table: 100 would take half the default run's minute
NULL_RATE = 0.05

CURVATURE = 0.05  # nats per decade² of LR around the best LR
BEST_LR = 1e-2
RUN_SD = 0.052  # per-run noise: gives a seed spread of LR sensitivity of 0.030 (calibrated below)
SERIES_SD = 0.02  # per-(series, seed) offset: moves the best loss, not LR sensitivity
SPREAD = 0.03  # the seed spread of LR sensitivity RUN_SD is set to
L0 = 5.5  # loss at init (ln 256, a byte-level vocabulary): far above every null loss
LOGIT_SD = 0.1  # decades: run-to-run noise of a max attention logit, gradient or update RMS

Judge = Callable[[Tables, ScaleSpec], Tuple[str, str, Dict[str, Any]]]
NullTables = Callable[[np.random.Generator], Tables]
N_TABLES = [FAST_N, pytest.param(SLOW_N, marks=pytest.mark.slow)]
SLOW_RUN = ("python -m pytest -m slow -n 0 -p no:cacheprovider tests/test_verdicts_null.py "
            "-k {}")


def over_the_bound(result: str, measured: str, fast_too: bool = False,
                   fast_n: int = FAST_N) -> list:
    """N_TABLES for a judge whose null rate was measured above 5% (reported; the judge is not
    this file's to change): xfail, strict, on each run whose count passes its bound (at FAST_N
    the bound is loose, 13%, so a judge at 7-12% passes there)."""
    fails = pytest.mark.xfail(strict=True, reason=f"{measured} ({SLOW_RUN.format(result)})")
    return [pytest.param(fast_n, marks=[fails] if fast_too else []),
            pytest.param(SLOW_N, marks=[pytest.mark.slow, fails])]


def allowed(n: int, rate: float = NULL_RATE) -> int:
    """The most "true" + "false" verdicts of n null tables a judge may give: the 99.9% quantile
    of Binomial(n, rate)."""
    return int(binom.ppf(0.999, n, rate))


# ---------------------------------------------------------------------------- the null runs

def runs(rng: np.random.Generator, sizes: Sequence[Dict[str, int]],
         lrs: Sequence[float] = SPEC.lrs, seeds: Sequence[int] = SEEDS, *,
         curvature: float = CURVATURE, best_lr: Callable[[Dict[str, int]], float] = lambda s:
         BEST_LR, shift: float = 0.0, diverge_above: Optional[np.ndarray] = None,
         **columns: Any) -> pd.DataFrame:
    """One arm's finished runs, a row per (size, seed, LR), as analysis.load.load_sweep reads
    them: loss = shift + 2.0 + curvature · (log10 LR − log10 best_lr(size))² + a per-(size,
    seed) offset + per-run noise; the max attention logit grows with LR alone (no arm, no size
    in it). A series (size, seed) diverges at every LR above its `diverge_above` entry (none by
    default): NaN loss, `diverged` set. `columns` are set on every row (the arm's keys)."""
    per_series = len(lrs)
    rows = [(s, seed, lr) for s in sizes for seed in seeds for lr in lrs]
    n = len(rows)
    d = np.array([s["d_model"] for s, _, _ in rows])
    layers = np.array([s["n_layers"] for s, _, _ in rows])
    lr = np.array([x for _, _, x in rows], float)
    best = np.array([best_lr(s) for s, _, _ in rows], float)
    offset = np.repeat(rng.normal(0.0, SERIES_SD, n // per_series), per_series)
    loss = (shift + 2.0 + curvature * (np.log10(lr) - np.log10(best)) ** 2 + offset
            + rng.normal(0.0, RUN_SD, n))
    diverged = (np.zeros(n, bool) if diverge_above is None else
                lr > np.repeat(np.asarray(diverge_above, float), per_series) * (1 + 1e-9))
    return pd.DataFrame({
        "model.d_model": d, "model.n_layers": layers,
        "model.n_heads": [s["n_heads"] for s, _, _ in rows], LR_KEY: lr,
        "train.seed": [seed for _, seed, _ in rows],
        "final_eval_ce": np.where(diverged, np.nan, loss), "loss_at_init": L0,
        "diverged": diverged, "status": "done",
        "n_params_nonembed": [size_params(s) for s, _, _ in rows],
        "max_attn_logit": 30.0 * np.sqrt(lr / BEST_LR) * 10 ** rng.normal(0.0, LOGIT_SD, n),
        **columns})


def arms(rng: np.random.Generator, key: str, values: Sequence[Any],
         sizes: Sequence[Dict[str, int]] = SPEC.sizes, **kw: Any) -> pd.DataFrame:
    """The same null runs under each value of `key`: the arms differ in nothing but the key."""
    return pd.concat([runs(rng, sizes, **{key: v}, **kw) for v in values], ignore_index=True)


def lr_sensitivity_sd(seeds: int = 400, seed: int = 0) -> float:
    """The seed-to-seed sd of LR sensitivity of one null series (the smallest laptop size), as
    the judges compute it (`P.series_stats`)."""
    df = runs(np.random.default_rng(seed), SPEC.sizes[:1], seeds=range(seeds))
    return float(P.series_stats(df, [])["lr_sensitivity"].std(ddof=1))


@functools.lru_cache(maxsize=None)
def run_noise(lrs: int, draws: int = 100_000) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, RUN_SD, (draws, lrs))


def expected_series(curvature: float = CURVATURE, best_lr: float = BEST_LR,
                    lrs: Sequence[float] = SPEC.lrs) -> Tuple[float, float]:
    """(E[LR sensitivity], E[best loss] − 2.0) of one null series over `lrs`, by simulation
    (what `P.series_stats` computes, written out; the per-series offset has mean 0). The same
    draws at every call, so differences between curvatures are exact to the draws' noise."""
    x = np.log10(np.asarray(lrs, float)) - np.log10(best_lr)
    loss = curvature * x ** 2 + run_noise(len(x))
    return float(np.mean(loss.mean(1) - loss.min(1))), float(np.mean(loss.min(1)))


@functools.lru_cache(maxsize=None)
def curvature_raising_sensitivity(delta: float, best_lr: float = BEST_LR) -> float:
    """The curvature whose expected LR sensitivity is `delta` above CURVATURE's (bisection:
    it rises with curvature)."""
    base = expected_series(CURVATURE, best_lr)[0]
    lo, hi = CURVATURE, CURVATURE + 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_series(mid, best_lr)[0] - base < delta else (lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------------------- the harness

def verdicts(judge: Judge, null: NullTables, n: int, seed: int) -> pd.Series:
    """The judge's verdict on each of n independent null tables."""
    rng = np.random.default_rng(seed)
    return pd.Series([judge(null(rng), SPEC)[0] for _ in range(n)], dtype=object)


def assert_rarely_decided(judge: Judge, null: NullTables, n: int, seed: int) -> None:
    said = verdicts(judge, null, n, seed)
    decided = int((said != "inconclusive").sum())
    assert decided <= allowed(n), (
        f"{decided}/{n} = {decided / n:.1%} of null tables decided (at most {allowed(n)}): "
        f"{said.value_counts().to_dict()}")


def test_the_null_noise_gives_the_laptops_seed_spread_of_lr_sensitivity():
    """RUN_SD makes LR sensitivity's seed-to-seed sd SPREAD = 0.03 nats (±10%: the sd of 400
    seeds' sd is ~4% of it), inside the laptop's measured 0.029-0.043."""
    assert lr_sensitivity_sd() == pytest.approx(SPREAD, rel=0.1)


def test_the_bound_lets_a_judge_at_5_percent_pass_and_catches_one_at_twice_that():
    """A judge that decides 5% of null tables fails at most 0.1% of runs at every N; at SLOW_N
    one at 10% is caught 99.8% of the time, at FAST_N (a looser bound) one at 20%, 95%."""
    for n in (STABILIZERS_FAST_N, FAST_N, SLOW_N):
        assert binom.sf(allowed(n), n, NULL_RATE) <= 0.001
    assert binom.cdf(allowed(SLOW_N), SLOW_N, 2 * NULL_RATE) < 0.002
    assert binom.cdf(allowed(FAST_N), FAST_N, 4 * NULL_RATE) < 0.05


# ---------------------------------------------------------------------------- qk-layernorm

def qk_null(rng: np.random.Generator) -> Tables:
    return {"main": arms(rng, QK.QK, [False, True])}


@pytest.mark.parametrize("n", N_TABLES)
def test_qk_layernorm_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: qk-layernorm off and on drawn from the same distribution at every size (LR
    sensitivity, best loss, max logit); no run diverges in either arm, as at the laptop scale,
    so (a) reads a censored grid and only (b), which decides "false", can decide."""
    assert_rarely_decided(QK.judge, qk_null, n, seed=1)


# ---------------------------------------------------------------------------- warm-up

def warmup_null(rng: np.random.Generator) -> Tables:
    return {"main": arms(rng, WU.W, list(SPEC.warmups))}


@pytest.mark.parametrize("n", N_TABLES)
def test_warmup_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: the short and the long warm-up drawn from the same distribution at every size, so
    the reduction of LR sensitivity is 0 at the largest size, has no trend over size, and the
    best loss does not move."""
    assert_rarely_decided(WU.judge, warmup_null, n, seed=2)


# ---------------------------------------------------------------------------- default vs none

def default_vs_none_null(rng: np.random.Generator, effect: float = 0.0) -> Tables:
    """`effect` > 0 plants one: none of the stabilisers raises LR sensitivity by that much in
    expectation at every size (a steeper curve)."""
    steeper = curvature_raising_sensitivity(effect) if effect else CURVATURE
    return {"main": pd.concat([runs(rng, SPEC.sizes, curvature=steeper, **{DV.R: False}),
                               runs(rng, SPEC.sizes, **{DV.R: True})], ignore_index=True)}


@pytest.mark.parametrize("n", N_TABLES)
def test_default_vs_none_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: the §2.1 default and none of its stabilisers drawn from the same distribution at
    every size."""
    assert_rarely_decided(DV.judge, default_vs_none_null, n, seed=3)


# ---------------------------------------------------------------------------- weight decay

def weight_decay_null(rng: np.random.Generator) -> Tables:
    """Both arms on the same loss curve; the coupled arm on its own grid (the scale's plus
    1e-4), as its part trains it."""
    return {"coupled": runs(rng, SPEC.sizes, WD.coupled_lrs(SPEC), **{
                WD.IND: False, "optim.weight_decay": 0.1}),
            "independent": runs(rng, SPEC.sizes, **{WD.IND: True, "optim.weight_decay": 1e-4})}


@pytest.mark.parametrize("n", N_TABLES)
def test_weight_decay_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: coupled and independent decay give the same loss at every LR (same distribution),
    the coupled arm's LR sensitivity read as the paper reads it (the minimum over its two
    ranges)."""
    assert_rarely_decided(WD.judge, weight_decay_null, n, seed=4)


# ---------------------------------------------------------------------------- z-loss

def logit_walks(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
    """The mean output logit and log Z per run with no drift: each a random walk over the run
    from its value at init (0 and ln 256), 1 nat sd by the end; the value at 75% of the run is
    the walk's (so the last quarter's step has a quarter of the variance)."""
    out = {}
    for prefix, start in (("mean_logit", 0.0), ("log_z", L0)):
        init = start + rng.normal(0.0, 0.05, n)
        late = init + rng.normal(0.0, np.sqrt(0.75), n)
        out.update({f"{prefix}_init": init, f"{prefix}_late": late,
                    f"{prefix}_end": late + rng.normal(0.0, np.sqrt(0.25), n)})
    return out


def with_logit_walks(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**logit_walks(rng, len(df)))


def z_loss_null(rng: np.random.Generator) -> Tables:
    late = arms(rng, ZL.Z, [0.0, 1e-4], SPEC.sizes[:1], lrs=[ZL.FIG4_LR])
    return {"late": with_logit_walks(rng, late),
            "main": with_logit_walks(rng, arms(rng, ZL.Z, [0.0, 1e-4]))}


@pytest.mark.parametrize("n", N_TABLES)
def test_z_loss_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: no drift of the mean logit (a random walk from init, zero mean: M and M_late have
    zero mean without z-loss) and z-loss 0 and 1e-4 drawn from the same distribution, in the
    late runs (the smallest size at LR 0.1) and in the LR grid (Fig. 3)."""
    assert_rarely_decided(ZL.judge, z_loss_null, n, seed=5)


# ---------------------------------------------------------------------------- depth vs width

def path_sizes(s: ScaleSpec = SPEC) -> list:
    """Both paths' sizes, the shared first size once (as depth_width's parts train them)."""
    return list({(x["d_model"], x["n_layers"]): x for x in s.widths + s.depths}.values())


def depth_width_null(rng: np.random.Generator) -> Tables:
    return {"main": runs(rng, path_sizes()),
            "no_qk_layernorm": runs(rng, path_sizes(), **{"model.qk_layernorm": False})}


@pytest.mark.parametrize("n", N_TABLES)
def test_depth_width_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: LR sensitivity has no trend over size on either path (every size on the same
    curve), so the depth slope and the paired depth − width slope have zero mean; the max
    attention logit (Fig. E.2, reported) has no trend either."""
    assert_rarely_decided(DW.judge, depth_width_null, n, seed=6)


# ---------------------------------------------------------------------------- μParam

BASE_WIDTH = SPEC.widths[0]["d_model"]


def mup_best_lr(s: Dict[str, int]) -> float:
    """The best LR drifting by DRIFT_MARGIN decades per doubling of width: (A)'s margin."""
    return BEST_LR * 10 ** (-MU.DRIFT_MARGIN * np.log2(s["d_model"] / BASE_WIDTH))


@functools.lru_cache(maxsize=None)
def sp_at_the_margin(d_model: int) -> Tuple[float, float]:
    """(curvature, loss shift) of SP at width `d_model` such that SP − μP (simple) is
    NEGLIGIBLE in expected LR sensitivity and in expected best loss: (B)'s bound."""
    best = mup_best_lr({"d_model": d_model})
    curvature = curvature_raising_sensitivity(MU.NEGLIGIBLE, best)
    floor_gain = expected_series(curvature, best)[1] - expected_series(CURVATURE, best)[1]
    return curvature, MU.NEGLIGIBLE - floor_gain


def mup_arms(rng: np.random.Generator, **columns: Any) -> pd.DataFrame:
    """SP at the margin (`sp_at_the_margin`) and μP (simple) across the scale's widths, both
    with the best LR drifting by DRIFT_MARGIN."""
    out = [runs(rng, SPEC.widths, best_lr=mup_best_lr, **{MU.MP: MU.MUP}, **columns)]
    for w in SPEC.widths:
        curvature, shift = sp_at_the_margin(w["d_model"])
        out.append(runs(rng, [w], best_lr=mup_best_lr, curvature=curvature, shift=shift,
                        **{MU.MP: MU.SP}, **columns))
    return pd.concat(out, ignore_index=True)


def mup_null(rng: np.random.Generator) -> Tables:
    return {"main": mup_arms(rng),  # Fig. E.4's part (reported): the same arms without qk-LN
            "no_qk_layernorm": mup_arms(rng, **{"model.qk_layernorm": False})}


def test_the_mup_null_sits_at_both_bounds_of_its_claim():
    """SP − μP (simple) is NEGLIGIBLE in LR sensitivity and in best loss at every width above the
    base, in expectation over null tables (checked on the judge's own statistics, 80 tables:
    the standard error of each mean is ~0.002), and μP's best LR drifts by DRIFT_MARGIN."""
    rng = np.random.default_rng(7)
    stats = pd.concat([P.series_stats(mup_arms(rng), [MU.MP]) for _ in range(80)])
    wide = stats[stats[MU.WIDTH] > BASE_WIDTH].groupby(MU.MP)[
        ["lr_sensitivity", "best_loss"]].mean()
    gain = wide.loc[MU.SP] - wide.loc[MU.MUP]
    assert gain["lr_sensitivity"] == pytest.approx(MU.NEGLIGIBLE, abs=0.006)
    assert gain["best_loss"] == pytest.approx(MU.NEGLIGIBLE, abs=0.006)
    drift = np.log10(mup_best_lr(SPEC.widths[-1]) / BEST_LR) / np.log2(
        SPEC.widths[-1]["d_model"] / BASE_WIDTH)
    assert drift == pytest.approx(-MU.DRIFT_MARGIN)


@pytest.mark.parametrize("n", N_TABLES)
def test_mup_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: each statistic at its rule's bound, since μParam's claim is itself one of no
    effect (SP and μP drawn alike would make it true): μP (simple)'s best LR drifts by exactly
    DRIFT_MARGIN decades per doubling of width (A), and SP − μP is exactly NEGLIGIBLE in LR
    sensitivity and in best loss (B), in expectation (`sp_at_the_margin`)."""
    assert_rarely_decided(MU.judge, mup_null, n, seed=8)


# ---------------------------------------------------------------------------- onset

def onset_null(rng: np.random.Generator, effect: float = 0.0) -> Tables:
    """`effect` > 0 plants one: without qk-LN, LR sensitivity is that much higher in
    expectation at every length."""
    steeper = curvature_raising_sensitivity(effect) if effect else CURVATURE
    sizes = SPEC.sizes[:ON.SIZES]
    return {ON.part_name(steps): pd.concat([
        runs(rng, sizes, curvature=steeper, **{ON.QK: False}), runs(rng, sizes, **{ON.QK: True})],
        ignore_index=True) for steps in ON.lengths(SPEC)}


@pytest.mark.parametrize("n", N_TABLES)
def test_onset_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: qk-layernorm off and on drawn from the same distribution at every length."""
    assert_rarely_decided(ON.judge, onset_null, n, seed=9)


# ---------------------------------------------------------------------------- Adam ε

GRAD_RMS = 1.5e-4  # a laptop-like gradient RMS: the larger ε judged is 1e-4 (AE.large_eps)
UPDATE_RMS = 0.5


def lognormal(rng: np.random.Generator, centre: float, n: int) -> np.ndarray:
    return centre * 10 ** rng.normal(0.0, LOGIT_SD, n)


def eps_runs(rng: np.random.Generator) -> pd.DataFrame:
    """The ε part: every ε but 1e-8 at the bound of the rule that reads it: its loss LOSS_TOL
    above 1e-8's, its update RMS KEEP × 1e-8's; the gradient RMS the same at every ε."""
    size = AE.eps_size(SPEC)
    out = []
    for eps in AE.epsilons(SPEC):
        base = eps == AE.BASE
        df = runs(rng, [size], lrs=[SPEC.eps_lr], shift=0.0 if base else AE.LOSS_TOL,
                  **{AE.E: eps})
        out.append(df.assign(**{AE.G: lognormal(rng, GRAD_RMS, len(df)), AE.U: lognormal(
            rng, UPDATE_RMS * (1.0 if base else AE.KEEP), len(df))}))
    return pd.concat(out, ignore_index=True)


def adam_eps_null(rng: np.random.Generator) -> Tables:
    sc = runs(rng, SPEC.sizes)
    return {"scaling": sc.assign(**{AE.G: lognormal(rng, GRAD_RMS, len(sc)),
                                    AE.U: lognormal(rng, UPDATE_RMS, len(sc))}),
            "eps": eps_runs(rng)}


@pytest.mark.parametrize("n", N_TABLES)
def test_adam_eps_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: the gradient RMS has no trend over size or LR (both slopes zero mean), and each ε
    sub-claim sits at its bound: loss(1e-15) − loss(1e-8) = LOSS_TOL ("no worse"), update RMS
    ratio = KEEP ("keeps it up"), loss(larger ε) − loss(1e-8) = LOSS_TOL ("worse"). (ε without
    any effect would make "no worse" and "keeps" true and "worse" false: the correct verdict
    there is "false", so that is no null.)"""
    assert_rarely_decided(AE.judge, adam_eps_null, n, seed=10)


# ---------------------------------------------------------------------------- κ

BIGRAM_LRS = half_decades(SPEC.kappa_lr, 10 * SPEC.kappa_lr)  # its part's grid


@functools.lru_cache(maxsize=None)
def bigram_shift() -> float:
    """The bigram runs' loss shift that puts their best of three LRs at a κ run's loss in
    expectation (the best of three noisy runs lies below one run)."""
    one_run = CURVATURE * (np.log10(SPEC.kappa_lr) - np.log10(BEST_LR)) ** 2
    return one_run - expected_series(lrs=BIGRAM_LRS)[1]


def kappa_null(rng: np.random.Generator) -> Tables:
    kappa = pd.concat([runs(rng, [SPEC.kappa_size], lrs=[SPEC.kappa_lr], **{KA.K: k})
                       for k in SPEC.kappas], ignore_index=True)
    planted = 0.9 * kappa[KA.K] * 10 ** rng.normal(0.0, LOGIT_SD, len(kappa))  # ≈ κ·cos
    bigram = runs(rng, [{**SPEC.kappa_size, "n_layers": 0}], lrs=BIGRAM_LRS,
                  shift=bigram_shift())
    return {"kappa": kappa.assign(max_attn_logit=planted), "bigram": bigram}


def test_the_kappa_null_puts_the_bigram_bar_at_the_loss_of_every_kappa():
    """Per seed, the bigram's best loss over its LRs minus a κ run's loss has mean 0 over null
    tables (the judge's own statistics, 200 tables × 3 seeds × 7 κ: se ~0.002)."""
    rng = np.random.default_rng(12)
    gaps = []
    for _ in range(200):
        t = kappa_null(rng)
        gaps.append((KA.loss_table(t["kappa"]).sub(KA.bigram_losses(t["bigram"]), axis=0))
                    .to_numpy().mean())
    assert np.mean(gaps) == pytest.approx(0.0, abs=0.006)


@pytest.mark.parametrize("n", N_TABLES)
def test_kappa_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: the planted κ has no effect on the loss (every κ's runs drawn alike, so no κ is
    degraded from the best one) and the bigram model's best loss equals a κ run's in
    expectation (loss − bigram at 0, the bound its state reads). The claim fails here, but
    with these seeds no κ's interval can show the loss un-degraded (they span ±0.2 nats around
    a 0.05 bound), so a "false" rests on noise, as a "true" would. Measured: 14/1000 'false'
    (1.4%). Before the reference was fixed to κ ≤ 1e2 and the first-'above' search corrected
    for the κ it reads, 34.5%: the best κ of the whole grid, a noisy argmin, left every κ below
    it untested."""
    assert_rarely_decided(KA.judge, kappa_null, n, seed=13)


# ---------------------------------------------------------------------------- logit prediction

LP_LRS = [lr for lr in SPEC.lrs if lr >= LP.MIN_LR] or SPEC.lrs  # as its part trains them
LP_SIZES = LP.fit_sizes(SPEC) + [SPEC.held_out]
EARLY_SD = 0.02  # decades (~5%): seed-to-seed noise of block 0's early max logit


def early_logit(n_params: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Block 0's max logit at 2% of the run without noise: a quadratic in ln(params) (the fit's
    own form), rising with size and LR; at most ~750 at the held-out size, so with the planted
    ×2 miss no run comes near 1e4 and every 1e4 flag is right."""
    u = np.log(n_params) - np.log(size_params(SPEC.sizes[0]))
    return 20.0 * np.sqrt(lr / LP_LRS[0]) * (1.0 + 0.5 * u + 0.1 * u ** 2)


def logit_prediction_null(rng: np.random.Generator) -> Tables:
    df = runs(rng, LP_SIZES, LP_LRS, **{"model.qk_layernorm": False})
    n_params = df["n_params_nonembed"].to_numpy(float)
    held = n_params == n_params.max()
    early = (early_logit(n_params, df[LR_KEY].to_numpy(float))
             * np.where(held, LP.PRED_TOLERANCE, 1.0) * 10 ** rng.normal(0.0, EARLY_SD, len(df)))
    return {"main": df.assign(**{
        LP.LOGIT: early, M.LOGIT_EARLY: 1.2 * early,
        "max_attn_logit": 3.0 * early * 10 ** rng.normal(0.0, EARLY_SD, len(df)),
        "steps_done": int(SPEC.base["train"]["steps"])})}


def test_the_logit_prediction_null_misses_the_held_out_logit_by_the_tolerance():
    """Each seed's statistic (median over LRs of |log10(predicted / measured)|) has mean
    log10(PRED_TOLERANCE) over null tables (100 tables: se ~0.002), and every 1e4 flag is
    right."""
    rng = np.random.default_rng(14)
    pr = [LP.predictions(logit_prediction_null(rng)["main"], SPEC) for _ in range(100)]
    errors = np.concatenate([LP.seed_errors(p).to_numpy() for p in pr])
    assert errors.mean() == pytest.approx(np.log10(LP.PRED_TOLERANCE), abs=0.006)
    assert all(p["flag_right"].all() and not p["crossed"].any() for p in pr)


@pytest.mark.parametrize("n", N_TABLES)
def test_logit_prediction_says_true_or_false_at_most_5_percent_of_null_tables(n: int):
    """Null: the fit misses the held-out size's logit by exactly the tolerance (×PRED_TOLERANCE,
    the bound its error rule reads) in expectation, every size's logit noisy (EARLY_SD), and no
    logit near 1e4 (every flag right: the flag rule, a count with no interval, has nothing to
    find)."""
    assert_rarely_decided(LP.judge, logit_prediction_null, n, seed=15)


# ---------------------------------------------------------------------------- stabilisers

STAB_LRS = np.asarray(SPEC.stabilizer_lrs, float)
DIVERGE_LR = 0.5  # each series diverges above LR 0.5 × 10^N(0, DIVERGE_SD) (laptop: past 0.3)
DIVERGE_SD = 0.1  # decades: about one fine step of the stabiliser grid
SOFTCAP = "attn_softcap+qk_layernorm"


@functools.lru_cache(maxsize=None)
def divergence_draws(draws: int = 100_000) -> np.ndarray:
    return 10 ** np.random.default_rng(1).normal(0.0, DIVERGE_SD, (2, draws))


def top_on_grid(theta: np.ndarray) -> np.ndarray:
    """The highest grid LR at or below each divergence LR: the highest LR that trains."""
    return STAB_LRS[np.searchsorted(STAB_LRS, theta * (1 + 1e-9), side="right") - 1]


@functools.lru_cache(maxsize=None)
def softcap_diverge_lr() -> float:
    """The centre of qk-LN + soft-cap's divergence LR at which the expected log10 ratio of its
    highest LR that trains to qk-LN's is log10(1.5), claim (1)'s bound, on the grid (bisection)."""
    a, b = divergence_draws()
    alone = np.log10(top_on_grid(DIVERGE_LR * b))
    lo, hi = DIVERGE_LR, 4 * DIVERGE_LR
    for _ in range(30):
        mid = (lo + hi) / 2
        gain = np.mean(np.log10(top_on_grid(mid * a)) - alone)
        lo, hi = (mid, hi) if gain < np.log10(S.LR_FACTOR) else (lo, mid)
    return (lo + hi) / 2


def setting_columns(name: str) -> Dict[str, Any]:
    """A setting's stabiliser keys as a loaded table holds them (None: NaN)."""
    return {k: (np.nan if v is None else v) for k, v in S.settings(SPEC)[name].items()}


def curves(rng: np.random.Generator, df: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Each run's probed curves the judge reads (the fake `P.curve` below serves them): the max
    attention logit after init (steps 100, 200) of `none` (growing with LR, past τ) and of
    QK-clip (held at τ, 1% noise, under LOGIT_SLACK·τ); the lowest head's entropy of every
    setting's top-LR run, at init and at the end, the end at COLLAPSE × init in expectation."""
    tau, top = SPEC.qk_clip_tau, STAB_LRS.max()
    logit, entropy = [], []
    for lr in df[LR_KEY]:
        grown = 100.0 * np.sqrt(lr / 0.1) * 10 ** rng.normal(0.0, LOGIT_SD, 2)
        after = (np.minimum(grown, tau * 10 ** rng.normal(0.0, 0.004, 2)) if setting == "qk_clip"
                 else grown)
        logit.append(pd.Series([5.0, *after], index=[0, 100, 200])
                     if setting in ("none", "qk_clip") else None)
        init = 2.0 * 10 ** rng.normal(0.0, 0.01)
        entropy.append(pd.Series([init, S.COLLAPSE * init * 10 ** rng.normal(0.0, LOGIT_SD)],
                                 index=[0, 200]) if np.isclose(lr, top) else None)
    return df.assign(**{"curve:attn/max_logit": logit, f"curve:{S.ENTROPY}": entropy})


def stored_curve(row: pd.Series, metric: str) -> pd.Series:
    """`P.curve` for null tables: the curve stored in the row, not read from a run directory."""
    c = row.get(f"curve:{metric}")
    return c if isinstance(c, pd.Series) else pd.Series(dtype=float)


def stabilizers_null(rng: np.random.Generator) -> Tables:
    out = []
    for setting in S.settings(SPEC):
        centre = softcap_diverge_lr() if setting == SOFTCAP else DIVERGE_LR
        theta = centre * 10 ** rng.normal(0.0, DIVERGE_SD, len(SEEDS))
        df = runs(rng, [SPEC.stabilizer_size], STAB_LRS, diverge_above=theta,
                  shift=S.SMALL_LOSS_COST if setting == "qk_clip" else 0.0,
                  **setting_columns(setting))
        out.append(curves(rng, df, setting))
    return {"main": pd.concat(out, ignore_index=True)}


def test_the_stabilizers_null_sits_at_the_bounds_of_its_claims(monkeypatch):
    """On the judge's own per-seed table (20 tables): qk-LN + soft-cap's highest LR that trains
    is 1.5× qk-LN's (mean log10 ratio, se ~0.01), QK-clip costs SMALL_LOSS_COST of best loss
    (se ~0.01), half the seeds' top-LR entropy collapses in every setting, and QK-clip holds
    every max logit under LOGIT_SLACK·τ while the baseline's passes τ."""
    monkeypatch.setattr(P, "curve", stored_curve)
    rng = np.random.default_rng(16)
    ps = pd.concat([S.per_seed(S.with_settings(stabilizers_null(rng)["main"])).set_index(
        [S.SETTING, P.SEED]) for _ in range(20)], keys=range(20), names=["table"])

    def at(setting: str, column: str) -> pd.Series:  # by (table, seed)
        return ps.xs(setting, level=S.SETTING)[column]

    ratio = np.log10(at(SOFTCAP, "top_trained_lr") / at("qk_layernorm", "top_trained_lr"))
    assert ratio.mean() == pytest.approx(np.log10(S.LR_FACTOR), abs=0.02)
    cost = at("qk_clip", "best_loss") - at("none", "best_loss")
    assert cost.mean() == pytest.approx(S.SMALL_LOSS_COST, abs=0.012)
    collapsed = ps["top_lr_entropy"] < S.COLLAPSE * ps["top_lr_entropy_init"]
    assert collapsed.mean() == pytest.approx(0.5, abs=0.05)
    assert (at("qk_clip", "max_logit_any_lr") <= S.LOGIT_SLACK * SPEC.qk_clip_tau).all()
    assert (at("none", "max_logit_any_lr") > SPEC.qk_clip_tau).all()


@pytest.mark.parametrize("n", [STABILIZERS_FAST_N, pytest.param(SLOW_N, marks=pytest.mark.slow)])
def test_stabilizers_says_true_or_false_at_most_5_percent_of_null_tables(n: int, monkeypatch):
    """Null, every setting alike (each series diverges above a random LR near 0.5, so the grid
    top is never reached) except where a claim's bound says otherwise: (1) qk-LN + soft-cap's
    divergence LR is set so its highest LR that trains is 1.5× qk-LN's in expectation (the
    bound); (2) QK-clip costs exactly SMALL_LOSS_COST of best loss (its max logit, a count
    with no interval, is held under τ: that half has nothing to find); (3) at the top LR the
    lowest head's entropy ends at COLLAPSE × its init value in expectation in every setting,
    so each seed's "collapsed" is a coin flip, alike with and without σReparam; (4) update
    clipping and none drawn alike. Probed curves come from the table (`stored_curve`)."""
    monkeypatch.setattr(P, "curve", stored_curve)
    assert_rarely_decided(S.judge, stabilizers_null, n, seed=17)


# ---------------------------------------------------------------------------- planted effects
# The same harness with an effect planted where the null has none: the judge then says "true"
# far more often than 5%, so the harness reaches the judge's decision (a judge that could not
# say "true" on these tables would pass the null tests for nothing).

PLANTED_N = 50


def said_true(judge: Judge, tables: NullTables, n: int, seed: int) -> Tuple[float, pd.Series]:
    said = verdicts(judge, tables, n, seed)
    return float((said == "true").mean()), said


def test_default_vs_none_says_true_far_more_often_when_the_default_lowers_sensitivity():
    """Planted: none of the stabilisers 4 × SPREAD (0.12 nats) more LR-sensitive at every size.
    With 3 seeds and all three sizes to clear, "true" comes out about a quarter of the time
    (22% here; null: 0% true, 2.5% false) and "false" never."""
    rate, said = said_true(DV.judge, lambda rng: default_vs_none_null(rng, 4 * SPREAD),
                           PLANTED_N, seed=18)
    assert rate >= 3 * NULL_RATE, said.value_counts().to_dict()
    assert not (said == "false").any()


def test_onset_says_true_far_more_often_when_qk_layernorm_lowers_sensitivity():
    """Planted: without qk-LN, LR sensitivity 3 × SPREAD (0.09 nats) higher at every length;
    "true" (an onset at some length) comes out 44% of the time (null: 1.8%), "false" never."""
    rate, said = said_true(ON.judge, lambda rng: onset_null(rng, 3 * SPREAD), PLANTED_N,
                           seed=19)
    assert rate >= 4 * NULL_RATE, said.value_counts().to_dict()
    assert not (said == "false").any()


def kappa_planted(rng: np.random.Generator, rise: Dict[float, float],
                  bigram_gap: float) -> Tables:
    """A κ null table with `rise` (nats, by κ) added to the κ runs' loss and the bigram model
    `bigram_gap` nats above their no-rise loss."""
    t = kappa_null(rng)
    k = t["kappa"]
    return {"kappa": k.assign(final_eval_ce=k["final_eval_ce"]
                              + k[KA.K].map(rise).to_numpy(float)),
            "bigram": t["bigram"].assign(final_eval_ce=t["bigram"]["final_eval_ce"]
                                         + bigram_gap)}


def test_kappa_says_false_when_the_loss_degrades_a_decade_before_the_papers_onset():
    """Planted: the loss already 0.4 nats worse at κ = 100 than at κ ≤ 10 (rising to 1.2 at
    1e4) and worse than the bigram model from κ = 300: "false" 65% of the time here, "true"
    never. (A table shaped as the paper's, flat to 300, +0.3 at 1e3, worse than bigram only at
    1e4, comes out "true" 1/100 at this noise: locating the onset within √10 of 1e3 needs
    κ = 300 shown undegraded within 0.05 nats, and 3 seeds' intervals span ±0.2.)"""
    early = dict(zip(SPEC.kappas, (0.0, 0.0, 0.4, 0.6, 0.8, 1.0, 1.2)))
    said = verdicts(KA.judge, lambda rng: kappa_planted(rng, early, 0.5), PLANTED_N, seed=20)
    assert (said == "false").mean() >= 4 * NULL_RATE, said.value_counts().to_dict()
    assert not (said == "true").any()
