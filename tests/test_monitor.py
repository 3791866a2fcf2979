"""The early-warning monitor (proxies/monitor.py): forecasts against synthetic signals whose
crossing is known, the warning rule, and the reactive detectors against hand-computed cases."""

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from proxies import monitor as MO
from proxies import rundir as R
from proxies.stopping import WarnedStop
from proxies.train import train
from tests.conftest import assert_same_records, tiny_cfg


def _crossing(f, limit, start=0, stop=2_000):
    """Brute force: the first integer step at which f reaches the limit."""
    t = np.arange(start, stop)
    hit = np.nonzero(f(t) >= limit)[0]
    return t[hit[0]] if len(hit) else None


@pytest.mark.parametrize("form, f", [
    ("line", lambda t: 10 + 3.0 * t),
    ("parabola", lambda t: 10 + 0.5 * t + 0.02 * t ** 2),
    ("exponential", lambda t: 10 * np.exp(t / 40)),
])
def test_a_clean_trend_is_forecast_to_cross_where_it_does(form, f):
    steps = np.arange(100, 150)
    limit = MO.Limit(1e3, above=True)
    fit = MO.forecast(steps, f(steps), limit, horizon=10_000)
    truth = _crossing(f, 1e3)
    assert fit.form == form
    assert fit.crossing == pytest.approx(truth, abs=1.0)


def test_a_falling_signal_is_forecast_to_cross_a_lower_limit():
    f = lambda t: 1e3 * np.exp(-t / 30)  # noqa: E731: grad RMS sinking toward ε
    steps = np.arange(0, 60)
    fit = MO.forecast(steps, f(steps), MO.Limit(10.0, above=False), horizon=1_000)
    assert fit.crossing == pytest.approx(30 * math.log(100), abs=0.5)


def test_a_noisy_exponential_is_forecast_within_a_tenth_of_the_lead():
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(50):
        steps = np.arange(0, 80)
        values = 5 * np.exp(steps / 25) * np.exp(rng.normal(0, 0.05, len(steps)))
        fit = MO.forecast(steps, values, MO.Limit(1e4, above=True), horizon=10_000)
        truth = 25 * math.log(1e4 / 5)
        lead = truth - steps[-1]
        errors.append(abs(fit.crossing - truth) / lead)
    assert np.median(errors) < 0.1


def test_a_flat_noisy_signal_is_not_forecast_to_cross():
    rng = np.random.default_rng(1)
    crossed = 0
    for _ in range(200):
        steps = np.arange(0, 50)
        values = 30 + rng.normal(0, 1, len(steps))
        crossed += MO.forecast(steps, values, MO.Limit(1e4, above=True),
                               horizon=100).crossing is not None
    assert crossed == 0


def test_a_trend_moving_away_from_its_limit_is_not_forecast_to_turn_back():
    """Rising to step 50 and bending over: a parabola through it falls back below a floor of 0
    within the horizon, but at the newest step the signal still climbs away from the floor."""
    steps = np.arange(0, 50)
    values = 10 + 2.0 * steps - 0.02 * steps ** 2  # slope at 49: +0.04, away from the floor
    assert MO.forecast(steps, values, MO.Limit(0.0, above=False), horizon=200).crossing is None
    falling = 10 + 2.0 * steps - 0.03 * steps ** 2  # slope at 49: -0.94, toward it
    fit = MO.forecast(steps, falling, MO.Limit(0.0, above=False), horizon=200)
    assert fit.form == "parabola" and fit.crossing == pytest.approx(
        (2.0 + math.sqrt(4.0 + 1.2)) / 0.06, abs=0.5)


def test_a_crossing_beyond_the_horizon_is_no_forecast():
    steps = np.arange(0, 50)
    fit = MO.forecast(steps, 1.0 + steps, MO.Limit(1e3, above=True), horizon=100)
    assert fit.crossing is None  # crosses at 999, 950 ahead


def _monitor(**kw):
    lim = MO.limits(attn_logit_limit=1e4, log_z_limit=20, logit_drift_limit=20,
                    grad_rms_eps_factor=10, update_rms_floor=0.1)
    return MO.Monitor(limits=lim, **{"window": 20, "horizon": 100, "confirm": 3, **kw})


