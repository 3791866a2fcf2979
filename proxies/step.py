"""The pure train step `(state, batch, hparams) -> (state, metrics)` and the eval step.

`with_stats=True` compiles a second variant that also returns per-tensor gradient, update and
parameter RMS; the loop calls it only on log steps, so ordinary steps pay nothing for it.
Spike detection (proxies/spikes.py) runs inside the step; with `train.spike.action=skip` a spike's
update is dropped here, on device.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from omegaconf import DictConfig

from proxies.config import InjectKind, SpikeAction, unhandled
from proxies.divergence import diverged
from proxies.metric_names import FIRST_MLP_KERNELS
from proxies.model import (MONITOR, QK_CLIP, SIGMA_REPARAM, readout, readout_table, upcast,
                           wide_dtype)
from proxies.optim import (Hparams, adamw, chunked_cross_entropy_with_z_loss, clip_by_global_norm,
                           cross_entropy_with_z_loss, decay_mask, learning_rate,
                           lr_multipliers, optimizer_hparams, qk_clip, update_clipped_frac)
from proxies.spikes import SpikeWindow, detect, init_window, push

# Per-step values the training loop reads back (proxies/runner.py), in this order.
WATCHED = ("loss", "grad_norm", "spike", "skipped", "loss_zscore", "grad_zscore", "diverged")
# With train.monitor.enabled, what the early-warning monitor reads (proxies/monitor.py), after
# them: the max attention logit over layers, the mean log Z and mean output logit of the batch,
# block 0's first MLP layer's gradient RMS and update RMS (÷ LR).
MONITORED = ("attn_max_logit", "log_z_mean", "logit_mean", "mlp0_grad_rms", "mlp0_update_rms")


def watched_keys(cfg: DictConfig) -> Tuple[str, ...]:
    """The names of a step's `watch` values, in order."""
    return WATCHED + (MONITORED if cfg.train.monitor.enabled else ())


class TrainState(struct.PyTreeNode):
    step: jax.Array  # batches trained on, skipped updates included: the LR schedule's clock
    params: Any
    opt_state: Any
    spike: SpikeWindow
    # Updates in a row whose loss was above the limit (hp["loss_limit"]), saved and resumed with
    # the checkpoint (proxies/divergence.py: the rule that counts them).
    over_limit: jax.Array
    # The model's variables other than its params ({} unless a stabiliser keeps some, e.g.
    # σReparam's power-iteration vectors): not trained by the optimizer, saved and resumed.
    model_state: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> Dict[str, Any]:
        """What `model.apply` takes."""
        return {"params": self.params, **self.model_state}


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(upcast(x))))


def _tx(cfg: DictConfig, params: Any, hp: Hparams, lr_t: jax.Array) -> optax.GradientTransformation:
    return adamw(hp, lr_t, lr_multipliers(params, cfg.model), decay_mask(params),
                 cfg.optim.independent_wd, cfg.optim.update_clip)


def model_collections(cfg: DictConfig) -> Tuple[str, ...]:
    """The variable collections besides params that the train step's forward pass writes:
    σReparam's vectors (kept in the state), each head's max logit (read by QK-clip) and each
    layer's (read by the monitor)."""
    return ((SIGMA_REPARAM,) if cfg.model.sigma_reparam else ()) + (
        (QK_CLIP,) if cfg.optim.qk_clip_tau is not None else ()) + (
        (MONITOR,) if cfg.train.monitor.enabled else ())


def init_state(model: nn.Module, cfg: DictConfig, rng: jax.Array) -> TrainState:
    tokens_BxL = jnp.zeros((1, cfg.train.seq_len), jnp.int32)
    variables = model.init(rng, tokens_BxL)
    params = variables["params"]
    hp = optimizer_hparams(cfg)
    opt_state = _tx(cfg, params, hp, hp["lr"]).init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      spike=init_window(cfg.train.spike.window, wide_dtype(cfg.model)),
                      over_limit=jnp.zeros((), jnp.int32),
                      model_state={k: variables[k] for k in (SIGMA_REPARAM,) if k in variables})


def _skips_spikes(cfg: DictConfig) -> bool:
    match SpikeAction(cfg.train.spike.action):
        case SpikeAction.skip:
            return True
        case SpikeAction.log | SpikeAction.rollback:  # rollback is the loop's, from the records
            return False
        case action:
            unhandled("train.spike.action", action)


