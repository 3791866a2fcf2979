"""The verdict rules of qk_layernorm, warmup, weight_decay, z_loss and default_vs_none on synthetic
tables: each can say "true", "false", and "inconclusive" because seeds disagree.

A table is built from a loss curve over LR (a parabola in log10 LR, best at 1e-2, loss at init
6), per size and seed, with knobs that move one statistic at a time: extra loss at the top LR
raises LR sensitivity by a known amount, a constant offset moves the best loss only, runs above
an LR diverge (counted at the loss at init)."""

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest

from analysis.sensitivity import lr_sensitivity
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps import qk_layernorm as qk
from sweeps import default_vs_none as st
from sweeps import warmup as wu
from sweeps import weight_decay as wd
from sweeps import z_loss as zl
from sweeps.core import SPECS

LAPTOP = SPECS["laptop"]
SIZES = [(64, 2), (96, 3), (128, 4)]
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]  # the paper's [3e-4, 3e-1] grid
SEEDS = (0, 1, 2)
L0 = 6.0
TOP = 3e-1
BEST = 1e-2  # the parabola's best LR

Knob = Callable[[int, int, float], float]  # (size index, seed, LR) -> value


def zero(i: int, seed: int, lr: float) -> float:
    return 0.0


def never(i: int, seed: int) -> float:
    return float("inf")


def parabola(width: float = 0.05, best: float = 1e-2) -> Callable[[float], float]:
    return lambda lr: 2.0 + width * (np.log10(lr) - np.log10(best)) ** 2


def sens_diff(per_size: Sequence[float], seed_sign: Callable[[int], float] = lambda s: 1.0
              ) -> Tuple[Knob, Knob]:
    """(knob of arm a, knob of arm b) with LR sensitivity a − b = per_size[i] × seed_sign(seed):
    extra loss at every LR but the best (1e-2) of whichever arm the difference makes worse, so
    the best loss and the cap at ℓ0 stay out of it."""
    def arm(sign: float) -> Knob:
        def knob(i: int, seed: int, lr: float) -> float:
            k = max(sign * per_size[i] * seed_sign(seed), 0.0)
            return 0.0 if np.isclose(lr, BEST) else k * len(LRS) / (len(LRS) - 1)
        return knob
    return arm(+1.0), arm(-1.0)


def raise_sens(per_size: Sequence[float], seed_sign: Callable[[int], float] = lambda s: 1.0
               ) -> Knob:
    return sens_diff(per_size, seed_sign)[0]


def rows(col: str, value: Any, *, curve: Callable[[float], float] = parabola(),
         extra: Knob = zero, offset: Knob = zero,
         diverge_above: Callable[[int, int], float] = never,
         lrs: Sequence[float] = LRS, sizes: Sequence = SIZES, seeds: Sequence[int] = SEEDS,
         more: Dict[str, Any] = None) -> List[Dict[str, Any]]:
    out = []
    for i, (d, n_layers) in enumerate(sizes):
        for seed in seeds:
            for lr in lrs:
                div = lr > diverge_above(i, seed) * (1 + 1e-9)
                loss = curve(lr) + extra(i, seed, lr) + offset(i, seed, lr)
                out.append({"model.d_model": d, "model.n_layers": n_layers,
                            "model.n_heads": d // 32, "optim.lr": lr, "train.seed": seed,
                            "final_eval_ce": float("nan") if div else min(loss, 50.0),
                            "loss_at_init": L0, "diverged": div, "status": "done",
                            "n_params_nonembed": 12.0 * n_layers * d ** 2,
                            "max_attn_logit": 1e4 * lr * (i + 1), col: value, **(more or {})})
    return out


