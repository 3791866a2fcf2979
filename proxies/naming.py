"""What a run is called and what it shares, from its config alone: its directory name and
out_dir, the keys that tell which runs train together under one compiled step, and a sweep's
grid point. Config work only: expanding a grid or estimating its cost needs nothing more, and
importing this loads neither JAX nor the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, NamedTuple

from omegaconf import DictConfig

from proxies.config import HPARAM_KEYS, config_hash, identity


class GridPoint(NamedTuple):
    """One run of a sweep: the values it sweeps (by dotted key) and its full run config."""
    swept: Dict[str, Any]
    run: DictConfig


def run_name(cfg: DictConfig) -> str:
    """A run directory's name: the model's shape and the config hash (`d64L2H2-<hash>`)."""
    m = cfg.model
    return f"d{m.d_model}L{m.n_layers}H{m.n_heads}-{config_hash(cfg)}"


def resolve_out_dir(cfg: DictConfig) -> Path:
    """`out_dir`, or `runs/<run_name>` when the config leaves it unset."""
    return Path(cfg.out_dir) if cfg.out_dir else Path("runs") / run_name(cfg)


def group_key(cfg: DictConfig) -> str:
    """Runs with equal group keys differ only in scalar hyperparameters: they can share one
    compiled step, one data order and one init, and so train together under jax.vmap."""
    ident = identity(cfg)
    ident["optim"] = {k: v for k, v in ident["optim"].items() if k not in HPARAM_KEYS}
    ident["train"].pop("inject_spike_scale", None)  # a step argument too (optim.py)
    if not cfg.train.monitor.enabled:  # the step returns no readings for the monitor
        ident["train"]["monitor"] = "off"
    return json.dumps(ident, sort_keys=True)


def compile_key(cfg: DictConfig) -> str:
    """What shapes a group's compiled programs: its group key less what the step takes as an
    argument (the run's length, the divergence limit and patience) or never sees (the seed, the
    loop's schedule of logs, evals and checkpoints)."""
    ident = json.loads(group_key(cfg))
    for k in ("steps", "divergence_loss", "divergence_patience", "seed", "log_every",
              "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        ident["train"].pop(k, None)
    return json.dumps(ident, sort_keys=True)
