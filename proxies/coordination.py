"""Training in a run store that other processes share (other sweeps, other workers): which runs
another process is training, and training a sweep's group less those."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import jax
from omegaconf import DictConfig

from proxies.naming import resolve_out_dir
from proxies.rundir import RunBusy, lock_holder
from proxies.train import train_group


def held_elsewhere(out_dir: str | Path) -> Optional[str]:
    """The pid of another process training in `out_dir` (see rundir.lock_holder). Never in a
    multi-host run: its processes train every group together, so none may decide alone to skip
    one (only process 0 locks, and a run store is not shared with other sweeps there)."""
    return None if jax.process_count() > 1 else lock_holder(out_dir)


def train_free(cfgs: List[DictConfig], swept: List[Optional[Dict[str, Any]]],
               vmap: bool) -> List[str]:
    """A sweep's group in a run store other sweeps share: train the runs no other process is
    training and leave those it is to it (their sweep waits for them, proxies/sweep.py). Returns
    the run directories left."""
    busy = [i for i, c in enumerate(cfgs) if held_elsewhere(resolve_out_dir(c)) is not None]
    free = [i for i in range(len(cfgs)) if i not in busy]
    if free:
        try:
            train_group([cfgs[i] for i in free], swept=[swept[i] for i in free],
                        vmap=vmap and len(free) > 1)
        except RunBusy:  # taken between the look and the lock: the sweep's next round sees it
            busy = list(range(len(cfgs)))
    return [str(resolve_out_dir(cfgs[i])) for i in busy]
