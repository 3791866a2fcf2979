"""Sweeps: grid expansion, directory identity, skip/resume, the table, bad sweep input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import lr_sensitivity
from proxies.config import ConfigError
from proxies.launch import available_cores
from proxies.config import SweepRoot
from proxies.grid import expand_grid, sweep_dir
from proxies.sweep import run_sweep
from proxies.naming import run_name
from proxies.rundir import read_metrics
from proxies.train import train
from tests.conftest import assert_same_records

REPO = Path(__file__).resolve().parent.parent


def sweep_cfg(tmp_path, corpus_dir, cache_dir, *overrides):
    base = [
        "sweep.name=t", f"sweep.root={tmp_path / 'sweeps'}", f"sweep.run_root={tmp_path / 'runs'}",
        "sweep.lrs=[1e-3,1e-2]", "sweep.workers=1",  # in this process (test_launch.py: workers)
        "sweep.analysis=false",
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
        "train.steps=6", "train.batch_size=4", "train.seq_len=16", "train.log_every=3",
        "train.eval_every=6", "train.eval_batches=1", "train.checkpoint_every=3",
        "wandb.mode=disabled", "data.source=text", f"data.path={corpus_dir}",
        f"data.cache_dir={cache_dir}",
    ]
    cfg = OmegaConf.merge(OmegaConf.structured(SweepRoot), OmegaConf.from_dotlist(base))
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def test_grid_is_sizes_times_axes_times_lrs(tmp_path, corpus_dir, cache_dir):
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-3,1e-2]")
    cfg.sweep.sizes = [{"d_model": 32, "n_layers": 1, "n_heads": 2},
                       {"d_model": 64, "n_layers": 2, "n_heads": 2}]
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}, "optim": {"z_loss": [0, 1e-4]}}
    points = expand_grid(cfg)
    assert len(points) == 2 * 2 * 2 * 3
    values, run = points[-1]
    assert values == {"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2,
                      "model.qk_layernorm": True, "optim.z_loss": 1e-4, "optim.lr": 1e-2}
    assert run.model.d_model == 64 and run.optim.z_loss == 1e-4 and run.optim.lr == 1e-2
    assert run.train.steps == 6 and run.train.quiet  # base overrides reach every run
    assert len({run_name(r) for _, r in points}) == len(points)


def test_seeds_repeat_every_point_with_its_own_init_and_data_order(tmp_path, corpus_dir,
                                                                    cache_dir):
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.seeds=3", "train.seed=5")
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}}
    points = expand_grid(cfg)
    assert len(points) == 2 * 3 * 2
    assert sorted({(v["model.qk_layernorm"], v["train.seed"]) for v, _ in points}) == [
        (q, s) for q in (False, True) for s in (5, 6, 7)]
    assert all(run.train.seed == v["train.seed"] for v, run in points)
    assert len({run_name(r) for _, r in points}) == len(points)
    one = expand_grid(sweep_cfg(tmp_path, corpus_dir, cache_dir))  # one seed: not swept
    assert all("train.seed" not in v for v, _ in one)
    from proxies.sweep import plan_groups
    for g in plan_groups(points, vmap=True, group_size=8):  # members share each batch
        assert len({v["train.seed"] for v, _ in g}) == 1
    with pytest.raises(ConfigError, match="sweep.seeds=0 must be an integer >= 1"):
        expand_grid(sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.seeds=0"))


def test_sweep_dir_is_a_function_of_the_grid(tmp_path, corpus_dir, cache_dir):
    a = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    b = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    c = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-2]")
    d = sweep_cfg(tmp_path, corpus_dir, cache_dir, "train.steps=7")
    da, db = sweep_dir(a, expand_grid(a)), sweep_dir(b, expand_grid(b))
    assert da == db and da.name.startswith("t-")
    assert sweep_dir(c, expand_grid(c)) != da
    assert sweep_dir(d, expand_grid(d)) != da


@pytest.mark.parametrize("override,msg", [
    ("sweep.lrs=[]", "sweep.lrs is empty"),
    ("sweep.lrs=[1e-3,-1.0]", "must be a finite number > 0"),
    ("sweep.lrs=[0]", "must be a finite number > 0"),
])
def test_bad_lr_lists_are_config_errors(tmp_path, corpus_dir, cache_dir, override, msg):
    with pytest.raises(ConfigError, match=msg):
        expand_grid(sweep_cfg(tmp_path, corpus_dir, cache_dir, override))


@pytest.mark.parametrize("section,key", [("sweep", "bogus"), ("model", "bogus"),
                                         ("train.spike", "bogus")])
def test_keys_added_outside_the_schema_are_refused(tmp_path, corpus_dir, cache_dir, section, key):
    """What a Hydra `+sweep.bogus=1` override leaves: a key the schema does not have."""
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    node = OmegaConf.select(cfg, section)
    OmegaConf.set_struct(node, False)
    node[key] = 1
    with pytest.raises(ConfigError, match=f"unknown config key '{section}.{key}'"):
        expand_grid(cfg)


def test_unknown_axis_key_is_a_config_error(tmp_path, corpus_dir, cache_dir):
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    cfg.sweep.axes = {"model": {"qk_layrnorm": [True]}}
    with pytest.raises(ConfigError, match="unknown sweep axis 'model.qk_layrnorm'"):
        expand_grid(cfg)


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, corpus_dir,
                                                                 cache_dir, workers):
    """In this process, and with two workers: a rerun with one run left still hands it to a
    worker, so it resumes exactly as it started (single-threaded XLA)."""
    if workers > len(available_cores()):
        pytest.skip("needs two cores")
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, f"sweep.workers={workers}")
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}}
    out, df = run_sweep(cfg)
    assert len(df) == 4 and set(df["status"]) <= {"done", "diverged"}
    table = pd.read_csv(out / "results.csv")
    for col in ("optim.lr", "model.qk_layernorm", "n_params", "n_params_nonembed",
                "final_eval_ce", "final_train_ce", "loss_at_init", "diverged",
                "max_attn_logit", "max_abs_log_z", "grad_rms_median", "wall_s"):
        assert col in table.columns, col
    first = {r: (out / r / "summary.json").read_text() for r in table["run_dir"]}

    # Interrupt one run (summary gone, last checkpoint at step 3), finish the sweep again.
    victim = out / table["run_dir"][2]
    full_metrics = read_metrics(victim / "metrics.jsonl")
    (victim / "summary.json").unlink()
    shutil.rmtree(victim / "checkpoints" / "6")
    out2, df2 = run_sweep(cfg)
    assert out2 == out
    for r, text in first.items():
        if out / r != victim:
            assert (out / r / "summary.json").read_text() == text  # skipped, untouched
    resumed = read_metrics(victim / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in x.items() if not k.startswith("perf/")}  # noqa
                          for x in rows]
    assert strip(resumed) == strip(full_metrics)
    assert (df2["status"] != "pending").all()


def test_sweep_command_end_to_end(tmp_path, corpus_dir, cache_dir):
    # sweep_cfg's model and steps: the programs the in-process sweeps compiled are on disk.
    args = [f"sweep.root={tmp_path / 'sw'}", "sweep.lrs=[1e-3,1e-2]",
            "sweep.sizes=[{d_model:32,n_layers:1,n_heads:2}]", "train.steps=6",
            "train.batch_size=4", "train.seq_len=16", "train.log_every=3", "train.eval_every=6",
            "train.eval_batches=1", "data.source=text", f"data.path={corpus_dir}",
            f"data.cache_dir={cache_dir}", "wandb.mode=disabled"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    bad = subprocess.Popen([sys.executable, "-m", "proxies.sweep", "+exp=lr_sens",
                            "sweep.lrs=[]", *args[2:]], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)  # meanwhile, on another core
    res = subprocess.run([sys.executable, "-m", "proxies.sweep", "+exp=lr_sens", *args],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "lr_sensitivity" in res.stdout and "best_lr" in res.stdout
    (d,) = (tmp_path / "sw").iterdir()
    assert d.name.startswith("lr_sens-")
    assert (d / "analysis" / "lr_vs_loss.png").stat().st_size > 10_000
    assert "## LR sensitivity per series" in (d / "analysis" / "report.md").read_text()
    assert len(pd.read_csv(d / "results.csv")) == 4  # 2 LRs x qk-layernorm off/on

    _, bad_err = bad.communicate(timeout=300)
    assert bad.returncode == 2
    assert bad_err.strip().splitlines() == [
        "error: sweep.lrs is empty; give at least one LR, e.g. sweep.lrs=[1e-3,1e-2]"]


def test_lr_sensitivity_counts_diverged_runs_as_loss_at_init():
    lrs = [1e-4, 3e-4, 1e-3, 1e-2, 1e-1, 1.0]
    losses = [9.0, 3.0, 2.0, 2.5, np.nan, 1.5]  # 1e-4 and 1.0 lie outside [3e-4, 3e-1]
    # inside: 3.0, 2.0, 2.5, nan->5.0 ; best 2.0 ; excess 1.0, 0, 0.5, 3.0
    assert lr_sensitivity(lrs, losses, 5.0) == pytest.approx((1.0 + 0 + 0.5 + 3.0) / 4)
    assert lr_sensitivity(lrs, [7.0] * 6, 5.0) == 0.0  # all above ℓ0: all count as ℓ0


def test_hydra_multirun_with_joblib_launcher_writes_the_sweep_layout(tmp_path, corpus_dir,
                                                                       cache_dir):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(
        [sys.executable, "-m", "proxies.train", "-m", "hydra/launcher=local",
         "optim.lr=1e-3,1e-2", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
         "train.steps=6", "train.batch_size=4", "train.seq_len=16", "train.log_every=3",
         "train.eval_batches=1", "train.quiet=true", "wandb.mode=disabled", "data.source=text",
         f"data.path={corpus_dir}", f"data.cache_dir={cache_dir}"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(table["optim.lr"]) == [1e-3, 1e-2]
    assert set(table["status"]) == {"done"}
    for run_dir in table["run_dir"]:
        assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {
            p.name for p in (sweep / run_dir).iterdir()}


def test_vmapped_group_matches_the_same_runs_one_by_one(make_cfg, float64):
    """Every logged value of each member equals its run trained alone (float64: conftest.py's
    F64_RTOL; a member's LR off by 1e-6 fails it)."""
    from proxies.train import train_group
    lrs = ["1e-3", "1e-2", "3e-2"]
    group = [make_cfg(float64, f"optim.lr={lr}", "optim.weight_decay=0.05", out=f"g{lr}")
             for lr in lrs]
    solo = [make_cfg(float64, f"optim.lr={lr}", "optim.weight_decay=0.05", out=f"s{lr}")
            for lr in lrs]
    g_summaries = train_group(group, vmap=True)
    assert all(s["group_size"] == 3 for s in g_summaries)
    for g, s in zip(group, solo):
        train(s)
        assert_same_records(g, s)


def test_diverging_member_leaves_its_group_mates_unchanged(make_cfg, float64):
    """One member of three diverges; each member, the diverged one up to its end included, logs
    what it logs trained alone (float64, F64_RTOL): freezing touches that member only."""
    from proxies.train import train_group
    settings = {"calm": ["optim.lr=1e-2"],
                "wild": ["optim.lr=30.0", "optim.grad_clip=0", "optim.warmup_steps=0",
                         "optim.weight_decay=0"],
                "other": ["optim.lr=1e-3"]}
    group = [make_cfg(float64, *o, out=f"g-{name}") for name, o in settings.items()]
    s_calm, s_wild, s_other = train_group(group, vmap=True)
    assert s_wild["diverged"] is True and s_wild["diverged_at_step"] < 12
    assert s_calm["diverged"] is False and s_calm["steps_done"] == 12
    assert s_other["diverged"] is False and s_other["steps_done"] == 12
    for g, (name, o) in zip(group, settings.items()):
        alone = make_cfg(float64, *o, out=f"alone-{name}")
        assert train(alone)["diverged"] is (name == "wild")
        assert_same_records(g, alone)
    text = (Path(group[1].out_dir) / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_sweep_plans_vmapped_groups_by_series(tmp_path, corpus_dir, cache_dir):
    from proxies.sweep import plan_groups
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-4,1e-3,1e-2]")
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}}
    points = expand_grid(cfg)
    groups = plan_groups(points, vmap=True, group_size=2)
    assert [len(g) for g in groups] == [2, 1, 2, 1]  # per series: LRs in chunks of 2
    for g in groups:
        assert len({v["model.qk_layernorm"] for v, _ in g}) == 1
    assert [len(g) for g in plan_groups(points, vmap=False, group_size=8)] == [1] * 6