def test_the_monitor_warns_once_ahead_of_an_exponential_logit_and_says_when():
    mon = _monitor()
    f = lambda t: 10 * math.exp(t / 20)  # noqa: E731: crosses 1e4 at 20 ln 1e3 = 138.2
    fired = [w for s in range(1, 200) for w in mon.observe(s, {"attn_max_logit": f(s)})]
    assert len(fired) == 1
    w = fired[0]
    assert w.signal == MO.ATTN_MAX_LOGIT and w.form == "exponential"
    # first forecast within the horizon: step 39 (138.2 - 100), then 3 confirmations
    assert w.step == 41 and w.forecast_step == pytest.approx(138.2, abs=0.5)
    assert w.record()["steps_ahead"] == pytest.approx(97.2, abs=0.5)
    assert "early warning at step 41: attn_max_logit" in w.line()


def test_a_value_past_its_limit_warns_without_a_forecast():
    mon = _monitor(confirm=1)
    fired = mon.observe(1, {"attn_max_logit": 2e4})
    assert fired and fired[0].forecast_step is None and "past its limit" in fired[0].line()


def test_derived_signals_read_drift_from_the_first_update_and_eps_ratio():
    mon = _monitor()
    mon.eps = 1e-8
    a = mon.derive(1, {"logit_mean": -2.0, "log_z_mean": -7.0, "mlp0_grad_rms": 3e-7})
    b = mon.derive(2, {"logit_mean": -9.5})
    assert a[MO.LOGIT_DRIFT] == 0 and b[MO.LOGIT_DRIFT] == pytest.approx(7.5)
    assert a[MO.LOG_Z_ABS] == 7.0 and a[MO.GRAD_RMS_OVER_EPS] == pytest.approx(30.0)


def test_update_rms_is_read_against_its_median_over_the_first_window_after_warm_up():
    mon = _monitor(start=10)
    for s in range(0, 10):  # during the warm-up: not part of the reference
        mon.derive(s, {"mlp0_update_rms": 5.0})
    for s in range(10, 30):
        out = mon.derive(s, {"mlp0_update_rms": 0.2})
    assert mon.update_rms_ref == pytest.approx(0.2)
    assert out[MO.UPDATE_RMS_RATIO] == pytest.approx(1.0)
    assert mon.derive(30, {"mlp0_update_rms": 0.01})[MO.UPDATE_RMS_RATIO] == pytest.approx(0.05)


def test_no_forecast_before_the_warm_up_ends_but_a_value_past_its_limit_still_warns():
    f = lambda t: 10 * math.exp(t / 20)  # noqa: E731: forecast within 100 from step 39
    mon = _monitor(start=60)
    fired = [w for s in range(1, 200) for w in mon.observe(s, {"attn_max_logit": f(s)})]
    assert [w.step for w in fired] == [62]  # checks 60, 61, 62 confirm it
    mon = _monitor(start=60, confirm=1)
    assert mon.observe(5, {"attn_max_logit": 2e4})[0].forecast_step is None


def test_on_a_log_scale_multiplicative_noise_seldom_forecasts_a_crossing():
    """Gradient RMS / ε bouncing by factors around a flat 1,000 (as it does after the warm-up),
    floor 10: on a linear scale the big values steer the fits and a quarter of the windows
    forecast a fall to the floor; read on a log scale, few do."""
    rng = np.random.default_rng(2)
    steps = np.arange(30, 50)
    draws = [1_000 * np.exp(rng.normal(0, 0.3, len(steps))) for _ in range(500)]

    def crossed(limit):
        return np.mean([MO.forecast(steps, v, limit, horizon=100).crossing is not None
                        for v in draws])

    assert crossed(MO.Limit(10.0, above=False)) > 0.2
    assert crossed(MO.Limit(10.0, above=False, log=True)) < 0.1


def test_on_a_log_scale_an_exponential_is_a_line_and_is_forecast_where_it_crosses():
    steps = np.arange(100, 150)
    f = lambda t: 10 * np.exp(t / 40)  # noqa: E731
    fit = MO.forecast(steps, f(steps), MO.Limit(1e3, above=True, log=True), horizon=10_000)
    assert fit.form == "exponential"
    assert fit.crossing == pytest.approx(40 * math.log(100), abs=0.5)


def test_loss_zscore_fires_at_the_first_step_six_sigma_above_the_window():
    steps = list(range(1, 201))
    loss = [3.0 + 0.01 * ((-1) ** s) for s in steps]  # mean 3.0, std 0.01
    loss[149] = 3.05  # 5 sigma: no
    loss[169] = 3.07  # 7 sigma: yes
    assert MO.zscore_first(steps, loss) == 170


