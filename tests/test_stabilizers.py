"""The stabilisers of large runs since the paper, each against a brute-force reference: soft-caps,
QK-clip, σReparam, StableAdamW's update clipping, norm placement; and like every toggle they
agree across attention paths, vmapped groups and resumes."""

import math
import shutil
from pathlib import Path

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

import proxies.model as model_lib
from proxies.config import Config, ConfigError, validate
from proxies.model import QK_CLIP, SIGMA_REPARAM, SigmaReparam, Transformer, power_iteration
from proxies.optim import adamw, hparams_from_config, optimizer_hparams, qk_clip
from proxies.step import head_max_logits_by_layer, init_state, loss_and_aux, make_train_step
from proxies.train import train, train_group
from sweeps import stabilizers as S
from sweeps import panels as P
from sweeps.verdicts import interval, with_sd_floor
from tests.conftest import assert_same_records, records

V, L = 64, 16


def model_cfg(*overrides: str):
    base = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "train.seq_len=16",
            "train.batch_size=4"]
    return OmegaConf.merge(OmegaConf.structured(Config),
                           OmegaConf.from_dotlist(base + list(overrides)))


def setup(*overrides: str, seed: int = 0):
    cfg = model_cfg(*overrides)
    model = Transformer(cfg.model, V, L)
    state = init_state(model, cfg, jax.random.key(seed))
    batch = jax.random.randint(jax.random.key(seed + 100), (4, L + 1), 0, V)
    return cfg, model, state, batch


def causal_softmax(logits_BxHxLxL: np.ndarray) -> np.ndarray:
    masked = np.where(np.tril(np.ones((L, L), bool)), logits_BxHxLxL, -np.inf)
    e = np.exp(masked - masked.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def head_max(variables, model, batch) -> np.ndarray:
    """(layers, H) max attention logits, from the forward pass's `qk_clip` collection."""
    _, cols = model.apply(variables, batch[:, :-1], mutable=[QK_CLIP])
    by_layer = head_max_logits_by_layer(cols[QK_CLIP])
    return np.stack([np.asarray(by_layer[f"block_{i}"]) for i in range(len(by_layer))])


# ------------------------------------------------------------------- stabilisers off

def layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * p["scale"] \
        + p["bias"]


def reference_loss(params, tokens_BxLp1, z_coef: float):
    """§2.1's pre-LN Transformer written out by hand (learned positions, biases but on the key,
    tanh-GELU MLP, untied readout), then mean CE + z_coef · mean((log Z)²)."""
    inputs, targets = tokens_BxLp1[:, :-1], tokens_BxLp1[:, 1:]
    n = inputs.shape[1]
    x = params["embed"]["embedding"][inputs] + params["pos_embed"][:n]
    for i in range(len([k for k in params if k.startswith("block_")])):
        b = params[f"block_{i}"]
        h = layer_norm(x, b["ln_attn"])
        a = b["attn"]
        q = jnp.einsum("bld,dhk->blhk", h, a["query"]["kernel"]) + a["query"]["bias"]
        k = jnp.einsum("bld,dhk->blhk", h, a["key"]["kernel"])
        v = jnp.einsum("bld,dhk->blhk", h, a["value"]["kernel"]) + a["value"]["bias"]
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
        logits = jnp.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
        ctx = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(logits, -1), v)
        x = x + jnp.einsum("blhk,hkd->bld", ctx, a["out"]["kernel"]) + a["out"]["bias"]
        h = layer_norm(x, b["ln_mlp"])
        up = h @ b["mlp"]["up"]["kernel"] + b["mlp"]["up"]["bias"]
        gelu = 0.5 * up * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (up + 0.044715 * up ** 3)))
        x = x + gelu @ b["mlp"]["down"]["kernel"] + b["mlp"]["down"]["bias"]
    logits_BxLxV = layer_norm(x, params["ln_final"]) @ params["unembed"]["embedding"].T
    log_z = jax.scipy.special.logsumexp(logits_BxLxV, -1)
    target = jnp.take_along_axis(logits_BxLxV, targets[..., None], -1)[..., 0]
    return jnp.mean(log_z - target) + z_coef * jnp.mean(log_z ** 2)


def test_with_every_stabiliser_off_the_loss_and_gradient_are_the_plain_transformers(float64):
    """The default model (every stabiliser off: no caps, no σReparam, pre-norm, no QK-clip)
    computes the hand-written §2.1 model's loss and gradient, in float64 to 1e-10 relative:
    whatever the stabilisers add stays out of the baseline's step."""
    cfg, model, state, batch = setup(float64, "optim.z_loss=1e-2")
    got, got_grads = jax.value_and_grad(lambda p: loss_and_aux(
        model, {**state.variables, "params": p}, batch[:, :-1], batch[:, 1:], 1e-2, 0)[0])(
        state.params)
    want, want_grads = jax.value_and_grad(reference_loss)(state.params, batch, 1e-2)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(want_grads))
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got_grads)[0],
                            jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=jax.tree_util.keystr(path))
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    _, metrics = jax.jit(make_train_step(model, cfg))(state, batch, hp)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-10)
    assert not {"qk_clipped_heads", "update_clipped_frac"} & set(metrics)


