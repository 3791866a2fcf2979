"""Scaling a sweep out: `python -m proxies.sweep +exp=NAME hydra/launcher=NAME`.

The sweep command stays the coordinator (it holds the sweep lock, writes `runs.json`, rebuilds the
table at the end and runs the analysis). Each group of `proxies.sweep.plan_groups` becomes one
launcher job: its spec (plain run configs, swept values, the coordinator's working directory) is
written to `<sweep_dir>/jobs/<group id>.json`, and the job, `run_group_job(spec_path)`, trains
the group (`train_group` takes the run directories' locks, skips finished runs and resumes
interrupted ones; runs another process is training are left to it, `coordination.train_free`)
and rebuilds the sweep's table under its lock. Engines, chosen by the Hydra launcher config the
sweep was started with (`proxies/configs/hydra/launcher/`):

    local        joblib.Parallel (loky processes), the yaml's n_jobs etc.
    slurm        submitit's SLURM executor, parameters mapped as hydra-submitit-launcher maps them
    slurm_local  submitit's local executor (the SLURM path without a cluster)
    ray          ray.init(**ray.init), ray.remote(**ray.remote)

Without a launcher, a CPU sweep runs its groups in `sweep.workers` local processes the same way
(`CoreWorkers`), each pinned to its share of the cores.

A failed job is reported in one line; rerunning the same command retries what is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from omegaconf import OmegaConf

from proxies.cli import Failed
from proxies.config import Choice, Config, ConfigError, choice_message, to_plain, unhandled
from proxies.naming import GridPoint
from proxies.rundir import atomic_write_text, run_finished
from proxies.stopping import StopRequest, Stopped, stop_requests

JOBS = "jobs"  # <sweep_dir>/jobs/<group id>.json (spec) and <group id>.error (why it failed)
POLL_S = 1.0  # how often the coordinator looks at its jobs (and at signals)
STOP_GRACE_S = 120.0  # how long stopped CoreWorkers get to save their runs' steps


OnDone = Callable[[List[GridPoint], Optional[str]], None]  # a finished job's group and its error


class LauncherName(Choice):
    basic = "basic"  # Hydra's default: the sweep trains in its own process
    local = "local"
    slurm = "slurm"
    slurm_local = "slurm_local"
    ray = "ray"


@dataclass
class Launcher:
    """The launcher a sweep dispatches with: its name (`hydra/launcher=...`) and Hydra's `hydra`
    node, unresolved, so `${hydra.sweep.dir}` can point into the sweep directory."""

    name: LauncherName = LauncherName.basic
    hydra: Dict[str, Any] = field(default_factory=dict)

    @property
    def dispatches(self) -> bool:
        return self.name is not LauncherName.basic


class JobsFailed(Failed):
    """Some jobs of a dispatched sweep failed; each was reported in one line already."""


class SweepStopped(Stopped):
    """The coordinator stopped on a signal; the message says what became of its jobs."""

    def __init__(self, signame: str, what: str):
        Exception.__init__(self, f"sweep stopped by {signame}: {what}; rerun the same command "
                                 "to go on (finished runs are kept)")
        self.signame, self.step = signame, None


# ---------------------------------------------------------------------------- the launcher

def from_hydra() -> Launcher:
    """The launcher `hydra/launcher=NAME` chose for this command: basic outside Hydra, and in a
    multirun (`-m`), where Hydra's launcher already runs each sweep as its job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return Launcher()
    hc = HydraConfig.get()
    choice = hc.runtime.choices.get("hydra/launcher") or LauncherName.basic.value
    if choice not in LauncherName.values():
        raise ConfigError(choice_message("hydra/launcher", choice, LauncherName.values())
                          + " (proxies/configs/hydra/launcher/ holds them)")
    return Launcher(LauncherName(choice), OmegaConf.to_container(hc, resolve=False))


def launcher_settings(launcher: Launcher, sweep_dir: Path, job_name: str) -> Dict[str, Any]:
    """`hydra.launcher`, resolved with `hydra.sweep.dir` = the sweep directory (where the shipped
    configs put submitit's folder) and `hydra.job.name` = the sweep's name (SLURM's job name)."""
    node = OmegaConf.create({"hydra": launcher.hydra})
    node.hydra.sweep.dir = str(sweep_dir.absolute())
    node.hydra.job.name = job_name
    settings = OmegaConf.to_container(node.hydra.launcher, resolve=True)
    settings.pop("_target_", None)
    return settings


