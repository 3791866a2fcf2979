"""Analysis numerics against hand-computed answers."""

import math
import os

import numpy as np
import pytest

from analysis import eps_crossover, fit_quadratic_log, lr_sensitivity
from analysis.fits import FitError


def test_lr_sensitivity_hand_computed_with_diverged_and_nan_runs():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    losses = [4.0, 3.2, 3.0, 2.8, 3.1, np.inf, np.nan, 9.9, 2.0]
    # In [3e-4, 3e-1]: 3.2, 3.0, 2.8, 3.1, inf->6, nan->6, 9.9->6 ; best 2.8
    expected = np.mean([0.4, 0.2, 0.0, 0.3, 3.2, 3.2, 3.2])
    assert lr_sensitivity(lrs, losses, 6.0) == pytest.approx(expected)
    # A narrower range only averages the points inside it.
    assert lr_sensitivity(lrs, losses, 6.0, lr_range=(1e-3, 1e-2)) == pytest.approx(
        np.mean([0.2, 0.0, 0.3]))
    assert math.isnan(lr_sensitivity([1.0], [2.0], 6.0))  # no grid point inside the range
    assert lr_sensitivity([1e-3], [2.0], 6.0) == 0.0  # a single LR: no spread


def test_quadratic_in_log_params_is_recovered_and_extrapolated():
    n = np.array([1e6, 4e6, 1.6e7, 6.4e7])
    x = np.log(n)
    y = 0.5 * x**2 - 3.0 * x + 7.0
    fit = fit_quadratic_log(n, y)
    np.testing.assert_allclose(fit.coef, [0.5, -3.0, 7.0], rtol=1e-6)
    assert fit.n_points == 4
    np.testing.assert_allclose(fit.residuals, 0, atol=1e-6)
    big = 4.8e9
    assert fit.predict(big) == pytest.approx(0.5 * math.log(big) ** 2 - 3 * math.log(big) + 7)
    np.testing.assert_allclose(fit.predict(n), y, rtol=1e-8)


def test_quadratic_fit_refuses_fewer_than_three_sizes():
    with pytest.raises(FitError, match="at least 3 model sizes"):
        fit_quadratic_log([1e6, 1e6, 4e6], [1.0, 2.0, 3.0])
    with pytest.raises(FitError, match="at least 3"):
        fit_quadratic_log([1e6, 4e6, 1.6e7], [1.0, np.nan, 3.0])


def test_eps_crossover_on_synthetic_power_law():
    n = np.array([1e6, 1e7, 1e8])
    g = 1e-2 * (n / 1e6) ** -0.5  # 1e-2, 3.16e-3, 1e-3
    # 1e-2 * (N/1e6)^-0.5 = 1e-6  =>  (N/1e6)^0.5 = 1e4  =>  N = 1e14
    assert eps_crossover(n, g, 1e-6) == pytest.approx(1e14, rel=1e-6)
    assert eps_crossover(n, g, 1e-8) == pytest.approx(1e18, rel=1e-6)
    assert eps_crossover(n, [1e-3, 1e-3, 1e-3], 1e-8) == math.inf  # flat: never
    assert eps_crossover(n, 1e-3 * (n / 1e6) ** 0.2, 1e-8) == math.inf  # rising: never


