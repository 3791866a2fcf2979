"""Loss (cross-entropy + z-loss), LR schedule and AdamW with the paper's toggles.

Every scalar hyperparameter arrives as an array in `hparams` (see `hparams_from_config`), so one
compiled train step serves any value and a sweep can `jax.vmap` it over a batch of them. Only
structural choices (schedule shape, independent_wd, parametrization) are static.
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace
from typing import Any, Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import optax
from omegaconf import DictConfig

from proxies import divergence
from proxies.config import (HPARAM_KEYS, InjectKind, ModelConfig, NormPlacement, Parametrization,
                            Schedule, mlp_hidden, unhandled)
from proxies.model import upcast, wide_dtype, width_mult

Hparams = Dict[str, jax.Array]


def optimizer_hparams(cfg: DictConfig) -> Hparams:
    """What the optimizer and its LR schedule read, as float32 arrays (float64 in a float64 run):
    `HPARAM_KEYS` and the run's length (an argument, not a constant of the compiled step, so runs
    of one structure share a compiled step whatever their length)."""
    wide = wide_dtype(cfg.model)
    hp = {k: jnp.asarray(float(getattr(cfg.optim, k)), wide) for k in HPARAM_KEYS}
    hp["total_steps"] = jnp.asarray(float(cfg.train.steps), wide)
    return hp


def hparams_from_config(cfg: DictConfig, *, loss_limit: float) -> Hparams:
    """The train step's third argument: the optimizer's hyperparameters (`optimizer_hparams`),
    the run's divergence patience and `loss_limit` (proxies/divergence.py; `math.inf` for a
    step that only a non-finite loss diverges), and with `train.inject_spike_kind=grad` the
    injected gradient's scale."""
    wide = wide_dtype(cfg.model)
    hp = optimizer_hparams(cfg)
    hp["patience"] = jnp.asarray(divergence.patience(cfg.train), jnp.int32)
    hp["loss_limit"] = jnp.asarray(loss_limit, wide)
    if InjectKind(cfg.train.inject_spike_kind) == InjectKind.grad:
        # Testing aid: an argument too, so one member of a vmapped group can spike alone.
        hp["inject_spike_scale"] = jnp.asarray(float(cfg.train.inject_spike_scale), wide)
    return hp


def cross_entropy_with_z_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                              z_loss: jax.Array | float) -> tuple[jax.Array, Dict[str, jax.Array]]:
    """Mean next-token CE plus z-loss = coef · mean((log Z)²), Z = Σ_v exp(logit_v) (PaLM)."""
    return _ce_and_z(*log_z_and_target(logits_BxLxV, targets_BxL), z_loss)


