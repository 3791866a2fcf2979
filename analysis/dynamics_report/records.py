"""A run's dynamics records as the report reads them: stats rows, histogram files, the
run's config (no matplotlib)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from proxies import metric_names as M
from proxies.rundir import (  # noqa: E402
    CONFIG, METRICS, hist_files, read_config_file, read_dynamics, read_metrics)


N_EC_SAMPLE = 256  # strided rows of each ec_sample after C's top k (proxies.probes.N_EC_SAMPLE)


STAT_FAMILIES = ("act", "weight", "grad")


class DynamicsReportError(ValueError):
    """A run directory the report cannot be made from; the message names the fix."""


@dataclass
class Records:
    """One run's dynamics records, scalars aligned on the probe steps (nan where missing)."""

    run_dir: Path
    steps: np.ndarray
    stats: Dict[str, np.ndarray]
    hist_paths: Dict[int, Path]
    model: Dict[str, Any]
    per_decade: int
    loss: List[Tuple[int, float]] = field(default_factory=list)  # (step, train/loss)
    eval_ce: List[Tuple[int, float]] = field(default_factory=list)  # (step, eval/ce)

    @property
    def n_layers(self) -> int:
        n = self.model.get("n_layers")
        if isinstance(n, int):
            return n
        return len({m.group(1) for k in self.stats if (m := re.match(r"act/block_(\d+)/", k))})

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])

    def series(self, key: str) -> np.ndarray:
        return self.stats.get(key, np.full(len(self.steps), np.nan))

    def last(self, key: str) -> float:
        return float(self.series(key)[-1])

    def sites(self, kind: str) -> List[str]:
        """Sites (act) or parameter paths (weight, grad) that have stats, in record order."""
        pat = re.compile(rf"^{kind}/(.+)/kurtosis$")
        return [m.group(1) for k in self.stats if (m := pat.match(k))]

    def names(self, prefix: str, suffix: str) -> List[str]:
        """The middle part of stats keys `prefix/<name>/suffix`, in depth order."""
        pat = re.compile(rf"^{re.escape(prefix)}/(.+)/{re.escape(suffix)}$")
        return sorted((m.group(1) for k in self.stats if (m := pat.match(k))), key=depth_key)

    def arrays(self, step: int) -> Dict[str, np.ndarray]:
        return _load_npz(self.hist_paths[step])


@functools.lru_cache(maxsize=64)
def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def depth_key(name: str) -> Tuple[int, str]:
    """Order names by block index (block_10 after block_9), unnumbered ones (ln_final,
    unembed) last; within a block, by name."""
    m = re.match(r"block_(\d+)/(.*)", name)
    return (int(m.group(1)), m.group(2)) if m else (10 ** 9, name)


def load_records(run_dir: Path) -> Records:
    """The run's dynamics records; DynamicsReportError (one line) when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DynamicsReportError(f"no run directory at {run_dir}; pass a run's out_dir")
    rows = read_dynamics(run_dir)
    if not rows:
        raise DynamicsReportError(f"no dynamics records in {run_dir}; train with "
                                  "dynamics.enabled=true")
    by_step = {int(r["step"]): r for r in rows}  # a repeated step (resume): the last row wins
    steps = np.array(sorted(by_step))
    keys = sorted({k for r in rows for k in r if k != "step"})
    stats = {k: np.array([_as_float(by_step[s].get(k)) for s in steps]) for k in keys}
    cfg = read_config_file(run_dir / CONFIG)
    metrics = read_metrics(run_dir / METRICS)
    loss, eval_ce = ([(int(r["step"]), float(r[k])) for r in metrics
                      if isinstance(r.get(k), (int, float))] for k in (M.TRAIN_LOSS, M.EVAL_CE))
    hists = {s: p for s, p in hist_files(run_dir).items() if s in by_step}
    return Records(run_dir=run_dir, steps=steps, stats=stats, hist_paths=hists,
                   model=dict(cfg.get("model") or {}),
                   per_decade=int((cfg.get("dynamics") or {}).get("per_decade", 4)), loss=loss,
                   eval_ce=eval_ce)


def _as_float(v: Any) -> float:
    # JSON null marks a non-finite value (proxies.rundir.finite_or_none).
    return float(v) if isinstance(v, (int, float)) else float("nan")


def subsample(steps: Sequence[int], n: int) -> List[int]:
    """At most n steps, evenly spread, first and last always in."""
    steps = list(steps)
    if len(steps) <= n:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]
