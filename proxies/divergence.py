"""When a run has diverged: the rule, its loss limit and its patience.

An update's training loss (cross-entropy plus z-loss, on its batch) is compared with the run's
loss limit: `train.divergence_loss` when set, else 2 × the held-out CE at init (the step-0 row).
A non-finite loss diverges the run at once; a loss above the limit does so once it has been
above it for more than `patience` updates in a row (`train.divergence_patience`, else 2% of
`train.steps`, at least 1), so one spiking batch that the run recovers from is no divergence.
An update the step skipped (`train.spike.action=skip`) neither diverges the run, nor counts,
nor breaks a stretch above the limit. The count of updates in a row above the limit is part of
the train state (`TrainState.over_limit`), so a resumed run counts on; the limit and patience
reach the compiled step as hyperparameters (`hp["loss_limit"]`, `hp["patience"]`).
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from proxies.config import TrainConfig


def patience(train: TrainConfig) -> int:
    """Updates in a row above the loss limit that a run may take before it counts as diverged."""
    if train.divergence_patience is not None:
        return int(train.divergence_patience)
    return max(1, round(0.02 * train.steps))


def loss_limit(train: TrainConfig, loss_at_init: float) -> float:
    """The loss above which an update counts towards divergence: `train.divergence_loss`, else
    2 × the held-out CE at init."""
    if train.divergence_loss is not None:
        return float(train.divergence_loss)
    return 2 * loss_at_init


def diverged(loss: jax.Array, limit: jax.Array, over_limit: jax.Array, skipped: jax.Array,
             patience: jax.Array | int) -> Tuple[jax.Array, jax.Array]:
    """(diverged, the new count of updates in a row above the limit) after one update, inside
    the compiled step."""
    bad = ~jnp.isfinite(loss)
    over = jnp.where(skipped, over_limit, jnp.where(bad | (loss > limit), over_limit + 1, 0))
    return ~skipped & (bad | (over > patience)), over
