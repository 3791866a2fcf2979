"""The verdict rules of sweeps/mup.py (Fig. 8, E.4) and sweeps/depth_width.py (Fig. 7, E.2) on
synthetic tables: each rule can come out true, false, and inconclusive because seeds disagree.

A synthetic run's final loss is a parabola in log10(LR) around its best LR,
    loss = floor + c · (log10 LR − log10 best)²,
so its series' interpolated best LR is `best` exactly, its best loss is about `floor`, and its
LR sensitivity is about c · (the grid's mean squared distance from best): each statistic a rule
reads is set directly.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
import pandas as pd
import pytest

from sweeps import depth_width as DW
from sweeps import mup as MU
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import SPECS

LAPTOP = SPECS["laptop"]
LRS = LAPTOP.lrs  # 3e-4 ... 3e-1, the paper's range
L0 = 6.0  # loss at init: above every synthetic loss, so no run counts as diverged
SEEDS = (0, 1, 2)


def series(d: int, L: int, seed: int, best: float, floor: float, c: float,
           **extra) -> List[dict]:
    """One (size, seed) series over the LR grid."""
    x = np.log10(LRS)
    loss = floor + c * (x - np.log10(best)) ** 2
    return [{"model.d_model": d, "model.n_layers": L, "model.n_heads": max(1, d // 32),
             "train.seed": seed, "optim.lr": lr, "final_eval_ce": float(v),
             "loss_at_init": L0, "diverged": False, "n_params_nonembed": 12.0 * L * d * d,
             "status": "done", **extra} for lr, v in zip(LRS, loss)]


def table(rows: Sequence[List[dict]]) -> pd.DataFrame:
    return pd.DataFrame([r for s in rows for r in s])


def test_the_synthetic_series_set_the_statistics_the_rules_read():
    st = P.series_stats(table([series(64, 2, 0, 3e-3, 3.0, 0.2)]), [])
    assert st["best_lr_interp"].iloc[0] == pytest.approx(3e-3, rel=1e-6)
    assert st["best_loss"].iloc[0] == pytest.approx(3.0, abs=0.01)
    assert st["lr_sensitivity"].iloc[0] > 0.1


# ------------------------------------------------------------------------ the small rules

def eff(*values: float) -> V.Effect:
    return V.interval(values)


@pytest.mark.parametrize("values,want", [((0.01, 0.02, 0.0), "true"),
                                         ((0.3, 0.32, 0.28), "false"),
                                         ((-0.3, -0.29, -0.31), "false"),
                                         ((0.3, -0.3, 0.0), "inconclusive"),
                                         ((0.01,), "inconclusive")])
def test_within_is_an_equivalence_test(values, want):
    assert V.within(eff(*values), 0.15) == want


@pytest.mark.parametrize("values,want", [((-0.05, -0.04, -0.045), "true"),
                                         ((0.05, 0.06, 0.04), "false"),
                                         ((-0.05, 0.05, 0.0), "inconclusive")])
def test_below_a_negligible_improvement(values, want):
    assert V.below(eff(*values), 0.01) == want


@pytest.mark.parametrize("verdicts,want", [(["true", "true"], "true"),
                                           (["true", "false"], "false"),
                                           (["inconclusive", "false"], "false"),
                                           (["true", "inconclusive"], "inconclusive"),
                                           ([], "inconclusive")])
def test_a_conjunction(verdicts, want):
    assert V.all_of(verdicts) == want == V.all_of(verdicts)


# ------------------------------------------------------------------------------ μParam

WIDTHS = [int(w["d_model"]) for w in LAPTOP.widths]  # 64, 96, 128 at depth 4
BASE = WIDTHS[0]


def arm(name: str, best: Callable[[int, int], float], floor: Callable[[int, int], float],
        c: Callable[[int, int], float], seeds: Sequence[int] = SEEDS) -> List[List[dict]]:
    """One parametrization's series over widths and seeds; best, floor, c of (width, seed)."""
    return [series(w, 2, s, best(w, s), floor(w, s), c(w, s),
                   **{MU.MP: name}) for w in WIDTHS for s in seeds]


def sp_drifts(w: int, s: int) -> float:
    """SP's Adam rule: the best LR falls ∝ 1/width (0.30 decades per doubling)."""
    return 1e-2 * BASE / w


def jitter(s: int, size: float = 0.002) -> float:
    return size * (s - 1)


