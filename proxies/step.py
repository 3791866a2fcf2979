"""The pure train step `(state, batch, hparams) -> (state, metrics)` and the eval step.

`with_stats=True` compiles a second variant that also returns per-tensor gradient, update and
parameter RMS; the loop calls it only on log steps, so ordinary steps pay nothing for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from proxies.config import Config
from proxies.optim import (Hparams, adamw, clip_by_global_norm, cross_entropy_with_z_loss,
                           decay_mask, hparams_from_config, learning_rate, lr_multipliers)


class TrainState(struct.PyTreeNode):
    step: jax.Array  # number of updates done
    params: Any
    opt_state: Any


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def _tx(cfg: Config, params: Any, hp: Hparams, lr_t: jax.Array) -> optax.GradientTransformation:
    return adamw(hp, lr_t, lr_multipliers(params, cfg.model), decay_mask(params),
                 cfg.optim.independent_wd)


def init_state(model: nn.Module, cfg: Config, rng: jax.Array) -> TrainState:
    tokens_BxL = jnp.zeros((1, cfg.train.seq_len), jnp.int32)
    params = model.init(rng, tokens_BxL)["params"]
    hp = hparams_from_config(cfg)
    opt_state = _tx(cfg, params, hp, hp["lr"]).init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def make_train_step(model: nn.Module, cfg: Config, with_stats: bool = False) -> Callable:
    """Un-jitted pure step; callers jit (or vmap then jit) it."""
    total_steps, schedule = cfg.train.steps, cfg.optim.schedule

    def train_step(state: TrainState, batch_BxLp1: jax.Array,
                   hp: Hparams) -> Tuple[TrainState, Dict[str, Any]]:
        inputs_BxL, targets_BxL = batch_BxLp1[:, :-1], batch_BxLp1[:, 1:]

        def loss_fn(params):
            logits_BxLxV = model.apply({"params": params}, inputs_BxL)
            return cross_entropy_with_z_loss(logits_BxLxV, targets_BxL, hp["z_loss"])

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads, grad_norm = clip_by_global_norm(grads, hp["grad_clip"])
        lr_t = learning_rate(state.step, hp, total_steps, schedule)
        updates, opt_state = _tx(cfg, state.params, hp, lr_t).update(
            grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "ce": aux["ce"], "z_loss": aux["z_loss"], "lr": lr_t,
                   "grad_norm": grad_norm}
        if with_stats:
            tmap = jax.tree_util.tree_map
            metrics["grad_rms"] = tmap(_rms, grads)  # the (clipped) gradient Adam sees
            metrics["update_rms"] = tmap(lambda u: _rms(u) / lr_t, updates)
            metrics["param_rms"] = tmap(_rms, params)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable:
    def eval_step(params: Any, batch_BxLp1: jax.Array) -> jax.Array:
        logits_BxLxV = model.apply({"params": params}, batch_BxLp1[:, :-1])
        return cross_entropy_with_z_loss(logits_BxLxV, batch_BxLp1[:, 1:], 0.0)[1]["ce"]

    return eval_step