# ------------------------------------------------------------------------------- soft-caps

def test_attention_softcap_is_c_tanh_of_the_logits_and_probes_read_them_uncapped():
    c = 0.5
    cfg, model, state, batch = setup(f"model.attn_softcap={c}")
    _, cols = model.apply(state.variables, batch[:, :-1], mutable=["dynamics", "intermediates"])
    attn, inter = cols["dynamics"]["block_0"]["attn"], cols["intermediates"]["block_0"]["attn"]
    q, k = np.asarray(attn["q"][0], np.float64), np.asarray(attn["k"][0], np.float64)
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    np.testing.assert_allclose(attn["probs"][0], causal_softmax(c * np.tanh(logits / c)),
                               atol=2e-6)
    uncapped_max = np.max(np.where(np.tril(np.ones((L, L), bool)), logits, -np.inf))
    assert uncapped_max > c  # the cap binds on this batch ...
    np.testing.assert_allclose(inter["max_logit"][0], uncapped_max, rtol=1e-5)  # ... not the probe


@pytest.mark.parametrize("attn_cap", [[], ["model.attn_softcap=0.5"]], ids=["alone", "both"])
def test_output_logit_softcap_is_c_tanh_of_the_uncapped_logits(attn_cap):
    """With both caps set, each reads its own c: the output cap is 0.3·tanh(z/0.3) of the logits
    z of the model with the attention cap alone."""
    c = 0.3
    cfg, model, state, batch = setup(*attn_cap)
    capped = Transformer(model_cfg(*attn_cap, f"model.logit_softcap={c}").model, V, L)
    plain = np.asarray(model.apply(state.variables, batch[:, :-1]), np.float64)
    assert np.abs(plain).max() > 0.5  # past both caps: a cap read from the wrong key shows
    np.testing.assert_allclose(capped.apply(state.variables, batch[:, :-1]),
                               c * np.tanh(plain / c), atol=1e-6)


# ------------------------------------------------------------------------------- QK-clip

@pytest.mark.parametrize("variant", [[], ["model.norm_placement=qkv"],
                                     ["model.qk_layernorm=true"], ["model.pos_emb=rope"]])
def test_qk_clip_brings_each_head_over_tau_down_to_tau(variant):
    cfg, model, state, batch = setup(*variant, "model.use_bias=true")
    if "model.qk_layernorm=true" in variant:  # norms at init are the identity: perturb them
        state = state.replace(params=jax.tree_util.tree_map(
            lambda x: x * 1.7 if x.ndim == 1 else x, state.params))
    before = head_max(state.variables, model, batch)
    _, cols = model.apply(state.variables, batch[:, :-1], mutable=[QK_CLIP])
    s_max = head_max_logits_by_layer(cols[QK_CLIP])
    for i in range(len(before)):  # one layer at a time: a clipped layer changes the next's input
        tau = float(np.median(before[i]))
        params, n_clipped = qk_clip(state.params, {f"block_{i}": s_max[f"block_{i}"]}, tau,
                                    cfg.model)
        after = head_max(state.replace(params=params).variables, model, batch)
        assert int(n_clipped) == int(np.sum(before[i] > tau)) > 0
        np.testing.assert_array_equal(after[:i], before[:i])
        if cfg.model.qk_layernorm:  # the heads share the q/k norms: the worst head's factor
            expect = before[i] * min(1.0, tau / before[i].max())
        else:
            expect = np.minimum(before[i], tau)
        np.testing.assert_allclose(after[i], expect, rtol=1e-5)