# ---------------------------------------------------------------------------- job specs

def group_id(group: List[GridPoint]) -> str:
    """A group's job name: its first run directory's name (+ how many more runs it holds)."""
    first = Path(group[0].run.out_dir).name
    return first if len(group) == 1 else f"{first}+{len(group) - 1}"


def write_spec(sweep_dir: Path, group: List[GridPoint]) -> Path:
    """`<sweep_dir>/jobs/<group id>.json`: everything a job needs, as plain JSON."""
    jobs = sweep_dir / JOBS
    jobs.mkdir(exist_ok=True)
    spec = {"sweep_dir": str(sweep_dir.absolute()), "cwd": os.getcwd(),
            "runs": [to_plain(run) for _, run in group], "swept": [v for v, _ in group],
            "vmap": len(group) > 1}
    path = jobs / f"{group_id(group)}.json"
    atomic_write_text(path, json.dumps(spec, indent=1) + "\n")
    error_file(path).unlink(missing_ok=True)  # an earlier attempt's failure is not this one's
    left_file(path).unlink(missing_ok=True)
    return path


def error_file(spec_path: Path) -> Path:
    return spec_path.with_suffix(".error")


def left_file(spec_path: Path) -> Path:
    """`<id>.left`: the runs a job left to another process training them (a JSON list)."""
    return spec_path.with_suffix(".left")


def first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def run_group_job(spec_path: str) -> List[str]:
    """One launcher job: train (or resume) a group's runs, then rebuild the sweep's table.
    Returns the run directories. On failure the error's first line and traceback go to
    `<id>.error` (read by the coordinator whatever the engine) and the exception fails the job."""
    from proxies.sweep_table import update_table
    from proxies.coordination import train_free

    path = Path(spec_path)
    spec = json.loads(path.read_text())
    os.chdir(spec["cwd"])  # relative run and data paths mean what they meant to the coordinator
    cfgs = [OmegaConf.merge(OmegaConf.structured(Config), run) for run in spec["runs"]]
    try:
        left = train_free(cfgs, spec["swept"], spec["vmap"])  # runs another sweep trains
    except BaseException as e:
        with contextlib.suppress(Exception):  # a full disk: the error itself is what matters
            atomic_write_text(error_file(path), first_line(e) + "\n\n" + traceback.format_exc())
        with contextlib.suppress(Exception):
            update_table(Path(spec["sweep_dir"]))
        raise
    if left:  # not a failure: the sweep's next round waits for them
        atomic_write_text(left_file(path), json.dumps(left) + "\n")
    update_table(Path(spec["sweep_dir"]))
    return [c.out_dir for c in cfgs]


def job_outcome(spec_path: str) -> Tuple[str, Optional[str]]:
    """run_group_job for engines that stop at a job's first exception (joblib): (spec, error)."""
    try:
        run_group_job(spec_path)
    except Exception as e:
        return spec_path, first_line(e)
    return spec_path, None


# ---------------------------------------------------------------------------- engines

def missing_package(extra: str, package: str) -> ConfigError:
    return ConfigError(f"this launcher needs {package}; pip install -e '.[{extra}]'")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # a parent missing, or blocked in sys.modules
        return False


def check_installed(name: LauncherName) -> None:
    """The launcher's packages are installed: what a dry run checks, starting nothing."""
    match name:
        case LauncherName.basic:
            return
        case LauncherName.local:
            needs = ("joblib", "joblib", ["joblib"])
        case LauncherName.slurm | LauncherName.slurm_local:
            needs = ("slurm", "submitit and hydra-submitit-launcher",
                     ["submitit", "hydra_plugins.hydra_submitit_launcher"])
        case LauncherName.ray:
            needs = ("ray", "ray", ["ray"])
        case _:
            unhandled("hydra/launcher", name)
    extra, package, modules = needs
    if not all(importable(m) for m in modules):
        raise missing_package(extra, package)


