"""Faults a long run meets: signals, damaged files, a second process, bad out_dirs.

Each test interrupts or damages a tiny run, then checks that rerunning the same config gives
exactly the records of an uninterrupted run (every row present, none duplicated).
"""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from proxies import rundir as R
from proxies.batches import Batches
from proxies.sweep_table import run_row
from proxies.rundir import RunDirError, read_metrics, take_lock
from proxies.stopping import EXIT_INTERRUPTED, EXIT_PREEMPTED, Stopped
from proxies.train import train
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


def cfg_args(cfg):
    """The command-line arguments of a tiny_cfg run."""
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


def cli_args(tmp_path, corpus_dir, cache_dir, out):
    return cfg_args(tiny_cfg(out, corpus_dir, cache_dir, "train.steps=400", "train.log_every=1",
                             "train.eval_every=50", "train.checkpoint_every=200"))


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


# ---------------------------------------------------------------------------------- refused writes

def refuse_metrics_row(monkeypatch, at_step: int):
    """The disk fills as the row of `at_step` is written: half of it reaches the file."""
    real = R.append_line

    def append(f, row):
        if row.get("step") == at_step and f.name.endswith(R.METRICS):
            f.write(json.dumps(row)[:40])
            f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, row)
    monkeypatch.setattr(R, "append_line", append)


def test_a_refused_write_under_the_progress_bar_starts_its_own_line(make_cfg, monkeypatch,
                                                                     capsys):
    from proxies.cli import run_cli
    cfg = make_cfg("train.quiet=false")
    refuse_metrics_row(monkeypatch, 8)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: train(cfg))
    err = capsys.readouterr().err
    assert e.value.code == 74 and "error: cannot write" in err
    before = err.split("error: cannot write")[0]
    assert "step/s" in before, err  # the bar was drawn
    assert before.endswith("\n"), repr(err[-300:])


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_is_exact(make_cfg, reference,
                                                                  monkeypatch):
    cfg = make_cfg()
    refuse_metrics_row(monkeypatch, 8)
    with pytest.raises(R.StorageError) as e:
        train(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot write {cfg.out_dir}/metrics.jsonl: No "
                                              "space left on device; free space there")
    assert "rerun the same command" in msg
    assert records(cfg) == reference[0][:len(records(cfg))]  # no half row: the rows before it
    assert read_metrics(Path(cfg.out_dir) / R.METRICS)[-1]["step"] == 6
    assert (Path(cfg.out_dir) / R.CHECKPOINTS / "4").exists()
    monkeypatch.undo()
    train(cfg)
    assert records(cfg) == reference[0]
    assert not (Path(cfg.out_dir) / R.BAD_METRICS).exists()


def test_a_checkpoint_the_disk_refuses_is_one_line_naming_the_checkpoints(make_cfg, reference,
                                                                          monkeypatch):
    import orbax.checkpoint as ocp
    cfg = make_cfg()
    real = ocp.CheckpointManager.save
    shard = f"{cfg.out_dir}/checkpoints/8.orbax-checkpoint-tmp/d/0a1b"

    def save(self, step, *a, **k):  # tensorstore's words for it, as orbax raises them
        if step == 8:
            raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{shard}": Failed '
                             f'writing: "{shard}": No space left on device [os_error_code=\'28\']')
        return real(self, step, *a, **k)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(R.StorageError, match=f"^cannot write {cfg.out_dir}/checkpoints: No space"):
        train(cfg)
    monkeypatch.undo()
    train(cfg)
    assert records(cfg) == reference[0]