def test_the_step_clips_the_updated_weights_by_the_max_logits_of_its_own_batch():
    tau = 0.2
    cfg, model, state, batch = setup()
    clip_cfg = model_cfg(f"optim.qk_clip_tau={tau}")
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    plain, _ = jax.jit(make_train_step(model, cfg))(state, batch, hp)
    clipped, metrics = jax.jit(make_train_step(model, clip_cfg))(state, batch, hp)
    _, cols = model.apply(state.variables, batch[:, :-1], mutable=[QK_CLIP])
    expect, n = qk_clip(plain.params, head_max_logits_by_layer(cols[QK_CLIP]), tau, cfg.model)
    assert int(metrics["qk_clipped_heads"]) == int(n) > 0
    for a, b in zip(jax.tree_util.tree_leaves(clipped.params), jax.tree_util.tree_leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_qk_clip_refuses_what_it_cannot_clip():
    for extra in ("model.attn_kappa=100", "model.sigma_reparam=true"):
        with pytest.raises(ConfigError, match="qk_clip_tau"):
            validate(model_cfg("optim.qk_clip_tau=100", extra))


# ------------------------------------------------------------------------------- σReparam

@pytest.mark.parametrize("shape", [(32, 32), (48, 16), (16, 96)])
def test_power_iteration_finds_the_largest_singular_value(shape):
    W = np.asarray(jax.random.normal(jax.random.key(shape[0]), shape))
    u = power_iteration(jnp.asarray(W), jax.random.normal(jax.random.key(1), (shape[1],)), 300)
    np.testing.assert_allclose(np.linalg.norm(W @ np.asarray(u)),
                               np.linalg.svd(W, compute_uv=False)[0], rtol=1e-4)


def test_sigma_reparam_layers_start_as_their_kernels_with_sigma_from_svd():
    cfg, model, state, batch = setup("model.sigma_reparam=true")
    p, u = state.params["block_0"], state.model_state[SIGMA_REPARAM]["block_0"]
    W = np.asarray(p["mlp"]["up"]["kernel"])
    sigma_svd = np.linalg.svd(W, compute_uv=False)[0]
    u_up = np.asarray(u["mlp"]["up"]["SigmaReparam_0"]["u"])
    np.testing.assert_allclose(np.linalg.norm(W @ u_up), sigma_svd, rtol=1e-3)
    np.testing.assert_allclose(p["mlp"]["up"]["SigmaReparam_0"]["gamma"], sigma_svd, rtol=1e-3)
    # γ = σ at init: the model computes what the plain model with the same kernels computes
    plain_model = Transformer(model_cfg().model, V, L)
    strip = lambda t: {k: strip(v) for k, v in t.items() if k != "SigmaReparam_0"} \
        if isinstance(t, dict) else t  # noqa: E731
    np.testing.assert_allclose(model.apply(state.variables, batch[:, :-1]),
                               plain_model.apply({"params": strip(state.params)}, batch[:, :-1]),
                               rtol=2e-4, atol=2e-4)
    # ... and γ scales the layer: Ŵ = (γ/σ)·W, so doubling γ doubles the layer's output
    up = lambda g: model.apply(  # noqa: E731
        {**state.variables, "params": jax.tree_util.tree_map_with_path(
            lambda path, x: x * g if "up" in str(path) and "gamma" in str(path) else x,
            state.params)}, batch[:, :-1], mutable=["dynamics"])[1]["dynamics"]["block_0"]["mlp"]
    np.testing.assert_allclose(up(2.0)["up_out"][0] - 2 * up(1.0)["up_out"][0],
                               -np.asarray(p["mlp"]["up"]["bias"]) * np.ones((4, L, 1)), atol=1e-5)


def test_the_step_advances_the_power_iteration_vectors_in_the_state():
    cfg, model, state, batch = setup("model.sigma_reparam=true")
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    new, _ = jax.jit(make_train_step(model, cfg))(state, batch, hp)
    u0 = state.model_state[SIGMA_REPARAM]["block_1"]["attn"]["out"]["SigmaReparam_0"]["u"]
    u1 = new.model_state[SIGMA_REPARAM]["block_1"]["attn"]["out"]["SigmaReparam_0"]["u"]
    expect = np.asarray(power_iteration(jnp.asarray(state.params["block_1"]["attn"]["out"][
        "kernel"]).reshape(32, 32), u0, 1))
    np.testing.assert_allclose(u1, expect, rtol=1e-5, atol=1e-6)  # from the pre-update W
    assert not np.allclose(u0, u1)


def test_sigma_reparam_gradient_is_the_analytic_one_with_u_and_v_held_fixed(float64):
    """y = x·(γ/σ)W with σ = vᵀWu, u one power step from the stored vector and v = Wu/‖Wu‖,
    both held fixed (spectral normalisation's gradient). For L = Σ R∘y and G = xᵀR:
    ∂L/∂W = (γ/σ)·G − (γ/σ²)·⟨G, W⟩·v uᵀ and ∂L/∂γ = ⟨G, W⟩/σ. From a stored u far from
    converged (a random one), so a gradient through u and v would differ (float64)."""
    rng = np.random.default_rng(0)
    n_in, n_out, gamma = 12, 7, 1.7
    layer = nn.Dense(n_out, use_bias=False, dot_general_cls=SigmaReparam,
                     param_dtype=jnp.float64, dtype=jnp.float64)
    x = rng.standard_normal((5, n_in))
    R = rng.standard_normal((5, n_out))
    W = rng.standard_normal((n_in, n_out))
    u0 = rng.standard_normal(n_out)
    u0 /= np.linalg.norm(u0)

    def loss(W_, gamma_):
        params = {"kernel": W_, "SigmaReparam_0": {"gamma": gamma_}}
        y = layer.apply({"params": params, SIGMA_REPARAM: {"SigmaReparam_0": {"u": u0}}}, x)
        return jnp.sum(R * y)

    dW, dgamma = jax.grad(loss, argnums=(0, 1))(jnp.asarray(W), jnp.asarray(gamma))
    unit = lambda a: a / np.linalg.norm(a)  # noqa: E731
    u = unit(W.T @ unit(W @ u0))
    v = unit(W @ u)
    sigma = v @ W @ u
    G = x.T @ R
    np.testing.assert_allclose(dW, gamma / sigma * G - gamma / sigma**2 * np.sum(G * W)
                               * np.outer(v, u), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, np.sum(G * W) / sigma, rtol=1e-10)


# ------------------------------------------------------------------------------ update clip

def test_update_clip_divides_each_tensors_step_by_max_1_rms_g_over_sqrt_v_hat():
    cfg = model_cfg("optim.weight_decay=0.1", "optim.eps=1e-8")
    hp = optimizer_hparams(cfg)
    lr = 0.01
    params = {"a": jnp.ones((4, 3)), "b": jnp.ones((5,))}
    tx = adamw(hp, jnp.asarray(lr), {"a": 1.0, "b": 1.0}, {"a": True, "b": False}, False, True)
    rng = np.random.default_rng(0)
    g1 = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=5)}
    g2 = {"a": 50 * rng.normal(size=(4, 3)), "b": 0.5 * g1["b"]}  # a's gradient jumps
    state, theta = tx.init(params), {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: 0.0 for k in params}
    v = {k: 0.0 for k in params}
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
    for t, g in enumerate((g1, g2), start=1):
        upd, state = tx.update(jax.tree_util.tree_map(jnp.asarray, g), state, params)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            rms = np.sqrt(np.mean(g[k] ** 2 / np.maximum(v_hat, eps**2)))
            step = m_hat / (np.sqrt(v_hat) + eps) + (wd * theta[k] if k == "a" else 0)
            np.testing.assert_allclose(upd[k], -lr * step / max(1.0, rms), rtol=2e-5)
    assert float(state[0].clipped_frac) == 0.5  # step 2: a shrank, b did not


