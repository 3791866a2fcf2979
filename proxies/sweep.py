"""LR × size × toggle sweeps: `python -m proxies.sweep +exp=lr_sens [overrides]`.

Runs are shared, sweeps are views. Every run lives in `<sweep.run_root>/<size>-<config hash>/`
(the single-run layout), whichever sweep asked for it first; a sweep that needs a run some
sweep already finished reuses it. A sweep directory `<sweep.root>/<name>-<grid hash>/` (or
`sweep.dir`) holds `runs.json` (its grid points: swept values and the run directory of each),
`results.csv`, `sweep.yaml` and `analysis/`. Re-running the same command skips finished runs and
resumes interrupted ones from their checkpoints; extending the grid trains only the new points.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import hydra
import jax
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from proxies.cli import one_line_errors, run_cli
from proxies.config import (LR_KEY, SEED_KEY, Config, ConfigError, DataSource,  # noqa: F401
                            MlpKind, PosEmb, SweepConfig, SweepRoot, VmapMode, config_hash,
                            nonembed_params, register_configs, to_plain, unhandled,
                            validate, validate_sweep)
from proxies.launch import (CoreWorkers, JobsFailed, Launcher, Point, available_cores,
                            dispatch, from_hydra, run_jobs)
from proxies.results import TABLE, update_table
from proxies.rundir import RunDir, atomic_write_text, run_finished, take_lock
from proxies.sharding import initialize_distributed
from proxies.stopping import stop_requests
from proxies.tracking import series_name
from proxies.train import CONFIG_DIR, group_key, run_name, train_group

SWEEP_LOCK = ".sweep.lock"

register_configs()

_MISSING = object()

# Throughput assumed by cost estimates (FLOPs = 6·params + 12·L·d·seq per token, see
# `run_flops`): a 2-core x86 CPU runs these small fp32 models at 60-170 GFLOP/s (measured with
# benchmarks/step_speed.py); one H100 at 40% of its 989 TFLOP/s dense bf16 peak.
CPU_FLOPS = 70e9
GPU_FLOPS = 0.4 * 989e12
RUN_OVERHEAD_S = 5.0  # compile, data and first eval per run (CPU, small models)


def flatten_axes(axes: Any, prefix: str = "") -> Dict[str, list]:
    """{model: {qk_layernorm: [false, true]}} -> {'model.qk_layernorm': [False, True]}."""
    out: Dict[str, list] = {}
    for k, v in (axes or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, (list, ListConfig)):
            out[key] = list(v)
        elif isinstance(v, (dict, DictConfig)):
            out.update(flatten_axes(v, key + "."))
        else:
            raise ConfigError(f"sweep axis '{key}' needs a list of values, got {v!r}; "
                              f"write sweep.axes.{key}=[{v}]")
    return out


def flatten_values(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """{optim: {z_loss: 1e-4}} -> {'optim.z_loss': 1e-4} (one variant's settings)."""
    out: Dict[str, Any] = {}
    for k, v in (tree or {}).items():
        if isinstance(v, (dict, DictConfig)):
            out.update(flatten_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v.copy() if isinstance(v, list) else v
    return out


def base_config(cfg: DictConfig) -> DictConfig:
    """The single-run config a sweep starts from (everything but `sweep`)."""
    c = to_plain(cfg)
    c.pop("sweep", None)
    return OmegaConf.merge(OmegaConf.structured(Config), c)


def expand_grid(cfg: DictConfig) -> List[Point]:
    """All grid points, sizes × variants × axes × LRs, each with its run directory set."""
    validate_sweep(cfg.sweep)
    sw = cfg.sweep
    lrs = list(sw.lrs)
    base = base_config(cfg)
    axes = flatten_axes(sw.axes)
    sizes = [{f"model.{k}": v for k, v in s.items()} for s in sw.sizes] or [{}]
    variants = [flatten_values(v) for v in sw.variants] or [{}]
    for key in {k for d in sizes + variants for k in d} | set(axes):
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"unknown sweep axis '{key}'; use a key of the run config "
                              "(docs/config.md lists them)")
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"sweep axis '{key}' has no values; give a list such as [a,b]")
    seeds = ([{SEED_KEY: base.train.seed + i} for i in range(sw.seeds)] if sw.seeds > 1 else [{}])
    points = []
    for size, variant, combo, seed in itertools.product(sizes, variants,
                                                        itertools.product(*axes.values()), seeds):
        for lr in lrs:
            values = {**size, **variant, **dict(zip(axes, combo)), **seed, LR_KEY: float(lr)}
            run = base.copy()
            for k, v in values.items():
                OmegaConf.update(run, k, v, merge=False)
            run.train.quiet = True
            validate(run)
            run.out_dir = str(Path(sw.run_root) / run_name(run))
            points.append((values, run))
    return points


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


