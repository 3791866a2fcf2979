"""GPT-2-style pre-LN decoder with every stability toggle of the small-scale-proxies paper.

Shapes in names: B batch, L sequence, D d_model, H heads, K d_head, F MLP hidden, V vocab.
Probes: when the caller makes the `intermediates` collection mutable, each block `sow`s what the
probes need (max attention logit, attention entropy, residual-stream outliers); with `dynamics`
mutable, every named site sows its whole tensor (see `DYNAMICS_SITES`). The training step makes
neither mutable, so none of that is computed on the hot path, and off CPU its attention goes
through `jax.nn.dot_product_attention` (`model.attn_impl=auto`); probes write the logits out.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from proxies.config import (AttnImpl, AttnScale, ComputeDtype, MlpKind, ModelConfig,  # noqa: F401
                            NormKind, NormPlacement, Parametrization, PosEmb, mlp_hidden,
                            unhandled)

# jax's truncated normal (cut at ±2σ) has std 0.8796·σ; dividing makes `std` the real std.
_TRUNC_STD = 0.87962566103423978


def trunc_normal(std: float) -> Callable:
    return jax.nn.initializers.truncated_normal(std / _TRUNC_STD)


def is_mup(cfg: ModelConfig) -> bool:
    """Whether the forward pass and init are μParam's (readout 1/m, attention 1/d_head).
    μParam (simple) changes only LRs (proxies/optim.py), so its model is the SP model."""
    match cfg.parametrization:
        case Parametrization.mup:
            return True
        case Parametrization.sp | Parametrization.mup_simple:
            return False
        case _:
            unhandled("model.parametrization", cfg.parametrization)


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    match cfg.dtype:
        case ComputeDtype.float32:
            return jnp.dtype(jnp.float32)
        case ComputeDtype.bfloat16:
            return jnp.dtype(jnp.bfloat16)
        case ComputeDtype.float64:
            return jnp.dtype(jnp.float64)
        case _:
            unhandled("model.dtype", cfg.dtype)


def wide_dtype(cfg: ModelConfig) -> jnp.dtype:
    """What stays wide whatever the compute dtype (params, norm statistics, softmax, logits):
    float32, or float64 in a float64 run."""
    return jnp.promote_types(compute_dtype(cfg), jnp.float32)


def upcast(x: jax.Array) -> jax.Array:
    """x in at least float32 (a float64 x stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def width_mult(cfg: ModelConfig) -> float:
    """μParam width multiplier m = d / d_base (1 under standard parametrization)."""
    return cfg.d_model / cfg.mup_base_width if is_mup(cfg) else 1.0


def init_std(cfg: ModelConfig, fan_in: int, kind: str = "hidden") -> float:
    """Init std of one weight. `kind` is hidden | embed | readout."""
    rule, d = cfg.init_std, cfg.d_model
    if not isinstance(rule, str):
        std = float(rule)
    elif rule == "gpt2":
        std = 0.02
    elif rule == "small_init":
        std = math.sqrt(2 / (5 * d))
    elif rule == "mt_nlg":
        std = math.sqrt(1 / (3 * d))
    else:  # fan_in (paper): 1/sqrt(fan_in) for matrices, 1/sqrt(d) for the input embedding
        std = 1 / math.sqrt(d) if kind == "embed" else 1 / math.sqrt(fan_in)
    if kind == "readout" and is_mup(cfg):
        # μParam: the 1/m logit multiplier already shrinks the readout, so it keeps its
        # base-width std (mup's MuReadout rescales by sqrt(m) likewise).
        std *= math.sqrt(width_mult(cfg))
    return std


def param_policy(cfg: ModelConfig, fan_in: int, kind: str = "hidden",
                 init_arg: str = "kernel_init") -> Dict[str, Any]:
    """Every weight's policy: wide (float32) storage, the compute dtype, truncated-normal init of
    `init_std(cfg, fan_in, kind)` (keyword `init_arg`: `embedding_init` for nn.Embed)."""
    return {"dtype": compute_dtype(cfg), "param_dtype": wide_dtype(cfg),
            init_arg: trunc_normal(init_std(cfg, fan_in, kind))}


def linear_policy(cfg: ModelConfig, fan_in: int) -> Dict[str, Any]:
    """A block linear layer's policy: `param_policy`, and σReparam's kernel when it is on."""
    extra = {"dot_general_cls": SigmaReparam} if cfg.sigma_reparam else {}
    return {**param_policy(cfg, fan_in), **extra}


def softcap(z: jax.Array, cap: float | None) -> jax.Array:
    """cap·tanh(z/cap) (Gemma 2's soft-cap); z itself when cap is None."""
    return z if cap is None else cap * jnp.tanh(z / cap)


def _unit(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x) + 1e-30)