def _count_trained(monkeypatch):
    """Record every run config the sweep hands to the trainer."""
    import proxies.coordination as coordination
    trained = []
    real = coordination.train_group

    def counting(cfgs, *a, **k):
        trained.extend(cfgs)
        return real(cfgs, *a, **k)
    monkeypatch.setattr(coordination, "train_group", counting)
    return trained


def test_extending_a_finished_sweep_by_one_lr_trains_one_new_run_per_series(
        tmp_path, corpus_dir, cache_dir, monkeypatch):
    trained = _count_trained(monkeypatch)
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}}
    out, _ = run_sweep(cfg)
    assert len(trained) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/summary.json")}
    trained.clear()
    cfg.sweep.lrs = [1e-3, 1e-2, 3e-2]
    out2, df = run_sweep(cfg)
    assert sorted((bool(c.model.qk_layernorm), c.optim.lr) for c in trained) == [
        (False, 3e-2), (True, 3e-2)]  # exactly one new run per series
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the old runs untouched
    assert out2 != out and len(df) == 6 and set(df["status"]) <= {"done", "diverged"}
    # Both sweep directories are views over the same run directories.
    old = pd.read_csv(out / "results.csv")
    assert {(out / r).resolve() for r in old["run_dir"]} <= {(out2 / r).resolve()
                                                             for r in df["run_dir"]}


