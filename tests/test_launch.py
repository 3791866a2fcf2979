"""Sweeps dispatched as launcher jobs (proxies/launch.py): joblib, submitit's local executor and
Ray give the in-process sweep's table; a failed job is reported and a rerun trains only what is
missing; the table is right whatever order jobs finish in.

One tiny grid (two LRs of tests/test_sweep.py's d32 L1 model, 6 steps: two jobs, one compiled
step) serves every test; each test trains it into its own run root, and the in-process sweep's
table is the reference. A job is a fresh process that compiles once (JAX's disk cache, filled
by the reference, spares most of it).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from proxies.config import Config, ConfigError, SweepRoot, config_hash
from proxies.launch import (SINGLE_THREAD_XLA, JobsFailed, Launcher, LauncherName,
                            check_installed, core_shares, run_group_job, write_spec)
from proxies.grid import expand_grid, sweep_dir, write_manifest
from proxies.sweep import main, n_workers, plan_groups, run_sweep
from proxies.train import CONFIG_DIR

try:  # now, not in a test: importing submitit reconfigures logging, closing pytest's handlers
    import submitit
except ImportError:
    submitit = None

GRID = ["sweep.name=t", "sweep.lrs=[1e-3,1e-2]", "sweep.vmap=off",
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "train.steps=6",
        "train.batch_size=4", "train.seq_len=16", "train.log_every=3", "train.eval_every=6",
        "train.eval_batches=1", "train.checkpoint_every=3", "wandb.mode=disabled",
        "data.source=text"]
COLUMNS = ["run", "optim.lr", "status", "steps_done", "final_eval_ce", "final_train_ce",
           "loss_at_init", "max_attn_logit"]


def grid_args(root: Path, corpus: Path, cache: Path) -> list:
    return GRID + [f"sweep.root={root / 'sweeps'}", f"sweep.run_root={root / 'runs'}",
                   "sweep.analysis=false", f"data.path={corpus}", f"data.cache_dir={cache}"]


def grid_cfg(root: Path, corpus: Path, cache: Path, *overrides: str):
    args = [a.replace("=off", "='off'") for a in grid_args(root, corpus, cache)]  # YAML: false
    return OmegaConf.merge(OmegaConf.structured(SweepRoot),
                           OmegaConf.from_dotlist(args + list(overrides)))


def composed_launcher(name: str, *overrides: str) -> Launcher:
    """The launcher `python -m proxies.sweep hydra/launcher=NAME` would get, from the real yaml."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("sweep", overrides=[f"hydra/launcher={name}", *overrides],
                      return_hydra_config=True)
    return Launcher(LauncherName(name), OmegaConf.to_container(cfg.hydra, resolve=False))


def outcomes(sweep: Path) -> pd.DataFrame:
    """The table's runs and results, by run directory name (run roots differ between tests)."""
    df = pd.read_csv(sweep / "results.csv")
    df["run"] = df["run_dir"].map(lambda p: Path(p).name)
    return df[COLUMNS].sort_values("run").reset_index(drop=True)


def summaries(runs: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory, corpus_dir, cache_dir) -> Path:
    """The in-process sweep (Hydra's basic launcher): today's loop, whose table jobs must match."""
    root = tmp_path_factory.mktemp("in_process")
    _, df = run_sweep(grid_cfg(root, corpus_dir, cache_dir))
    assert len(df) == 2 and set(df["status"]) == {"done"}
    return root


@pytest.fixture(scope="module")
def reference(reference_root) -> pd.DataFrame:
    (out,) = (reference_root / "sweeps").iterdir()
    return outcomes(out)


