"""The decoder: causality, positions, the attention-logit probe, variants and init rules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from proxies.config import ModelConfig
from proxies.model import Transformer, count_params, init_std, mlp_hidden, rope
from proxies.probes import make_probe

V, L = 50, 12


def build(**kw):
    cfg = OmegaConf.structured(ModelConfig(d_model=32, n_layers=2, n_heads=2, **kw))
    model = Transformer(cfg, V, L)
    params = model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"]
    return cfg, model, params


VARIANTS = [dict(), dict(pos_emb="rope"), dict(qk_layernorm=True, norm="rmsnorm"),
            dict(mlp="swiglu", attn_scale="before", use_bias=False, tie_embeddings=True),
            dict(parametrization="mup", mup_base_width=16)]


@pytest.mark.parametrize("kw", VARIANTS)
def test_future_tokens_do_not_change_past_logits(kw):
    _, model, params = build(**kw)
    a = jax.random.randint(jax.random.key(1), (2, L), 0, V)
    b = a.at[:, 7:].set((a[:, 7:] + 1) % V)
    la, lb = model.apply({"params": params}, a), model.apply({"params": params}, b)
    np.testing.assert_array_equal(np.asarray(la[:, :7]), np.asarray(lb[:, :7]))
    assert not np.allclose(la[:, 7:], lb[:, 7:])


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_no_gradient_flows_from_future_tokens(pos_emb):
    # Tokens 0..9 fill positions 0..5, tokens 40..45 only positions 6..11: the loss on the first
    # six positions must give those later tokens' embedding rows an exactly zero gradient.
    _, model, params = build(pos_emb=pos_emb)
    tokens = jnp.array([[1, 2, 3, 4, 5, 6, 40, 41, 42, 43, 44, 45]])
    def past_logits(p):
        return jnp.sum(model.apply({"params": p}, tokens)[:, :6] ** 2)
    g = jax.grad(past_logits)(params)["embed"]["embedding"]
    assert np.all(np.asarray(g[40:46]) == 0)
    assert np.any(np.asarray(g[1:7]) != 0)


def test_rope_depends_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 16, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 16, 1, 8))
    k = k.at[:, :].set(k[:, :1])  # the same key vector at every position
    q = q.at[:, :].set(q[:, :1])
    rq, rk = rope(q, 10000.0), rope(k, 10000.0)
    dots = jnp.einsum("bqhk,bshk->qs", rq, rk)
    # q at position m, k at position n: the logit is a function of m - n alone.
    np.testing.assert_allclose(dots[3, 1], dots[10, 8], rtol=1e-5)
    np.testing.assert_allclose(dots[5, 5], dots[0, 0], rtol=1e-5)
    assert not np.isclose(dots[3, 1], dots[3, 2])
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q, axis=-1),
                               rtol=1e-5)  # a rotation


def test_learned_positions_are_a_trained_table_and_rope_has_none():
    _, _, p_learned = build(pos_emb="learned")
    _, _, p_rope = build(pos_emb="rope")
    assert p_learned["pos_embed"].shape == (L, 32)
    assert "pos_embed" not in p_rope


def _layernorm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def test_attention_logit_probe_matches_brute_force():
    cfg, model, params = build()
    p = jax.tree_util.tree_map(np.asarray, params)
    att = p["block_0"]["attn"]
    probe = make_probe(model, 2)
    causal = np.tril(np.ones((L, L), bool))
    mask_mattered = 0
    for seed in range(8):
        tokens = np.asarray(jax.random.randint(jax.random.key(seed), (2, L + 1), 0, V))
        x = p["embed"]["embedding"][tokens[:, :-1]] + p["pos_embed"][None, :L]
        h = _layernorm(x.astype(np.float64), p["block_0"]["ln_attn"])
        q = np.einsum("bld,dhk->blhk", h, att["query"]["kernel"]) + att["query"]["bias"]
        k = np.einsum("bld,dhk->blhk", h, att["key"]["kernel"])
        logits = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(16)
        expected = logits[:, :, causal].max()
        got = probe({"params": params}, jnp.asarray(tokens))
        np.testing.assert_allclose(float(got["attn/max_logit/layer_0"]), expected, rtol=1e-4)
        assert float(got["attn/max_logit"]) >= float(got["attn/max_logit/layer_0"])
        mask_mattered += logits.max() > expected + 1e-3  # a future logit was the largest
    assert mask_mattered > 0


def test_attention_scale_before_equals_after():
    _, model_a, params = build(attn_scale="after")
    _, model_b, _ = build(attn_scale="before")
    t = jax.random.randint(jax.random.key(2), (2, L), 0, V)
    np.testing.assert_allclose(model_a.apply({"params": params}, t),
                               model_b.apply({"params": params}, t), rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    _, model, params = build(dtype="bfloat16")
    out = model.apply({"params": params}, jnp.zeros((1, L), jnp.int32))
    assert out.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_swiglu_matches_gelu_mlp_param_count():
    _, _, p_gelu = build(mlp="gelu")
    _, _, p_swiglu = build(mlp="swiglu")
    n_gelu = sum(x.size for x in jax.tree_util.tree_leaves(p_gelu["block_0"]["mlp"]))
    n_swiglu = sum(x.size for x in jax.tree_util.tree_leaves(p_swiglu["block_0"]["mlp"]))
    assert abs(n_swiglu - n_gelu) / n_gelu < 0.02
    assert mlp_hidden(OmegaConf.structured(ModelConfig(d_model=96, mlp="swiglu"))) == 256


@pytest.mark.parametrize("rule,d,expected", [
    ("gpt2", 256, 0.02), ("small_init", 250, math.sqrt(2 / 1250)),
    ("mt_nlg", 14336, 0.00482), (0.05, 64, 0.05), ("fan_in", 64, 1 / 16)])
def test_init_std_rules(rule, d, expected):
    cfg = OmegaConf.structured(ModelConfig(d_model=d, n_heads=1, init_std=rule))
    assert init_std(cfg, fan_in=256) == pytest.approx(expected, rel=1e-3)


def test_fan_in_init_has_the_requested_std():
    _, _, params = build(init_std="fan_in")
    w = np.asarray(params["block_0"]["mlp"]["down"]["kernel"])  # fan_in = 4 * 32
    assert w.std() == pytest.approx(1 / math.sqrt(128), rel=0.05)
    emb = np.asarray(params["embed"]["embedding"])
    assert emb.std() == pytest.approx(1 / math.sqrt(32), rel=0.08)


def test_non_embedding_param_count():
    _, _, params = build(use_bias=False, norm="rmsnorm")
    total, nonembed = count_params(params)
    matrices = 2 * 12 * 32 * 32  # 12·L·d²
    norms = 2 * 2 * 32 + 32
    assert nonembed == matrices + norms
    assert total == nonembed + V * 32 + L * 32 + 32 * V