def table(*parts: List[Dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([r for p in parts for r in p])


def split_seed(bad_seed: int = 0) -> Callable[[int], float]:
    """Seeds that disagree: `bad_seed` moves the other way, three times as far."""
    return lambda s: -3.0 if s == bad_seed else 1.0


# --------------------------------------------------------------------------- the rule pattern

def test_outcome_reads_the_interval_and_needs_two_seeds():
    assert V.outcome(V.Effect(0.2, 0.1, 0.3, 3)) == "true"
    assert V.outcome(V.Effect(-0.2, -0.3, -0.1, 3)) == "false"
    assert V.outcome(V.Effect(0.0, 0.0, 0.0, 3)) == "false"  # no resample shows the claim
    assert V.outcome(V.Effect(0.1, -0.1, 0.3, 3)) == "inconclusive"
    assert V.outcome(V.Effect(0.2, float("nan"), float("nan"), 1)) == "inconclusive"
    assert V.outcome(V.Effect(-0.2, -0.3, -0.1, 3), claimed=-1) == "true"
    assert V.outcome(V.Effect(0.2, 0.1, 0.3, 3), claimed=-1) == "false"


def test_overall_lets_the_main_claim_decide_and_needs_the_rest_for_true():
    assert V.overall("true", ["true", "true"]) == "true"
    assert V.overall("true", ["true", "false"]) == "inconclusive"
    assert V.overall("true", ["inconclusive"]) == "inconclusive"
    assert V.overall("false", ["true"]) == "false"
    assert V.overall("inconclusive", ["true"]) == "inconclusive"


# --------------------------------------------------------------------------------- qk-layernorm

QK = qk.QK
FALLING = lambda i, seed: [1e-1, 3e-2, 1e-2][i]  # noqa: E731  the divergence LR falls with size


def qk_table(on_extra: Knob = zero, off_diverge=FALLING, off_extra: Knob = zero) -> pd.DataFrame:
    return table(rows(QK, False, diverge_above=off_diverge, extra=off_extra),
                 rows(QK, True, extra=on_extra))


def qk_verdict(df: pd.DataFrame):
    return qk.judge({"main": df}, LAPTOP)


def test_qk_layernorm_true_when_it_lowers_sensitivity_everywhere_and_the_top_lr_falls():
    reproduced, why, measured = qk_verdict(qk_table())
    assert reproduced == "true", why
    assert measured["(a) highest LR that trains without qk-LN, per size (geometric seed mean)"] == {
        "0.098M": 0.1, "0.33M": 0.03, "0.79M": 0.01}
    assert "(a) true" in why and "(b) true" in why and "(c) reported" in why


def test_qk_layernorm_false_when_qk_ln_raises_sensitivity_at_one_size():
    on_worse = raise_sens([0.0, 2.0, 0.0])  # beyond what the no-qk-LN divergence costs there
    reproduced, why, _ = qk_verdict(qk_table(on_extra=on_worse))
    assert reproduced == "false", why
    assert "opposite at 0.33M" in why


def test_qk_layernorm_inconclusive_when_seeds_disagree():
    # At 0.33M seed 0 makes qk-LN much worse, seeds 1 and 2 leave it better.
    seed0_worse = raise_sens([0.0, 2.0, 0.0], lambda s: 1.0 if s == 0 else 0.0)
    reproduced, why, _ = qk_verdict(qk_table(on_extra=seed0_worse))
    assert reproduced == "inconclusive", why
    assert "an interval reaches within" in why


def test_qk_layernorm_needs_the_falling_top_lr_for_true():
    rising = lambda i, seed: [1e-2, 3e-2, 1e-1][i]  # noqa: E731  trains higher with size
    reproduced, why, _ = qk_verdict(qk_table(off_diverge=rising))
    assert reproduced == "inconclusive", why
    assert "(b) true" in why and "(a) false" in why and "does not fall" in why


def test_qk_layernorm_top_lr_slope_is_no_surer_than_the_lr_grid_resolves():
    """Every size and seed trains up to 0.1 and no higher: the seeds' slopes are all 0, but
    each top LR is known only to its half-decade step, so the slope's interval keeps the
    rounding's width (± ~0.55 decades per decade of params over these sizes) and (a) is
    inconclusive, not "false" from a zero-width interval."""
    same_top = lambda i, seed: 1e-1  # noqa: E731
    reproduced, why, measured = qk_verdict(qk_table(off_diverge=same_top))
    assert reproduced == "inconclusive" and "(a) inconclusive" in why, why
    assert "may or may not fall" in why


def test_qk_layernorm_says_when_the_grid_cannot_show_the_divergence_lr():
    off_worse = raise_sens([0.5, 0.5, 0.5])  # so (b) holds while nothing diverges
    reproduced, why, _ = qk_verdict(qk_table(off_diverge=never, off_extra=off_worse))
    assert reproduced == "inconclusive", why
    assert "cannot show where divergence starts" in why


def test_top_trained_lr_counts_a_collapsed_run_as_not_trained():
    g = pd.DataFrame(rows(QK, False))
    g = g[(g["model.d_model"] == 64) & (g["train.seed"] == 0)].copy()
    assert P.top_trained_lr(g) == TOP
    g.loc[g["optim.lr"] == TOP, "final_eval_ce"] = 5.5  # not diverged, but barely below ℓ0
    assert P.top_trained_lr(g) == 1e-1


# ------------------------------------------------------------------------------------ warm-up

W = wu.W
SHORT, LONG = LAPTOP.warmups


def wu_table(short_minus_long: Tuple[Knob, Knob],
             long_offset: Knob = lambda i, s, lr: -0.05) -> pd.DataFrame:
    short, long = short_minus_long
    return table(rows(W, SHORT, extra=short),
                 rows(W, LONG, extra=long, offset=long_offset))


def wu_verdict(df: pd.DataFrame):
    return wu.judge({"main": df}, LAPTOP)


GROWING = sens_diff([0.01, 0.03, 0.06])  # the long warm-up lowers it, most at the largest


def test_warmup_true_when_the_long_one_helps_most_at_the_largest_and_lowers_loss():
    reproduced, why, _ = wu_verdict(wu_table(GROWING))
    assert reproduced == "true", why


def test_warmup_false_when_the_long_one_raises_sensitivity_at_the_largest():
    reproduced, why, _ = wu_verdict(wu_table(sens_diff([0.06, 0.03, -0.02])))
    assert reproduced == "false", why


def test_warmup_inconclusive_when_seeds_disagree_at_the_largest():
    reproduced, why, _ = wu_verdict(wu_table(sens_diff([0.01, 0.03, 0.06], split_seed())))
    assert reproduced == "inconclusive", why


def test_warmup_needs_most_for_larger_and_lower_loss_for_true():
    shrinking = sens_diff([0.06, 0.03, 0.01])
    reproduced, why, _ = wu_verdict(wu_table(shrinking))
    assert reproduced == "inconclusive" and "grows with size: false" in why, why
    reproduced, why, _ = wu_verdict(wu_table(GROWING, long_offset=lambda i, s, lr: 0.05))
    assert reproduced == "inconclusive" and "best loss there: false" in why, why


# ------------------------------------------------------------------------------- weight decay

IND = wd.IND
WD_LRS = [1e-4] + LRS


def wd_tables(coupled_curve=parabola(0.2), independent_curve=parabola(0.05),
              coupled_extra: Knob = zero) -> Dict[str, pd.DataFrame]:
    return {"coupled": table(rows(IND, False, curve=coupled_curve, lrs=WD_LRS,
                                  extra=coupled_extra, more={"optim.weight_decay": 0.1})),
            "independent": table(rows(IND, True, curve=independent_curve,
                                      more={"optim.weight_decay": 1e-4}))}


def test_weight_decay_true_when_independent_decay_lowers_sensitivity_at_every_size():
    reproduced, why, _ = wd.judge(wd_tables(), LAPTOP)
    assert reproduced == "true", why


def test_weight_decay_false_when_coupled_decay_is_flatter_at_one_size():
    flat_at_1 = lambda i, s, lr: -0.18 * (np.log10(lr) + 2) ** 2 if i == 1 else 0.0  # noqa
    reproduced, why, _ = wd.judge(wd_tables(coupled_extra=flat_at_1), LAPTOP)
    assert reproduced == "false", why


def test_weight_decay_inconclusive_when_seeds_disagree():
    flat_seed0 = lambda i, s, lr: -0.19 * (np.log10(lr) + 2) ** 2 if s == 0 else 0.0  # noqa
    reproduced, why, _ = wd.judge(wd_tables(coupled_extra=flat_seed0), LAPTOP)
    assert reproduced == "inconclusive", why


def test_the_coupled_arm_takes_the_minimum_over_its_two_ranges():
    """Brute force: the coupled sensitivity is min over [1e-4, 1e-1] and [3e-4, 3e-1] of the
    paper's statistic; here the first range is better centred (best LR 1e-3, 3e-1 diverges)."""
    tables = wd_tables(coupled_curve=parabola(0.2, best=1e-3))
    tables["coupled"].loc[tables["coupled"]["optim.lr"] == TOP, "diverged"] = True
    stats = wd.coupled_stats(tables["coupled"])
    g = tables["coupled"][(tables["coupled"]["model.d_model"] == 64)
                          & (tables["coupled"]["train.seed"] == 0)]
    loss = np.where(g["diverged"], np.nan, g["final_eval_ce"])
    brute = min(lr_sensitivity(g["optim.lr"], loss, L0, r) for r in wd.COUPLED_RANGES)
    row = stats[(stats["model.d_model"] == 64) & (stats["train.seed"] == 0)].iloc[0]
    assert row["lr_sensitivity"] == pytest.approx(brute)
    assert row["lr_range"] == "[0.0001, 0.1]"
    _, _, measured = wd.judge(tables, LAPTOP)
    assert set(measured["range giving the coupled minimum, per size (× seeds)"].values()) == {
        "[0.0001, 0.1]×3"}


def test_the_coupled_grid_includes_1e_4_and_the_independent_grid_does_not_need_it():
    parts = {p.name: p for p in wd.parts(LAPTOP)}
    assert 1e-4 in parts["coupled"].overrides["sweep"]["lrs"]
    assert parts["independent"].overrides["sweep"]["lrs"] == LAPTOP.lrs
    assert set(parts) == {"coupled", "independent"}  # no part of ours that can move the verdict


# ------------------------------------------------------------------------------------- z-loss

Z = zl.Z


def late_rows(z: float, ends: Sequence[float], lates: Sequence[float],
              loss: float = 3.0) -> List[Dict[str, Any]]:
    """One late run per seed: its mean logit 0 at init, `lates[seed]` at 75% of the run,
    `ends[seed]` at the end; log Z from 6 (ln V) to 5."""
    out = []
    for seed, (end, late) in enumerate(zip(ends, lates)):
        out += rows(Z, z, lrs=[zl.FIG4_LR], sizes=SIZES[:1], seeds=[seed],
                    curve=lambda lr: loss,
                    more={"mean_logit_init": 0.0, "mean_logit_end": end, "mean_logit_late": late,
                          "log_z_init": 6.0, "log_z_end": 5.0, "log_z_late": 5.2})
    return out


def z_main(off_minus_on: Tuple[Knob, Knob] = sens_diff([0.05, 0.05, 0.05])) -> pd.DataFrame:
    logits = {"mean_logit_init": 0.0, "mean_logit_end": -1.0, "mean_logit_late": -0.8,
              "log_z_init": 6.0, "log_z_end": 5.5, "log_z_late": 5.6}
    off, on = off_minus_on
    return table(rows(Z, 0.0, extra=off, more=logits), rows(Z, 1e-4, extra=on, more=logits))


def z_verdict(late_off_ends, late_off_lates, main: pd.DataFrame = None,
              on_ends=(-3.0, -4.0, -2.0), on_lates=(-2.8, -3.9, -1.8)):
    late = table(late_rows(0.0, late_off_ends, late_off_lates),
                 late_rows(1e-4, on_ends, on_lates))
    return zl.judge({"late": late, "main": z_main() if main is None else main}, LAPTOP)


FALLING = ([-14.0, -12.0, -15.0], [-9.0, -8.0, -10.0])  # without z-loss, seeds 0-2


def test_z_loss_true_when_the_logits_fall_late_without_it_and_z_loss_helps_everywhere():
    reproduced, why, measured = z_verdict(*FALLING)
    assert reproduced == "true", why
    m = measured["late: M, drift of the mean logit from init (nats)"]["no z-loss"]
    assert m.mean == pytest.approx(-41 / 3) and m.n == 3 and m.seeds == (0, 1, 2)


def test_z_loss_false_when_the_logits_rise_instead_of_falling():
    reproduced, why, _ = z_verdict([2.0, 2.5, 3.0], [1.0, 1.5, 2.0])
    assert reproduced == "false", why


def test_z_loss_false_when_the_logits_stopped_falling_late():
    reproduced, why, _ = z_verdict([-14.0, -12.0, -15.0], [-16.0, -14.0, -17.0])
    assert reproduced == "false", why


def test_z_loss_false_when_z_loss_leaves_the_logits_lower_still():
    """At laptop scale z-loss itself pushed the mean logit down (log Z → 0 with a confident
    correct logit means the others go negative): not the paper's rescue."""
    reproduced, why, _ = z_verdict(*FALLING, on_ends=(-20.0, -19.0, -21.0),
                                   on_lates=(-15.0, -14.0, -16.0))
    assert reproduced == "false", why


def test_z_loss_judges_the_logits_not_log_z():
    """The same log Z in both arms, the mean logit falling only without z-loss: still true;
    log Z is reported, not judged."""
    reproduced, why, measured = z_verdict(*FALLING)
    d = measured["late: D, drop of log Z from init / |log Z at init| (reported)"]
    assert d["no z-loss"].mean == pytest.approx(d["z-loss 0.0001"].mean) == pytest.approx(1 / 6)
    assert reproduced == "true"


def test_z_loss_inconclusive_when_seeds_disagree():
    reproduced, why, _ = z_verdict([-14.0, 3.0, -15.0], [-9.0, 2.0, -10.0])
    assert reproduced == "inconclusive", why


def test_z_loss_needs_fig3s_lower_sensitivity_for_true():
    worse = z_main(sens_diff([0.05, 0.05, 0.05], split_seed()))
    reproduced, why, _ = z_verdict(*FALLING, main=worse)
    assert reproduced == "inconclusive" and "late runs" in why, why


def test_z_loss_reports_the_final_loss_paired_by_seed():
    late = table(late_rows(0.0, *FALLING, loss=3.5), late_rows(1e-4, (-3.0,) * 3, (-2.0,) * 3))
    _, _, measured = zl.judge({"late": late, "main": z_main()}, LAPTOP)
    assert measured["late: final loss with − without z-loss (reported)"].mean == \
        pytest.approx(3.0 - 3.5)


def test_curve_points_read_init_end_and_the_start_of_the_last_quarter():
    c = pd.Series([6.0, 5.0, 3.0, 1.0, -2.0], index=[0, 25, 50, 75, 100])
    assert zl.curve_points(c, 100) == (6.0, -2.0, 1.0)
    assert np.isnan(zl.curve_points(c[c.index <= 75], 100)[2])  # stopped before the last quarter
    assert np.isnan(zl.curve_points(c[c.index > 0], 100)[0])  # no value at init


def test_the_late_part_trains_longer_at_the_papers_lr_but_never_past_1e5_steps():
    late = {p.name: p for p in zl.parts(LAPTOP)}["late"].overrides
    assert late["train"]["steps"] == 10 * LAPTOP.base["train"]["steps"]
    assert late["sweep"]["lrs"] == [0.1] and late["optim"]["weight_decay"] == 0.0
    paper = {p.name: p for p in zl.parts(SPECS["paper"])}["late"].overrides
    assert paper["train"] == {}  # the paper's runs are 1e5 steps already: main's own runs


# -------------------------------------------------------------------------------- default_vs_none

R = st.R


@pytest.mark.parametrize("none_minus_default, expected", [
    (sens_diff([0.1, 0.1, 0.1]), "true"),
    (sens_diff([0.1, -0.1, 0.1]), "false"),
    (sens_diff([0.1, 0.1, 0.1], split_seed()), "inconclusive")])
def test_default_vs_none_every_outcome(none_minus_default, expected):
    none, default = none_minus_default
    df = table(rows(R, False, extra=none), rows(R, True, extra=default))
    reproduced, why, _ = st.judge({"main": df}, LAPTOP)
    assert reproduced == expected, why


def test_seed_spread_is_the_seeds_sd_of_lr_sensitivity_and_none_for_one_lr():
    from sweeps.core import seed_spread
    # Seed 1's LR sensitivity is 0.03 above seeds 0 and 2's at every size: sd over 3 seeds 0.0173.
    df = table(rows(QK, True, extra=raise_sens([0.03] * 3, lambda s: float(s == 1))))
    assert seed_spread(df) == pytest.approx(np.std([0.0, 0.03, 0.0], ddof=1), rel=1e-6)
    assert seed_spread(table(rows(QK, True))) == pytest.approx(0.0, abs=1e-12)
    one_lr = table(rows(QK, True, lrs=[TOP], extra=lambda i, s, lr: 0.1 * s))
    assert np.isnan(seed_spread(one_lr))  # LR sensitivity over one LR is 0 by construction


def test_weight_decay_reports_the_total_decay_each_arm_applies():
    """Σ_t of the per-update decay against a loop over the schedule written out: warm-up
    (t+1)/W, then cosine from η to the floor; independent s_t·λ, coupled η_t·λ."""
    import math
    spec = LAPTOP
    steps, warm, floor = 200, spec.base["optim"]["warmup_steps"], spec.base["optim"]["min_lr"]

    def eta(t: int, lr: float) -> float:
        if t < warm:
            return lr * (t + 1) / warm
        progress = min(1.0, (t - warm) / (steps - warm))
        return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    want_ind = 1e-4 * sum(eta(t, 1e-2) / 1e-2 for t in range(steps))
    want_coupled = 0.1 * sum(eta(t, 0.3) for t in range(steps))
    assert wd.total_decay(spec, 1e-2, True, 1e-4) == pytest.approx(want_ind, rel=1e-5)
    assert wd.total_decay(spec, 0.3, False, 0.1) == pytest.approx(want_coupled, rel=1e-5)
    words = wd.decay_words(spec, [1e-4, 0.3])
    shrink = math.exp(-want_ind)
    assert words["independent λ=1e-4"] == f"Σ = {want_ind:.3g} (weights × {shrink:.3g})"
