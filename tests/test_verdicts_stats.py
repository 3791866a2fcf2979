"""The statistics under every verdict, checked by simulation: the Student-t interval holds the
true mean at its stated rate, and each rule says "true" or "false" at most 5% of the time when
there is no effect (simulated tables at the laptop's seed count, MIN_SEEDS, and its measured seed
spread of LR sensitivity). Simulations use a fixed RNG, so each rate is one fixed number; the
bounds allow its Monte Carlo error (3 standard errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeps import panels as P
from sweeps import verdicts as V
from sweeps import stabilizers as S

TABLES = 2000
SEEDS = V.MIN_SEEDS
# The seed spread (sd over seeds) of a paired LR-sensitivity difference at laptop scale: the
# archived 2-seed laptop runs' per-size differences spread by 0.01-0.05 nats; the simulations
# use 0.03 (the rules are scale-free in it: only the ratio effect / spread matters).
SPREAD = 0.03


def mc_bound(rate: float) -> float:
    """`rate` plus 3 Monte Carlo standard errors over TABLES simulated tables."""
    return rate + 3 * np.sqrt(rate * (1 - rate) / TABLES)


def effects(mean: float, n: int = SEEDS, tables: int = TABLES, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [V.interval(rng.normal(mean, SPREAD, n)) for _ in range(tables)]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_t_interval_holds_the_true_mean_at_its_stated_rate(n):
    """Coverage of the 95% interval is 95% at every n, 2 seeds included (a percentile bootstrap
    over two values is their range: ~50%)."""
    covered = np.mean([e.lo <= 0.2 <= e.hi for e in effects(0.2, n)])
    se = np.sqrt(0.95 * 0.05 / TABLES)
    assert abs(covered - 0.95) <= 3 * se, covered


def test_the_interval_is_the_textbook_t_interval_and_prints_its_method_and_n():
    v = [0.1, 0.3, 0.2]
    e = V.interval(v)
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    assert (e.mean, e.lo, e.hi, e.n) == pytest.approx((0.2, 0.2 - half, 0.2 + half, 3))
    assert str(e) == f"+0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}] (95% t, n=3)"
    assert str(V.interval([0.1])) == "+0.100 (n=1, no interval)"
    assert not V.interval([0.5, 0.6]).decided  # 2 seeds: an interval, no verdict


RULES = {
    "above 0": lambda e: V.above(e, 0.0),
    "below 0": lambda e: V.below(e, 0.0),
    "qk-LN outcome": V.outcome,
    "update clipping (above RESOLUTION)": lambda e: V.above(e, V.RESOLUTION),
}


@pytest.mark.parametrize("rule", RULES)
def test_under_no_effect_a_one_statistic_rule_says_true_or_false_at_most_5_percent(rule):
    """The statistic's true value at the rule's bound (0): "true" 2.5% and "false" 2.5%."""
    said = pd.Series([RULES[rule](e) for e in effects(0.0)]).value_counts(normalize=True)
    assert said.get("true", 0) + said.get("false", 0) <= mc_bound(0.05), said.to_dict()


def test_under_no_effect_every_size_says_true_or_false_at_most_5_percent():
    """Three sizes, no effect at any: "false" needs one size's Holm interval below 0, "true" all
    three above, so each stays under 2.5%."""
    rng = np.random.default_rng(1)
    said = pd.Series([V.every_size_verdict(
        {f"size {i}": V.interval(rng.normal(0.0, SPREAD, SEEDS)) for i in range(3)}, "x")[0]
        for _ in range(TABLES)]).value_counts(normalize=True)
    assert said.get("false", 0) <= mc_bound(0.025), said.to_dict()
    assert said.get("true", 0) <= mc_bound(0.025), said.to_dict()


def test_without_holms_correction_every_size_would_say_false_too_often():
    """The same null tables read with the uncorrected 95% intervals: "any size below 0" fires
    ~7% of the time (1 − 0.975³), which is why the rule corrects for the number of sizes."""
    rng = np.random.default_rng(1)
    fired = np.mean([any(V.interval(rng.normal(0.0, SPREAD, SEEDS)).hi < -V.RESOLUTION
                         for _ in range(3)) for _ in range(TABLES)])
    assert fired > 0.05


def test_within_says_true_at_most_2_5_percent_when_the_effect_sits_at_the_margin():
    """An equivalence claim's null is an effect at the margin: "true" must stay under 2.5%."""
    said = [V.within(e, 0.05) for e in effects(0.05)]
    assert np.mean([s == "true" for s in said]) <= mc_bound(0.025)


def test_a_planted_effect_of_twice_the_seed_spread_comes_out_true_as_often_as_t_predicts():
    """With 3 seeds an effect of 2 × the seed spread is found ("true") with the power of a
    one-sided t-test at 2.5% (noncentral t: ~0.32); "false" never."""
    said = pd.Series([V.above(e, 0.0) for e in effects(2 * SPREAD, seed=2)])
    power = float(1 - stats.nct.cdf(stats.t.ppf(0.975, SEEDS - 1), SEEDS - 1, 2 * np.sqrt(SEEDS)))
    assert abs((said == "true").mean() - power) <= 3 * np.sqrt(power * (1 - power) / TABLES)
    assert (said == "false").mean() == 0


@pytest.mark.parametrize("lo,want", [(V.RESOLUTION * 1.01, "true"),
                                     (V.RESOLUTION * 0.99, "inconclusive")])
