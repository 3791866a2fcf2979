"""The paper-reproduction scripts: every one runs at tiny scale, writes its verdict and figure,
shares runs with the others; gpu and paper scales plan the paper's grids without training.

The tiny runs of `python -m sweeps.all` and `python -m sweeps.dynamics` are trained once, in the
background from the session's start (tests/conftest.py: sweeps_runs); the tests read them."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import sweeps_tiny_args
from sweeps import RESULTS
from sweeps.all import results
from sweeps.core import SPECS, half_decades, main, plan

VERDICT_KEYS = {"claim", "scale", "reproduced", "why", "measured"}


@pytest.fixture(scope="module")
def all_run(sweeps_runs):
    """(root, printed) of `python -m sweeps.all scale=tiny` (tests/conftest.py starts it with the
    session, in the background): it trains every script's runs (a run shared between scripts
    once) and writes every result directory and the summary, exactly as each script would
    (`execute` of the script's plan)."""
    return sweeps_runs.result("all")


@pytest.fixture(scope="module")
def root(all_run):
    return all_run[0]


@pytest.fixture(scope="module")
def all_printed(all_run):
    return all_run[1]


tiny_args = sweeps_tiny_args


@pytest.mark.parametrize("name", RESULTS)
def test_every_script_runs_at_tiny_scale_and_writes_its_verdict(name, root, all_printed,
                                                                corpus_dir, cache_dir):
    result = next(r for r in results() if r.name == name)
    out = root / "repro" / f"{name}-tiny"
    saved = json.loads((out / "verdict.json").read_text())
    assert VERDICT_KEYS <= set(saved) and saved["scale"] == "tiny"
    assert saved["reproduced"] in ("true", "false", "inconclusive") and saved["why"]
    assert saved["measured"]
    # The verdict the script judged (printed as it finished) is the one saved and reported.
    assert f"{name} (tiny): {saved['reproduced']}: {saved['why']}\n" in all_printed
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "figure.pdf").exists()
    assert f"**Verdict: {saved['reproduced']}.**" in (out / "report.md").read_text()
    for part in plan(result, "tiny", tiny_args(root, corpus_dir, cache_dir)[1:]).configs:
        assert (out / part / "results.csv").exists() and (out / part / "analysis").is_dir()


def test_all_writes_the_summary(root, all_printed):
    table = (root / "repro" / "summary.md").read_text()
    assert table.count("\n| ") == len(RESULTS) + 1  # header + one row per result
    for name in RESULTS:
        saved = json.loads((root / "repro" / f"{name}-tiny" / "verdict.json").read_text())
        (row,) = [ln for ln in table.splitlines() if ln.startswith(f"| {name} |")]
        assert f"**{saved['reproduced']}**" in row and f"({name}-tiny/figure.png)" in row


def test_every_script_reuses_every_run_and_one_rerun_returns_its_verdict(
        root, all_printed, corpus_dir, cache_dir, capsys):
    """The scripts and sweeps.all train the same runs: after sweeps.all, every script finds all
    of its runs done; one script run in full concludes again and returns the verdict it saves."""
    args = tiny_args(root, corpus_dir, cache_dir)
    for result in results():
        assert main(result, [*args, "--dry-run"]) is None
        printed = capsys.readouterr().out
        assert f"{result.name} (tiny): " in printed and "already done, 0 to train)" in printed
    from sweeps.warmup import RESULT as warmup
    verdict = main(warmup, args)
    assert "already done, 0 to train)" in capsys.readouterr().out
    saved = json.loads((root / "repro" / "warmup-tiny" / "verdict.json").read_text())
    assert (saved["reproduced"], saved["why"]) == (verdict.reproduced, verdict.why)


def test_scripts_share_runs_with_each_other(root, all_printed):
    """The qk-layernorm-off series and warmup's short-warmup series are the same runs."""
    qk = pd.read_csv(root / "repro" / "qk_layernorm-tiny" / "main" / "results.csv")
    wu = pd.read_csv(root / "repro" / "warmup-tiny" / "main" / "results.csv")
    base = root / "repro" / "x" / "main"
    qk_off = {os.path.normpath(base / r) for r in qk[~qk["model.qk_layernorm"]]["run_dir"]}
    short = {os.path.normpath(base / r)
             for r in wu[wu["optim.warmup_steps"] == SPECS["tiny"].warmups[0]]["run_dir"]}
    assert qk_off == short and len(qk_off) == 4