def _grad_injection(cfg: DictConfig) -> Callable[[Any, jax.Array, Hparams], Any]:
    """Testing aid (`train.inject_spike_kind=grad`): the gradient of the listed updates (by update
    number, so a rollback meets them again) is scaled by `hp["inject_spike_scale"]` before
    clipping (per member in a vmapped group: 1 leaves a member's updates as they were)."""
    t = cfg.train
    match InjectKind(t.inject_spike_kind):
        case InjectKind.batch:  # batches are replaced by the loop (proxies/batches.py: Batches)
            return lambda grads, step, hp: grads
        case InjectKind.grad:
            pass
        case kind:
            unhandled("train.inject_spike_kind", kind)
    updates = jnp.asarray(list(t.inject_spike_at) or [-1], jnp.int32)

    def inject(grads: Any, step: jax.Array, hp: Hparams) -> Any:
        scale = jnp.where(jnp.any(updates == step + 1), hp["inject_spike_scale"], 1.0)
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads)

    return inject


def loss_and_aux(model: nn.Module, variables: Dict[str, Any], inputs_BxL: jax.Array,
                 targets_BxL: jax.Array, z_loss: jax.Array | float, ce_chunk: int,
                 mutable: Tuple[str, ...] = (),
                 logit_mean: bool = False) -> Tuple[jax.Array, Dict[str, Any]]:
    """Loss and its parts (ce, z_loss, log_z_mean; with `logit_mean`, the mean output logit) of
    the model on one batch; with ce_chunk > 0 the readout and cross-entropy run that many tokens
    at a time (`train.ce_chunk`). The `mutable` collections the forward pass wrote are in the
    parts, under "collections"."""
    apply = partial(model.apply, variables, inputs_BxL, hidden_only=bool(ce_chunk))
    out, collections = apply(mutable=list(mutable)) if mutable else (apply(), {})
    if not ce_chunk:
        loss, aux = cross_entropy_with_z_loss(out, targets_BxL, z_loss)
        logits_NxV = out
    else:
        table_VxD = readout_table(model.cfg, variables["params"])
        loss, aux = chunked_cross_entropy_with_z_loss(
            partial(readout, model.cfg), table_VxD, out, targets_BxL, z_loss, ce_chunk)
        # No chunk's logits outlive it: the first sequence's, read again (1/B of the readout).
        logits_NxV = readout(model.cfg, table_VxD, out[0])
    if logit_mean:
        aux["logit_mean"] = jax.lax.stop_gradient(jnp.mean(logits_NxV.astype(jnp.float32)))
    return loss, {**aux, "collections": collections} if mutable else aux


def head_max_logits_by_layer(sown: Dict[str, Any]) -> Dict[str, jax.Array]:
    """{'block_i': (H,)} from the `qk_clip` collection (sow keeps a 1-tuple per layer)."""
    return {block: tree["attn"]["max_logit"][0] for block, tree in sown.items()}


def _first_mlp_kernel(tree: Any) -> Optional[jax.Array]:
    """Block 0's first MLP kernel in a params-shaped tree (None without blocks)."""
    for path in FIRST_MLP_KERNELS:
        node = tree
        for key in path.split("/"):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def monitored(written: Dict[str, Any], aux: Dict[str, Any], grads: Any, updates: Any,
              lr_t: jax.Array) -> Dict[str, jax.Array]:
    """The monitor's readings of one step (NaN where the model has no such part)."""
    nan = jnp.full((), jnp.nan, jnp.float32)
    layers = [tree["attn"]["max_logit"][0] for tree in written.get(MONITOR, {}).values()]
    grad, update = _first_mlp_kernel(grads), _first_mlp_kernel(updates)
    return {"attn_max_logit": jnp.max(jnp.stack(layers)) if layers else nan,
            "log_z_mean": aux["log_z_mean"], "logit_mean": aux["logit_mean"],
            "mlp0_grad_rms": nan if grad is None else _rms(grad),
            "mlp0_update_rms": nan if update is None else _rms(update) / lr_t}


