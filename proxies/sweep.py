"""LR × size × toggle sweeps: `python -m proxies.sweep +exp=lr_sens [overrides]`.

Runs are shared, sweeps are views. Every run lives in `<sweep.run_root>/<size>-<config hash>/`
(the single-run layout), whichever sweep asked for it first; a sweep that needs a run some
sweep already finished reuses it. A sweep directory `<sweep.root>/<name>-<grid hash>/` (or
`sweep.dir`) holds `runs.json` (its grid points: swept values and the run directory of each),
`results.csv`, `sweep.yaml` and `analysis/`. Re-running the same command skips finished runs and
resumes interrupted ones from their checkpoints; extending the grid trains only the new points.
Sweeps sharing a run store cooperate: a run another process is training is left to it and waited
for (`train_missing`), never a reason to stop.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import hydra
import jax
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from proxies.cli import one_line_errors, run_cli
from proxies.config import (LR_KEY, ConfigError, VmapMode, register_configs, unhandled)
from proxies.coordination import held_elsewhere, train_free
from proxies.cost import print_plan, run_flops
from proxies.grid import expand_grid, label_runs, sweep_dir, write_manifest
from proxies.launch import (POLL_S, CoreWorkers, JobsFailed, Launcher, available_cores,
                            check_installed, dispatch, from_hydra, run_jobs)
from proxies.naming import GridPoint, group_key
from proxies.sweep_table import TABLE, update_table
from proxies.rundir import RunDir, atomic_write_text, run_finished, take_lock
from proxies.sharding import initialize_distributed
from proxies.stopping import stop_requests
from proxies.train import CONFIG_DIR

SWEEP_LOCK = ".sweep.lock"

register_configs()


def use_vmap(cfg: DictConfig) -> bool:
    match cfg.sweep.vmap:  # OmegaConf refused any other value already
        case VmapMode.on:
            return True
        case VmapMode.off:
            return False
        case VmapMode.auto:
            return jax.default_backend() != "cpu"  # small models leave accelerators idle
        case _:
            unhandled("sweep.vmap", cfg.sweep.vmap)


def plan_groups(points: List[GridPoint], vmap: bool, group_size: int) -> List[List[GridPoint]]:
    """Points in training order: vmapped groups of up to `group_size` runs that differ only in
    scalar hyperparameters, or one run per group when not vmapping."""
    if not vmap or group_size <= 1:
        return [[p] for p in points]
    by_key: Dict[str, list] = {}
    for p in points:
        by_key.setdefault(group_key(p.run), []).append(p)
    return [g[i:i + group_size] for g in by_key.values() for i in range(0, len(g), group_size)]


# ---------------------------------------------------------------------------------- running

def run_sweep(cfg: DictConfig, points: Optional[List[GridPoint]] = None,
              launcher: Optional[Launcher] = None) -> Tuple[Path, pd.DataFrame]:
    """Train every missing run of the grid and write the sweep directory: sweep.yaml (the
    resolved config, its W&B group included), runs.json and the results table. With a launcher
    (`hydra/launcher=...`) the groups run as its jobs (proxies/launch.py); a failed job leaves
    the table written and raises `JobsFailed`. The analysis reads the directory afterwards
    (`python -m analysis`; `python -m proxies.sweep` runs it as its end-of-job callback)."""
    points = expand_grid(cfg) if points is None else points
    out = sweep_dir(cfg, points)
    cfg.wandb.group = cfg.wandb.group or out.name
    label_runs(points, cfg)
    if cfg.sweep.dry_run:
        if launcher is not None:
            check_installed(launcher.name)
        print_plan(f"sweep {cfg.sweep.name} (dry run, nothing trained)", points)
        return out, pd.DataFrame()
    RunDir(out).prepare("sweep.dir")
    lock = take_lock(out / SWEEP_LOCK, f"another sweep is running in {out}",
                     "wait for it to finish (its runs are shared) or pass another sweep.dir")
    try:
        atomic_write_text(out / "sweep.yaml", OmegaConf.to_yaml(cfg))
        write_manifest(points, out)
        t0 = time.time()
        failures = train_missing(cfg, points, out, launcher)
        df = update_table(out)
    finally:
        lock.close()
    if failures:
        raise JobsFailed(f"{len(failures)} job(s) failed; table {out / TABLE} holds what "
                         "finished, no analysis")
    print(f"{len(points)} runs, {time.time() - t0:.0f} s; table {out / TABLE}")
    return out, df


def train_missing(cfg: DictConfig, points: List[GridPoint], out: Path,
                  launcher: Optional[Launcher] = None) -> List[str]:
    """Train the runs not done yet, in this process or as the launcher's jobs, in rounds: a run
    another process is training (a sweep sharing the run store) is left to it, and once a round
    has trained the rest the sweep waits for it; one its trainer left unfinished is trained in
    the next round. Returns one line per failed job (none in process: an error there stops the
    sweep)."""
    for p in points:  # a finished run is reused only while its recorded config is still its own
        if run_finished(p.run.out_dir):
            RunDir(Path(p.run.out_dir)).check_identity(p.run)
    todo = unfinished(points)
    print(f"sweep {cfg.sweep.name}: {len(points)} runs in {out} ({len(points) - len(todo)} "
          f"already done, runs under {cfg.sweep.run_root}/)")
    stalled = 0  # rounds in a row that finished nothing
    while todo:
        holders = {p.run.out_dir: held_elsewhere(p.run.out_dir) for p in todo}
        free = [p for p in todo if holders[p.run.out_dir] is None]
        if not free:
            wait_for_trainers(todo, out)
        else:
            if len(free) < len(todo):
                print(f"sweep: {len(todo) - len(free)} run(s) are being trained by "
                      f"{trainers(holders)}; left to it while this sweep trains the other "
                      f"{len(free)}")
            failures = train_round(cfg, free, points, out, launcher)
            if failures:
                return failures
        left = unfinished(points)
        stalled = 0 if len(left) < len(todo) else stalled + 1
        if stalled > 2:  # a job that returns without finishing its runs, and no error
            return [f"{p.run.out_dir}: still unfinished after {stalled} rounds of this sweep; "
                    "rerun the same command" for p in left]
        todo = left
    return []


def unfinished(points: List[GridPoint]) -> List[GridPoint]:
    return [p for p in points if not run_finished(p.run.out_dir)]


def wait_for_trainers(points: List[GridPoint], out: Path) -> None:
    """Wait while other processes train these runs (each holds its run's lock); the table is
    refreshed as they finish."""
    holders = {p.run.out_dir: held_elsewhere(p.run.out_dir) for p in points}
    print(f"sweep: the {len(points)} run(s) left are being trained by {trainers(holders)}; "
          "waiting for them")
    finished: set = set()
    with stop_requests() as stop:
        while any(held_elsewhere(d) is not None for d in holders):
            stop.check()
            time.sleep(POLL_S)
            now = {d for d in holders if run_finished(d)}
            if now - finished:
                update_table(out)
                finished = now
    update_table(out)


def trainers(holders: Dict[str, Optional[str]]) -> str:
    pids = sorted({pid or "?" for pid in holders.values() if pid is not None})
    return f"another process (pid {', '.join(pids)}: a sweep sharing the run store?)"


def train_round(cfg: DictConfig, todo: List[GridPoint], points: List[GridPoint], out: Path,
                launcher: Optional[Launcher]) -> List[str]:
    """Train `todo` (runs no other process holds) once: in process, or as jobs."""
    groups = plan_groups(todo, use_vmap(cfg), cfg.sweep.group_size)
    if len(groups) < len(todo):
        print(f"vmapped: {len(groups)} groups of up to {cfg.sweep.group_size} runs")
    dispatched = launcher is not None and launcher.dispatches
    # Decided on the whole grid, not on what is left: a rerun resumes its runs the way they
    # started (a worker's single-threaded XLA rounds differently from this process's).
    whole = plan_groups(points, use_vmap(cfg), cfg.sweep.group_size)
    workers = 1 if dispatched else n_workers(cfg.sweep.workers, len(whole))
    if not dispatched and (workers == 1 or not groups):
        train_in_process(groups, out, len(todo))
        return []
    bar = tqdm(total=len(todo), unit="run", dynamic_ncols=True, disable=not todo)
    done = lambda group, error: bar.update(len(group))  # noqa: E731
    try:
        if dispatched:
            failures = dispatch(launcher, groups, out, cfg.sweep.name, on_done=done)
        else:  # the longest groups first, so no worker is left with one at the end
            groups = sorted(groups, key=lambda g: -sum(run_flops(run) for _, run in g))
            failures = run_jobs(CoreWorkers(workers, len(groups)), f"sweep.workers={workers}",
                                groups, out, on_done=done)
    finally:
        bar.close()
    for line in failures:
        print(line, file=sys.stderr)
    return failures


def n_workers(setting: int, n_groups: int) -> int:
    """Worker processes for `sweep.workers` (0 = auto) and a grid of this many groups."""
    if setting > 1 and jax.default_backend() != "cpu":
        raise ConfigError(f"sweep.workers={setting} runs CPU worker processes, and this backend "
                          f"is {jax.default_backend()}; leave sweep.workers=0 (auto)")
    if jax.process_count() > 1:  # a multi-host sweep: every process trains every group
        return 1
    cores = len(available_cores())
    if setting == 0:
        setting = cores if jax.default_backend() == "cpu" and n_groups >= 2 * cores else 1
    return max(1, min(setting, n_groups, cores))  # a worker holds at least one core


def train_in_process(groups: List[List[GridPoint]], out: Path, n_runs: int) -> None:
    """Train group by group, the table updated after each. A signal stops the sweep after the
    group in hand has saved its checkpoints (`Stopped`)."""
    bar = tqdm(total=n_runs, unit="run", dynamic_ncols=True, disable=not n_runs)
    with stop_requests() as stop:
        try:
            for g in groups:
                values = g[0].swept
                bar.set_postfix_str(" ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()
                                             if k != LR_KEY or len(g) == 1))
                left = train_free([run for _, run in g], [v for v, _ in g], vmap=len(g) > 1)
                for d in left:
                    bar.write(f"{d}: another process is training it; left to it (waited for "
                              "once the others are done)")
                update_table(out)
                bar.update(len(g) - len(left))
                stop.check()  # a signal that arrived as the group finished its last step
        except BaseException:
            bar.close()
            with contextlib.suppress(Exception):  # a full disk: the error itself is what matters
                update_table(out)  # what finished is in the table, whatever stopped the sweep
            raise
        bar.close()
        update_table(out)


# `sweep.axes=...` on the command line replaces the experiment's axes (Hydra would merge the two
# dicts and refuse keys the experiment lacks); main() takes it out of Hydra's hands.
_AXES_REPLACEMENT: List[Any] = []


def split_axes_override(argv: List[str]) -> Tuple[List[str], Optional[Any]]:
    """(argv without a plain `sweep.axes=VALUE`, VALUE parsed the Hydra way or None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    rest, value = [], None
    for a in argv:
        if a.startswith("sweep.axes="):
            value = OverridesParser.create().parse_override(a).value()
        else:
            rest.append(a)
    return rest, value


def apply_axes_replacement(cfg: DictConfig, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"sweep.axes={value!r} must be a dict such as "
                          "{model:{qk_layernorm:[false,true]}}")
    OmegaConf.set_struct(cfg, False)
    cfg.sweep.axes = value
    OmegaConf.set_struct(cfg, True)


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def _main(cfg: DictConfig) -> Optional[Path]:
    """The sweep directory, for the end-of-job callbacks in configs/sweep.yaml (the analysis)."""
    with one_line_errors():
        initialize_distributed(cfg.mesh)  # a multi-host sweep (groups share all the hosts)
        if _AXES_REPLACEMENT:
            apply_axes_replacement(cfg, _AXES_REPLACEMENT[0])
        out, _ = run_sweep(cfg, launcher=from_hydra())
        return None if cfg.sweep.dry_run else out


def cli_argv(argv: List[str]) -> List[str]:
    """`--dry-run` is `sweep.dry_run=true`; a plain `sweep.axes=...` is set aside (see above)."""
    argv = ["sweep.dry_run=true" if a == "--dry-run" else a for a in argv]
    argv, value = split_axes_override(argv)
    _AXES_REPLACEMENT[:] = [value] if value is not None else []
    return argv


def main() -> None:
    def entry() -> None:
        sys.argv[1:] = cli_argv(sys.argv[1:])
        _main()
    run_cli(entry)


if __name__ == "__main__":
    main()

