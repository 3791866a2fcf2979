"""Faults a long run meets: signals, damaged files, a second process, bad out_dirs.

Each test interrupts or damages a tiny run, then checks that rerunning the same config gives
exactly the records of an uninterrupted run (every row present, none duplicated).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from proxies import rundir as R
from proxies.results import run_row
from proxies.rundir import RunDirError, read_metrics, take_lock
from proxies.stopping import EXIT_INTERRUPTED, EXIT_PREEMPTED, Stopped
from proxies.train import Batches, train
from tests.conftest import tiny_cfg

REPO = Path(__file__).resolve().parent.parent


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def records(cfg):
    return comparable(read_metrics(Path(cfg.out_dir) / R.METRICS))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir, cache_dir):
    """The uninterrupted run every interrupted one must reproduce."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("ref") / "run", corpus_dir, cache_dir)
    summary = train(cfg)
    return records(cfg), summary


def signal_at(monkeypatch, update: int, signame: str, times: int = 1, during_eval=False):
    """Send ourselves a real signal when the loop fetches the batch of `update` (or, with
    during_eval, when it evaluates after that update)."""
    sig = getattr(signal, signame)
    if during_eval:
        from proxies.runner import Runner
        orig = Runner.evaluate
        seen = {"update": 0}

        def evaluate(self, batches):
            if seen["update"] == update:
                for _ in range(times):
                    os.kill(os.getpid(), sig)
            return orig(self, batches)
        orig_call = Batches.__call__

        def call(self, u):
            seen["update"] = u
            return orig_call(self, u)
        monkeypatch.setattr(Batches, "__call__", call)
        monkeypatch.setattr(Runner, "evaluate", evaluate)
        return
    orig_call = Batches.__call__

    def call(self, u):
        if u == update:
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return orig_call(self, u)
    monkeypatch.setattr(Batches, "__call__", call)


@pytest.mark.parametrize("signame,code", [("SIGTERM", EXIT_PREEMPTED),
                                          ("SIGUSR1", EXIT_PREEMPTED),
                                          ("SIGINT", EXIT_INTERRUPTED)])
def test_a_signal_mid_run_saves_the_step_and_the_rerun_is_exact(
        signame, code, make_cfg, reference, monkeypatch):
    cfg = make_cfg()
    signal_at(monkeypatch, 5, signame)
    with pytest.raises(Stopped) as e:
        train(cfg)
    assert e.value.exit_code == code and e.value.step == 5
    out = Path(cfg.out_dir)
    assert (out / R.CHECKPOINTS / "5").exists() and not (out / R.SUMMARY).exists()
    monkeypatch.undo()
    summary = train(cfg)
    assert records(cfg) == reference[0]
    assert summary["final_eval_ce"] == reference[1]["final_eval_ce"]


@pytest.mark.parametrize("update", [6, 12])  # an eval step, and the final one
def test_ctrl_c_during_eval_keeps_the_row_of_the_computed_step(
        update, make_cfg, reference, monkeypatch):
    cfg = make_cfg()
    signal_at(monkeypatch, update, "SIGINT", during_eval=True)
    if update == 12:  # the last step completes the run: nothing left to stop
        summary = train(cfg)
    else:
        with pytest.raises(Stopped):
            train(cfg)
        rows = read_metrics(Path(cfg.out_dir) / R.METRICS)
        assert rows[-1]["step"] == update and "eval/ce" in rows[-1]
        monkeypatch.undo()
        summary = train(cfg)
    assert records(cfg) == reference[0]
    assert summary["final_eval_ce"] == reference[0][-1]["eval/ce"]