# -------------------------------------------------------------------------- norm placement

def test_output_norm_placement_norms_each_sublayers_output():
    cfg, model, state, batch = setup("model.norm_placement=output", "model.norm=rmsnorm")
    blk = state.params["block_0"]
    assert {"ln_attn_out", "ln_mlp_out"} <= set(blk) and "ln_attn" not in blk
    _, cols = model.apply(state.variables, batch[:, :-1], mutable=["dynamics"])
    d = cols["dynamics"]["block_0"]
    x, mid = np.asarray(d["resid_in"][0], np.float64), np.asarray(d["resid_mid"][0], np.float64)
    np.testing.assert_allclose(d["attn_in"][0], x)  # the attention reads the stream unnormed
    update = mid - x  # = RMSNorm(attn(x)) with scale 1 at init: unit RMS per token
    np.testing.assert_allclose(np.sqrt(np.mean(update**2, -1)), 1.0, rtol=1e-3)  # eps 1e-6


def test_qkv_norm_placement_norms_q_k_v_not_the_attention_input():
    cfg, model, state, batch = setup("model.norm_placement=qkv", "model.norm=rmsnorm")
    blk = state.params["block_0"]
    assert "ln_attn" not in blk and "ln_mlp" in blk
    assert {"q_out_norm", "k_out_norm", "v_out_norm"} <= set(blk["attn"])
    _, cols = model.apply(state.variables, batch[:, :-1], mutable=["dynamics"])
    a = cols["dynamics"]["block_0"]["attn"]
    for name in ("q", "k", "v"):  # each normed over its full width H·K (scale 1 at init)
        x = np.asarray(a[name][0], np.float64).reshape(4, L, -1)
        np.testing.assert_allclose(np.sqrt(np.mean(x**2, -1)), 1.0, rtol=1e-3)


# ------------------------------------------------------- the same run, whichever way it runs

# Combined so each path is covered once. RMSNorm: a LayerNorm bias on k (like γ of σReparam
# before a norm) has an exactly zero gradient, so Adam walks it on rounding noise, which vmap and
# a single run round differently; the loss cannot see it, but the probes (and QK-clip) can.
STABILIZED = {
    "caps_clips_output": ["model.attn_softcap=1.0", "model.logit_softcap=5.0",
                          "optim.qk_clip_tau=0.5", "optim.update_clip=true",
                          "model.norm_placement=output", "model.norm=rmsnorm"],
    "sigma": ["model.sigma_reparam=true"],
    "qkv_qkln_clip": ["model.norm_placement=qkv", "model.qk_layernorm=true",
                      "optim.qk_clip_tau=0.5", "model.norm=rmsnorm"],
}