def plan_groups(points: List[Point], vmap: bool, group_size: int) -> List[List[Point]]:
    """Points in training order: vmapped groups of up to `group_size` runs that differ only in
    scalar hyperparameters, or one run per group when not vmapping."""
    if not vmap or group_size <= 1:
        return [[p] for p in points]
    by_key: Dict[str, list] = {}
    for p in points:
        by_key.setdefault(group_key(p[1]), []).append(p)
    return [g[i:i + group_size] for g in by_key.values() for i in range(0, len(g), group_size)]


def sweep_dir(cfg: DictConfig, points: List[Point]) -> Path:
    """`sweep.dir`, or `<root>/<name>-<hash of the grid's run configs>`: same grid, same dir."""
    if cfg.sweep.dir:
        return Path(cfg.sweep.dir)
    h = hashlib.sha256("\n".join(sorted(config_hash(r) for _, r in points)).encode())
    return Path(cfg.sweep.root) / f"{cfg.sweep.name}-{h.hexdigest()[:8]}"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path.absolute(), start.absolute())


def write_manifest(points: List[Point], out: Path) -> None:
    """`runs.json`: the sweep's grid points, each with its run directory relative to `out`."""
    rows = [{"run_dir": _rel(Path(run.out_dir), out), "swept": values} for values, run in points]
    tmp = out / f".runs.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, out / "runs.json")


# ---------------------------------------------------------------------------- cost estimates

def run_params(run: DictConfig, vocab_size: int) -> Tuple[int, int]:
    """(all params, non-embedding params) of a run's model, counted from its config."""
    m, seq = run.model, run.train.seq_len
    nonembed = nonembed_params(m.d_model, m.n_layers, m.mlp)
    embed = (vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
             + _pos_params(m.pos_emb, seq, m.d_model))
    return nonembed + embed, nonembed


def _pos_params(pos_emb: PosEmb, seq: int, d: int) -> int:
    match pos_emb:
        case PosEmb.learned:
            return seq * d
        case PosEmb.rope:
            return 0
        case _:
            unhandled("model.pos_emb", pos_emb)


def vocab_guess(run: DictConfig) -> int:
    """The vocabulary a run will have, without loading its data (32768 for a tokenizer file)."""
    d = run.data
    match d.source:
        case DataSource.tokens:
            if d.vocab_size:
                return int(d.vocab_size)
        case DataSource.stdlib | DataSource.text | DataSource.hf:
            pass  # the tokenizer decides
        case _:
            unhandled("data.source", d.source)
    if d.tokenizer == "byte":
        return 256
    if d.tokenizer == "bpe":
        return int(d.bpe_vocab_size)
    return 32768


def run_flops(run: DictConfig) -> float:
    """Training FLOPs of a run: (6·params + 12·L·d·seq) per token, plus its evals (1/3 of that
    per held-out token)."""
    t = run.train
    n_all, _ = run_params(run, vocab_guess(run))
    per_token = 6 * n_all + 12 * run.model.n_layers * run.model.d_model * t.seq_len
    train_tokens = t.steps * t.batch_size * t.seq_len
    eval_tokens = (t.steps // t.eval_every + 1) * t.eval_batches * t.batch_size * t.seq_len
    return per_token * (train_tokens + eval_tokens / 3)


def estimate(points: List[Point]) -> Dict[str, float]:
    """Runs to train, runs reused, total FLOPs and the wall time on a 2-core CPU and one H100."""
    todo = [run for _, run in points if not run_finished(run.out_dir)]
    flops = sum(run_flops(run) for run in todo)
    return {"runs": len(points), "todo": len(todo), "reused": len(points) - len(todo),
            "flops": flops, "cpu_s": flops / CPU_FLOPS + RUN_OVERHEAD_S * len(todo),
            "gpu_s": flops / GPU_FLOPS + RUN_OVERHEAD_S * len(todo)}


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365 * 86400):.3g} years"