def test_a_second_ctrl_c_stops_at_once_and_nothing_is_lost(make_cfg, reference, monkeypatch):
    cfg = make_cfg()
    signal_at(monkeypatch, 7, "SIGINT", times=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    train(cfg)
    assert records(cfg) == reference[0]


def test_sigterm_during_start_up_stops_before_training(make_cfg, monkeypatch):
    import proxies.train as T
    orig = T.restore_member

    def restore(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return orig(*a, **k)
    monkeypatch.setattr(T, "restore_member", restore)
    cfg = make_cfg()
    with pytest.raises(Stopped):
        train(cfg)
    assert not (Path(cfg.out_dir) / R.LOCK).exists() or take_lock(
        Path(cfg.out_dir) / R.LOCK, "held", "fix")  # the lock was released


def test_a_signal_whose_exception_was_dropped_still_stops_the_run(make_cfg, reference,
                                                                  monkeypatch):
    """Python prints and drops an exception raised in a callback it calls (JAX's garbage-collection
    hook): the handler's flag must still stop the run at its first step, saved and resumable."""
    import proxies.train as T
    orig = T.restore_member

    def restore(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Stopped:
            pass  # dropped, as in a gc callback
        return orig(*a, **k)
    monkeypatch.setattr(T, "restore_member", restore)
    cfg = make_cfg()
    with pytest.raises(Stopped):
        train(cfg)
    monkeypatch.undo()
    train(cfg)
    assert records(cfg) == reference[0]


def test_a_dropped_signal_still_ends_the_coordinators_wait():
    from concurrent.futures import Future

    from proxies.launch import CoreWorkers
    from proxies.stopping import stop_requests

    engine = CoreWorkers.__new__(CoreWorkers)
    job: Future = Future()
    engine.futures = {job: Path("job.json")}
    threading.Timer(5, job.set_result, [("job.json", None)]).start()  # a job done in 5 s
    with stop_requests() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Stopped:
            pass  # dropped
        with pytest.raises(Stopped):
            next(engine.wait(stop))


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "proxies.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli_args(tmp_path, corpus_dir, cache_dir, out):
    cfg = tiny_cfg(out, corpus_dir, cache_dir, "train.steps=400", "train.log_every=1",
                   "train.eval_every=50", "train.checkpoint_every=200")
    from omegaconf import OmegaConf
    flat = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    keys = ["model.d_model", "model.n_layers", "model.n_heads", "train.steps", "train.batch_size",
            "train.seq_len", "train.log_every", "train.eval_every", "train.eval_batches",
            "train.checkpoint_every", "train.quiet", "optim.warmup_steps", "wandb.mode",
            "data.source", "data.path", "data.cache_dir", "out_dir"]
    vals = []
    for k in keys:
        sec, key = k.split(".") if "." in k else (None, k)
        v = flat[sec][key] if sec else flat[key]
        vals.append(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    return vals


@pytest.mark.parametrize("signame,code", [  # SIGINT's code path is SIGTERM's (tested in-process)
    ("SIGTERM", EXIT_PREEMPTED), pytest.param("SIGINT", EXIT_INTERRUPTED, marks=pytest.mark.slow)])
def test_the_command_exits_with_its_code_and_one_line(signame, code, tmp_path, corpus_dir,
                                                      cache_dir):
    import time
    out = tmp_path / "run"
    args = cli_args(tmp_path, corpus_dir, cache_dir, out)
    proc = run_cli(*args, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(out / R.METRICS)) < 5:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert not (out / R.SUMMARY).exists()  # stopped unfinished, as signalled
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and signame in lines[0] and "rerun" in lines[0], err
    rows = read_metrics(out / R.METRICS)
    last = rows[-1]["step"]
    assert (out / R.CHECKPOINTS / str(last)).exists()  # the last row's step is checkpointed
    assert [r["step"] for r in rows] == list(range(last + 1))


# ---------------------------------------------------------------------------------- damage

def damage(ckpt: Path, kind: str) -> None:
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and "/d/" in str(p))
    if kind == "truncated":
        for f in files:
            with open(f, "r+b") as fh:
                fh.truncate(8)
    elif kind == "missing_file":
        for f in files[:2]:
            f.unlink()
    elif kind == "no_metadata":
        for f in ckpt.rglob("_METADATA"):
            f.unlink()
    elif kind == "empty":
        shutil.rmtree(ckpt)
        ckpt.mkdir()


@pytest.mark.parametrize("kind", ["truncated", "missing_file", "no_metadata", "empty"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(
        kind, make_cfg, reference, capsys):
    cfg = make_cfg("train.quiet=false")
    train(cfg, stop_after=8)
    out = Path(cfg.out_dir)
    damage(out / R.CHECKPOINTS / "8", kind)
    train(cfg)
    said = capsys.readouterr().out
    assert f"checkpoint {out.absolute() / R.CHECKPOINTS / '8'} is unreadable" in said
    assert "resuming" in said and "from step 4" in said
    assert (out / R.DAMAGED / "8").exists()  # kept, not deleted
    assert records(cfg) == reference[0]


def test_no_readable_checkpoint_is_one_line_naming_the_fix(make_cfg):
    cfg = make_cfg()
    train(cfg, stop_after=8)
    out = Path(cfg.out_dir)
    for step in ("4", "8"):
        damage(out / R.CHECKPOINTS / step, "truncated")
    with pytest.raises(RunDirError, match="no readable checkpoint .* delete"):
        train(cfg)


def test_a_garbled_metrics_line_is_moved_aside_and_later_rows_kept(make_cfg, reference):
    cfg = make_cfg()
    train(cfg, stop_after=9)
    path = Path(cfg.out_dir) / R.METRICS
    lines = path.read_text().splitlines()
    lines.insert(2, '{"step": 5, "train/lo')  # a torn write in the middle
    path.write_text("\n".join(lines) + "\n")
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 4, 6, 8]  # rows after it still read
    train(cfg)
    assert records(cfg) == reference[0]
    assert '"train/lo' in (Path(cfg.out_dir) / R.BAD_METRICS).read_text()


def test_a_missing_metrics_file_is_rebuilt_from_step_0(make_cfg, reference, capsys):
    cfg = make_cfg("train.quiet=false")
    train(cfg, stop_after=8)
    (Path(cfg.out_dir) / R.METRICS).unlink()
    train(cfg)
    assert "no step-0 row" in capsys.readouterr().out
    rows = records(cfg)
    assert rows[0] == reference[0][0]  # the init row, recomputed exactly
    assert rows[1:] == [r for r in reference[0] if r["step"] > 8]


def test_a_truncated_summary_is_rebuilt_and_the_table_shows_the_run_partial(make_cfg, reference):
    cfg = make_cfg()
    first = train(cfg)
    out = Path(cfg.out_dir)
    (out / R.SUMMARY).write_text((out / R.SUMMARY).read_text()[:40])
    assert run_row(out)["status"] == "partial"
    again = train(cfg)
    assert again["final_eval_ce"] == first["final_eval_ce"] and again["steps_done"] == 12
    assert json.loads((out / R.SUMMARY).read_text())["final_eval_ce"] == first["final_eval_ce"]
    assert records(cfg) == reference[0]


# ---------------------------------------------------------------------------------- bad dirs

def test_a_second_process_on_the_same_out_dir_is_refused(make_cfg):
    cfg = make_cfg()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True)
    held = take_lock(out / R.LOCK, "held", "fix")  # as a running process holds it
    try:
        with pytest.raises(RunDirError, match="another process is training in .*pid"):
            train(cfg)
    finally:
        held.close()
    assert train(cfg)["steps_done"] == 12  # free again once the holder is gone


def test_an_out_dir_that_is_a_file_or_unwritable_is_one_line(make_cfg, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        train(make_cfg(f"out_dir={f}"))
    with pytest.raises(RunDirError, match="cannot write to out_dir"):
        train(make_cfg(f"out_dir={f / 'below'}"))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="cannot write to out_dir"):
            train(make_cfg(f"out_dir={ro / 'run'}"))


# Rows seen before the kill: past a checkpoint; early (slow: benchmarks/fault_trials.py and the
# in-process tests cover the other moments).
@pytest.mark.parametrize("moment", [9, pytest.param(3, marks=pytest.mark.slow)])
def test_kill_9_then_the_rerun_is_exact(moment, tmp_path, corpus_dir, cache_dir):
    import time
    out = tmp_path / "run"
    args = cli_args(tmp_path, corpus_dir, cache_dir, out)
    args = [a.replace("train.steps=400", "train.steps=30").replace(
        "train.checkpoint_every=200", "train.checkpoint_every=4") for a in args]
    proc = run_cli(*args, cwd=tmp_path)

    def wait_for_rows(n):
        deadline = time.time() + 120
        while time.time() < deadline and len(read_metrics(out / R.METRICS)) < n:
            time.sleep(0.05)
    # The uninterrupted reference trains beside the killed run and its rerun (one Python and JAX
    # start-up each, on cores that would sit idle), once the data cache they share is written.
    wait_for_rows(1)
    ref = tmp_path / "ref"
    whole = run_cli(*[a.replace(f"out_dir={out}", f"out_dir={ref}") for a in args], cwd=tmp_path)
    wait_for_rows(moment)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.communicate(timeout=300)
    done = run_cli(*args, cwd=tmp_path)
    assert done.wait(timeout=300) == 0
    assert whole.wait(timeout=300) == 0
    assert comparable(read_metrics(out / R.METRICS)) == comparable(read_metrics(ref / R.METRICS))


# ---------------------------------------------------------------------------------- sweeps

def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path, corpus_dir, cache_dir):
    from test_sweep import sweep_cfg

    from proxies.grid import expand_grid, sweep_dir
    from proxies.sweep import SWEEP_LOCK, run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir)
    d = sweep_dir(cfg, expand_grid(cfg))
    d.mkdir(parents=True)
    held = take_lock(d / SWEEP_LOCK, "held", "fix")
    try:
        with pytest.raises(RunDirError, match="another sweep is running in"):
            run_sweep(cfg)
    finally:
        held.close()


def test_a_signal_stops_the_sweep_after_its_group_and_the_rerun_finishes_it(
        tmp_path, corpus_dir, cache_dir, monkeypatch):
    import pandas as pd
    from test_sweep import sweep_cfg

    from proxies.sweep import run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-3,1e-2]",
                    "sweep.vmap='off'")
    signal_at(monkeypatch, 4, "SIGTERM")  # every run's update 4: stops the first run there
    with pytest.raises(Stopped) as e:
        run_sweep(cfg)
    assert e.value.exit_code == EXIT_PREEMPTED
    monkeypatch.undo()
    out, df = run_sweep(cfg)
    assert list(df["status"]) == ["done"] * 3
    assert list(pd.read_csv(out / "results.csv")["status"]) == ["done"] * 3