def sp_floor(w: int, s: int) -> float:
    """SP's best loss: 0.1 lower per doubling of width, a little seed jitter."""
    return 3.0 - 0.1 * np.log2(w / BASE) + jitter(s)


def mup_tables(mup_best, mup_floor, mup_c, seeds=SEEDS) -> Dict[str, pd.DataFrame]:
    """SP (best LR ∝ 1/width, c 0.2) beside μP (simple) as given."""
    sp = arm(MU.SP, sp_drifts, sp_floor, lambda w, s: 0.2, seeds)
    return {"main": table(sp + arm(MU.MUP, mup_best, mup_floor, mup_c, seeds))}


def test_mup_true_when_the_best_lr_stays_put_and_nothing_improves():
    # μP: best LR fixed, loss 0.02 worse and sensitivity higher (c 0.3 vs 0.2) off the base.
    t = mup_tables(lambda w, s: 1e-2 * (1 + 0.02 * (s - 1)),
                   lambda w, s: sp_floor(w, s) + (0.02 if w > BASE else 0.0),
                   lambda w, s: 0.3 if w > BASE else 0.2)
    verdict, why, measured = MU.judge(t, LAPTOP)
    assert verdict == "true", why
    assert measured["(A) best LR stays put under μP (simple)"].startswith("true")
    assert measured["(B) loss and LR sensitivity not improved"].startswith("true")


def test_mup_false_when_the_best_lr_moves_like_sp():
    t = mup_tables(sp_drifts, sp_floor, lambda w, s: 0.2)
    verdict, why, measured = MU.judge(t, LAPTOP)
    assert verdict == "false", why
    assert measured["(A) best LR stays put under μP (simple)"].startswith("false")


def test_mup_false_when_mup_improves_loss_and_sensitivity():
    # Best LR put (A true), but μP is 0.1 lower in loss and far less sensitive (c 0.05).
    t = mup_tables(lambda w, s: 1e-2, lambda w, s: sp_floor(w, s) - (0.1 if w > BASE else 0),
                   lambda w, s: 0.05 if w > BASE else 0.2)
    verdict, why, measured = MU.judge(t, LAPTOP)
    assert verdict == "false", why
    assert measured["(A) best LR stays put under μP (simple)"].startswith("true")
    assert measured["(B) loss and LR sensitivity not improved"].startswith("false")


def test_mup_inconclusive_when_seeds_disagree_on_the_drift():
    # Seed 0's best LR falls like SP's, seed 1's rises as fast, seed 2's stays put.
    slope = {0: -0.3, 1: +0.3, 2: 0.0}
    t = mup_tables(lambda w, s: 1e-2 * 10 ** (slope[s] * np.log2(w / BASE)),
                   lambda w, s: sp_floor(w, s) + (0.02 if w > BASE else 0.0),
                   lambda w, s: 0.3 if w > BASE else 0.2)
    verdict, why, measured = MU.judge(t, LAPTOP)
    assert verdict == "inconclusive", why
    assert measured["(A) best LR stays put under μP (simple)"].startswith("inconclusive")


def test_mup_inconclusive_when_seeds_disagree_on_the_improvement():
    gain = {0: 0.1, 1: -0.1, 2: 0.0}  # seed 0: μP better, seed 1: worse, seed 2: the same
    t = mup_tables(lambda w, s: 1e-2, lambda w, s: sp_floor(w, s) - (gain[s] if w > BASE else 0),
                   lambda w, s: 0.3 if w > BASE else 0.2)
    verdict, why, measured = MU.judge(t, LAPTOP)
    assert verdict == "inconclusive", why
    assert measured["(B) loss and LR sensitivity not improved"].startswith("inconclusive")


def test_mup_one_seed_gives_no_interval_so_no_verdict():
    t = mup_tables(lambda w, s: 1e-2, sp_floor, lambda w, s: 0.3, seeds=(0,))
    assert MU.judge(t, LAPTOP)[0] == "inconclusive"


def test_mup_drift_is_decades_of_best_lr_per_doubling_of_width():
    t = mup_tables(sp_drifts, sp_floor, lambda w, s: 0.2)["main"]
    stats = P.series_stats(t, [MU.MP])
    assert list(MU.drift_slopes(stats, MU.MUP)) == pytest.approx([-np.log10(2)] * 3, rel=1e-6)