def test_every_size_reads_resolution_on_both_sides_of_its_boundary(lo, want):
    e = V.Effect(0.05, lo, 0.1, 3, 0.01)
    assert V.every_size_verdict({"a": e, "b": e}, "x")[0] == want


def test_under_no_effect_the_stabiliser_rules_on_per_seed_tables_stay_under_5_percent():
    """Update clipping's rule on null per-seed tables (both settings the same distribution),
    and QK-clip's "small cost" at its null (a cost of exactly SMALL_LOSS_COST)."""
    rng = np.random.default_rng(3)
    said = {"update clipping": [], "QK-clip cost": []}
    for _ in range(TABLES // 4):
        none, other = rng.normal(0.3, SPREAD, SEEDS), rng.normal(0.3, SPREAD, SEEDS)
        rows = [{"setting": setting, "train.seed": i, "lr_sensitivity": v,
                 "best_loss": 2 + v + (S.SMALL_LOSS_COST if setting == "qk_clip" else 0.0),
                 "max_logit_any_lr": 20.0 if setting == "qk_clip" else 500.0}
                for setting, vals in (("none", none), ("update_clip", other), ("qk_clip", other))
                for i, v in enumerate(vals)]
        ps = pd.DataFrame(rows)
        said["update clipping"].append(S.judge_update_clip(ps, 7)[0])
        said["QK-clip cost"].append(S.judge_qk_clip(ps, 30.0)[0])
    for name, verdicts in said.items():
        decided = np.mean([v != "inconclusive" for v in verdicts])
        assert decided <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(verdicts)), (name, decided)


# Two arms that compute the same thing: μParam (simple) at its base width (every LR multiplier
# 1, the readout's too) against SP; QK-clip with a τ no logit reaches against no QK-clip.
A_A = {
    "mup_at_base_width": (["model.mup_base_width=32"],
                          {"model": {"parametrization": ["sp", "mup_simple"]}},
                          lambda df: df["model.parametrization"] == "mup_simple"),
    "qk_clip_never_fires": ([], {"optim": {"qk_clip_tau": [None, 1e9]}},
                            lambda df: df["optim.qk_clip_tau"].notna()),
}


@pytest.mark.parametrize("case", list(A_A))
def test_an_a_a_comparison_from_real_runs_is_inconclusive(case, tmp_path, corpus_dir, cache_dir):
    """Each A/A pair trained, 3 seeds × 3 LRs: their LR sensitivities are equal seed by seed,
    and the verdict "the second arm lowers LR sensitivity at every size" is "inconclusive"."""
    from analysis.load import load_sweep
    from proxies.sweep import run_sweep
    from tests.test_sweep import sweep_cfg
    overrides, axes, second_arm = A_A[case]
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.seeds=3",
                    "sweep.lrs=[1e-3,1e-2,1e-1]", *overrides)
    cfg.sweep.axes = axes
    out, _ = run_sweep(cfg)
    df = load_sweep(out)
    assert len(df) == 18 and (df["status"] == "done").all()
    df["arm"] = second_arm(df)
    stats = P.series_stats(df, ["arm"])
    effects = P.paired_effects(stats, "arm", False, True)
    assert [e.n for e in effects.values()] == [3]
    assert all(abs(e.mean) < 1e-6 for e in effects.values()), effects
    assert V.every_size_verdict(effects, case)[0] == "inconclusive"


def test_an_interval_keeps_the_seeds_and_values_behind_it_for_effects_csv():
    from sweeps.core import effect_rows, shown
    e = V.interval(pd.Series({0: 0.1, 1: float("nan"), 2: 0.3, 5: 0.2}))
    assert (e.n, e.seeds, e.values) == (3, (0, 2, 5), (0.1, 0.3, 0.2))
    assert e.at(0.99).seeds == e.seeds and e.at(0.99).values == e.values
    measured = {"a": e, "per size": {"0.1M": V.interval([1.0, 2.0])}, "text": "x", "n": 3}
    rows = effect_rows(measured)
    assert rows.to_dict("records") == [
        {"effect": "a", "part": "", "seed": 0, "value": 0.1},
        {"effect": "a", "part": "", "seed": 2, "value": 0.3},
        {"effect": "a", "part": "", "seed": 5, "value": 0.2},
        {"effect": "per size", "part": "0.1M", "seed": 0, "value": 1.0},
        {"effect": "per size", "part": "0.1M", "seed": 1, "value": 2.0}]
    text = shown(measured)
    assert text["a"] == str(e) and text["a"].endswith("(95% t, n=3)")
    assert text["per size"] == {"0.1M": str(V.interval([1.0, 2.0]))} and text["n"] == 3


def test_runs_that_diverge_inside_their_warmup_are_named():
    from omegaconf import OmegaConf
    from sweeps.core import warmup_divergences
    cfg = OmegaConf.create({"optim": {"warmup_steps": 10}})
    t = pd.DataFrame({"optim.lr": [0.1, 0.3, 0.3, 1.0], "diverged_at_step": [None, 8, 10, 11]})
    assert warmup_divergences(t, cfg) == (
        "2 of 3 diverged runs (LR 0.3; earliest at step 8, warm-up 10 steps)")
    assert warmup_divergences(t.assign(diverged_at_step=[None, 11, 12, 40]), cfg) == ""
    swept = t.assign(**{"optim.warmup_steps": [40, 40, 5, 5]})  # a part sweeping the warm-up
    assert warmup_divergences(swept, cfg) == (
        "1 of 3 diverged runs (LR 0.3; earliest at step 8, warm-up 40 steps)")