def log_z_and_target(logits_NxV: jax.Array, targets_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per token: log Z and the target's logit (any leading shape N)."""
    log_z_N = jax.nn.logsumexp(logits_NxV, axis=-1)
    target_logit_N = jnp.take_along_axis(logits_NxV, targets_N[..., None], axis=-1)[..., 0]
    return log_z_N, target_logit_N


def _ce_and_z(log_z_N: jax.Array, target_logit_N: jax.Array,
              z_loss: jax.Array | float) -> tuple[jax.Array, Dict[str, jax.Array]]:
    ce = jnp.mean(log_z_N - target_logit_N)
    z_term = z_loss * jnp.mean(log_z_N**2)
    return ce + z_term, {"ce": ce, "z_loss": z_term, "log_z_mean": jnp.mean(log_z_N)}


Readout = Callable[[jax.Array, jax.Array], jax.Array]  # (table_VxD, x_NxD) -> f32 logits_NxV


def chunked_cross_entropy_with_z_loss(readout: Readout, table_VxD: jax.Array,
                                      x_BxLxD: jax.Array, targets_BxL: jax.Array,
                                      z_loss: jax.Array | float, chunk: int,
                                      ) -> tuple[jax.Array, Dict[str, jax.Array]]:
    """`cross_entropy_with_z_loss(readout(table, x), targets, z_loss)` computed `chunk` tokens
    at a time, so at most chunk × V logits exist at once, forward and backward. A last partial
    chunk is padded (and its rows dropped)."""
    D = x_BxLxD.shape[-1]
    x_NxD, targets_N = x_BxLxD.reshape(-1, D), targets_BxL.reshape(-1)
    N = targets_N.shape[0]
    C = min(chunk, N)
    n = -(-N // C)
    pad = n * C - N
    x_nxCxD = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(n, C, D)
    targets_nxC = jnp.pad(targets_N, (0, pad)).reshape(n, C)
    log_z_nxC, target_logit_nxC = _chunked_log_z_and_target(readout, table_VxD, x_nxCxD,
                                                            targets_nxC)
    return _ce_and_z(log_z_nxC.reshape(-1)[:N], target_logit_nxC.reshape(-1)[:N], z_loss)


# A custom VJP, not jax.checkpoint over the lax.map body: both keep one chunk of logits alive,
# but the backward here reuses the forward's log Z. Readout + CE loss and gradient on CPU
# (4096 tokens, d128, V=32768, chunk 1024): 1773 ms vs 1934 ms checkpointed, 1970 ms unchunked.
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_log_z_and_target(readout: Readout, table_VxD: jax.Array, x_nxCxD: jax.Array,
                              targets_nxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per token log Z and target logit, one chunk of logits at a time (n chunks of C)."""
    return jax.lax.map(lambda xt: log_z_and_target(readout(table_VxD, xt[0]), xt[1]),
                       (x_nxCxD, targets_nxC))


def _chunked_fwd(readout: Readout, table_VxD: jax.Array, x_nxCxD: jax.Array,
                 targets_nxC: jax.Array) -> tuple:
    out = _chunked_log_z_and_target(readout, table_VxD, x_nxCxD, targets_nxC)
    return out, (table_VxD, x_nxCxD, targets_nxC, out[0])


def _chunked_bwd(readout: Readout, res: tuple, g: tuple) -> tuple:
    """Recomputes each chunk's logits; log Z saved by the forward spares a second reduction:
    d/dlogits = g_logZ · softmax + g_target · onehot(target)."""
    table_VxD, x_nxCxD, targets_nxC, log_z_nxC = res
    g_log_z_nxC, g_target_nxC = g

    def chunk(dtable_VxD: jax.Array, inputs: tuple) -> tuple[jax.Array, jax.Array]:
        x_CxD, targets_C, log_z_C, g_log_z_C, g_target_C = inputs
        logits_CxV, vjp = jax.vjp(readout, table_VxD, x_CxD)
        dlogits_CxV = g_log_z_C[:, None] * jnp.exp(logits_CxV - log_z_C[:, None])
        dlogits_CxV = dlogits_CxV.at[jnp.arange(targets_C.shape[0]), targets_C].add(g_target_C)
        dtable_c, dx_CxD = vjp(dlogits_CxV)
        return dtable_VxD + dtable_c, dx_CxD

    dtable_VxD, dx_nxCxD = jax.lax.scan(
        chunk, jnp.zeros_like(table_VxD),
        (x_nxCxD, targets_nxC, log_z_nxC, g_log_z_nxC, g_target_nxC))
    return dtable_VxD, dx_nxCxD, None


_chunked_log_z_and_target.defvjp(_chunked_fwd, _chunked_bwd)


def learning_rate(step: jax.Array, hp: Hparams, total_steps: jax.Array | int,
                  schedule: Schedule | str) -> jax.Array:
    """LR used for update number `step` (0-based): linear warmup to hp['lr'], then decay to
    min_lr."""
    step = jnp.asarray(step, hp["lr"].dtype)
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


READOUT = "unembed/embedding"  # the untied readout's (V, D) table


def lr_multipliers(params: Any, cfg: ModelConfig) -> Any:
    """Per-tensor LR multipliers of the linear layers; every other tensor (embeddings, norm
    scales, biases) keeps the peak LR η.

    sp: all 1. mup_simple (the paper's μParam (simple), §3.2.4: "scale the LR for linear layers
    by base-fan-in/fan-in"): base-fan-in / fan-in for every block kernel and the untied readout
    (fan-in d, so mup_base_width / d); a tied readout is the input embedding too and keeps η.
    mup (Adam μParam): 1/m for the block kernels, m = d / base; its readout keeps η (the 1/m
    logit multiplier already scales it).
    """
    names = _path_names(params)
    leaves = jax.tree_util.tree_leaves(params)
    mults = [_lr_multiplier(name, p.shape, cfg) if _hidden(name, p) else
             _readout_multiplier(cfg) if name == READOUT else 1.0
             for name, p in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), mults)


def _hidden(name: str, p: Any) -> bool:
    """A hidden matrix: a kernel inside a block. Norm scales and biases are vectors, the q and v
    biases (H, K) included, and keep η as μParam's vector-like tensors do."""
    return name.startswith("block_") and name.endswith("/kernel") and p.ndim >= 2


def _lr_multiplier(name: str, shape: tuple, cfg: ModelConfig) -> float:
    match cfg.parametrization:
        case Parametrization.sp:
            return 1.0
        case Parametrization.mup_simple:
            return base_fan_in(name, cfg) / fan_in(name, shape)
        case Parametrization.mup:
            return 1.0 / width_mult(cfg)
        case _:
            unhandled("model.parametrization", cfg.parametrization)


def _readout_multiplier(cfg: ModelConfig) -> float:
    match cfg.parametrization:
        case Parametrization.sp | Parametrization.mup:
            return 1.0
        case Parametrization.mup_simple:  # a linear layer of fan-in d
            return cfg.mup_base_width / cfg.d_model
        case _:
            unhandled("model.parametrization", cfg.parametrization)


def _layer(name: str) -> str:
    """'block_0/attn/query/kernel' -> 'query'."""
    return name.split("/")[-2]


def fan_in(name: str, shape: tuple) -> int:
    """Inputs one output of a block kernel sums over: q, k and v kernels are (D, H, K) and
    contract D; the attention output (H, K, D) contracts H·K; Dense kernels (in, out) contract
    `in`."""
    if _layer(name) in ("query", "key", "value"):
        return int(shape[0])
    return int(math.prod(shape[:-1]))


def base_fan_in(name: str, cfg: ModelConfig) -> int:
    """The fan-in of the same kernel in the model of width model.mup_base_width (head dim and
    MLP ratio as here): d_base for every projection out of the residual stream and for the
    attention output (H·K = d), the MLP hidden width at d_base for the down projection."""
    base = int(cfg.mup_base_width)
    match _layer(name):
        case "query" | "key" | "value" | "out" | "up" | "gate":
            return base
        case "down":
            return mlp_hidden(SimpleNamespace(mlp=cfg.mlp, d_model=base))
        case other:
            raise AssertionError(f"no base fan-in rule for block matrix {name!r} ({other})")


def adamw(hp: Hparams, lr_t: jax.Array, lr_mults: Any, mask: Any,
          independent_wd: bool, update_clip: bool = False) -> optax.GradientTransformation:
    """AdamW built from traced hyperparameters; its state layout never depends on their values.

    Coupled (optax/PyTorch): θ ← θ − s_t·η·(Δ + λθ).  Independent: θ ← θ − s_t·η·Δ − s_t·λ·θ,
    i.e. decay λ/η_peak inside the LR-scaled chain, as nanodo does. `update_clip`: each
    tensor's step (Δ and decay) divided by max(1, RMS(g/sqrt(v̂))) (`clip_update_rms`).
    """
    wd = hp["weight_decay"] / hp["lr"] if independent_wd else hp["weight_decay"]
    adam = optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
    decay = optax.add_decayed_weights(wd, mask=mask)
    if update_clip:
        direction = [clip_update_rms(optax.chain(adam, decay), hp["b2"], hp["eps"])]
    else:
        direction = [adam, decay]
    return optax.chain(*direction, _scale_by_tree(lr_mults), optax.scale(-lr_t))


class UpdateClipState(NamedTuple):
    inner: optax.OptState  # the state of chain(scale_by_adam, add_decayed_weights)
    clipped_frac: jax.Array  # share of tensors whose step this update shrank


def clip_update_rms(inner: optax.GradientTransformation, b2: jax.Array,
                    eps: jax.Array) -> optax.GradientTransformation:
    """StableAdamW's update clipping (Wortsman et al. 2023, arXiv 2304.13013): per tensor,
    RMS = sqrt(mean(g² / max(v̂, ε²))) with v̂ Adam's bias-corrected second moment after this
    update, and the step divided by max(1, RMS). It binds when the gradient outruns v̂ (a
    stale second moment), which an LR-scaled step cannot see. `inner` starts with
    scale_by_adam, whose ν it reads."""
    def init(params: Any) -> UpdateClipState:
        return UpdateClipState(inner.init(params), jnp.zeros((), jnp.float32))  # a share

    def update(grads: Any, state: UpdateClipState, params: Any = None) -> tuple:
        updates, inner_state = inner.update(grads, state.inner, params)
        adam = inner_state[0]
        v_hat_scale = 1 / (1 - b2 ** adam.count.astype(b2.dtype))
        rms = jax.tree_util.tree_map(lambda g, nu: jnp.sqrt(jnp.mean(
            jnp.square(upcast(g)) / jnp.maximum(nu * v_hat_scale, eps**2))),
            grads, adam.nu)
        factors = jax.tree_util.tree_map(lambda r: 1 / jnp.maximum(1.0, r), rms)
        updates = jax.tree_util.tree_map(lambda u, f: u * f.astype(u.dtype), updates, factors)
        shrunk = [f < 1 for f in jax.tree_util.tree_leaves(factors)]
        frac = jnp.mean(jnp.stack(shrunk).astype(jnp.float32))
        return updates, UpdateClipState(inner_state, frac)

    return optax.GradientTransformation(init, update)


def update_clipped_frac(opt_state: Any) -> jax.Array:
    """The share of tensors `clip_update_rms` shrank at the last update (its state is first)."""
    return opt_state[0].clipped_frac


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params: jax.tree_util.tree_map(
        lambda u, m: u * m, updates, mults))


def qk_clip(params: Any, max_logit_by_layer: Dict[str, jax.Array], tau: float,
            cfg: ModelConfig) -> tuple[Any, jax.Array]:
    """QK-clip (Kimi K2, arXiv 2507.20534): a head whose max attention logit S on the step's
    batch exceeds τ has its query and key scaled by sqrt(τ/S) each, so its logits shrink by τ/S
    (q·kᵀ is bilinear; RoPE keeps norms). What is scaled is the last tensor setting the head's
    q and k: the query and key kernels (and the query bias); with `norm_placement=qkv` the
    per-head slices of the q and k output norms; with qk-layernorm the q and k norms, which all
    heads share, so they take the most-exceeding head's factor. Returns (params, heads clipped).
    `max_logit_by_layer`: {'block_i': (H,) max logits} from the forward pass."""
    params = dict(params)  # the blocks it rescales are replaced, the input left as it is
    clipped = jnp.zeros((), jnp.int32)
    for block, s_H in max_logit_by_layer.items():
        root_H = jnp.sqrt(jnp.minimum(1.0, tau / jnp.maximum(s_H, 1e-30)))
        clipped = clipped + jnp.sum(s_H > tau).astype(jnp.int32)
        attn = dict(params[block]["attn"])
        if cfg.qk_layernorm:
            for name in ("q_norm", "k_norm"):
                attn[name] = _scaled(attn[name], jnp.min(root_H))
        elif cfg.norm_placement == NormPlacement.qkv:
            for name in ("q_out_norm", "k_out_norm"):
                attn[name] = _scaled(attn[name], root_H, heads=root_H.shape[0])
        else:
            for name in ("query", "key"):
                attn[name] = _scaled(attn[name], root_H)
        params[block] = {**params[block], "attn": attn}
    return params, clipped


def _scaled(layer: Dict[str, jax.Array], factor: jax.Array, heads: int = 0) -> Dict[str, Any]:
    """Every tensor of `layer` times `factor`: a scalar, or (H,) per head on the tensor's head
    axis (kernels (D, H, K) and biases (H, K)); `heads` > 0: a norm over the full width H·K,
    whose vectors are split into heads first."""
    def scale(x: jax.Array) -> jax.Array:
        if factor.ndim == 0:
            return x * factor
        if heads:
            return (x.reshape(heads, -1) * factor[:, None]).reshape(x.shape)
        return x * factor.reshape((1,) * (x.ndim - 2) + (-1, 1))
    return {k: scale(v) for k, v in layer.items()}