def _fake_run(root, name, lr, d, summary, qk=False, metrics=None):
    import json
    import yaml
    run = root / name
    run.mkdir(parents=True)
    swept = {"model.d_model": d, "model.n_layers": 2, "model.n_heads": 2,
             "model.qk_layernorm": qk, "optim.lr": lr}
    cfg = {"model": {"d_model": d, "n_layers": 2, "n_heads": 2, "qk_layernorm": qk},
           "optim": {"lr": lr, "eps": 1e-8, "z_loss": 0.0}, "run": {"swept": swept}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = metrics or [{"step": 0, "eval/ce": 5.5}, {"step": 10, "eval/ce": 3.0,
                                                     "logits/log_z_mean": 5.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))


def _summary(ce, n, diverged=False, logit=5.0):
    return {"final_eval_ce": ce, "final_train_ce": ce, "loss_at_init": 5.5,
            "diverged": diverged, "steps_done": 10, "n_params": n * 2,
            "n_params_nonembed": n, "max_attn_logit": logit}


def test_report_survives_unfinished_all_diverged_single_lr_and_nan(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    _fake_run(root, "a", 1e-3, 64, _summary(3.0, 1e5))
    _fake_run(root, "b", 1e-2, 64, _summary(None, 1e5))  # NaN final loss
    _fake_run(root, "c", 1e-3, 128, None)  # interrupted: no summary
    _fake_run(root, "d", 1e-3, 32, _summary(None, 5e4, diverged=True), qk=True)  # all diverged
    rep = analyze(root, targets=[1e9])
    text = (root / "analysis" / "report.md").read_text()
    assert "1 of 4 runs unfinished" in text
    assert "no final eval loss" in text
    assert "every run diverged" in text
    assert "attention-logit fit skipped" in text
    assert (root / "analysis" / "lr_vs_loss.png").exists()
    d64 = rep.series[rep.series["model.d_model"] == 64].iloc[0]
    # LRs 1e-3 (3.0) and 1e-2 (NaN -> loss at init 5.5): best 3.0, sensitivity (0 + 2.5) / 2
    assert d64["lr_sensitivity"] == pytest.approx(1.25)


def test_report_predicts_attention_logit_divergence_from_three_sizes(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    for d, n in ((64, 1e5), (128, 8e5), (256, 6.4e6)):
        x = math.log(n)
        _fake_run(root, f"r{d}", 1e-2, d, _summary(3.0, n, logit=0.5 * x * x - 5 * x + 20))
    rep = analyze(root, targets=[4.8e9], threshold=1e4)
    (pred,) = rep.predictions.to_dict("records")
    x = math.log(4.8e9)
    assert pred["predicted_max_logit"] == pytest.approx(0.5 * x * x - 5 * x + 20, rel=1e-6)
    assert pred["diverges"] is False  # about 125, far below 1e4
    rep = analyze(root, targets=[4.8e9], threshold=100)
    assert rep.predictions["diverges"].tolist() == [True]
    assert (root / "analysis" / "attn_logit_fit.png").exists()


def test_analysis_cli_on_a_missing_dir_is_one_line(tmp_path):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})  # stderr lines counted
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_report_notes_a_single_lr(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    _fake_run(root, "a", 1e-3, 64, _summary(3.0, 1e5))
    rep = analyze(root)
    assert any("single LR" in n for n in rep.notes)
    assert rep.series["lr_sensitivity"].tolist() == [0.0]


def _logit_sweep(root, sizes, logit):
    for d, n in sizes:
        _fake_run(root, f"r{d}", 1e-2, d, _summary(3.0, n, logit=logit(math.log(n))))


def test_held_out_size_checks_the_fit_and_exact_fits_are_flagged(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    sizes = [(64, 1e5), (128, 8e5), (256, 6.4e6), (512, 5e7)]
    _logit_sweep(root, sizes, lambda x: 2.0 * x * x - 40 * x + 210)
    rep = analyze(root, targets=[4.8e9], hold_out=[5e7])
    held = rep.predictions[rep.predictions["held_out"]]
    (row,) = held.to_dict("records")
    x = math.log(5e7)
    assert row["target_params"] == 5e7 and row["points"] == 3 and row["dof"] == 0
    assert row["measured_max_logit"] == pytest.approx(2 * x * x - 40 * x + 210)
    assert row["predicted_max_logit"] == pytest.approx(row["measured_max_logit"], rel=1e-6)
    assert any("0 residual degrees of freedom" in n and "held-out rows" in n for n in rep.notes)
    # All four sizes in the fit: one residual degree of freedom, no note.
    rep = analyze(root, targets=[4.8e9])
    assert set(rep.predictions["dof"]) == {1}
    assert not any("degrees of freedom" in n for n in rep.notes)


def test_negative_extrapolated_logits_are_flagged(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    _logit_sweep(root, [(64, 1e5), (128, 8e5), (256, 6.4e6)], lambda x: -1.0 * x * x + 20 * x)
    rep = analyze(root, targets=[4.8e9])
    assert rep.predictions["predicted_max_logit"].iloc[0] < 0
    assert any("negative" in n for n in rep.notes)


def test_where_analyses_a_subset_and_tables_are_sorted(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    for d, n in ((128, 8e5), (256, 6.4e6), (64, 1e5)):  # written out of order
        for qk in (True, False):
            for lr in (1e-1, 1e-3, 1e-2):
                _fake_run(root, f"r{d}{qk}{lr}", lr, d, _summary(3.0 + lr, n), qk=qk)
    rep = analyze(root)
    assert rep.series["model.qk_layernorm"].tolist() == [False] * 3 + [True] * 3
    assert rep.series["model.d_model"].tolist() == [64, 128, 256] * 2
    sub = analyze(root, where={"model.qk_layernorm": False}, out=tmp_path / "sub")
    assert len(sub.series) == 3 and sub.series["lr_sensitivity"].tolist() == pytest.approx(
        rep.series["lr_sensitivity"].tolist()[:3])  # the qk-layernorm-off rows, alone
    assert any(n.startswith("subset: model.qk_layernorm=False (9 runs)") for n in sub.notes)
    assert (tmp_path / "sub" / "report.md").exists()
    assert rep.predictions.groupby("model.qk_layernorm")["optim.lr"].apply(
        lambda s: list(s) == sorted(s)).all()


def test_series_over_different_lr_grids_get_a_note(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    for lr in (1e-3, 1e-2, 1e-1):
        _fake_run(root, f"a{lr}", lr, 64, _summary(3.0, 1e5))
    for lr in (1e-3, 1e-2):
        _fake_run(root, f"b{lr}", lr, 128, _summary(3.0, 8e5))
    rep = analyze(root)
    assert sum("different LR grids" in n for n in rep.notes) == 1


def test_eps_crossover_far_beyond_the_sizes_trained_is_not_a_prediction(tmp_path):
    from analysis.report import analyze
    root = tmp_path / "sweep"
    for d, n, g in ((64, 1e5, 1e-3), (128, 8e5, 9e-4)):  # barely falls: crossover ~1e40
        for lr in (1e-3, 1e-2):
            _fake_run(root, f"r{d}{lr}", lr, d, _summary(3.0, n), metrics=[
                {"step": 0, "eval/ce": 5.5},
                {"step": 10, "eval/ce": 3.0, "grad_rms/w": g, "update_rms/w": 0.1}])
    rep = analyze(root)
    assert rep.eps_warnings["params_where_grad_rms_reaches_eps"].isna().all()
    assert sum("too far to extrapolate" in n for n in rep.notes) == 1  # one note, not one per LR


def test_lr_figure_draws_diverged_runs_at_the_loss_they_count_as(tmp_path):
    from analysis import figures
    from analysis.load import load_sweep
    root = tmp_path / "sweep"
    _fake_run(root, "a", 1e-3, 64, _summary(3.0, 1e5))
    _fake_run(root, "b", 1e-2, 64, {**_summary(4.0, 1e5), "diverged": True})
    _fake_run(root, "c", 1e-1, 64, _summary(7.0, 1e5))  # above ℓ0 = 5.5: counted as 5.5
    fig = figures.lr_curves(load_sweep(root))
    (line, *_) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == [3.0, 5.5, 5.5]


def test_logit_fit_figure_uses_log_axes_and_labels_its_reference_lines(tmp_path):
    from analysis import figures
    from analysis.load import load_sweep
    from analysis.report import attn_predictions
    root = tmp_path / "sweep"
    _logit_sweep(root, [(64, 1e5), (128, 8e5), (256, 6.4e6)], lambda x: 3.0 * x * x - 80 * x + 540)
    df = load_sweep(root)
    _, fits = attn_predictions(df, [4.8e9], 1e4, [])
    fig = figures.attn_logit_fits(df, fits, [4.8e9], 1e4)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert any("divergence threshold" in t for t in texts) and any("target" in t for t in texts)
    fit_lines = [ln for ln in ax.get_lines() if len(ln.get_ydata()) > 2]
    assert fit_lines
    for line in fit_lines:  # fits are drawn only where positive
        y = np.asarray(line.get_ydata(), float)
        assert (y[np.isfinite(y)] > 0).all()


def test_training_curves_colour_each_lr_and_split_settings_into_panels(tmp_path):
    from analysis import figures
    from analysis.load import load_sweep
    root = tmp_path / "sweep"
    for qk in (False, True):
        for lr in (1e-3, 1e-2, 1e-1):
            _fake_run(root, f"r{qk}{lr}", lr, 64, _summary(3.0, 1e5), qk=qk, metrics=[
                {"step": s, "train/ce": 5 - s / 10, "logits/log_z_mean": 5.0 + lr * s}
                for s in range(0, 30, 5)])
    fig = figures.training_curves(root, load_sweep(root), "logits/log_z_mean", "log Z")
    plot_axes = [a for a in fig.axes if a.get_label() != "<colorbar>"][:2]
    assert [a.get_title() for a in plot_axes] == ["qk_layernorm=False", "qk_layernorm=True"]
    for ax in plot_axes:
        colours = {tuple(line.get_color()) for line in ax.get_lines() if len(line.get_xdata())}
        assert len(colours) == 3  # one colour per LR


def test_analysis_cli_refuses_a_directory_without_a_sweep(tmp_path):
    import subprocess
    import sys
    (tmp_path / "notes").mkdir()
    res = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "holds no sweep" in res.stderr
    assert not (tmp_path / "analysis").exists()


def _manifest_sweep(root):
    """A sweep directory with runs.json naming its two runs (as proxies.sweep writes it)."""
    import json
    _fake_run(root, "a", 1e-3, 64, _summary(3.0, 1e5))
    _fake_run(root, "b", 1e-2, 64, _summary(3.5, 1e5))
    (root / "runs.json").write_text(json.dumps(
        [{"run_dir": r, "swept": {"optim.lr": lr}} for r, lr in (("a", 1e-3), ("b", 1e-2))]))


@pytest.mark.parametrize("damage", ["", "[{\"run_dir\": \"a\", \"swe", "{\"a\": 1}"])
def test_a_damaged_runs_json_is_refused_in_one_line_naming_the_fix(tmp_path, damage, capsys):
    from analysis.__main__ import main
    root = tmp_path / "sweep"
    _manifest_sweep(root)
    (root / "runs.json").write_text(damage)
    with pytest.raises(SystemExit) as e:
        main([str(root)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "runs.json is damaged" in err and "rerun the sweep command" in err
    assert not (root / "analysis").exists()


def test_a_damaged_results_csv_is_rewritten_from_the_runs(tmp_path):
    import pandas as pd
    from analysis.report import analyze
    root = tmp_path / "sweep"
    _manifest_sweep(root)
    (root / "results.csv").write_text("run_dir,sta\n\"a,,,\n\x00garbage")
    rep = analyze(root)
    assert any("results.csv was damaged" in n for n in rep.notes)
    table = pd.read_csv(root / "results.csv")
    assert sorted(table["run_dir"]) == ["a", "b"] and set(table["status"]) == {"done"}
    assert not list(root.glob(".results.csv.*"))  # written atomically: no temp file left
    rep = analyze(root)  # a sound table is left alone
    assert not any("damaged" in n for n in rep.notes)


def test_the_sweep_record_uses_the_sweeps_lr_range(tmp_path):
    """run_sensitivity (what W&B records per run) from the series table over sweep.lr_range,
    the one report.md shows: LRs 1e-3
    (3.0), 1e-2 (3.5), 1e-1 (5.0) give (0 + 0.5 + 2.0) / 3 over the whole grid and 0.25 over
    [1e-3, 1e-2]."""
    from analysis.report import run_sensitivity, series_table
    from proxies.sweep_table import table_from_dirs
    root = tmp_path / "sweep"
    for name, lr, ce in (("a", 1e-3, 3.0), ("b", 1e-2, 3.5), ("c", 1e-1, 5.0)):
        _fake_run(root, name, lr, 64, _summary(ce, 1e5))
    table = table_from_dirs(root)
    whole = run_sensitivity(table, series_table(table, (1e-4, 1.0)))
    assert len(whole) == 3 and list(whole.values()) == pytest.approx([2.5 / 3] * 3)
    narrow = run_sensitivity(table, series_table(table, (1e-3, 1e-2)))
    assert list(narrow.values()) == pytest.approx([0.25] * 3)
    assert series_table(table, (1e-3, 1e-2))["lr_sensitivity"].tolist() == [pytest.approx(0.25)]