def test_sweep_variants_set_several_keys_at_once(tmp_path, corpus_dir, cache_dir):
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3]")
    cfg.sweep.variants = [{"optim": {"independent_wd": False, "weight_decay": 0.1}},
                          {"optim": {"independent_wd": True, "weight_decay": 1e-4}}]
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}}
    points = expand_grid(cfg)
    got = sorted((v["optim.independent_wd"], v["optim.weight_decay"], v["model.qk_layernorm"])
                 for v, _ in points)
    assert got == [(False, 0.1, False), (False, 0.1, True), (True, 1e-4, False),
                   (True, 1e-4, True)]
    for values, run in points:
        assert run.optim.weight_decay == values["optim.weight_decay"]


def test_dry_run_counts_reused_runs_and_trains_nothing(tmp_path, corpus_dir, cache_dir, capsys):
    from proxies.cost import estimate
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3]")
    run_sweep(cfg)
    cfg.sweep.lrs = [1e-3, 1e-2]
    cfg.sweep.dry_run = True
    out, df = run_sweep(cfg)
    assert df.empty and not out.exists()
    printed = capsys.readouterr().out
    assert "2 runs (1 already done, 1 to train)" in printed and "2-core CPU" in printed
    est = estimate(expand_grid(cfg))
    assert est["todo"] == 1 and est["reused"] == 1 and est["flops"] > 0