def test_joblib_from_the_command_line_matches_the_in_process_sweep(
        tmp_path, corpus_dir, cache_dir, reference, capsys):
    argv = sys.argv
    sys.argv = ["proxies.sweep", *grid_args(tmp_path, corpus_dir, cache_dir),
                "sweep.analysis=true", "hydra/launcher=local", "hydra.launcher.n_jobs=2"]
    try:
        main()
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    assert "dispatching 2 jobs (2 runs) with hydra/launcher=local (joblib, n_jobs=2" in printed
    (out,) = (tmp_path / "sweeps").iterdir()
    pd.testing.assert_frame_equal(outcomes(out), reference, check_exact=True)
    assert (out / "analysis" / "report.md").exists()  # analysed once every job was done
    assert len(list((out / "jobs").glob("*.json"))) == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_local_workers_give_one_single_threaded_process_results_exactly(
        tmp_path, corpus_dir, cache_dir, reference, capsys):
    """sweep.workers=2: two processes, one core and single-threaded XLA each. The table equals
    the same grid's in one single-threaded process exactly (whatever the worker count, each run
    computes the same), and the in-process (multi-threaded) sweep's to float32 rounding."""
    out, _ = run_sweep(grid_cfg(tmp_path / "w2", corpus_dir, cache_dir, "sweep.workers=2"))
    assert "with sweep.workers=2 (2 local workers on cores 0, 1)" in capsys.readouterr().out
    one = tmp_path / "w1"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}"}
    subprocess.run([sys.executable, "-m", "proxies.sweep", *grid_args(one, corpus_dir, cache_dir),
                    "sweep.workers=1"], env=env, check=True, capture_output=True, timeout=600)
    (single,) = (one / "sweeps").iterdir()
    pd.testing.assert_frame_equal(outcomes(out), outcomes(single), check_exact=True)
    pd.testing.assert_frame_equal(outcomes(out), reference, rtol=1e-5)
    assert run_sweep(grid_cfg(tmp_path / "w2", corpus_dir, cache_dir, "sweep.workers=2"))[1][
        "status"].eq("done").all()  # a rerun finds every run done


def test_auto_workers_are_one_per_core_on_cpu_with_two_groups_per_worker(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert [n_workers(0, g) for g in (1, 7, 8, 100)] == [1, 1, 4, 4]
    assert [n_workers(w, 3) for w in (1, 2, 6)] == [1, 2, 3]  # never more than the groups
    assert n_workers(6, 100) == 4  # nor than the cores
    assert core_shares(2) == [[0, 2], [1, 3]]
    monkeypatch.setattr("jax.default_backend", lambda: "gpu")
    assert n_workers(0, 100) == 1
    with pytest.raises(ConfigError, match="sweep.workers=2 runs CPU worker processes"):
        n_workers(2, 100)


def test_submitit_local_executor_matches_the_in_process_sweep(
        tmp_path, corpus_dir, cache_dir, reference_root, reference, capsys):
    if submitit is None:
        pytest.skip("submitit is not installed (pip install -e '.[slurm]')")
    cfg = grid_cfg(tmp_path, corpus_dir, cache_dir)
    done = Path(expand_grid(cfg)[0][1].out_dir)  # finished elsewhere: skipped, not dispatched
    shutil.copytree(reference_root / "runs" / done.name, done)
    launcher = composed_launcher("slurm_local", "hydra.launcher.timeout_min=10")
    out, _ = run_sweep(cfg, launcher=launcher)
    assert "dispatching 1 jobs (1 runs) with hydra/launcher=slurm_local" in capsys.readouterr().out
    pd.testing.assert_frame_equal(outcomes(out), reference, check_exact=True)
    assert len(list((out / ".submitit").glob("*/*_log.err"))) == 1  # logs in the sweep dir


def test_failed_job_is_reported_and_the_rerun_trains_only_what_is_missing(
        tmp_path, corpus_dir, cache_dir, reference, capsys):
    cfg = grid_cfg(tmp_path, corpus_dir, cache_dir)
    launcher = composed_launcher("local", "hydra.launcher.n_jobs=2")
    victim = Path(expand_grid(cfg)[0][1].out_dir)
    victim.parent.mkdir(parents=True)
    victim.write_text("in the way")  # the job cannot train there
    with pytest.raises(JobsFailed, match="1 job"):
        run_sweep(cfg, launcher=launcher)
    victim.unlink()
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("job ")]
    assert line.startswith(f"job {victim.name} failed (runs {victim.name}): ")
    assert "RunDirError: out_dir" in line and "is a file, not a directory" in line
    assert line.endswith("rerun the same command to retry them")
    out = sweep_dir(cfg, expand_grid(cfg))
    table = outcomes(out)
    assert dict(zip(table["run"], table["status"])) == {  # what finished, and what did not
        r: "pending" if r == victim.name else "done" for r in table["run"]}

    before = summaries(tmp_path / "runs")
    out2, _ = run_sweep(cfg, launcher=launcher)
    assert "dispatching 1 jobs (1 runs)" in capsys.readouterr().out
    after = summaries(tmp_path / "runs")
    assert {k: after[k] for k in before} == before  # finished runs untouched
    assert set(after) - set(before) == {victim.name}
    pd.testing.assert_frame_equal(outcomes(out2), reference, check_exact=True)