def e4_table(gap: Callable[[int, int], float], seeds=SEEDS) -> Dict[str, pd.DataFrame]:
    """μP (simple) with qk-LN (c 0.2) and without it (c 0.2 + gap) at every width."""
    on = mup_tables(lambda w, s: 1e-2, sp_floor, lambda w, s: 0.2, seeds)["main"]
    off = table(arm(MU.MUP, lambda w, s: 1e-2, sp_floor, lambda w, s: 0.2 + gap(w, s), seeds))
    return {"main": on, "no_qk_layernorm": off}


@pytest.mark.parametrize("gap,want", [(lambda w, s: 0.2, "true"),
                                      (lambda w, s: -0.1, "false"),
                                      (lambda w, s: 0.2 * (s - 1), "inconclusive")])
def test_mup_fig_e4_has_its_own_line_with_every_outcome(gap, want):
    t = e4_table(gap)
    line = MU.judge(t, LAPTOP)[2]["Fig. E.4, no qk-layernorm (second part, not the verdict)"]
    assert line.startswith(want), line


def test_mup_fig_e4_never_decides_the_verdict():
    a = MU.judge(e4_table(lambda w, s: 0.2), LAPTOP)[0]
    b = MU.judge(e4_table(lambda w, s: -0.1), LAPTOP)[0]
    assert a == b


# ------------------------------------------------------------------------ depth vs width

def path_rows(sens: Callable[[str, float, int], float], seeds=SEEDS, **extra) -> pd.DataFrame:
    """Both laptop paths; LR sensitivity ≈ sens(path, log10 params, seed) via the curvature
    (the grid's mean squared distance from a best LR of 1e-2 is about 1)."""
    rows = []
    x = np.log10(LRS)
    k = float(np.mean((x - np.log10(1e-2)) ** 2))
    for path, sizes in (("width", LAPTOP.widths), ("depth", LAPTOP.depths)):
        for sz in sizes:
            n = np.log10(12.0 * sz["n_layers"] * sz["d_model"] ** 2)
            for s in seeds:
                if path == "depth" and sz == LAPTOP.depths[0]:
                    continue  # the shared first size is one set of runs
                rows.append(series(sz["d_model"], sz["n_layers"], s, 1e-2, 3.0 - 0.1 * n,
                                   sens(path, n, s) / k, **extra))
    return table(rows)


def slope_sens(width: Callable[[int], float], depth: Callable[[int], float]):
    first = LAPTOP.widths[0]  # both paths start here
    n0 = np.log10(12.0 * first["n_layers"] * first["d_model"] ** 2)
    return lambda path, n, s: 0.1 + (width(s) if path == "width" else depth(s)) * (n - n0)


@pytest.mark.parametrize("width,depth,want", [
    (lambda s: 0.02, lambda s: 0.2, "true"),
    (lambda s: 0.2, lambda s: 0.02, "false"),
    (lambda s: -0.3, lambda s: -0.05, "false"),  # depth faster, but it lowers sensitivity
    (lambda s: 0.1, lambda s: 0.1 + 0.1 * (s - 1), "inconclusive")])  # seeds disagree
def test_depth_width_verdict_on_paired_slopes(width, depth, want):
    t = {"main": path_rows(slope_sens(width, depth))}
    verdict, why, measured = DW.judge(t, LAPTOP)
    assert verdict == want, why


def test_depth_width_slopes_are_per_decade_of_params():
    t = path_rows(slope_sens(lambda s: 0.05, lambda s: 0.25))
    st = {k: P.series_stats(v, []) for k, v in DW.paths(t, LAPTOP).items()}
    assert DW.slopes_per_seed(st["width"]).to_numpy() == pytest.approx([0.05] * 3, abs=2e-3)
    assert DW.slopes_per_seed(st["depth"]).to_numpy() == pytest.approx([0.25] * 3, abs=2e-3)
    assert set(zip(st["depth"]["model.d_model"], st["depth"]["model.n_layers"])) == \
        {(64, 4), (64, 8), (64, 16)}


def test_depth_width_one_seed_is_inconclusive():
    t = {"main": path_rows(slope_sens(lambda s: 0.02, lambda s: 0.2), seeds=(0,))}
    assert DW.judge(t, LAPTOP)[0] == "inconclusive"