# The same toggles less the attention soft-cap, which the fused kernel has no place for (with it
# both sides take the explicit path, and the comparison could not fail).
FUSABLE = {"clips_output": [o for o in STABILIZED["caps_clips_output"] if "attn_softcap" not in o],
           "sigma": STABILIZED["sigma"], "qkv_qkln_clip": STABILIZED["qkv_qkln_clip"]}


# Fused against explicit attention in float32, the dtype both run in: JAX's fused kernel
# takes its softmax in float32 whatever the input dtype, so float64 cannot make the two agree
# closer (measured in float64: gradients 2.1e-7 apart). Measured in float32 over these cases ×
# 3 seeds, 2 threads and 1: loss equal, gradients <= 2.3e-7 of the tree's largest entry, so
# FUSED_TOL sits 20x above that, and far below what a wrong scale or mask moves (> 1e-3).
FUSED_TOL = 5e-6


@pytest.mark.parametrize("name", FUSABLE)
def test_fused_attention_path_gives_the_explicit_paths_loss_and_gradient(name, monkeypatch):
    """Loss, gradients and the QK-clip logits of one step, fused (counted: every layer takes
    it) against explicit attention, to FUSED_TOL of each tree's largest entry."""
    cfg, model, state, batch = setup(*FUSABLE[name])
    explicit = Transformer(model_cfg(*FUSABLE[name], "model.attn_impl=explicit").model, V, L)
    monkeypatch.setattr(model_lib, "auto_fuses", lambda backend: True)
    fused = Transformer(model_cfg(*FUSABLE[name], "model.attn_impl=auto").model, V, L)
    calls = []
    real = model_lib.fused_attention
    monkeypatch.setattr(model_lib, "fused_attention", lambda *a: calls.append(1) or real(*a))
    mutable = (QK_CLIP,) if cfg.optim.qk_clip_tau else ()

    def run(m):
        fn = lambda p: loss_and_aux(m, {**state.variables, "params": p}, batch[:, :-1],  # noqa
                                    batch[:, 1:], 1e-4, 0, mutable)
        return jax.value_and_grad(fn, has_aux=True)(state.params)
    (la, aux_a), ga = run(explicit)
    assert not calls
    (lb, aux_b), gb = run(fused)
    assert len(calls) == cfg.model.n_layers
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    for tree_a, tree_b in ((ga, gb), (aux_a, aux_b)):
        leaves_a, leaves_b = jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)
        scale = max(float(np.max(np.abs(b))) for b in leaves_b)
        for a, b in zip(leaves_a, leaves_b):
            np.testing.assert_allclose(a, b, rtol=0, atol=FUSED_TOL * scale)


@pytest.mark.parametrize("name", STABILIZED)
def test_with_each_stabilizer_a_vmapped_group_matches_runs_one_by_one_and_resumes_exactly(
        name, make_cfg, float64):
    """Each member of a vmapped group logs what it logs trained alone (float64: conftest.py's
    F64_RTOL), and a run resumed from an earlier checkpoint logs the same values bit for bit."""
    lrs = ["3e-3", "3e-2"]
    group = [make_cfg(float64, *STABILIZED[name], f"optim.lr={lr}", out=f"g{lr}") for lr in lrs]
    train_group(group, vmap=True)
    solo = [make_cfg(float64, *STABILIZED[name], f"optim.lr={lr}", out=f"s{lr}") for lr in lrs]
    for g, s in zip(group, solo):
        train(s)
        assert_same_records(g, s)
    cut = make_cfg(float64, *STABILIZED[name], f"optim.lr={lrs[1]}", out="cut")
    train(cut, stop_after=7)
    shutil.rmtree(Path(cut.out_dir) / "checkpoints" / "7")  # resume from step 4
    train(cut)
    assert records(cut) == records(solo[1])
    stab = {"caps_clips_output": ["train/qk_clipped_heads", "train/update_clipped_frac"],
            "sigma": [], "qkv_qkln_clip": ["train/qk_clipped_heads"]}[name]
    assert all(k in records(solo[1])[-1] for k in stab)


# ------------------------------------------------- sweeps/stabilizers.py's rules on synthetic data

def per_seed_table(**by_setting) -> pd.DataFrame:
    """A per-seed statistics table: setting -> {column: [seed 0 value, seed 1 value, ...]}."""
    rows = []
    for setting, cols in by_setting.items():
        for seed in range(len(next(iter(cols.values())))):
            rows.append({"setting": setting, "train.seed": seed,
                         **{k: v[seed] for k, v in cols.items()}})
    return pd.DataFrame(rows)


