"""LR × size × toggle sweeps: `python -m proxies.sweep +exp=lr_sens [overrides]`.

A sweep directory `<sweep.root>/<name>-<grid hash>/` holds one run directory per grid point (the
single-run layout) and `results.csv`. Re-running the same command finds the same directory,
skips finished runs (their run directories are named by config hash) and resumes interrupted ones
from their checkpoints. Runs of one series share one compiled step: the LR is an array argument.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import hydra
import jax
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from analysis.__main__ import print_report
from analysis.report import analyze
from proxies.cli import one_line_errors, run_cli
from proxies.config import Config, ConfigError, config_hash, register_configs, validate
from proxies.results import run_row, write_table
from proxies.train import CONFIG_DIR, group_key, run_name, train_group


@dataclass
class SweepConfig:
    name: str = "sweep"
    lrs: List[float] = field(default_factory=lambda: [1e-3, 1e-2])
    # Model overrides, one dict per size, e.g. [{d_model: 64, n_layers: 2, n_heads: 2}].
    sizes: List[Dict[str, Any]] = field(default_factory=list)
    # Toggle axes, nested like the config with lists at the leaves:
    # {model: {qk_layernorm: [false, true]}, optim: {z_loss: [0, 1e-4]}}.
    axes: Dict[str, Any] = field(default_factory=dict)
    root: str = "runs"
    # The analysis run at the end (python -m analysis): LR range of LR sensitivity, sizes to
    # extrapolate the attention-logit fit to, and the logit above which they are flagged.
    analysis: bool = True
    lr_range: List[float] = field(default_factory=lambda: [3e-4, 3e-1])
    target_params: List[float] = field(default_factory=lambda: [4.8e9])
    threshold: float = 1e4
    # Train runs that differ only in scalar hyperparameters together under jax.vmap:
    # auto = on accelerators (small models leave them idle), off on CPU (no gain there).
    vmap: str = "auto"  # auto | on | off
    group_size: int = 8  # most runs per vmapped group (memory grows with it)


@dataclass
class SweepRoot(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


ConfigStore.instance().store(name="proxies_sweep_schema", node=SweepRoot)
register_configs()

_MISSING = object()


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


def base_config(cfg: DictConfig) -> DictConfig:
    """The single-run config a sweep starts from (everything but `sweep`)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("sweep", None)
    return OmegaConf.merge(OmegaConf.structured(Config), c)


def expand_grid(cfg: DictConfig) -> List[Tuple[Dict[str, Any], DictConfig]]:
    """All grid points as (swept values by dotted key, run config), sizes × axes × LRs."""
    sw = cfg.sweep
    lrs = list(sw.lrs)
    if not lrs:
        raise ConfigError("sweep.lrs is empty; give at least one LR, e.g. sweep.lrs=[1e-3,1e-2]")
    for lr in lrs:
        if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
            raise ConfigError(f"sweep.lrs holds {lr!r}; every LR must be a finite number > 0")
    base = base_config(cfg)
    axes = flatten_axes(sw.axes)
    sizes = [dict(s) for s in sw.sizes] or [{}]
    for key in list(axes) + [f"model.{k}" for s in sizes for k in s]:
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"unknown sweep axis '{key}'; use a key of the run config "
                              "(README lists them)")
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"sweep axis '{key}' has no values; give a list such as [a,b]")
    points = []
    for size in sizes:
        for combo in itertools.product(*axes.values()):
            for lr in lrs:
                values = {**{f"model.{k}": v for k, v in size.items()},
                          **dict(zip(axes, combo)), "optim.lr": float(lr)}
                run = base.copy()
                for k, v in values.items():
                    OmegaConf.update(run, k, v, merge=False)
                run.train.quiet = True
                validate(run)
                points.append((values, run))
    return points


def use_vmap(cfg: DictConfig) -> bool:
    mode = cfg.sweep.vmap
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"sweep.vmap={mode!r} is not one of auto, on, off; pick one of those")
    return mode == "on" or (mode == "auto" and jax.default_backend() != "cpu")


def plan_groups(points: List[Tuple[Dict[str, Any], DictConfig]], vmap: bool,
                group_size: int) -> List[List[Tuple[Dict[str, Any], DictConfig]]]:
    """Points in training order: vmapped groups of up to `group_size` runs that differ only in
    scalar hyperparameters, or one run per group when not vmapping."""
    if not vmap or group_size <= 1:
        return [[p] for p in points]
    by_key: Dict[str, list] = {}
    for p in points:
        by_key.setdefault(group_key(p[1]), []).append(p)
    return [g[i:i + group_size] for g in by_key.values() for i in range(0, len(g), group_size)]


def sweep_dir(cfg: DictConfig, points: List[Tuple[Dict[str, Any], DictConfig]]) -> Path:
    """`<root>/<name>-<hash of the grid's run configs>`: same grid, same directory."""
    h = hashlib.sha256("\n".join(sorted(config_hash(r) for _, r in points)).encode())
    return Path(cfg.sweep.root) / f"{cfg.sweep.name}-{h.hexdigest()[:8]}"


def results_table(points: List[Tuple[Dict[str, Any], DictConfig]]) -> pd.DataFrame:
    """One row per grid point, unfinished ones included (NaN figures, status pending/partial)."""
    return pd.DataFrame([run_row(Path(run.out_dir), values) for values, run in points])


def run_sweep(cfg: DictConfig) -> Tuple[Path, pd.DataFrame]:
    points = expand_grid(cfg)
    out = sweep_dir(cfg, points)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(OmegaConf.to_yaml(cfg))
    for _, run in points:
        run.out_dir = str(out / run_name(run))
    table = out / "results.csv"
    print(f"sweep {cfg.sweep.name}: {len(points)} runs in {out}")
    t0 = time.time()
    groups = plan_groups(points, use_vmap(cfg), cfg.sweep.group_size)
    if len(groups) < len(points):
        print(f"vmapped: {len(groups)} groups of up to {cfg.sweep.group_size} runs")
    bar = tqdm(total=len(points), unit="run", dynamic_ncols=True)
    for g in groups:
        values = g[0][0]
        bar.set_postfix_str(" ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()
                                     if k != "optim.lr" or len(g) == 1))
        train_group([run for _, run in g], swept=[v for v, _ in g], vmap=len(g) > 1)
        write_table(results_table(points), table)
        bar.update(len(g))
    bar.close()
    df = results_table(points)
    write_table(df, table)
    print(f"{len(points)} runs, {time.time() - t0:.0f} s; table {table}")
    if cfg.sweep.analysis:
        rep = analyze(out, list(cfg.sweep.target_params), cfg.sweep.threshold,
                      tuple(cfg.sweep.lr_range))
        print_report(rep, out)
    return out, df


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with one_line_errors():
        run_sweep(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