def test_depth_width_reports_the_lower_loss_at_the_largest_size():
    """Both laptop paths end at 0.79M. The synthetic floor falls with params only, so the two
    largest sizes tie; the depth path 0.05 nats lower (seed by seed ± noise) is "depth"."""
    t = path_rows(slope_sens(lambda s: 0.1, lambda s: 0.1))
    st = {k: P.series_stats(v, []) for k, v in DW.paths(t, LAPTOP).items()}
    line = DW.lower_loss_at_largest(st)
    assert line.startswith("no clear difference") and "unequal" not in line, line
    top = st["depth"]["n_params_nonembed"] == st["depth"]["n_params_nonembed"].max()
    st["depth"].loc[top, "best_loss"] -= 0.05 + 0.01 * np.arange(int(top.sum()))
    line = DW.lower_loss_at_largest(st)
    assert line.startswith("depth path lower") and "(width path 0.79M vs depth path 0.79M)" in line


def logit_rows(growth: Callable[[str, int], float], seeds=SEEDS) -> pd.DataFrame:
    """No-qk-LN runs whose max attention logit is 10 · (params / 1e5)^growth(path, seed)."""
    t = path_rows(lambda p, n, s: 0.1, seeds)
    shape = list(zip(t["model.d_model"], t["model.n_layers"]))
    first = (LAPTOP.widths[0]["d_model"], LAPTOP.widths[0]["n_layers"])
    on_width = [x in DW.shapes(LAPTOP.widths) and x != first for x in shape]
    g = [growth("width" if w else "depth", s) for w, s in zip(on_width, t["train.seed"])]
    t[DW.LOGIT] = 10.0 * (t["n_params_nonembed"] / 1e5) ** np.asarray(g)
    t.loc[t["optim.lr"] == LRS[-1], DW.LOGIT] = np.inf  # a diverged run's logit is skipped
    return t


@pytest.mark.parametrize("growth,want", [
    (lambda p, s: 0.5, "true"),
    (lambda p, s: 0.5 if p == "width" else -0.3, "false"),
    (lambda p, s: 0.5 * (s - 1), "inconclusive")])
def test_depth_width_fig_e2_has_its_own_line_with_every_outcome(growth, want):
    t = {"main": path_rows(slope_sens(lambda s: 0.02, lambda s: 0.2)),
         "no_qk_layernorm": logit_rows(growth)}
    verdict, _, measured = DW.judge(t, LAPTOP)
    line = measured["Fig. E.2, no qk-layernorm (second part, not the verdict)"]
    assert line.startswith(want), line
    assert verdict == "true"  # the main part alone decides


def test_depth_width_plan_keeps_qk_layernorm_on_and_turns_it_off_for_e2():
    main, e2 = DW.parts(LAPTOP)
    assert "model" not in main.overrides  # the baseline's qk-layernorm, untouched
    assert e2.overrides["model"] == {"qk_layernorm": False}
    sizes = {(x["d_model"], x["n_layers"]) for x in main.overrides["sweep"]["sizes"]}
    assert sizes == DW.shapes(LAPTOP.widths) | DW.shapes(LAPTOP.depths)
    assert len(main.overrides["sweep"]["sizes"]) == len(sizes)  # the shared size once


def test_mup_plan_is_sp_vs_mup_simple_from_the_smallest_width():
    main, e4 = MU.parts(LAPTOP)
    variants = main.overrides["sweep"]["variants"]
    assert [v["model"]["parametrization"] for v in variants] == ["sp", "mup_simple"]
    assert variants[1]["model"]["mup_base_width"] == min(WIDTHS)
    assert "model" not in main.overrides and e4.overrides["model"] == {"qk_layernorm": False}



# ------------------------------------------------------------------------ training dynamics

def dyn_summary(seed: int, **changes) -> dict:
    """One seed's headline numbers (analysis.dynamics_report.dynamics_summary) where every finding
    holds against its step-0 null; `changes` maps a key to a value or a {seed: value} dict."""
    j = 0.01 * seed
    s = {"first_step": 0, "n_probes": 21,
         "weight_kurtosis_median": 2.9 + j, "weight_kurtosis_median_init": 2.4,
         "resid_kurtosis_median": 8.0 + j, "resid_kurtosis_median_init": 3.0,
         "ec_top_lead": 0.6 + j, "ec_top_lead_init": 0.8, "ec_pearson_E_gain": 0.2 + j,
         "compression_median": 3.0 + j, "compression_median_init": 1.05,
         "reamplification_max": 2.0 + j, "reamplification_max_init": 1.0,
         "swiglu_coincidence": 0.3 + j, "swiglu_coincidence_init": 0.1, "swiglu_chance": 1e-6,
         "r_growth": 5.0 + j, "emergence_r2_mean": 0.97 + j / 10}
    for k, v in changes.items():
        s[k] = v[seed] if isinstance(v, dict) else v
    return s