def test_a_storage_errors_text_is_recognised_in_any_link_of_the_chain():
    assert R.storage_error(ValueError("bad value")) is None
    assert R.storage_error(OSError(errno.ENOENT, "missing", "/x")) is None  # not the disk's
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/runs/a/summary.json")
        except OSError:
            raise RuntimeError("while saving")
    except RuntimeError as e:
        assert str(R.storage_error(e)).startswith(
            "cannot write /runs/a/summary.json: Disk quota exceeded; free space there")
    ro = R.storage_error(OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/x"))
    assert "Read-only file system; make it writable" in str(ro)
    try:  # our own one line, raised while handling an OSError, stays ours
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/.write_test")
        except OSError:
            raise RunDirError("cannot write to out_dir /x; pass a writable out_dir") from None
    except RunDirError as e:
        assert R.storage_error(e) is None


def test_a_checkpoint_that_would_not_fit_is_refused_before_orbax_writes_it(
        make_cfg, reference, monkeypatch):
    import proxies.checkpoint as C
    cfg = make_cfg()
    real, saves = C.shutil.disk_usage, []

    def usage(path):  # the disk is full from the second checkpoint on
        saves.append(path)
        return real(path)._replace(free=0) if len(saves) >= 2 else real(path)
    monkeypatch.setattr(C.shutil, "disk_usage", usage)
    with pytest.raises(R.StorageError, match=r"^cannot write .*/checkpoints: No space left on "
                       r"device \(the next checkpoint needs about [0-9.]+ MB, 0.0 MB are free\)"):
        train(cfg)
    ckpts = Path(cfg.out_dir) / R.CHECKPOINTS
    assert sorted(p.name for p in ckpts.iterdir()) == ["4"]  # nothing half-written after it
    monkeypatch.undo()
    train(cfg)
    assert records(cfg) == reference[0]


def mountable_tmpfs(tmp_path: Path) -> bool:
    """A 1 MB tmpfs mounts here (root, or a user namespace where unprivileged ones are allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    res = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs "
                          f"{probe}"], capture_output=True)
    return res.returncode == 0


def test_the_command_on_a_full_tmpfs_says_one_line_and_resumes_once_space_is_freed(
        tmp_path, corpus_dir, cache_dir, reference):
    if not mountable_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs root or unprivileged user namespaces); "
                    "the injected full disks above cover the same code")
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    keep.mkdir()
    args = " ".join(shlex.quote(a) for a in cfg_args(tiny_cfg(disk / "run", corpus_dir,
                                                              cache_dir)))
    train_cmd = f"{shlex.quote(sys.executable)} -m proxies.train {args}"
    # Two checkpoints of this run take about 1.2 MB: 1.5 MB of filler on a 3 MB disk fills it.
    script = f"""
        mount -t tmpfs -o size=3m tmpfs {disk} || exit 9
        head -c 1500000 /dev/zero > {disk}/filler
        {train_cmd} > /dev/null 2> {keep}/err1; echo $? > {keep}/rc1
        cp -r {disk}/run {keep}/full
        rm {disk}/filler
        {train_cmd} > /dev/null 2> {keep}/err2; echo $? > {keep}/rc2
        cp -r {disk}/run {keep}/run
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    subprocess.run(["unshare", "-Urm", "sh", "-c", script], env=env, cwd=tmp_path, timeout=600,
                   check=True)
    err = (keep / "err1").read_text()
    assert (keep / "rc1").read_text().strip() == "74", err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {disk}/run"), err
    assert "No space left on device" in err and "; free space there" in err
    full = comparable(read_metrics(keep / "full" / R.METRICS))
    assert full == reference[0][:len(full)]  # what was written before the disk filled
    assert (keep / "rc2").read_text().strip() == "0", (keep / "err2").read_text()
    assert comparable(read_metrics(keep / "run" / R.METRICS)) == reference[0]


def test_a_full_disk_stops_a_sweep_in_one_line_keeping_its_table(tmp_path, corpus_dir, cache_dir,
                                                                  monkeypatch):
    import pandas as pd
    from test_sweep import sweep_cfg

    from proxies.sweep import run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-3]", "sweep.vmap='off'")
    real, files = R.append_line, set()

    def append(f, row):  # the second run's first metrics row finds the disk full
        if f.name.endswith(R.METRICS):
            files.add(f.name)
        if len(files) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, row)
    monkeypatch.setattr(R, "append_line", append)
    with pytest.raises(R.StorageError, match="No space left on device"):
        run_sweep(cfg)
    out = next((tmp_path / "sweeps").iterdir())
    assert list(pd.read_csv(out / "results.csv")["status"]) == ["done", "partial"]
    monkeypatch.undo()
    assert list(run_sweep(cfg)[1]["status"]) == ["done", "done"]


# ---------------------------------------------------------------------------------- shared stores

