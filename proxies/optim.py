"""Loss (cross-entropy + z-loss), LR schedule and AdamW with the paper's toggles.

Every scalar hyperparameter arrives as an array in `hparams` (see `hparams_from_config`), so one
compiled train step serves any value and a sweep can `jax.vmap` it over a batch of them. Only
structural choices (schedule shape, independent_wd, parametrization) are static.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import optax

from proxies.config import Config, ModelConfig, Schedule, unhandled
from proxies.model import width_mult

Hparams = Dict[str, jax.Array]
HPARAM_KEYS = ("lr", "min_lr", "warmup_steps", "weight_decay", "eps", "b1", "b2", "grad_clip",
               "z_loss")


def hparams_from_config(cfg: Config) -> Hparams:
    """The scalar hyperparameters of a run, as float32 arrays (the train step's third argument)."""
    return {k: jnp.asarray(float(getattr(cfg.optim, k)), jnp.float32) for k in HPARAM_KEYS}


def cross_entropy_with_z_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                              z_loss: jax.Array | float) -> tuple[jax.Array, Dict[str, jax.Array]]:
    """Mean next-token CE plus z-loss = coef · mean((log Z)²), Z = Σ_v exp(logit_v) (PaLM)."""
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    ce = jnp.mean(log_z_BxL - target_logit_BxL)
    z_term = z_loss * jnp.mean(log_z_BxL**2)
    return ce + z_term, {"ce": ce, "z_loss": z_term, "log_z_mean": jnp.mean(log_z_BxL)}


def learning_rate(step: jax.Array, hp: Hparams, total_steps: int,
                  schedule: Schedule | str) -> jax.Array:
    """LR used for update number `step` (0-based): linear warmup to hp['lr'], then decay to
    min_lr."""
    step = jnp.asarray(step, jnp.float32)
    warm = hp["warmup_steps"]
    warmup_factor = jnp.where(warm > 0, jnp.minimum(1.0, (step + 1) / jnp.maximum(warm, 1)), 1.0)
    peak, floor = hp["lr"], jnp.minimum(hp["min_lr"], hp["lr"])
    progress = jnp.clip((step - warm) / jnp.maximum(total_steps - warm, 1), 0.0, 1.0)
    match schedule:  # a plain string matches its member too
        case Schedule.cosine:
            decayed = floor + (peak - floor) * 0.5 * (1 + jnp.cos(math.pi * progress))
        case Schedule.linear:
            decayed = peak + (floor - peak) * progress
        case Schedule.constant:
            decayed = peak
        case _:
            unhandled("optim.schedule", schedule)
    return jnp.where(step < warm, peak * warmup_factor, decayed)


def clip_by_global_norm(grads: Any, max_norm: jax.Array) -> tuple[Any, jax.Array]:
    """Clip to global norm `max_norm` (0 = off); also returns the norm before clipping."""
    norm = optax.tree.norm(grads)
    factor = jnp.where((max_norm > 0) & (norm > max_norm), max_norm / (norm + 1e-30), 1.0)
    return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), grads), norm


def _path_names(params: Any) -> list[str]:
    return ["/".join(str(getattr(k, "key", k)) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices (embeddings included), not on norm scales or biases."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def lr_multipliers(params: Any, cfg: ModelConfig) -> Any:
    """Per-tensor LR multipliers. μParam (Adam): hidden matrices η/m; embeddings, readout and
    vectors η. All ones under standard parametrization."""
    m = width_mult(cfg)
    treedef = jax.tree_util.tree_structure(params)
    leaves = jax.tree_util.tree_leaves(params)
    mults = []
    for name, p in zip(_path_names(params), leaves):
        hidden = name.startswith("block_") and p.ndim >= 2
        mults.append(1.0 / m if hidden else 1.0)
    return jax.tree_util.tree_unflatten(treedef, mults)


def adamw(hp: Hparams, lr_t: jax.Array, lr_mults: Any, mask: Any,
          independent_wd: bool) -> optax.GradientTransformation:
    """AdamW built from traced hyperparameters; its state layout never depends on their values.

    Coupled (optax/PyTorch): θ ← θ − s_t·η·(Δ + λθ).  Independent: θ ← θ − s_t·η·Δ − s_t·λ·θ,
    i.e. decay λ/η_peak inside the LR-scaled chain, as nanodo does.
    """
    wd = hp["weight_decay"] / hp["lr"] if independent_wd else hp["weight_decay"]
    return optax.chain(
        optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"]),
        optax.add_decayed_weights(wd, mask=mask),
        _scale_by_tree(lr_mults),
        optax.scale(-lr_t),
    )


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params: jax.tree_util.tree_map(
        lambda u, m: u * m, updates, mults))