def test_axes_on_the_command_line_replace_or_drop_the_experiments_axes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    base = [sys.executable, "-m", "proxies.sweep", "+exp=lr_sens", "--dry-run",
            f"sweep.root={tmp_path}", f"sweep.run_root={tmp_path}", "sweep.lrs=[1e-3]"]
    res = subprocess.run(base + ["sweep.axes={model:{parametrization:[sp,mup]}}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "parametrization" in res.stdout and "qk_layernorm" not in res.stdout
    assert "4 runs (0 already done, 4 to train)" in res.stdout  # 2 sizes x sp/mup
    res = subprocess.run(base + ["~sweep.axes.model.qk_layernorm"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "qk_layernorm" not in res.stdout and "2 runs (0 already done" in res.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("overrides", [
    (), ("model.mlp=swiglu",), ("model.tie_embeddings=true", "model.pos_emb=rope"),
    ("model.use_bias=false", "model.n_layers=3"),
])
def test_cost_estimate_counts_the_params_the_model_has(make_cfg, overrides):
    import jax
    from proxies.model import Transformer, count_params
    from proxies.step import init_state
    from proxies.cost import run_params
    cfg = make_cfg(*overrides)
    model = Transformer(cfg.model, 256, cfg.train.seq_len)
    real_all, real_nonembed = count_params(init_state(model, cfg, jax.random.key(0)).params)
    est_all, est_nonembed = run_params(cfg, 256)
    assert est_all == pytest.approx(real_all, rel=0.05)  # norms and biases left out
    assert est_nonembed == pytest.approx(real_nonembed, rel=0.1)


def test_a_finished_runs_hand_edited_config_is_reported_not_reused(tmp_path, corpus_dir,
                                                                    cache_dir):
    import yaml
    from analysis.report import analyze
    from proxies.rundir import RunDirError
    from proxies.sweep import run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    out, table = run_sweep(cfg.copy())
    run = out / table["run_dir"][0]
    summary = (run / "summary.json").read_text()
    edited = yaml.safe_load((run / "config.yaml").read_text())
    edited["optim"]["lr"] = 0.5
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(RunDirError, match=r"holds a run with a different config \(optim.lr: "
                                          r"0.5 -> 0.001; its config.yaml edited"):
        run_sweep(cfg.copy())
    assert (run / "summary.json").read_text() == summary  # nothing touched
    rep = analyze(out)
    assert any("no longer matches the config they trained with" in n for n in rep.notes)
    assert rep.series["runs"].tolist() == ["1/2"]  # the edited run is left out, not reused


def test_a_sweep_rerun_rewrites_damaged_runs_json_and_results_csv(tmp_path, corpus_dir,
                                                                   cache_dir, capsys):
    import json
    from proxies.sweep import run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    out, first = run_sweep(cfg.copy())
    manifest = (out / "runs.json").read_text()
    (out / "runs.json").write_text('[{"run_dir": "d32')
    (out / "results.csv").write_text("\x00\x00garbage")
    capsys.readouterr()
    _, again = run_sweep(cfg.copy())
    assert "(2 already done" in capsys.readouterr().out  # nothing retrained
    assert (out / "runs.json").read_text() == manifest and json.loads(manifest)
    table = pd.read_csv(out / "results.csv")
    assert table["run_dir"].tolist() == again["run_dir"].tolist()
    assert set(table["status"]) == {"done"}
    assert again.drop(columns=["wall_s", "tokens_per_s"]).equals(
        first.drop(columns=["wall_s", "tokens_per_s"]))