def make_train_step(model: nn.Module, cfg: DictConfig, with_stats: bool = False) -> Callable:
    """Un-jitted pure step; callers jit (or vmap then jit) it."""
    schedule = cfg.optim.schedule
    sigma, min_samples = cfg.train.spike.sigma, cfg.train.spike.min_samples
    skips_spikes, inject = _skips_spikes(cfg), _grad_injection(cfg)
    ce_chunk = ce_chunk_for(cfg.train.ce_chunk, model.vocab_size)
    mutable, tau = model_collections(cfg), cfg.optim.qk_clip_tau
    watch, monitor = watched_keys(cfg), cfg.train.monitor.enabled

    def train_step(state: TrainState, batch_BxLp1: jax.Array,
                   hp: Hparams) -> Tuple[TrainState, Dict[str, Any]]:
        inputs_BxL, targets_BxL = batch_BxLp1[:, :-1], batch_BxLp1[:, 1:]

        def loss_fn(params):
            return loss_and_aux(model, {**state.variables, "params": params}, inputs_BxL,
                                targets_BxL, hp["z_loss"], ce_chunk, mutable, monitor)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        written = aux.get("collections", {})
        grads, grad_norm = clip_by_global_norm(inject(grads, state.step, hp), hp["grad_clip"])
        spike, loss_z, grad_z = detect(state.spike, loss, grad_norm, sigma, min_samples)
        lr_t = learning_rate(state.step, hp, hp["total_steps"], schedule)
        updates, opt_state = _tx(cfg, state.params, hp, lr_t).update(
            grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stabilizers = {}
        if tau is not None:
            params, stabilizers["qk_clipped_heads"] = qk_clip(
                params, head_max_logits_by_layer(written.get(QK_CLIP, {})), tau, cfg.model)
        if cfg.optim.update_clip:
            stabilizers["update_clipped_frac"] = update_clipped_frac(opt_state)
        model_state = {k: written[k] for k in state.model_state}
        skip = spike if skips_spikes else jnp.zeros((), bool)
        if skips_spikes:  # the update is not applied and the optimizer state does not advance
            keep_old = lambda new, old: jnp.where(skip, old, new)  # noqa: E731
            params = jax.tree_util.tree_map(keep_old, params, state.params)
            opt_state = jax.tree_util.tree_map(keep_old, opt_state, state.opt_state)
            model_state = jax.tree_util.tree_map(keep_old, model_state, state.model_state)
        gone, over_limit = diverged(loss, hp["loss_limit"], state.over_limit, skip,
                                    hp["patience"])
        metrics = {"loss": loss, "ce": aux["ce"], "z_loss": aux["z_loss"], "lr": lr_t,
                   "grad_norm": grad_norm, "spike": spike, "skipped": skip,
                   "loss_zscore": loss_z, "grad_zscore": grad_z, "diverged": gone, **stabilizers}
        if monitor:
            metrics.update(monitored(written, aux, grads, updates, lr_t))
        if with_stats:
            tmap = jax.tree_util.tree_map
            metrics["grad_rms"] = tmap(_rms, grads)  # the (clipped) gradient Adam sees
            metrics["update_rms"] = tmap(lambda u: _rms(u) / lr_t, updates)
            metrics["param_rms"] = tmap(_rms, params)
        window = push(state.spike, loss, grad_norm, spike, skip)
        metrics["spikes"], metrics["skips"] = window.spikes, window.skipped
        # What the loop reads every step, in one array: one device-to-host copy, not six.
        metrics["watch"] = jnp.stack([jnp.asarray(metrics[k], loss.dtype) for k in watch])
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                          spike=window, over_limit=over_limit, model_state=model_state), metrics

    return train_step


# `train.ce_chunk=-1` (auto): chunk large vocabularies only. Measured on 2 CPU cores (laptop
# preset d128 L4, batch 32x128; benchmarks/step_speed.py --ab train.ce_chunk=0,512,1024): at
# V=256 chunking is noise (±2%); at V=32768, chunk 1024 is -10% CPU time, -20% wall, XLA temp
# memory 1308 -> 551 MB; the loss part alone gains from V=2048 on.
AUTO_CE_CHUNK, AUTO_CE_CHUNK_MIN_VOCAB = 1024, 2048


def ce_chunk_for(setting: int, vocab_size: int) -> int:
    """Tokens per readout/cross-entropy chunk (0 = all at once) for `train.ce_chunk`."""
    if setting == -1:
        return AUTO_CE_CHUNK if vocab_size >= AUTO_CE_CHUNK_MIN_VOCAB else 0
    return setting


def make_eval_step(model: nn.Module, ce_chunk: int = 0) -> Callable:
    """`(variables, batch) -> mean CE`; ce_chunk as in the train step (`train.ce_chunk`)."""
    ce_chunk = ce_chunk_for(ce_chunk, model.vocab_size)

    def eval_step(variables: Dict[str, Any], batch_BxLp1: jax.Array) -> jax.Array:
        return loss_and_aux(model, variables, batch_BxLp1[:, :-1], batch_BxLp1[:, 1:], 0.0,
                            ce_chunk)[1]["ce"]

    return eval_step