# A grid fine enough that its rounding (steps of 0.01 decades) decides nothing below.
FINE = 10 ** np.arange(-2.0, 0.0 + 1e-9, 0.01)


def test_softcap_lr_claim_needs_1_5x_in_every_seed_and_room_on_the_grid():
    ps = lambda capped: per_seed_table(  # noqa: E731
        qk_layernorm={"top_trained_lr": [0.3] * len(capped)},
        **{"attn_softcap+qk_layernorm": {"top_trained_lr": capped}})
    assert S.judge_softcap_lr(ps([0.6, 0.6, 0.6]), FINE)[0] == "true"  # 2x
    assert S.judge_softcap_lr(ps([0.3, 0.33, 0.3]), FINE)[0] == "false"  # 1x, 1.1x
    assert S.judge_softcap_lr(ps([0.6, 0.378, 0.6]), FINE)[0] == "inconclusive"  # seeds disagree
    assert S.judge_softcap_lr(ps([0.6, 0.6]), FINE)[0] == "inconclusive"  # 2 seeds: no verdict
    censored = per_seed_table(qk_layernorm={"top_trained_lr": [1.0, 0.6, 0.6]},
                              **{"attn_softcap+qk_layernorm": {"top_trained_lr": [1.0] * 3}})
    assert S.judge_softcap_lr(censored, FINE)[0] == "inconclusive"