def dyn(**changes) -> List[dict]:
    return [dyn_summary(s, **changes) for s in SEEDS]


DYN_FALSE = {  # one change per finding that makes it false on every seed
    "heavy tails": {"resid_kurtosis_median": 3.2},  # gains 0.2 < 1.2: not heavy-tailed
    "outliers follow R": {"ec_top_lead": -0.3},  # E's top entries lead
    "norm compresses, scale re-amplifies": {"compression_median": 1.05},  # as at init
    "SwiGLU coincidence": {"swiglu_coincidence": 0.05},  # below its init value
    "emergence law": {"r_growth": 1.0},  # r does not grow
}
DYN_SPLIT = {  # seeds disagree: one for, one against, one in between
    "heavy tails": {"resid_kurtosis_median": {0: 3.2, 1: 8.0, 2: 4.5}},
    "outliers follow R": {"ec_top_lead": {0: -0.5, 1: 0.5, 2: 0.0}},
    "norm compresses, scale re-amplifies": {"compression_median": {0: 1.0, 1: 3.0, 2: 1.2}},
    "SwiGLU coincidence": {"swiglu_coincidence": {0: 0.0, 1: 0.2, 2: 0.1}},
    "emergence law": {"r_growth": {0: 1.0, 1: 5.0, 2: 1.6}},
}


@pytest.mark.parametrize("finding", list(DYN_FALSE))
def test_each_dynamics_finding_comes_out_every_way(finding):
    from sweeps import dynamics as D
    rule = D.FINDINGS[finding]
    assert rule(dyn())[0] == "true"
    assert rule(dyn(**DYN_FALSE[finding]))[0] == "false"
    assert rule(dyn(**DYN_SPLIT[finding]))[0] == "inconclusive"
    assert rule(dyn()[:1])[0] == "inconclusive"  # one seed: no interval


def test_outliers_follow_r_is_measured_against_step_0():
    from sweeps import dynamics as D
    # R leads at the end, but exactly as at init and E's link to |C| never grew: the lead is
    # the init construction's (near-equal norms make E flat), not a finding.
    inherited = dyn(ec_top_lead=0.8, ec_pearson_E_gain={0: -0.01, 1: 0.0, 2: 0.01})
    assert D.outliers_follow_r(inherited)[0] == "inconclusive"


def test_swiglu_coincidence_is_measured_against_the_model_at_init():
    from sweeps import dynamics as D
    # Far above the independence baseline (k/NH)² = 1e-6, yet no more than at init: h =
    # swish(g)·u makes that much coincidence by construction, so it is not the finding.
    same = dyn(swiglu_coincidence=0.1)
    assert all(s["swiglu_coincidence"] > 1e4 * s["swiglu_chance"] for s in same)
    assert D.swiglu_coincidence(same)[0] == "false"


def test_dynamics_findings_need_a_probe_at_step_0_and_enough_probes():
    from sweeps import dynamics as D
    assert D.emergence_law(dyn(n_probes=5))[0] == "inconclusive"
    late = dyn(first_step=100)
    assert set(v for v, _ in D.judge_recipe(late).values()) == {"inconclusive"}


@pytest.mark.parametrize("change,want", [({}, "true"),
                                         (DYN_FALSE["heavy tails"], "false"),
                                         (DYN_SPLIT["emergence law"], "inconclusive")])
def test_the_dynamics_verdict_is_the_conjunction_of_its_findings(monkeypatch, change, want):
    from sweeps import dynamics as D
    gelu = dyn(swiglu_coincidence=None, swiglu_coincidence_init=None)
    monkeypatch.setattr(D, "summaries", lambda t: {"RMSNorm + SwiGLU": dyn(**change),
                                                   "LayerNorm + GELU": gelu})
    verdict, why, measured = D.judge({}, LAPTOP)
    assert verdict == want, why
    assert "LayerNorm + GELU: SwiGLU coincidence" not in measured
    assert measured["RMSNorm + SwiGLU: SwiGLU coincidence"].startswith("true")
    assert sum(k.endswith("emergence law") for k in measured) == 2