SIGMA_REPARAM = "sigma_reparam"  # the variable collection of σReparam's power-iteration vectors
INIT_POWER_STEPS = 20  # at init, so σ (and γ = σ: the layer starts as W) is near converged


def power_iteration(W_IxO: jax.Array, u_O: jax.Array, steps: int) -> jax.Array:
    """u after `steps` power-iteration steps on WᵀW (the top right singular vector of W)."""
    for _ in range(steps):
        u_O = _unit(W_IxO.T @ _unit(W_IxO @ u_O))
    return u_O


class SigmaReparam(nn.Module):
    """σReparam (Zhai et al., arXiv 2303.06296) as a dense layer's `dot_general_cls`: the layer's
    kernel W is used as (γ/σ(W))·W. σ is the spectral norm of W as a matrix (contracted axes ×
    the rest), from one power-iteration step per call from the stored vector u (collection
    `sigma_reparam`, stored back when the caller makes it mutable: the train step); the
    gradient flows through σ with u and v held fixed, as spectral normalisation does."""

    @nn.compact
    def __call__(self, x: jax.Array, kernel: jax.Array, dimension_numbers: Any,
                 precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
        (_, contract), _ = dimension_numbers
        rest = [a for a in range(kernel.ndim) if a not in contract]
        W_IxO = upcast(jnp.transpose(kernel, (*contract, *rest)))
        n_in = math.prod(kernel.shape[a] for a in contract)
        W_IxO = W_IxO.reshape(n_in, -1)
        u = self.variable(SIGMA_REPARAM, "u", lambda: power_iteration(
            W_IxO, jax.random.normal(self.make_rng("params"), (W_IxO.shape[1],), W_IxO.dtype),
            INIT_POWER_STEPS))
        u_O = jax.lax.stop_gradient(power_iteration(W_IxO, u.value, 1))
        v_I = jax.lax.stop_gradient(_unit(W_IxO @ u_O))
        if self.is_mutable_collection(SIGMA_REPARAM) and not self.is_initializing():
            u.value = u_O
        sigma = v_I @ W_IxO @ u_O
        gamma = self.param("gamma", lambda rng, shape: sigma, ())  # Ŵ = W at init
        scale = (gamma / sigma).astype(kernel.dtype)
        return jax.lax.dot_general(x, kernel * scale, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)


def attn_logit_scale(cfg: ModelConfig) -> float:
    """Scale of q·kᵀ: 1/sqrt(d_head) (SP) or 1/d_head (μParam)."""
    d_head = cfg.d_model // cfg.n_heads
    return 1 / d_head if is_mup(cfg) else 1 / math.sqrt(d_head)


# Tensors sown into the `dynamics` collection, per block and at the top (training-dynamics
# probes, proxies/probes.py). Norm inputs are the residual stream before each norm.
DYNAMICS_SITES = {
    "block": ("resid_in", "attn_in", "q", "k", "v", "probs", "ctx", "resid_mid", "mlp_in",
              "gate_pre", "up_out", "down_in", "resid_out"),
    "top": ("final_norm_in", "final_out", "logits"),
}


def sow_dynamics(module: nn.Module, name: str, x: jax.Array) -> None:
    if module.is_mutable_collection("dynamics"):
        module.sow("dynamics", name, x)


def normalized(cfg: ModelConfig, x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """What a norm layer computes before its learned scale (and bias), in float32 (or wider)."""
    x32 = upcast(x)
    match cfg.norm:
        case NormKind.rmsnorm:
            return x32 * jax.lax.rsqrt(jnp.mean(x32**2, axis=-1, keepdims=True) + eps)
        case NormKind.layernorm:
            mu = jnp.mean(x32, axis=-1, keepdims=True)
            return (x32 - mu) * jax.lax.rsqrt(jnp.var(x32, axis=-1, keepdims=True) + eps)
        case _:
            unhandled("model.norm", cfg.norm)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = upcast(x)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32**2, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(x.dtype)


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
    match cfg.norm:
        case NormKind.rmsnorm:
            return RMSNorm(param_dtype=wide_dtype(cfg), name=name)
        case NormKind.layernorm:
            # Statistics in float32 (or wider) whatever the compute dtype.
            return nn.LayerNorm(epsilon=1e-6, use_bias=cfg.use_bias, dtype=wide_dtype(cfg),
                                param_dtype=wide_dtype(cfg), name=name)
        case _:
            unhandled("model.norm", cfg.norm)


def rope(x_BxLxHxK: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (rotate-half form) on the last axis."""
    L, K = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
    x_BxLxHxK_wide = upcast(x_BxLxHxK)
    wide = x_BxLxHxK_wide.dtype
    inv_freq = base ** (-jnp.arange(0, K, 2, dtype=wide) / K)  # K/2
    angle_LxK2 = jnp.arange(L, dtype=wide)[:, None] * inv_freq[None, :]
    sin, cos = jnp.sin(angle_LxK2)[None, :, None, :], jnp.cos(angle_LxK2)[None, :, None, :]
    x1, x2 = jnp.split(x_BxLxHxK_wide, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


def plant_kappa(z_BxLxHxK: jax.Array, kappa: float) -> jax.Array:
    """sqrt(κ)·z/‖z‖ per head: with q and k both planted, q·k = κ·cos(q, k), so max logit ≈ κ."""
    z32 = upcast(z_BxLxHxK)
    z32 = z32 * jax.lax.rsqrt(jnp.sum(z32**2, axis=-1, keepdims=True) + 1e-12)
    return (math.sqrt(kappa) * z32).astype(z_BxLxHxK.dtype)


def qk_for_product(cfg: ModelConfig, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                   dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, float]:
    """(q, k, s): the q and k that enter q·kᵀ and the scale s applied to the product after it.
    Every logit-scale toggle (κ, attn_scale, μParam's 1/d_head) lives here, so the explicit and
    the fused attention paths cannot disagree on them."""
    scale = attn_logit_scale(cfg)
    if cfg.attn_kappa is not None:  # the κ experiment sets the logit scale itself
        return plant_kappa(q_BxLxHxK, cfg.attn_kappa), plant_kappa(k_BxLxHxK, cfg.attn_kappa), 1.0
    match cfg.attn_scale:
        case AttnScale.before:
            # Same product, but q and k stay small before the matmul (safer in low precision).
            root = jnp.asarray(math.sqrt(scale), dtype)
            return q_BxLxHxK * root, k_BxLxHxK * root, 1.0
        case AttnScale.after:
            return q_BxLxHxK, k_BxLxHxK, scale
        case _:
            unhandled("model.attn_scale", cfg.attn_scale)


def attn_logits(cfg: ModelConfig, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                dtype: jnp.dtype) -> jax.Array:
    """Scaled q·kᵀ per head, (B, H, L, L) in the compute dtype: what the probes measure."""
    q_BxLxHxK, k_BxLxHxK, post = qk_for_product(cfg, q_BxLxHxK, k_BxLxHxK, dtype)
    logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK)
    return logits_BxHxLxL * post if post != 1.0 else logits_BxHxLxL


def causal_mask(L: int) -> jax.Array:
    return jnp.tril(jnp.ones((L, L), dtype=bool))


def head_max_logits(logits_BxHxLxL: jax.Array) -> jax.Array:
    """Each head's max attention logit over the batch and the causal positions, (H,)."""
    causal_LxL = causal_mask(logits_BxHxLxL.shape[-1])
    return jnp.max(jnp.where(causal_LxL, logits_BxHxLxL, -jnp.inf), axis=(0, 2, 3))


QK_CLIP = "qk_clip"  # the collection each attention layer sows its heads' max logits into
# The collection each attention layer sows its max logit into for the early-warning monitor
# (proxies/monitor.py): over the batch where the logits are written out anyway; the fused path
# keeps none, so there it is the first sequence's (1/B of the logits' cost, the same trend).
MONITOR = "monitor"


def auto_fuses(backend: str) -> bool:
    """Whether `attn_impl=auto` takes the fused path on this backend. Not on CPU: there jax
    0.10's XLA attention writes the logits out too, and its train step ran 8% slower in float32
    than the explicit one and no faster in bfloat16 (laptop preset:
    benchmarks/step_speed.py --ab model.attn_impl=explicit,auto --fuse-on-cpu)."""
    return backend != "cpu"


def sdpa_implementation(backend: str, dtype: jnp.dtype) -> str | None:
    """cuDNN flash attention on GPU in 16-bit; None (XLA) elsewhere. jax 0.10's
    `implementation=None` always means XLA, so the GPU choice has to be made here."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if backend == "gpu" and half else None


def fused_attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array,
                    scale: float, dtype: jnp.dtype) -> jax.Array:
    """Causal softmax(s·q·kᵀ)·v without materialising the logits for anyone to read."""
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        t.astype(dtype) for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))  # a float32 qk-norm output
    attend = lambda impl: jax.nn.dot_product_attention(  # noqa: E731
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scale=scale, is_causal=True, implementation=impl)
    impl = sdpa_implementation(jax.default_backend(), dtype)
    if impl is None:
        return attend(None)
    try:
        return attend(impl)
    except (NotImplementedError, ValueError, RuntimeError):  # cuDNN refuses at trace time
        return attend(None)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        H, D = cfg.n_heads, cfg.d_model
        K = D // H
        dtype = compute_dtype(cfg)
        dense = lambda feats, axis, fan_in, name, bias=cfg.use_bias: nn.DenseGeneral(  # noqa
            feats, axis=axis, use_bias=bias, name=name, **linear_policy(cfg, fan_in))
        q_BxLxHxK = dense((H, K), -1, D, "query")(x_BxLxD)
        # No key bias: q·b is the same for every key of a query, so softmax ignores it; its
        # gradient is exactly zero and Adam would only random-walk it on rounding noise.
        k_BxLxHxK = dense((H, K), -1, D, "key", False)(x_BxLxD)
        v_BxLxHxK = dense((H, K), -1, D, "value")(x_BxLxD)
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = self._qkv_norm(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
        if cfg.qk_layernorm:
            q_BxLxHxK = make_norm(cfg, "q_norm")(q_BxLxHxK)
            k_BxLxHxK = make_norm(cfg, "k_norm")(k_BxLxHxK)
        match cfg.pos_emb:
            case PosEmb.rope:
                q_BxLxHxK = rope(q_BxLxHxK, cfg.rope_base)
                k_BxLxHxK = rope(k_BxLxHxK, cfg.rope_base)
            case PosEmb.learned:
                pass  # added to the token embedding in Transformer
            case _:
                unhandled("model.pos_emb", cfg.pos_emb)
        sow_dynamics(self, "q", q_BxLxHxK)
        sow_dynamics(self, "k", k_BxLxHxK)
        sow_dynamics(self, "v", v_BxLxHxK)
        if self._fused():
            if self.is_mutable_collection(QK_CLIP):  # the fused kernel keeps its logits
                self.sow(QK_CLIP, "max_logit", jax.lax.stop_gradient(head_max_logits(
                    upcast(attn_logits(cfg, q_BxLxHxK, k_BxLxHxK, dtype)))))
            if self.is_mutable_collection(MONITOR):
                self.sow(MONITOR, "max_logit", jax.lax.stop_gradient(jnp.max(head_max_logits(
                    upcast(attn_logits(cfg, q_BxLxHxK[:1], k_BxLxHxK[:1], dtype))))))
            q_BxLxHxK, k_BxLxHxK, post = qk_for_product(cfg, q_BxLxHxK, k_BxLxHxK, dtype)
            out_BxLxHxK = fused_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, post, dtype)
        else:
            out_BxLxHxK = self._explicit(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, dtype)
        sow_dynamics(self, "ctx", out_BxLxHxK)
        return dense(D, (-2, -1), D, "out")(out_BxLxHxK)

    def _qkv_norm(self, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                  v_BxLxHxK: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`norm_placement=qkv`: each projection's output normed over its full width."""
        match self.cfg.norm_placement:
            case NormPlacement.qkv:
                def norm(x_BxLxHxK: jax.Array, name: str) -> jax.Array:
                    B, L, H, K = x_BxLxHxK.shape
                    y = make_norm(self.cfg, name)(x_BxLxHxK.reshape(B, L, H * K))
                    return y.reshape(B, L, H, K).astype(x_BxLxHxK.dtype)
                return (norm(q_BxLxHxK, "q_out_norm"), norm(k_BxLxHxK, "k_out_norm"),
                        norm(v_BxLxHxK, "v_out_norm"))
            case NormPlacement.pre | NormPlacement.output:
                return q_BxLxHxK, k_BxLxHxK, v_BxLxHxK
            case _:
                unhandled("model.norm_placement", self.cfg.norm_placement)

    def _fused(self) -> bool:
        """Fused attention unless asked not to, a probe reads the logits or probabilities (the
        max-logit probe must see exactly the logits the explicit path computes), or the logits
        are soft-capped (jax.nn.dot_product_attention has no cap)."""
        match self.cfg.attn_impl:
            case AttnImpl.explicit:
                return False
            case AttnImpl.auto:
                return auto_fuses(jax.default_backend()) and self.cfg.attn_softcap is None and not (
                    self.is_mutable_collection("intermediates")
                    or self.is_mutable_collection("dynamics"))
            case _:
                unhandled("model.attn_impl", self.cfg.attn_impl)

    def _explicit(self, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array,
                  dtype: jnp.dtype) -> jax.Array:
        """softmax(q·kᵀ)·v with the logits and probabilities written out (and sown if probed)."""
        logits_BxHxLxL = upcast(attn_logits(self.cfg, q_BxLxHxK, k_BxLxHxK, dtype))
        causal_LxL = causal_mask(q_BxLxHxK.shape[1])
        if self.is_mutable_collection(QK_CLIP):
            self.sow(QK_CLIP, "max_logit", jax.lax.stop_gradient(head_max_logits(logits_BxHxLxL)))
        if self.is_mutable_collection(MONITOR):
            self.sow(MONITOR, "max_logit",
                     jax.lax.stop_gradient(jnp.max(head_max_logits(logits_BxHxLxL))))
        capped_BxHxLxL = softcap(logits_BxHxLxL, self.cfg.attn_softcap)
        masked = jnp.where(causal_LxL, capped_BxHxLxL, jnp.finfo(logits_BxHxLxL.dtype).min)
        probs_BxHxLxL = jax.nn.softmax(masked, axis=-1)
        if self.is_mutable_collection("intermediates"):
            # Max pre-softmax logit (before any soft-cap) over heads and positions.
            self.sow("intermediates", "max_logit", jnp.max(head_max_logits(logits_BxHxLxL)))
            plogp = jnp.where(causal_LxL, probs_BxHxLxL * jnp.log(probs_BxHxLxL + 1e-30), 0.0)
            entropy_BxHxL = -jnp.sum(plogp, axis=-1)
            self.sow("intermediates", "entropy", jnp.mean(entropy_BxHxL))
            # The least of the heads' mean entropies: one collapsing head shows (σReparam).
            self.sow("intermediates", "entropy_min_head", jnp.min(
                jnp.mean(entropy_BxHxL, axis=(0, 2))))
        sow_dynamics(self, "probs", probs_BxHxLxL)
        return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL.astype(dtype), v_BxLxHxK)


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        D, F = cfg.d_model, mlp_hidden(cfg)
        dense = lambda feats, fan_in, name: nn.Dense(  # noqa: E731
            feats, use_bias=cfg.use_bias, name=name, **linear_policy(cfg, fan_in))
        match cfg.mlp:
            case MlpKind.swiglu:
                gate_BxLxF = dense(F, D, "gate")(x_BxLxD)
                up_BxLxF = dense(F, D, "up")(x_BxLxD)
                sow_dynamics(self, "gate_pre", gate_BxLxF)
                sow_dynamics(self, "up_out", up_BxLxF)
                h_BxLxF = nn.swish(gate_BxLxF) * up_BxLxF
            case MlpKind.gelu:
                up_BxLxF = dense(F, D, "up")(x_BxLxD)
                sow_dynamics(self, "up_out", up_BxLxF)
                h_BxLxF = nn.gelu(up_BxLxF)
            case _:
                unhandled("model.mlp", cfg.mlp)
        sow_dynamics(self, "down_in", h_BxLxF)
        return dense(D, F, "down")(h_BxLxF)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        sow_dynamics(self, "resid_in", x_BxLxD)
        x_BxLxD = self._sublayer(x_BxLxD, Attention(cfg, name="attn"), "ln_attn", "attn_in")
        sow_dynamics(self, "resid_mid", x_BxLxD)
        x_BxLxD = self._sublayer(x_BxLxD, Mlp(cfg, name="mlp"), "ln_mlp", "mlp_in")
        sow_dynamics(self, "resid_out", x_BxLxD)
        if self.is_mutable_collection("intermediates"):
            a = jnp.abs(upcast(x_BxLxD))
            self.sow("intermediates", "act_max_abs", jnp.max(a))
            self.sow("intermediates", "act_max_median_ratio", jnp.max(a) / jnp.median(a))
        return x_BxLxD

    def _sublayer(self, x_BxLxD: jax.Array, f: nn.Module, norm: str, site: str) -> jax.Array:
        """The residual update of one sublayer f, its norm where `model.norm_placement` puts it;
        `site` is f's input as the dynamics probes name it."""
        match self.cfg.norm_placement:
            case NormPlacement.pre:
                pass
            case NormPlacement.qkv if isinstance(f, Attention):  # its q, k, v are normed instead
                sow_dynamics(self, site, x_BxLxD)
                return x_BxLxD + f(x_BxLxD)
            case NormPlacement.qkv:
                pass
            case NormPlacement.output:
                sow_dynamics(self, site, x_BxLxD)
                return x_BxLxD + make_norm(self.cfg, f"{norm}_out")(f(x_BxLxD))
            case _:
                unhandled("model.norm_placement", self.cfg.norm_placement)
        h_BxLxD = make_norm(self.cfg, norm)(x_BxLxD)
        sow_dynamics(self, site, h_BxLxD)
        return x_BxLxD + f(h_BxLxD)


class Transformer(nn.Module):
    """Token ids (B, L) -> float32 logits (B, L, V); with `hidden_only`, the final-norm hidden
    states (B, L, D) that `readout` turns into those logits."""

    cfg: ModelConfig
    vocab_size: int
    seq_len: int

    @nn.compact
    def __call__(self, tokens_BxL: jax.Array, hidden_only: bool = False) -> jax.Array:
        cfg = self.cfg
        D, dtype = cfg.d_model, compute_dtype(cfg)
        embed = nn.Embed(self.vocab_size, D, name="embed",
                         **param_policy(cfg, self.vocab_size, "embed", "embedding_init"))
        x_BxLxD = embed(tokens_BxL)
        match cfg.pos_emb:
            case PosEmb.learned:
                pos_LxD = self.param("pos_embed",
                                     trunc_normal(init_std(cfg, self.seq_len, "embed")),
                                     (self.seq_len, D), wide_dtype(cfg))
                x_BxLxD = x_BxLxD + pos_LxD[None, : tokens_BxL.shape[1]].astype(dtype)
            case PosEmb.rope:
                pass  # rotates q and k in Attention
            case _:
                unhandled("model.pos_emb", cfg.pos_emb)
        for i in range(cfg.n_layers):
            x_BxLxD = Block(cfg, name=f"block_{i}")(x_BxLxD)
        sow_dynamics(self, "final_norm_in", x_BxLxD)
        x_BxLxD = make_norm(cfg, "ln_final")(x_BxLxD)
        sow_dynamics(self, "final_out", x_BxLxD)
        if cfg.tie_embeddings:
            table_VxD = embed.embedding
        else:
            # Stored V x D like the embedding: on CPU the x·Wᵀ layout runs ~1.6x faster at
            # V=32768 than a D x V Dense kernel (benchmarks/step_speed.py).
            table_VxD = nn.Embed(self.vocab_size, D, name="unembed",
                                 **param_policy(cfg, D, "readout", "embedding_init")).embedding
        if hidden_only:  # the chunked loss (proxies/step.py) applies `readout` itself
            return x_BxLxD
        logits_BxLxV = readout(cfg, table_VxD, x_BxLxD)
        sow_dynamics(self, "logits", logits_BxLxV)
        return logits_BxLxV


def readout_table(cfg: ModelConfig, params: Any) -> jax.Array:
    """The (V, D) matrix the readout multiplies by: the token embedding when tied."""
    return params["embed" if cfg.tie_embeddings else "unembed"]["embedding"]


def readout(cfg: ModelConfig, table_VxD: jax.Array, x_NxD: jax.Array) -> jax.Array:
    """Float32 logits x·Wᵀ (the product in the compute dtype) for any leading shape of x; the
    one readout of both the model and the chunked loss."""
    dtype = compute_dtype(cfg)
    logits_NxV = upcast(jnp.dot(x_NxD.astype(dtype), table_VxD.astype(dtype).T))
    if is_mup(cfg):  # readout multiplier 1/m keeps logits O(1) with width
        logits_NxV = logits_NxV / width_mult(cfg)
    return softcap(logits_NxV, cfg.logit_softcap)


def count_params(params) -> tuple[int, int]:
    """(all params, non-embedding params = all minus token/position embeddings and readout)."""
    total = sum(x.size for x in jax.tree_util.tree_leaves(params))
    p = params.get("params", params)
    emb = sum(p[k].size if k == "pos_embed" else p[k]["embedding"].size
              for k in ("embed", "pos_embed", "unembed") if k in p)
    return int(total), int(total - emb)