def test_paper_scale_dry_run_plans_the_papers_grid():
    from sweeps.logit_prediction import RESULT as logit
    from sweeps.qk_layernorm import RESULT as qk
    p = plan(qk, "paper")
    runs = [run for _, run in p.all_points()]
    assert sorted({run.optim.lr for run in runs}) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1,
                                                       3e-1, 1.0]
    nonembed = sorted({12 * r.model.n_layers * r.model.d_model ** 2 for r in runs})
    assert nonembed[0] == pytest.approx(9.4e6, rel=0.01) and nonembed[-1] == pytest.approx(
        1.2e9, rel=0.05) and len(nonembed) == 8
    assert {r.model.d_model // r.model.n_heads for r in runs} == {64}
    for r in runs:
        assert (r.train.steps, r.train.batch_size, r.train.seq_len) == (100_000, 256, 512)
        assert r.model.dtype == "bfloat16" and r.data.hf_name == "allenai/c4"
        assert r.optim.warmup_steps == 5000 and (r.optim.b1, r.optim.b2) == (0.9, 0.95)
    assert len(runs) == 8 * 9 * 2
    held = max(12 * r.model.n_layers * r.model.d_model ** 2
               for _, r in plan(logit, "paper").all_points())
    assert held == pytest.approx(4.83e9, rel=0.01)  # the paper's 4.8B check


def test_gpu_and_paper_dry_runs_print_the_grid_and_cost_without_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    # Three commands at once: each spends its time starting Python, JAX and Hydra.
    dry = {scale: start("sweeps.qk_layernorm", f"scale={scale}", "--dry-run",
                        f"sweep.root={tmp_path}", f"sweep.run_root={tmp_path}")
           for scale in ("gpu", "paper")}
    bad = start("sweeps.kappa", "scale=huge")
    for scale, proc in dry.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "to train)" in out and "FLOPs" in out and "H100" in out
    assert not any(tmp_path.iterdir())
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.strip().splitlines() == [
        "error: scale='huge' is not one of tiny, laptop, gpu, paper; pick one of those"]


def test_half_decades_is_the_papers_lr_grid():
    assert half_decades(1e-4, 1.0) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    assert half_decades(3e-4, 3e-1) == SPECS["laptop"].lrs


def _table(rows):
    df = pd.DataFrame(rows)
    df["status"] = "done"
    df["diverged"] = df.get("diverged", False)
    df["loss_at_init"] = 6.0
    return df


def test_qk_layernorm_verdict_follows_the_numbers():
    from sweeps.qk_layernorm import judge
    rows = []
    for d, L, n in ((64, 2, 1e5), (128, 4, 8e5)):
        for qk in (False, True):
            for lr, base in ((1e-3, 3.0), (1e-2, 2.5), (1e-1, 2.6)):
                loss = base + (0.0 if qk else 0.8 * (lr == 1e-1))
                logit = 5.0 if qk else lr * n / 10
                rows.append({"model.d_model": d, "model.n_layers": L, "model.qk_layernorm": qk,
                             "optim.lr": lr, "n_params_nonembed": n, "final_eval_ce": loss,
                             "max_attn_logit": logit})
    reproduced, why, measured = judge({"main": _table(rows)}, SPECS["tiny"])
    assert reproduced == "true", why
    same = [{**r, "final_eval_ce": 3.0} for r in rows]  # flat curves: nothing to lower
    assert judge({"main": _table(same)}, SPECS["tiny"])[0] == "false"


def test_kappa_verdict_finds_onset_and_bigram_crossing():
    from sweeps.kappa import judge
    kappas = [1.0, 10.0, 100.0, 1e3, 1e4]
    losses = [2.30, 2.30, 2.31, 2.45, 2.95]
    k = _table([{"model.attn_kappa": kv, "optim.lr": 3e-3, "final_eval_ce": lv,
                 "max_attn_logit": kv, "n_params_nonembed": 1e6, "model.d_model": 128,
                 "model.n_layers": 4} for kv, lv in zip(kappas, losses)])
    b = _table([{"optim.lr": 3e-3, "final_eval_ce": 2.9, "n_params_nonembed": 0.0,
                 "model.d_model": 128, "model.n_layers": 0}])
    reproduced, why, measured = judge({"kappa": k, "bigram": b}, SPECS["tiny"])
    assert reproduced == "true", why
    assert measured["first κ worse than bigram"] == 1e4
    assert np.isclose(measured["first κ with loss > κ=1 + 0.05"], 1e3)


def _lr_rows(settings, sizes, loss):
    """Rows of a synthetic sweep: every (setting dict, size, LR) with loss(setting, n, lr)."""
    rows = []
    for st in settings:
        for d, L, n in sizes:
            for lr in (1e-3, 1e-2, 1e-1):
                rows.append({**st, "model.d_model": d, "model.n_layers": L, "optim.lr": lr,
                             "n_params_nonembed": n, "final_eval_ce": loss(st, n, lr)})
    return _table(rows)


SIZES = ((64, 2, 1e5), (128, 4, 8e5))


def test_warmup_verdict_needs_a_larger_gain_for_larger_models():
    from sweeps.warmup import judge
    short, long = SPECS["tiny"].warmups

    def loss(st, n, lr, bigger_gain):
        penalty = 1.0 if lr == 1e-1 else 0.0
        gain = 0.3 if (bigger_gain and n > 1e5) else 0.2
        return 2.5 + penalty - (gain if st["optim.warmup_steps"] == long and penalty else 0)
    settings = [{"optim.warmup_steps": short}, {"optim.warmup_steps": long}]
    t = _lr_rows(settings, SIZES, lambda st, n, lr: loss(st, n, lr, True))
    assert judge({"main": t}, SPECS["tiny"])[0] == "true"
    t = _lr_rows(settings, SIZES, lambda st, n, lr: loss(st, n, lr, False))
    assert judge({"main": t}, SPECS["tiny"])[0] == "inconclusive"  # lower, but not more for larger


def test_mup_verdict_compares_best_lr_drift_across_widths():
    from sweeps.mup import judge

    def loss(st, n, lr):  # SP's best LR falls with width, μP's stays at 1e-2
        best = 1e-2 if st["model.parametrization"] == "mup" else (1e-2 if n < 1e5 else 1e-3)
        return 2.5 + abs(np.log10(lr / best))
    widths = ((64, 2, 9e4), (256, 2, 1.5e6))
    t = _lr_rows([{"model.parametrization": "sp"}, {"model.parametrization": "mup"}], widths,
                 loss)
    reproduced, why, measured = judge({"main": t}, SPECS["tiny"])
    assert reproduced == "true", why
    assert measured["best-LR drift across widths, decades (SP / μP)"] == [1.0, 0.0]


def test_depth_width_verdict_compares_slopes_per_decade():
    from sweeps.depth_width import judge
    s = SPECS["tiny"]  # widths d16 L1 -> d32 L1, depths d16 L1 -> d16 L2
    shapes = ((16, 1, 3e3), (32, 1, 1.2e4), (16, 2, 6e3))

    def loss(st, n, lr):
        deep = n == 6e3
        return 2.5 + (lr == 1e-1) * (1.0 if deep else 0.2)
    t = _lr_rows([{}], shapes, loss)
    assert judge({"main": t}, s)[0] == "true"


def test_adam_eps_verdict_wants_falling_gradients_and_an_update_collapse():
    from sweeps.adam_eps import judge
    sc = []
    for d, L, n in SIZES:
        for lr in (1e-3, 1e-2):
            sc.append({"model.d_model": d, "model.n_layers": L, "n_params_nonembed": n,
                       "optim.lr": lr, "final_eval_ce": 2.5,
                       "grad_rms_median": 1e-3 * (n / 1e5) ** -0.5 * (lr / 1e-3) ** -0.3})
    ep = [{"optim.eps": e, "optim.lr": 1e-2, "n_params_nonembed": 8e5, "model.d_model": 128,
           "model.n_layers": 4, "final_eval_ce": 2.5, "grad_rms_median": 1e-4,
           "update_rms_median": 0.3 / (1 + e / 1e-4)} for e in (1e-8, 1e-4, 1e-2)]
    reproduced, why, _ = judge({"scaling": _table(sc), "eps": _table(ep)}, SPECS["tiny"])
    assert reproduced == "true", why
    for r in ep:
        r["update_rms_median"] = 0.3  # no collapse
    assert judge({"scaling": _table(sc), "eps": _table(ep)}, SPECS["tiny"])[0] == "inconclusive"


def test_logit_prediction_verdict_checks_the_held_out_size_and_the_flag():
    from sweeps.logit_prediction import judge
    rows = []
    for lr, a in ((1e-2, 0.5), (1e-1, 4.0)):
        for d, n in ((16, 1e5), (32, 4e5), (48, 1.6e6), (64, 6.4e6), (96, 2.56e7)):
            x = np.log(n)
            rows.append({"model.d_model": d, "model.n_layers": 2, "optim.lr": lr,
                         "n_params_nonembed": n, "final_eval_ce": 3.0,
                         "max_attn_logit": a * (x - 10) ** 2 + 5})
    reproduced, why, measured = judge({"main": _table(rows)}, SPECS["tiny"])
    assert reproduced == "true", why  # an exact quadratic is predicted exactly
    assert measured["1e4 flag right"] == "2/2"


def test_the_dynamics_script_judges_each_finding_per_recipe(sweeps_runs):
    root, printed = sweeps_runs.result("dynamics")  # python -m sweeps.dynamics scale=tiny
    out = root / "repro" / "dynamics-tiny"
    saved = json.loads((out / "verdict.json").read_text())
    assert f"dynamics (tiny): {saved['reproduced']}: {saved['why']}\n" in printed
    for recipe in ("RMSNorm + SwiGLU", "LayerNorm + GELU"):
        for finding in ("heavy tails", "outliers follow R", "norm compresses, scale re-amplifies",
                        "emergence law"):
            value = saved["measured"][f"{recipe}: {finding}"]
            assert value.split(":")[0] in ("true", "false", "inconclusive"), value
    assert "RMSNorm + SwiGLU: SwiGLU coincidence" in saved["measured"]
    assert len(list((root / "runs").glob("*/dynamics/report.md"))) == 2