def test_a_run_another_process_trains_is_left_to_it_and_waited_for(tmp_path, corpus_dir,
                                                                     cache_dir, capsys):
    from test_sweep import sweep_cfg

    from proxies.grid import expand_grid
    from proxies.sweep import run_sweep
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-3,1e-2]",
                    "sweep.vmap='off'")
    dirs = [Path(p.run.out_dir) for p in expand_grid(cfg)]
    dirs[0].mkdir(parents=True)
    held = take_lock(dirs[0] / R.LOCK, "held", "")  # another sweep is training the first run

    def holder_stops_unfinished():  # once this sweep has trained the others
        while not all(R.run_finished(d) for d in dirs[1:]):
            threading.Event().wait(0.1)
        threading.Event().wait(1.5)
        held.close()
    threading.Thread(target=holder_stops_unfinished, daemon=True).start()
    out, df = run_sweep(cfg)
    printed = capsys.readouterr()
    assert (f"sweep: 1 run(s) are being trained by another process (pid {os.getpid()}: a sweep "
            "sharing the run store?); left to it while this sweep trains the other 2"
            in printed.out)
    assert "sweep: the 1 run(s) left are being trained by another process (pid" in printed.out
    assert list(df["status"]) == ["done"] * 3  # the holder stopped: this sweep trained it


def sweep_cli(tmp_path, corpus_dir, cache_dir, name, lrs, run_root):
    args = [f"sweep.name={name}", f"sweep.root={tmp_path / 'sweeps'}",
            f"sweep.run_root={run_root}", f"sweep.lrs={lrs}", "sweep.workers=1",
            "sweep.analysis=false", "sweep.vmap=off", "model.d_model=32", "model.n_layers=1",
            "model.n_heads=2", "train.steps=6", "train.batch_size=4", "train.seq_len=16",
            "train.log_every=3", "train.eval_every=6", "train.eval_batches=1",
            "train.checkpoint_every=3", "wandb.mode=disabled", "data.source=text",
            f"data.path={corpus_dir}", f"data.cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "proxies.sweep", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_overlapping_sweeps_on_one_run_store_both_finish_with_one_sweeps_table(
        tmp_path, corpus_dir, cache_dir):
    import pandas as pd

    shared, alone = tmp_path / "runs", tmp_path / "alone"
    a = sweep_cli(tmp_path, corpus_dir, cache_dir, "a", "[1e-3,3e-3,1e-2]", shared)
    b = sweep_cli(tmp_path, corpus_dir, cache_dir, "b", "[1e-3,3e-3,3e-2]", shared)
    one = sweep_cli(tmp_path, corpus_dir, cache_dir, "one", "[1e-3,3e-3,1e-2,3e-2]", alone)
    for proc in (a, b, one):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    tables = {d.name.split("-")[0]: pd.read_csv(d / "results.csv")
              for d in (tmp_path / "sweeps").iterdir()}
    timing = ["run_dir", "tokens_per_s", "wall_s"]  # the only figures that depend on the machine
    whole = tables["one"].set_index("optim.lr").drop(columns=timing)
    for name in ("a", "b"):
        t = tables[name].set_index("optim.lr").drop(columns=timing)
        assert list(t["status"]) == ["done"] * 3
        pd.testing.assert_frame_equal(t, whole.loc[t.index])
    assert len(list(shared.iterdir())) == 4
    for run in shared.iterdir():  # each trained once, by one of the two: no step twice
        steps = [r["step"] for r in read_metrics(run / R.METRICS)]
        assert len(steps) == len(set(steps)), run


def test_a_launcher_job_that_leaves_a_held_run_has_not_failed(tmp_path, corpus_dir, cache_dir):
    from test_sweep import sweep_cfg

    from proxies.grid import expand_grid, sweep_dir, write_manifest
    from proxies.launch import job_error, left_file, run_group_job, write_spec
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "sweep.lrs=[1e-3,3e-3]", "sweep.vmap='off'")
    points = expand_grid(cfg)
    out = sweep_dir(cfg, points)
    out.mkdir(parents=True)
    write_manifest(points, out)
    held_dir = Path(points[0].run.out_dir)
    held_dir.mkdir(parents=True)
    held = take_lock(held_dir / R.LOCK, "held", "")
    try:
        spec = write_spec(out, points)  # one job holding both runs
        run_group_job(str(spec))
    finally:
        held.close()
    assert json.loads(left_file(spec).read_text()) == [str(held_dir)]
    assert R.run_finished(points[1].run.out_dir) and not R.run_finished(held_dir)
    assert job_error(spec, points, None) is None  # its sweep's next round waits for the run
    left_file(spec).unlink()
    assert job_error(spec, points, None) == "the job ended with 1 of its runs unfinished"