def test_table_is_right_whatever_order_jobs_finish_in(tmp_path, corpus_dir, cache_dir,
                                                      reference):
    cfg = grid_cfg(tmp_path, corpus_dir, cache_dir)
    points = expand_grid(cfg)
    out = sweep_dir(cfg, points)
    out.mkdir(parents=True)
    write_manifest(points, out)
    specs = [write_spec(out, g) for g in plan_groups(points, vmap=False, group_size=1)]
    finished = set()
    for spec in reversed(specs):  # the last-submitted job ends first
        finished |= {Path(d).name for d in run_group_job(str(spec))}
        table = outcomes(out)
        assert set(table.loc[table["status"] == "done", "run"]) == finished
        assert set(table.loc[table["status"] == "pending", "run"]) == set(table["run"]) - finished
    pd.testing.assert_frame_equal(outcomes(out), reference, check_exact=True)


def test_job_spec_rebuilds_the_run_configs_exactly(tmp_path, corpus_dir, cache_dir):
    cfg = grid_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,1e-2,3e-2]")
    cfg.sweep.axes = {"model": {"qk_layernorm": [False, True]}, "optim": {"z_loss": [0, 1e-4]}}
    points = expand_grid(cfg)
    out = tmp_path / "sweep"
    out.mkdir()
    for group in plan_groups(points, vmap=True, group_size=2):
        spec = json.loads(write_spec(out, group).read_text())
        rebuilt = [OmegaConf.merge(OmegaConf.structured(Config), r) for r in spec["runs"]]
        assert [config_hash(r) for r in rebuilt] == [config_hash(r) for _, r in group]
        assert [r.out_dir for r in rebuilt] == [r.out_dir for _, r in group]
        assert spec["swept"] == [v for v, _ in group] and spec["vmap"] == (len(group) > 1)
    assert len(list((out / "jobs").glob("*+1.json"))) == 6  # 12 runs differing only in scalars


def test_failed_jobs_end_every_entry_point_in_one_line_exit_1(capsys):
    """The paper scripts (run_cli) as the sweep CLI (one_line_errors): no traceback after the
    jobs' own lines."""
    from proxies.cli import one_line_errors, run_cli

    why = "2 job(s) failed; table t/results.csv holds what finished, no analysis"

    def sweep():
        raise JobsFailed(why)

    def in_hydra_task():
        with one_line_errors():
            sweep()

    for entry in (sweep, in_hydra_task):
        with pytest.raises(SystemExit) as e:
            run_cli(entry)
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err == f"error: {why}\n"


def test_unknown_launcher_and_missing_packages_are_one_line_errors(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr(sys, "argv", ["proxies.sweep", f"sweep.root={tmp_path}",
                                      "hydra/launcher=joblib"])  # the plugin's, not ours
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hydra/launcher='joblib' is not one of" in err
    assert not any(tmp_path.iterdir())

    from proxies.launch import RayJobs, SubmititJobs
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        RayJobs({})
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        check_installed(LauncherName.ray)  # what a dry run checks
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[slurm\]'"):
        check_installed(LauncherName.slurm_local)
    check_installed(LauncherName.basic)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[slurm\]'"):
        SubmititJobs({"submitit_folder": str(tmp_path)}, on_slurm=True)
    monkeypatch.undo()
    if submitit is not None and shutil.which("sbatch") is None:  # off a cluster: one line
        with pytest.raises(ConfigError, match="submits with sbatch, which this machine lacks"):
            SubmititJobs({"submitit_folder": str(tmp_path)}, on_slurm=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its processes
def test_ray_on_a_local_ray_matches_the_in_process_sweep(tmp_path, corpus_dir, cache_dir,
                                                         reference):
    pytest.importorskip("ray")
    launcher = composed_launcher("ray", "hydra.launcher.ray.remote.num_cpus=1",
                                 "+hydra.launcher.ray.init.include_dashboard=false",
                                 "+hydra.launcher.ray.init.num_cpus=2")
    out, _ = run_sweep(grid_cfg(tmp_path, corpus_dir, cache_dir), launcher=launcher)
    pd.testing.assert_frame_equal(outcomes(out), reference, check_exact=True)
