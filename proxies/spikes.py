"""Loss-spike detection (`train.spike.*`): a rolling window of losses and gradient norms on device.

A step is a spike when its loss or its gradient norm lies more than `sigma` standard deviations
above the window's mean (once the window holds `min_samples` values), or is not finite. Spikes do
not enter the window, so a burst of them is measured against the calm before it. What happens to
a spike is `train.spike.action`: `log` records it, `skip` leaves params and optimizer state as they
were (decided here, on device: no host sync), `rollback` is the loop's (proxies/train.py).
The window lives in the train state, so checkpoints carry it and resumes see the same spikes.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
from flax import struct


class SpikeWindow(struct.PyTreeNode):
    loss_W: jax.Array  # last W non-spike losses (ring buffer)
    grad_norm_W: jax.Array  # their gradient norms
    filled: jax.Array  # values written so far (the ring position is filled % W)
    spikes: jax.Array  # spikes detected so far
    skipped: jax.Array  # updates skipped so far


def init_window(window: int, dtype: jnp.dtype = jnp.float32) -> SpikeWindow:
    """An empty window of `dtype` values (the loss's: float64 in a float64 run)."""
    # A buffer of its own per field: a donated train state may not hold one array twice.
    z = lambda: jnp.zeros((window,), dtype)  # noqa: E731
    i = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return SpikeWindow(loss_W=z(), grad_norm_W=z(), filled=i(), spikes=i(), skipped=i())


def _zscore(x: jax.Array, values_W: jax.Array, n: jax.Array) -> jax.Array:
    mask_W = jnp.arange(values_W.shape[0]) < n
    count = jnp.maximum(n, 1).astype(values_W.dtype)
    mean = jnp.sum(jnp.where(mask_W, values_W, 0.0)) / count
    var = jnp.sum(jnp.where(mask_W, jnp.square(values_W - mean), 0.0)) / count
    # A floor on the spread: a flat window (e.g. a loss that no longer moves in float32) must not
    # turn noise at the last digit into a spike.
    std = jnp.maximum(jnp.sqrt(var), 1e-3 * jnp.abs(mean) + 1e-8)
    return (x.astype(values_W.dtype) - mean) / std


def detect(win: SpikeWindow, loss: jax.Array, grad_norm: jax.Array, sigma: float,
           min_samples: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(is_spike, loss z-score, gradient-norm z-score) of one step against the window."""
    n = jnp.minimum(win.filled, win.loss_W.shape[0])
    z_loss = _zscore(loss, win.loss_W, n)
    z_grad = _zscore(grad_norm, win.grad_norm_W, n)
    outlier = (n >= min_samples) & ((z_loss > sigma) | (z_grad > sigma))
    return outlier | ~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm), z_loss, z_grad


def push(win: SpikeWindow, loss: jax.Array, grad_norm: jax.Array, is_spike: jax.Array,
         skipped: jax.Array) -> SpikeWindow:
    """The window after a step: its values enter unless it was a spike; counters advance."""
    pos = win.filled % win.loss_W.shape[0]
    keep = ~is_spike
    return SpikeWindow(
        loss_W=jnp.where(keep, win.loss_W.at[pos].set(loss.astype(win.loss_W.dtype)), win.loss_W),
        grad_norm_W=jnp.where(keep, win.grad_norm_W.at[pos].set(grad_norm.astype(win.loss_W.dtype)),
                              win.grad_norm_W),
        filled=win.filled + keep.astype(jnp.int32),
        spikes=win.spikes + is_spike.astype(jnp.int32),
        skipped=win.skipped + skipped.astype(jnp.int32))
