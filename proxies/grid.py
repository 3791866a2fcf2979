"""A sweep's grid: sizes × variants × toggle axes × seeds × LRs, each point a run config whose
directory is shared by every sweep that asks for it (`<sweep.run_root>/<size>-<config hash>/`),
and the sweep directory that views them (`<sweep.root>/<name>-<grid hash>/`: runs.json)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig, ListConfig, OmegaConf

from proxies.config import (LR_KEY, SEED_KEY, Config, ConfigError, config_hash, to_plain,
                            validate)
from proxies.naming import GridPoint, run_name
from proxies.rundir import atomic_write_text
from proxies.tracking import series_name


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


def expand_grid(cfg: DictConfig) -> List[GridPoint]:
    """All grid points, sizes × variants × axes × LRs, each with its run directory set."""
    validate(cfg)  # the sweep section and the run keys it starts from
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
            points.append(GridPoint(values, run))
    return points


def sweep_dir(cfg: DictConfig, points: List[GridPoint]) -> Path:
    """`sweep.dir`, or `<root>/<name>-<hash of the grid's run configs>`: same grid, same dir."""
    if cfg.sweep.dir:
        return Path(cfg.sweep.dir)
    h = hashlib.sha256("\n".join(sorted(config_hash(r) for _, r in points)).encode())
    return Path(cfg.sweep.root) / f"{cfg.sweep.name}-{h.hexdigest()[:8]}"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path.absolute(), start.absolute())


def write_manifest(points: List[GridPoint], out: Path) -> None:
    """`runs.json`: the sweep's grid points, each with its run directory relative to `out`."""
    rows = [{"run_dir": _rel(Path(run.out_dir), out), "swept": values} for values, run in points]
    atomic_write_text(out / "runs.json", json.dumps(rows, indent=1) + "\n")


def label_runs(points: List[GridPoint], cfg: DictConfig) -> None:
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