def test_zscore_waits_for_its_minimum_samples_and_flags_a_nan_at_once():
    steps = list(range(1, 41))
    loss = [1.0] * 40
    loss[9] = 100.0  # before 32 samples: not judged
    assert MO.zscore_first(steps, loss) is None
    loss[35] = math.nan
    assert MO.zscore_first(steps, loss) == 36


def test_loss_ratio_fires_above_ten_times_the_largest_seen():
    steps = [1, 2, 3, 4]
    assert MO.ratio_first(steps, [5.0, 4.0, 49.0, 51.0]) is None  # 49 <= 10 x 5 is the new top
    assert MO.ratio_first(steps, [5.0, 4.0, 51.0, 1.0]) == 3
    assert MO.ratio_first(steps, [5.0, 4.0, math.inf, 1.0]) == 3


# --- in a run -----------------------------------------------------------------------------

# Limits a tiny run meets: its attention logits are past 1e-3 from the first update; logit
# drift is forecast over 1,000 updates from 4.
WARNS = ("train.monitor.window=4", "train.monitor.every=1", "train.monitor.confirm=2",
         "train.monitor.horizon=1000", "train.monitor.attn_logit_limit=1e-3",
         "train.monitor.logit_drift_limit=0.5")


def _warnings(out) -> list:
    return [e for e in R.read_jsonl(Path(out) / R.EVENTS)[0] if e.get("event") == MO.EVENT]


def test_a_run_records_every_updates_signals_and_the_replay_says_what_it_said(make_cfg):
    from analysis.monitor import replay_run

    cfg = make_cfg(*WARNS)
    summary = train(cfg)
    rows = R.read_jsonl(Path(cfg.out_dir) / R.SIGNALS)[0]
    assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))
    assert set(MO.RECORDED) <= set(rows[0])
    live = _warnings(cfg.out_dir)
    assert live and live[0]["signal"] == MO.ATTN_MAX_LOGIT and live[0]["step"] == 2
    assert [w.record() for w in replay_run(Path(cfg.out_dir)).warnings] == live
    assert summary["early_warnings"] == len(live) and summary["first_warning_step"] == 2
    assert summary["spikes"] == 0  # warnings are not spikes


def test_a_run_without_the_monitor_records_no_signals(make_cfg):
    cfg = make_cfg("train.monitor.enabled=false")
    summary = train(cfg)
    assert not (Path(cfg.out_dir) / R.SIGNALS).exists()
    assert summary["early_warnings"] == 0


def test_action_stop_ends_the_run_with_a_checkpoint_and_it_resumes_exactly(make_cfg):
    whole = make_cfg(*WARNS, out="whole")
    train(whole)
    cut = make_cfg(*WARNS, "train.monitor.action=stop", out="cut")
    with pytest.raises(WarnedStop) as e:
        train(cut)
    # update 2 warns (2 in a row past the limit); it is read while update 3 runs
    assert e.value.step == 3 and e.value.exit_code == 3
    assert "early warning at step 2: attn_max_logit" in str(e.value)
    assert "train.monitor.action=log" in str(e.value)
    assert not (Path(cut.out_dir) / R.SUMMARY).exists()
    assert (Path(cut.out_dir) / R.CHECKPOINTS / "3").exists()
    resumed = OmegaConf.merge(cut, OmegaConf.from_dotlist(["train.monitor.action=log"]))
    train(resumed)
    assert_same_records(whole, resumed)
    signals = [R.read_jsonl(Path(c.out_dir) / R.SIGNALS)[0] for c in (whole, resumed)]
    assert signals[0] == signals[1]
    assert _warnings(whole.out_dir) == _warnings(resumed.out_dir)  # none repeated on resume