def grid_summary(points: List[Point]) -> pd.DataFrame:
    """One row per series (everything but the LR): its LRs, params, steps × tokens, runs done."""
    rows: Dict[str, Dict[str, Any]] = {}
    for values, run in points:
        key = json.dumps({k: v for k, v in values.items() if k != LR_KEY}, sort_keys=True,
                         default=str)
        _, nonembed = run_params(run, vocab_guess(run))
        r = rows.setdefault(key, {**{k.split(".")[-1]: v for k, v in values.items()
                                     if k != LR_KEY},
                                  "nonembed_params": f"{nonembed / 1e6:.3g}M",
                                  "steps": run.train.steps,
                                  "tokens/step": run.train.batch_size * run.train.seq_len,
                                  "lrs": [], "done": 0})
        r["lrs"].append(f"{values[LR_KEY]:g}")
        r["done"] += int(run_finished(run.out_dir))
    df = pd.DataFrame(list(rows.values()))
    df["lrs"] = df["lrs"].map(lambda v: ",".join(v))
    return df


def print_plan(name: str, points: List[Point], table: bool = True) -> Dict[str, float]:
    """Print the grid (a row per series) and the cost estimate; return the estimate."""
    est = estimate(points)
    if table:
        with pd.option_context("display.width", 200, "display.max_columns", 40,
                               "display.max_colwidth", 60):
            print(grid_summary(points).to_string(index=False))
    print(f"{name}: {est['runs']} runs ({est['reused']} already done, {est['todo']} to train), "
          f"{est['flops']:.3g} FLOPs to go: ~{fmt_duration(est['cpu_s'])} on a 2-core CPU, "
          f"~{fmt_duration(est['gpu_s'])} on one H100 at 40% MFU (estimates)")
    return est


# ---------------------------------------------------------------------------------- running

def run_sweep(cfg: DictConfig, points: Optional[List[Point]] = None,
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


def label_runs(points: List[Point], cfg: DictConfig) -> None:
    """W&B names of each run: group = the sweep's (`wandb.group`), job type = its series (the
    dashboards group by both), a readable name with the LR, the experiment's name as a tag, the
    analysis threshold as the attention-logit alert. None of it is in a run's identity."""
    group = cfg.wandb.group
    for values, run in points:
        w = run.wandb
        w.group = w.group or group
        w.job_type = w.job_type or series_name(values)
        w.name = w.name or f"{series_name(values)} lr={values[LR_KEY]:g}"
        w.tags = list(dict.fromkeys([*w.tags, cfg.sweep.name]))
        if w.alert_logit is None:
            w.alert_logit = float(cfg.sweep.threshold)


def train_missing(cfg: DictConfig, points: List[Point], out: Path,
                  launcher: Optional[Launcher] = None) -> List[str]:
    """Train the runs not done yet, in this process or as the launcher's jobs. Returns one line
    per failed job (none in process: an error there stops the sweep)."""
    todo = [p for p in points if not run_finished(p[1].out_dir)]
    print(f"sweep {cfg.sweep.name}: {len(points)} runs in {out} ({len(points) - len(todo)} "
          f"already done, runs under {cfg.sweep.run_root}/)")
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


def train_in_process(groups: List[List[Point]], out: Path, n_runs: int) -> None:
    """Train group by group, the table updated after each. A signal stops the sweep after the
    group in hand has saved its checkpoints (`Stopped`)."""
    bar = tqdm(total=n_runs, unit="run", dynamic_ncols=True, disable=not n_runs)
    with stop_requests() as stop:
        try:
            for g in groups:
                values = g[0][0]
                bar.set_postfix_str(" ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()
                                             if k != LR_KEY or len(g) == 1))
                train_group([run for _, run in g], swept=[v for v, _ in g], vmap=len(g) > 1)
                update_table(out)
                bar.update(len(g))
                stop.check()  # a signal that arrived as the group finished its last step
        finally:
            bar.close()
            update_table(out)  # what finished is in the table, whatever stopped the sweep


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
        try:
            out, _ = run_sweep(cfg, launcher=from_hydra())
            return None if cfg.sweep.dry_run else out
        except JobsFailed as e:  # each failed job has had its line already
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)


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