class JoblibJobs:
    """hydra/launcher=local: joblib.Parallel over loky worker processes."""

    def __init__(self, settings: Dict[str, Any]):
        self.settings = joblib_kwargs(settings)
        self.results: Optional[Iterator[Tuple[str, Optional[str]]]] = None

    def describe(self) -> str:
        return f"joblib, n_jobs={self.settings.get('n_jobs')}; job output on this terminal"

    def submit(self, specs: List[Path]) -> None:
        from joblib import Parallel, delayed

        self.results = Parallel(**self.settings, return_as="generator_unordered")(
            delayed(job_outcome)(str(p)) for p in specs)

    def wait(self, stop: StopRequest) -> Iterator[Tuple[Path, Optional[str]]]:
        assert self.results is not None
        for spec, error in self.results:  # joblib's generator blocks: a signal is seen per job
            stop.check()
            yield Path(spec), error

    def stop(self) -> str:
        if self.results is not None:
            self.results.close()  # joblib terminates its workers
        return "its local jobs were stopped (their runs resume from their last checkpoints)"


def joblib_kwargs(settings: Dict[str, Any]) -> Dict[str, Any]:
    """joblib.Parallel's arguments from the launcher yaml, as hydra-joblib-launcher passes them:
    loky processes always (threads would share one working directory and signal handlers)."""
    kw = {k: v for k, v in settings.items() if v is not None}
    kw["backend"] = "loky"
    for k in ("pre_dispatch", "batch_size", "max_nbytes"):  # "8" -> 8, "2*n_jobs" stays
        if isinstance(kw.get(k), str) and kw[k].isdigit():
            kw[k] = int(kw[k])
    return kw


# A worker with one core runs XLA single-threaded: on 2 cores, two such runs side by side beat
# the same two multi-threaded runs one after another (benchmarks/sweep_workers.py). Single- and
# multi-threaded XLA sum in different orders, so their float32 results differ in the last bits;
# results do not depend on the number of workers. Keep it last in XLA_FLAGS: XLA's parser
# ignores whatever follows the bare `intra_op_parallelism_threads=1`.
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def pin_worker(cores: Any) -> None:
    """A CoreWorkers process's start: take the next share of cores, single-threaded XLA on one
    (before JAX starts its backend, which reads XLA_FLAGS once)."""
    mine = cores.get()
    if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the OS places the worker
        os.sched_setaffinity(0, mine)
    if len(mine) == 1:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()