def test_softcap_lr_claim_is_no_surer_than_the_lr_grid_resolves():
    """Three seeds on the same grid LRs have no spread, yet each edge is known only to its grid
    step: on a half-decade grid (0.3, 1, 3, ...), soft-cap one step above qk-LN (3.3×, each
    seed) is inconclusive, as the true ratio may be anywhere from ~1 to ~10; two steps above
    (10×) is "true"; "false" (at Bonferroni's level for the four claims) takes two steps below.
    The floor is the rounding's sd: a uniform error of one step on each arm, √(2/12) steps."""
    half = np.array([0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    ps = lambda capped: per_seed_table(  # noqa: E731
        qk_layernorm={"top_trained_lr": [0.3] * 3},
        **{"attn_softcap+qk_layernorm": {"top_trained_lr": [capped] * 3}})
    assert S.judge_softcap_lr(ps(1.0), FINE * 100)[0] == "true"  # a fine grid: 3.3× is sure
    assert S.judge_softcap_lr(ps(1.0), half)[0] == "inconclusive"
    assert S.judge_softcap_lr(ps(3.0), half)[0] == "true"
    assert S.judge_softcap_lr(ps(0.1), half)[0] == "inconclusive"
    assert S.judge_softcap_lr(ps(0.03), half)[0] == "false"
    assert P.rounding_sd([0.3, 1.0], half) == pytest.approx(0.5 * np.sqrt(1 / 12), abs=0.02)
    e = with_sd_floor(interval([0.5, 0.5, 0.5]), 0.2)
    assert e.sd == 0.2 and e.lo < e.mean < e.hi
    spread = interval([0.2, 0.9, 1.6])  # seeds that differ more than the rounding keep theirs
    assert with_sd_floor(spread, 0.2) == spread


def test_qk_clip_claim_needs_logits_held_a_small_cost_and_something_to_clip():
    ps = lambda clipped, cost, none_logit=500.0: per_seed_table(  # noqa: E731
        none={"max_logit_any_lr": [none_logit] * len(cost),
              "best_loss": [2.0, 2.1, 2.2][:len(cost)]},
        qk_clip={"max_logit_any_lr": clipped,
                 "best_loss": [b + c for b, c in zip([2.0, 2.1, 2.2], cost)]})
    assert S.judge_qk_clip(ps([29.0, 32.0, 30.0], [0.0, 0.01, 0.005]), 30.0)[0] == "true"
    assert S.judge_qk_clip(ps([29.0, 60.0, 29.0], [0.0, 0.01, 0.005]), 30.0)[0] == "false"  # held?
    assert S.judge_qk_clip(ps([29.0] * 3, [0.2, 0.22, 0.21]), 30.0)[0] == "false"  # costly
    assert S.judge_qk_clip(ps([29.0] * 3, [0.0, 0.05, 0.02]), 30.0)[0] == "inconclusive"
    assert S.judge_qk_clip(ps([9.0] * 3, [0.0] * 3, none_logit=20.0), 30.0)[0] == "inconclusive"
    assert S.judge_qk_clip(ps([29.0, 32.0], [0.0, 0.01]), 30.0)[0] == "inconclusive"  # 2 seeds


def test_sigma_reparam_claim_needs_the_baseline_to_collapse_and_sigma_not_to():
    ps = lambda none, sigma: per_seed_table(  # noqa: E731
        none={"top_lr_entropy": none, "top_lr_entropy_init": [2.0] * len(none)},
        sigma_reparam={"top_lr_entropy": sigma, "top_lr_entropy_init": [2.0] * len(sigma)})
    assert S.judge_sigma_reparam(ps([0.1, 0.2, 0.15], [1.5, 1.8, 1.6]))[0] == "true"
    assert S.judge_sigma_reparam(ps([0.1, 0.2, 0.15], [0.3, 0.1, 0.2]))[0] == "false"
    assert S.judge_sigma_reparam(ps([0.1, 0.2, 0.15], [0.3, 1.8, 0.2]))[0] == "inconclusive"
    assert S.judge_sigma_reparam(ps([1.9, 0.2, 0.1], [1.5, 1.8, 1.6]))[0] == "inconclusive"
    assert S.judge_sigma_reparam(ps([0.1, 0.2], [1.5, 1.8]))[0] == "inconclusive"  # 2 seeds


def test_update_clip_claim_is_lower_lr_sensitivity_in_every_seed():
    ps = lambda clipped: per_seed_table(  # noqa: E731
        none={"lr_sensitivity": [0.30, 0.32, 0.31][:len(clipped)]},
        update_clip={"lr_sensitivity": clipped})
    assert S.judge_update_clip(ps([0.20, 0.25, 0.22]), 7)[0] == "true"
    assert S.judge_update_clip(ps([0.35, 0.36, 0.36]), 7)[0] == "false"
    assert S.judge_update_clip(ps([0.20, 0.40, 0.30]), 7)[0] == "inconclusive"
    assert S.judge_update_clip(ps([0.20, 0.25, 0.22]), 1)[0] == "inconclusive"  # one LR: 0
    assert S.judge_update_clip(ps([0.20, 0.25]), 7)[0] == "inconclusive"  # 2 seeds


def test_each_table_row_is_named_by_the_stabilisers_it_turns_on():
    from sweeps.core import SPECS
    for name, keys in S.settings(SPECS["laptop"]).items():
        assert S.setting_of(pd.Series({k: (float("nan") if v is None else v)
                                       for k, v in keys.items()})) == name


def stabilizer_table(tail: dict) -> pd.DataFrame:
    """Two settings on the laptop stabiliser grid, 3 seeds: a parabola in log10 LR, best at 1e-2,
    diverged (NaN) from LR 0.5 on unless `tail[setting]` gives the loss there."""
    from sweeps.core import SPECS
    rows = []
    for setting in ("qk_layernorm", "logit_softcap+qk_layernorm"):
        for seed in (0, 1, 2):
            for lr in SPECS["laptop"].stabilizer_lrs:
                loss = 2.0 + 0.05 * (np.log10(lr) + 2) ** 2 + 0.01 * seed
                if lr > 0.5:
                    loss = tail.get(setting, float("nan"))
                rows.append({"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2,
                             "optim.lr": lr, "train.seed": seed, "final_eval_ce": loss,
                             "loss_at_init": 6.0, "diverged": not np.isfinite(loss),
                             "status": "done", "n_params_nonembed": 98304.0, "max_attn_logit": 8.0,
                             "setting": setting})
    return pd.DataFrame(rows)


def test_lr_sensitivity_is_also_read_over_the_other_results_lrs_where_the_grid_goes_further():
    """A setting that fails less badly where every other has diverged leads over the grid to 1,
    and not over the grid up to 0.3: both are reported, each the paper's mean over half decades."""
    df = stabilizer_table(tail={"logit_softcap+qk_layernorm": 4.5})
    whole, upto = S.sensitivity_upto(df, 1.0), S.sensitivity_upto(df, 0.3)
    half = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    cols = {}
    for setting, tail in (("qk_layernorm", 6.0), ("logit_softcap+qk_layernorm", 4.5)):
        cols[setting] = {"lr_sensitivity": [], "lr_sensitivity_main": [], "best_loss": [2.0] * 3,
                         "near_best_lr": [0.03] * 3, "top_lr_max_logit": [8.0] * 3,
                         "top_lr_entropy": [2.0] * 3}
        for seed in (0, 1, 2):
            curve = [2.0 + 0.05 * (np.log10(lr) + 2) ** 2 + 0.01 * seed for lr in half]
            excess = [c - min(curve) for c in curve]
            pick = lambda t: t[(t["setting"] == setting) & (t["train.seed"] == seed)]  # noqa
            got_whole = pick(whole)["lr_sensitivity"].iloc[0]
            got_upto = pick(upto)["lr_sensitivity"].iloc[0]
            assert got_whole == pytest.approx(np.mean(excess + [tail - min(curve)]))
            assert got_upto == pytest.approx(np.mean(excess))
            cols[setting]["lr_sensitivity"].append(got_whole)
            cols[setting]["lr_sensitivity_main"].append(got_upto)
    ps = per_seed_table(**cols)
    said = S.redundancy(ps, 0.3)["output soft-cap 30 + qk-LN − qk-LN, LR sensitivity"]
    over_grid, over_main = said.split("; up to LR 0.3: ")
    assert over_grid.endswith("adds to qk-LN")
    assert over_main.endswith("redundant with qk-LN (no lower)")
    assert "(up to LR 0.3: " in S.ranked(ps, 0.3)["1. output soft-cap 30 + qk-LN"]
    one_range = ps.assign(lr_sensitivity_main=ps["lr_sensitivity"])  # the grid is the others'
    assert "up to LR" not in S.redundancy(one_range, 1.0)[
        "output soft-cap 30 + qk-LN − qk-LN, LR sensitivity"]
    assert len(S.sensitivity_upto(df, 1e-3)) == 0  # one half-decade LR: 0 by construction


def test_each_stabiliser_threshold_decides_on_both_sides_of_its_boundary():
    """The claims' numbers, written out (so a moved constant fails): 1.5× the highest LR
    (Rybakov et al.), a max logit of 1.1 τ, a cost of 0.02 nats, half the entropy at init; each
    just inside and just outside, three identical seeds."""
    def softcap(capped: float) -> str:
        return S.judge_softcap_lr(per_seed_table(
            qk_layernorm={"top_trained_lr": [0.2] * 3},
            **{"attn_softcap+qk_layernorm": {"top_trained_lr": [capped] * 3}}),
            np.linspace(0.1, 1.0, 10_000))[0]  # steps of ~1e-4 decades: no rounding
    assert (softcap(0.2 * 1.5 * 1.01), softcap(0.2 * 1.5 * 0.99)) == (
        "true", "false")

    def qk_clip(logit: float, cost: float) -> str:
        return S.judge_qk_clip(per_seed_table(
            none={"max_logit_any_lr": [500.0] * 3, "best_loss": [2.0] * 3},
            qk_clip={"max_logit_any_lr": [logit] * 3, "best_loss": [2.0 + cost] * 3}), 30.0)[0]
    tau_slack = 30.0 * 1.1
    assert (qk_clip(tau_slack * 0.99, 0.0), qk_clip(tau_slack * 1.01, 0.0)) == ("true", "false")
    cost = 0.02
    assert (qk_clip(29.0, cost * 0.9), qk_clip(29.0, cost * 1.1)) == ("true", "false")

    def sigma(base_entropy: float) -> str:
        return S.judge_sigma_reparam(per_seed_table(
            none={"top_lr_entropy": [base_entropy] * 3, "top_lr_entropy_init": [2.0] * 3},
            sigma_reparam={"top_lr_entropy": [1.8] * 3, "top_lr_entropy_init": [2.0] * 3}))[0]
    assert (sigma(2.0 * 0.5 * 0.99), sigma(2.0 * 0.5 * 1.01)) == (
        "true", "inconclusive")  # the baseline must collapse for the claim to be tested


def test_per_seed_reads_each_runs_records_at_the_right_steps(tmp_path):
    """From the runs' metrics.jsonl: the lowest head's entropy at the grid's top LR at the end
    and at init (not the other way round), the max logit after init (the step-0 probe left
    out), and the highest LR that trains."""
    import json
    df = stabilizer_table(tail={}).query("setting == 'qk_layernorm'").copy()
    df["setting"] = "none"
    df["sweep_dir"] = str(tmp_path)
    df["run_dir"] = [f"run{i}" for i in range(len(df))]
    top = df["optim.lr"].max()
    for _, r in df.iterrows():
        d = tmp_path / r["run_dir"]
        d.mkdir()
        at_top = r["optim.lr"] == top
        rows = [{"step": 0, "attn/entropy_min_head": 2.0, "attn/max_logit": 900.0},
                {"step": 100, "attn/entropy_min_head": 1.0,
                 "attn/max_logit": 40.0 + r["train.seed"]},
                {"step": 200, "attn/entropy_min_head": 0.3 if at_top else 1.5,
                 "attn/max_logit": 20.0}]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    ps = S.per_seed(df).set_index("train.seed")
    assert list(ps["top_lr_entropy"]) == [0.3] * 3
    assert list(ps["top_lr_entropy_init"]) == [2.0] * 3
    assert list(ps["max_logit_any_lr"]) == [40.0, 41.0, 42.0]
    trains = max(lr for lr in df["optim.lr"].unique() if lr <= 0.5)  # NaN losses above 0.5
    assert list(ps["top_trained_lr"]) == [trains] * 3