def test_the_command_stopped_by_a_warning_says_one_line_and_exits_3(tmp_path, corpus_dir,
                                                                     cache_dir):
    from tests.test_faults import cfg_args, run_cli

    cfg = tiny_cfg(tmp_path / "run", corpus_dir, cache_dir)
    proc = run_cli(*cfg_args(cfg), *WARNS, "train.monitor.action=stop", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert proc.returncode == 3, err
    assert len(lines) == 1 and lines[0].startswith("stopped at step 3 by the early warning"), err


def test_the_monitor_changes_nothing_in_training(make_cfg, float64):
    """Its readings are side computations of the step: with it on, every logged value is the
    same as with it off (float64, where rounding cannot decide: see F64_RTOL)."""
    on = make_cfg(float64, *WARNS, out="on")
    off = make_cfg(float64, "train.monitor.enabled=false", out="off")
    train(on)
    train(off)
    assert_same_records(on, off)


# --- scoring --------------------------------------------------------------------------------

def _replay(diverged_at, first):
    from analysis.monitor import RunReplay
    import pandas as pd
    return RunReplay(Path("r"), 200, diverged_at, first, [], pd.DataFrame())


def test_the_monitor_is_earliest_only_before_the_divergence_and_every_reactive_detector():
    from analysis.monitor import EARLY, earliest

    assert earliest(_replay(100, {EARLY: 50, "z": 80, "ratio": None}))
    assert not earliest(_replay(100, {EARLY: 50, "z": 40, "ratio": None}))
    assert not earliest(_replay(100, {EARLY: 50, "z": 50, "ratio": None}))  # a tie is not first
    assert earliest(_replay(100, {EARLY: 50, "z": 120, "ratio": None}))  # z warned too late
    assert not earliest(_replay(100, {EARLY: 100, "z": None, "ratio": None}))  # at divergence
    assert not earliest(_replay(None, {EARLY: 10, "z": None, "ratio": None}))  # never diverged


def test_the_score_counts_warned_runs_leads_and_false_alarms_by_hand():
    from analysis.monitor import EARLY, score

    rs = [_replay(100, {EARLY: 60, "z": 90}), _replay(50, {EARLY: None, "z": 40}),
          _replay(None, {EARLY: 30, "z": None}), _replay(None, {EARLY: None, "z": None})]
    t = score(rs).set_index("detector")
    assert t.loc[EARLY, "diverged runs warned"] == "1/2" and t.loc["z", "diverged runs warned"] == "2/2"
    assert t.loc[EARLY, "median lead (steps)"] == 40 and t.loc["z", "median lead (steps)"] == 10
    assert t.loc[EARLY, "median lead (share of run)"] == pytest.approx(0.2)
    assert t.loc[EARLY, "false alarms"] == "1/2" and t.loc["z", "false alarms"] == "0/2"


@pytest.mark.parametrize("n, m", [(10, 30), (30, 60), (60, 120)])
def test_the_early_warning_verdict_is_rarely_wrong_at_the_boundary_of_its_claim(n, m):
    """Simulated scores at the claim's boundary (warned first on half the diverged runs, 5% false
    alarms): neither "true" nor "false" more than 5% of 1,000 tables each."""
    from sweeps.early_warning import FALSE_ALARMS, MOST, verdict

    rng = np.random.default_rng(n)
    k = rng.binomial(n, MOST, 1000)
    f = rng.binomial(m, FALSE_ALARMS, 1000)
    # "true" needs both intervals to clear the boundary; at it, each side alone is "false" at
    # most 2.5% (Clopper-Pearson), so "false" (either side) at most ~5%
    says = [verdict(int(a), n, int(b), m) for a, b in zip(k, f)]
    assert says.count("true") / 1000 <= 0.05
    assert says.count("false") / 1000 <= 0.05


def test_the_early_warning_verdict_finds_a_clear_win_and_a_clear_loss():
    from sweeps.early_warning import verdict

    assert verdict(27, 30, 0, 80) == "true"
    assert verdict(5, 30, 0, 80) == "false"  # warned first on few runs
    assert verdict(27, 30, 20, 80) == "false"  # many false alarms
    assert verdict(27, 30, 0, 20) == "inconclusive"  # 0/20 still allows 17% false alarms


def test_forecasts_every_fifth_update_confirm_over_checks_not_updates():
    mon = _monitor(every=5)
    f = lambda t: 10 * math.exp(t / 20)  # noqa: E731: crosses 1e4 at 138.2
    fired = [w for s in range(1, 200) for w in mon.observe(s, {"attn_max_logit": f(s)})]
    # checks at 40, 45, 50 (the first with a full window within the horizon is 40)
    assert [w.step for w in fired] == [50]
    assert fired[0].forecast_step == pytest.approx(138.2, abs=0.5)


def test_replaying_a_run_without_signals_is_one_line_naming_the_fix(tmp_path, capsys):
    from analysis import monitor as AM
    from proxies.rundir import RunDirError
    with pytest.raises(RunDirError, match="train.monitor.enabled=true"):
        AM.replay_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        AM.main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "moved away" in err
