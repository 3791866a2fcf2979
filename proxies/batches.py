"""What a run reads: its dataset (loaded once per process for every run that shares it), the
batch of each update, and the held-out batches its evals read."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import numpy as np
from omegaconf import DictConfig, OmegaConf

from proxies import metric_names as M
from proxies.config import EvalSet, InjectKind, unhandled
from proxies.data import Dataset, eval_batches, load_dataset, train_batch

# Runs of a sweep share one loaded dataset within a process.
_DATASETS: Dict[str, Dataset] = {}


def shared_dataset(cfg: DictConfig) -> Dataset:
    """The dataset of `cfg.data`, loaded on first use and shared by later runs in the process."""
    key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True),
                     sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cfg.data)
    return _DATASETS[key]


class Batches:
    """The batch of each update: a function of (seed, data position). A rollback skips positions
    from its spike on, so update u reads position u - 1 + (batches skipped by rollbacks at or
    before u). `train.inject_spike_at` (testing aid) replaces listed positions by garbage."""

    def __init__(self, ds: Dataset, cfg: DictConfig, rollbacks: List[Dict[str, Any]]):
        self.ds, self.tc = ds, cfg.train
        self.rollbacks = sorted((e[M.STEP], e["batches_skipped"]) for e in rollbacks)
        match InjectKind(self.tc.inject_spike_kind):
            case InjectKind.batch:
                self.garbage = set(self.tc.inject_spike_at)
            case InjectKind.grad:  # scaled inside the train step (proxies/step.py)
                self.garbage = set()
            case kind:
                unhandled("train.inject_spike_kind", kind)

    def position(self, update: int) -> int:
        return update - 1 + sum(n for step, n in self.rollbacks if step <= update)

    def __call__(self, update: int) -> np.ndarray:
        """The host batch; the runner puts it on the group's devices."""
        tc, pos = self.tc, self.position(update)
        batch = train_batch(self.ds, tc.batch_size, tc.seq_len, tc.seed, pos)
        if pos + 1 in self.garbage:  # one token repeated: a loss the model has never seen
            batch = np.full_like(batch, self.ds.vocab_size - 1)
        return batch


def the_eval_set(ds: Dataset, tc: DictConfig) -> List[np.ndarray]:
    """The held-out batches every eval of the run reads (`train.eval_set`)."""
    match EvalSet(tc.eval_set):
        case EvalSet.shared:
            seed = None
        case EvalSet.per_seed:
            seed = tc.seed
        case kind:
            unhandled("train.eval_set", kind)
    return eval_batches(ds, tc.eval_batches, tc.batch_size, tc.seq_len, seed)