def available_cores() -> List[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_shares(n_workers: int) -> List[List[int]]:
    """This process's cores dealt out to n_workers workers (n_workers <= cores)."""
    cores = available_cores()
    return [cores[i::n_workers] for i in range(n_workers)]


class CoreWorkers:
    """sweep.workers=N on CPU: N local worker processes that live for the whole sweep (each
    loads the dataset and compiles a structure once), each pinned to its share of the cores."""

    def __init__(self, n_workers: int, n_jobs: int):
        """The cores dealt out as to n_workers workers (so a run gets the same share of cores,
        and the same XLA threading, however few jobs are left), of whom at most n_jobs start."""
        ctx = multiprocessing.get_context("spawn")  # no copy of this process's JAX state
        cores = ctx.Queue()
        self.shares = core_shares(n_workers)[:max(1, min(n_workers, n_jobs))]
        for share in self.shares:
            cores.put(share)
        self.pool = ProcessPoolExecutor(len(self.shares), mp_context=ctx, initializer=pin_worker,
                                        initargs=(cores,))
        self.futures: Dict[Future, Path] = {}

    def describe(self) -> str:
        shares = ", ".join("+".join(map(str, s)) for s in self.shares)
        return f"{len(self.shares)} local workers on cores {shares}"

    def submit(self, specs: List[Path]) -> None:
        self.futures = {self.pool.submit(job_outcome, str(p)): p for p in specs}

    def wait(self, stop: StopRequest) -> Iterator[Tuple[Path, Optional[str]]]:
        pending = set(self.futures)
        while pending:
            done, pending = wait_futures(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    _, error = f.result()
                except Exception as e:  # the worker died (killed, out of memory)
                    error = first_line(e)
                yield self.futures[f], error
            stop.check()
        self.pool.shutdown(wait=True)

    def stop(self) -> str:
        procs = list(getattr(self.pool, "_processes", {}).values())  # the executor has no kill
        for proc in procs:
            proc.terminate()  # SIGTERM: each worker's run saves its step and its job returns
        wait_futures([f for f in self.futures if f.running()], timeout=STOP_GRACE_S)
        for proc in procs:
            proc.kill()  # a worker that handled SIGTERM would otherwise wait for more work
        self.pool.shutdown(wait=False, cancel_futures=True)
        return "its workers were stopped (their runs resume from their last checkpoints)"


class SubmititJobs:
    """hydra/launcher=slurm | slurm_local: one submitit job per group (a job array on SLURM)."""

    def __init__(self, settings: Dict[str, Any], on_slurm: bool):
        self.on_slurm = on_slurm
        self.cluster = "slurm" if on_slurm else "local"
        self.executor = submitit_executor(settings, self.cluster)
        self.jobs: Dict[Path, Any] = {}

    def describe(self) -> str:
        logs = str(self.executor.folder).replace("%j", "<job id>")
        return f"submitit {self.cluster}, job logs in {logs}/"

    def submit(self, specs: List[Path]) -> None:
        jobs = self.executor.map_array(run_group_job, [str(p) for p in specs])
        self.jobs = dict(zip(specs, jobs))
        ids = ", ".join(j.job_id for j in jobs)
        print(f"submitted {len(jobs)} {self.cluster} jobs: {ids}")

    def wait(self, stop: StopRequest) -> Iterator[Tuple[Path, Optional[str]]]:
        pending = dict(self.jobs)
        while pending:
            stop.check()
            finished = [p for p, j in pending.items() if j.done()]
            for spec in finished:
                job = pending.pop(spec)
                exc = job.exception()
                yield spec, None if exc is None else submitit_error(job, exc)
            if pending and not finished:
                time.sleep(POLL_S)

    def stop(self) -> str:
        running = [j for j in self.jobs.values() if not j.done()]
        if self.on_slurm:  # the cluster runs them whether we wait or not: let them do the work
            ids = " ".join(j.job_id for j in running)
            return (f"{len(running)} SLURM jobs left running (scancel {ids} stops them; rerun "
                    "once they end for the table and analysis)")
        for job in running:
            job.cancel(check=False)  # SIGINT: the run saves a checkpoint if it has time
        return f"{len(running)} local jobs cancelled (their runs resume from their checkpoints)"


def submitit_executor(settings: Dict[str, Any], cluster: str) -> Any:
    """submitit.AutoExecutor with the launcher yaml's parameters, mapped as hydra-submitit-launcher
    maps them: its queue keys as they are, the rest prefixed with the cluster's name."""
    try:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    except ImportError:
        raise missing_package("slurm", "submitit and hydra-submitit-launcher") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:  # submitit's error: a traceback
        raise ConfigError("hydra/launcher=slurm submits with sbatch, which this machine lacks; "
                          "run the sweep on the cluster's login node, or try the path here with "
                          "hydra/launcher=slurm_local")
    preempt_with_sigusr1()
    params = dict(settings)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params.pop("max_num_timeout")
    queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(cluster=cluster, **init)
    executor.update_parameters(**{k if k in queue_keys else f"{cluster}_{k}": v
                                  for k, v in params.items()})
    return executor


def preempt_with_sigusr1() -> None:
    """Have submitit warn jobs with SIGUSR1 before a timeout: a run then saves a checkpoint and
    stops cleanly (proxies/stopping.py). Its default, SIGUSR2, would end a job mid-step."""
    from submitit.core import job_environment

    os.environ.setdefault(job_environment._PREEMPT_SIG_ENV, "USR1")  # inherited by the jobs
    job_environment.JobEnvironment.USR_SIG = os.environ[job_environment._PREEMPT_SIG_ENV]


def submitit_error(job: Any, exc: BaseException) -> str:
    """A failed submitit job's one line: the last line of its traceback (submitit puts the
    traceback between dashed lines), and where its log is."""
    parts = str(exc).split("-" * 22)
    trace = [ln for ln in parts[1].splitlines() if ln.strip()] if len(parts) > 2 else []
    return f"{trace[-1] if trace else first_line(exc)} (log: {job.paths.stderr})"


class RayJobs:
    """hydra/launcher=ray: one Ray task per group, on a local Ray or the cluster at init.address."""

    def __init__(self, settings: Dict[str, Any]):
        try:
            import ray
        except ImportError:
            raise missing_package("ray", "ray") from None
        self.ray = ray
        conf = settings.get("ray") or {}
        self.init = dict(conf.get("init") or {})
        self.remote = {k: v for k, v in (conf.get("remote") or {}).items() if v is not None}
        self.refs: Dict[Any, Path] = {}
        # Here, before dispatch installs its signal handlers: ray.init sets its own for SIGTERM.
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(**self.init)

    def describe(self) -> str:
        where = self.init.get("address") or "a local Ray"
        return f"ray on {where}, job output on this terminal and in Ray's session logs"

    def submit(self, specs: List[Path]) -> None:
        task = self.ray.remote(run_group_job).options(**self.remote)
        self.refs = {task.remote(str(p)): p for p in specs}

    def wait(self, stop: StopRequest) -> Iterator[Tuple[Path, Optional[str]]]:
        pending = dict(self.refs)
        try:
            while pending:
                stop.check()
                done, _ = self.ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in done:
                    spec = pending.pop(ref)
                    yield spec, self.error_of(ref)
        finally:
            if self.started and not pending:
                self.ray.shutdown()

    def error_of(self, ref: Any) -> Optional[str]:
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            return first_line(getattr(e, "cause", None) or e)
        return None

    def stop(self) -> str:
        for ref in self.refs:
            self.ray.cancel(ref)
        if self.started:
            self.ray.shutdown()
        return f"its {len(self.refs)} Ray tasks were cancelled (their runs resume from checkpoints)"


Engine = JoblibJobs | SubmititJobs | RayJobs | CoreWorkers


def make_engine(name: LauncherName, settings: Dict[str, Any]) -> Engine:
    match name:
        case LauncherName.local:
            return JoblibJobs(settings)
        case LauncherName.slurm:
            return SubmititJobs(settings, on_slurm=True)
        case LauncherName.slurm_local:
            return SubmititJobs(settings, on_slurm=False)
        case LauncherName.ray:
            return RayJobs(settings)
        case LauncherName.basic:
            raise ValueError("hydra/launcher=basic trains in process; nothing to dispatch")
        case _:
            unhandled("hydra/launcher", name)


# ---------------------------------------------------------------------------- the coordinator

def dispatch(launcher: Launcher, groups: List[List[GridPoint]], sweep_dir: Path, sweep_name: str,
             on_done: Optional[OnDone] = None) -> List[str]:
    """Run each group as a job of the launcher and wait for all. Returns one line per failed
    job. A signal stops the wait: jobs are cancelled, or left running on SLURM (`SweepStopped`)."""
    if not groups:
        return []
    engine = make_engine(launcher.name, launcher_settings(launcher, sweep_dir, sweep_name))
    return run_jobs(engine, f"hydra/launcher={launcher.name}", groups, sweep_dir, on_done)


def run_jobs(engine: Engine, via: str, groups: List[List[GridPoint]], sweep_dir: Path,
             on_done: Optional[OnDone] = None) -> List[str]:
    """`dispatch` on an engine in hand (CoreWorkers included)."""
    if not groups:
        return []
    specs = {write_spec(sweep_dir, g): g for g in groups}
    print(f"dispatching {len(specs)} jobs ({sum(map(len, groups))} runs) with {via} "
          f"({engine.describe()}); job specs in {sweep_dir / JOBS}/")
    failures: List[str] = []
    with stop_requests() as stop:  # not armed: a signal raises Stopped (Ctrl-C KeyboardInterrupt)
        try:
            engine.submit(list(specs))
            for spec, error in engine.wait(stop):
                error = job_error(spec, specs[spec], error)
                if error is not None:
                    failures.append(failure_line(spec, specs[spec], error))
                if on_done is not None:
                    on_done(specs[spec], error)
        except (Stopped, KeyboardInterrupt) as e:
            signame = e.signame if isinstance(e, Stopped) else "SIGINT"
            raise SweepStopped(signame, engine.stop()) from None
    return failures


def job_error(spec: Path, group: List[GridPoint], engine_error: Optional[str]) -> Optional[str]:
    """Why a job failed: its own first line if it wrote one, else the engine's (a job killed, out
    of memory or timed out writes nothing); a job that ended with runs unfinished failed too,
    unless it left them to another process training them (`<id>.left`)."""
    if engine_error is not None:
        try:
            own = error_file(spec).read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return engine_error
        return f"{own} (traceback in {error_file(spec)})"
    try:
        left = set(json.loads(left_file(spec).read_text()))
    except (OSError, ValueError):
        left = set()
    unfinished = [run for _, run in group
                  if not run_finished(run.out_dir) and str(run.out_dir) not in left]
    if unfinished:
        return f"the job ended with {len(unfinished)} of its runs unfinished"
    return None


def failure_line(spec: Path, group: List[GridPoint], error: str) -> str:
    runs = ", ".join(Path(run.out_dir).name for _, run in group)
    return f"job {spec.stem} failed (runs {runs}): {error}; rerun the same command to retry them"
