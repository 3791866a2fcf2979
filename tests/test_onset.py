"""sweeps/onset.py: its plan (each length the same recipe stretched) and its verdict on synthetic
tables (the shortest length whose effect clears its corrected interval)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pandas as pd

from sweeps import onset as O
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import SPECS, plan, warmup

LAPTOP = SPECS["laptop"]


def test_the_laptop_plan_trains_each_length_with_the_papers_warmup_share(tmp_path):
    p = plan(O.RESULT, "laptop", [f"sweep.root={tmp_path}"])
    assert list(p.configs) == ["steps200", "steps600", "steps2000"]
    for name, cfg in p.configs.items():
        steps = int(name.removeprefix("steps"))
        runs = [run for _, run in p.points[name]]
        assert {r.train.steps for r in runs} == {steps}
        assert {r.optim.warmup_steps for r in runs} == {warmup(steps)} == {steps // 20}
        assert {r.model.qk_layernorm for r in runs} == {False, True}
        assert {r.train.seed for r in runs} == {0, 1, 2}
        assert {r.model.d_model for r in runs} == {64}  # the smallest laptop size
    assert O.tokens_per_param(LAPTOP, 200, 98304) == 200 * 16 * 128 / 98304


def length_table(effect: float, spread: float = 0.002, seeds: int = 3) -> pd.DataFrame:
    """One length's finished runs at the smallest size: loss 2 + c·x², x = log10(LR) + 2, so LR
    sensitivity over the 7 half decades is c (the mean of x² is 1): c = 0.05 with qk-LN,
    0.05 + `effect` without; plus noise of sd `spread` on every run's loss."""
    rng = np.random.default_rng(int(effect * 1e4) % 97)
    rows = []
    for qk in (False, True):
        for seed in range(seeds):
            for lr in LAPTOP.lrs:
                wobble = rng.normal(0, spread)
                excess = (0.05 + (0.0 if qk else effect)) * (np.log10(lr) + 2) ** 2
                rows.append({"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2,
                             "model.qk_layernorm": qk, "optim.lr": lr, "train.seed": seed,
                             "final_eval_ce": 2.0 + excess + wobble, "loss_at_init": 5.5,
                             "diverged": False, "status": "done",
                             # qk-LN's scales: the arms' parameter counts differ a little
                             "n_params_nonembed": 98304.0 + (256.0 if qk else 0.0),
                             "max_attn_logit": 50.0 if qk else 5e3})
    return pd.DataFrame(rows)


def tables(effects: Dict[int, float]) -> Dict[str, pd.DataFrame]:
    return {O.part_name(steps): length_table(e) for steps, e in effects.items()}


def test_the_onset_is_the_shortest_length_whose_effect_clears_its_interval():
    verdict, why, measured = O.judge(tables({200: 0.0, 600: 0.05, 2000: 0.08}), LAPTOP)
    assert verdict == "true" and "from 600 steps on" in why, why
    assert measured["onset"] == "600 steps (12.5 tokens/param)"
    assert measured["200 steps"].endswith("-> inconclusive")
    table = O.onset_table(tables({200: 0.0, 600: 0.05}), LAPTOP)
    assert list(table["steps"]) == [200, 600] and set(table["size"]) == {"0.098M"}


def test_no_onset_is_inconclusive_and_the_opposite_at_the_longest_length_is_false():
    verdict, why, _ = O.judge(tables({200: 0.0, 600: 0.0}), LAPTOP)
    assert verdict == "inconclusive", why
    lengths = {200: 0.0, 600: 0.0, 2000: -0.04}
    assert O.judge(tables(lengths), LAPTOP)[0] == "false"


def test_two_seeds_never_decide():
    two = {O.part_name(s): length_table(0.08, seeds=2) for s in (200, 600)}
    assert O.judge(two, LAPTOP)[0] == "inconclusive"


def test_an_effect_inside_the_bonferroni_interval_is_not_an_onset():
    """Per-seed effects 0.003, 0.004, 0.005: the 95% interval clears RESOLUTION, the interval at
    1 − 5%/3 (three lengths searched) does not, so that length shows nothing."""
    e = V.interval([0.003, 0.004, 0.005])
    c = e.at(1 - 0.05 / len(O.FACTORS))
    assert e.lo > V.RESOLUTION > c.lo, (e, c)
    assert O.shows(pd.DataFrame({"effect": [e], "effect_corrected": [c]})) == "inconclusive"
    rows = O.length_rows(length_table(0.05), LAPTOP, 600, len(O.FACTORS))
    assert rows[0]["effect_corrected"].confidence == 1 - 0.05 / 3


def test_before_any_length_finishes_the_verdict_says_so():
    assert O.judge({}, LAPTOP)[:2] == ("inconclusive", "no length has finished runs")
    assert O.figure({}, LAPTOP) is not None


def test_each_verdict_is_judged_again_with_each_lr_left_out():
    """core.one_lr_left_out drops one LR at a time from every part with 3 LRs or more: an onset
    made only by the no-qk-LN runs diverging at LR 0.3 is lost without that LR, and only then."""
    from sweeps.core import one_lr_left_out
    t = tables({200: 0.0, 600: 0.0})
    late = t[O.part_name(600)]
    top = (late["optim.lr"] == 0.3) & ~late["model.qk_layernorm"].astype(bool)
    late.loc[top, ["final_eval_ce", "diverged"]] = [float("nan"), True]
    assert O.judge(t, LAPTOP)[0] == "true"
    again = one_lr_left_out(O.RESULT, t, LAPTOP)
    assert again == {f"{lr:g}": ("inconclusive" if lr == 0.3 else "true") for lr in LAPTOP.lrs}
