"""The fast paths agree with the plain ones: fused vs explicit attention, chunked vs whole-batch
readout + cross-entropy, and bfloat16 vs float32 training.

Tolerances, relative to the largest entry of the reference (logits, each gradient tree):
- chunked vs whole readout: float64 (only the summation order differs, so 1e-12 holds with
  orders to spare and any logic error shows).
- fused vs explicit attention: float32, the dtype both run in (JAX's fused kernel takes its
  softmax in float32 whatever the input, so float64 would not tighten it). Measured over the
  cases × 3 batches, 2 threads and 1: logits and loss equal, gradients <= 2.0e-7; TOL 1e-5 sits
  50x above that, far below what a wrong scale, mask or norm moves (> 1e-3).
- bfloat16 3e-2 (observed ~1e-2, a couple of bf16 roundings at unit roundoff 2^-8 = 3.9e-3,
  e.g. the fused path's float32 q·kᵀ vs the explicit one's bf16). Losses: 1e-6 relative in
  float32, 2^-8 in bfloat16.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import proxies.model as model_lib
from proxies.config import Config, ModelConfig
from proxies.data import sample_batch
from proxies.model import (Transformer, attn_logits, auto_fuses, qk_for_product,
                           sdpa_implementation)
from proxies.optim import (chunked_cross_entropy_with_z_loss, cross_entropy_with_z_loss,
                           hparams_from_config)
from proxies.step import init_state, loss_and_aux, make_eval_step, make_train_step

V, L, B = 64, 8, 2
# Programs run once here, so compile time is what counts: LLVM at -O0 compiles ~40% faster.
jit0 = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 3e-2}
# bf16 loss: one bf16 rounding (2^-8 relative). cuDNN's flash attention on an H100 differed from
# the explicit path by 1.1e-3 relative (qk-layernorm case); XLA on CPU stays within 1e-3.
LOSS_TOL = {"float64": 1e-12, "float32": 1e-6, "bfloat16": 2**-8}


def model_cfg(**kw: Any) -> Any:
    # d_head 8: the attn_scale=before root 8^-1/4 is not a power of two, so inexact in bf16.
    return OmegaConf.structured(ModelConfig(**{"d_model": 32, "n_layers": 1, "n_heads": 4, **kw}))


def models_and_params(cases: List[Dict[str, Any]]) -> Tuple[List[Transformer], List[Any]]:
    """One tiny model per case, initialised in one program (cases are compared in one program
    too: one compilation of all of them costs far less than one per case)."""
    models = [Transformer(model_cfg(**kw), V, L) for kw in cases]
    tokens_1xL = jnp.zeros((1, L), jnp.int32)
    params = jit0(lambda key: [m.init(key, tokens_1xL)["params"] for m in models])(
        jax.random.key(0))
    return models, params


def tokens_BxLp1(seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (B, L + 1), 0, V)


def assert_close(a: jax.Array, b: jax.Array, tol: float, case: Any = "") -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), (case, np.max(np.abs(a - b)))


def assert_scalar_close(a: jax.Array, b: jax.Array, tol: float, case: Any = "") -> None:
    assert abs(float(a) - float(b)) <= tol * abs(float(b)), (case, float(a), float(b))


def assert_trees_close(a: Any, b: Any, tol: float, case: Any = "") -> None:
    """Every leaf within tol × the largest entry of b: near-zero leaves (a key-norm bias, whose
    gradient is pure rounding noise) are held to the scale of the whole gradient."""
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(b))
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                            jax.tree_util.tree_leaves(b)):
        err = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        assert err <= tol * scale, (case, jax.tree_util.keystr(path), err, scale)


def loss_and_grads(model: Transformer, params: Any, batch_BxLp1: jax.Array, ce_chunk: int = 0,
                   z_loss: float = 1e-4) -> tuple:
    """((loss, aux), grads)."""
    fn = lambda p: loss_and_aux(model, {"params": p}, batch_BxLp1[:, :-1], batch_BxLp1[:, 1:], z_loss,  # noqa
                                ce_chunk)
    return jax.value_and_grad(fn, has_aux=True)(params)


@pytest.fixture
def fuse_on_cpu(monkeypatch):
    """attn_impl=auto skips the fused path on CPU (slower there); these tests want it."""
    monkeypatch.setattr(model_lib, "auto_fuses", lambda backend: True)


# ------------------------------------------------------------------ fused attention

ATTN_CASES = [
    dict(), dict(attn_scale="before"), dict(parametrization="mup", mup_base_width=16),
    dict(parametrization="mup", mup_base_width=16, attn_scale="before"), dict(attn_kappa=20.0),
    dict(qk_layernorm=True), dict(qk_layernorm=True, norm="rmsnorm", pos_emb="rope"),
    dict(dtype="bfloat16"), dict(dtype="bfloat16", attn_scale="before"),
    dict(dtype="bfloat16", qk_layernorm=True),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_attention_matches_explicit(dtype, fuse_on_cpu):
    """Logits, loss and gradients of every case in ATTN_CASES of this dtype."""
    cases = [kw for kw in ATTN_CASES if kw.get("dtype", "float32") == dtype]
    fused, params = models_and_params(cases)
    explicit = [Transformer(OmegaConf.merge(m.cfg, {"attn_impl": "explicit"}), V, L)
                for m in fused]

    @jit0
    def run(ps: List[Any], batch_BxLp1: jax.Array) -> list:
        return [[(m.apply({"params": p}, batch_BxLp1[:, :-1]), loss_and_grads(m, p, batch_BxLp1))
                 for m in pair] for pair, p in zip(zip(fused, explicit), ps)]

    for kw, (f, e) in zip(cases, run(params, tokens_BxLp1())):
        (logits_f, ((loss_f, _), grads_f)), (logits_e, ((loss_e, _), grads_e)) = f, e
        assert_close(logits_f, logits_e, TOL[dtype], kw)
        assert_scalar_close(loss_f, loss_e, LOSS_TOL[dtype], kw)
        assert_trees_close(grads_f, grads_e, TOL[dtype], kw)


def count_fused_calls(monkeypatch, model: Transformer, params: Any, mutable: Any) -> int:
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    jax.eval_shape(lambda p: model.apply({"params": p}, tokens_BxLp1()[:, :-1],
                                         mutable=mutable), params)
    return len(calls)


def test_fused_path_only_on_ordinary_steps(monkeypatch):
    (model,), (params,) = models_and_params([{}])
    cfg = model.cfg
    assert count_fused_calls(monkeypatch, model, params, False) == 0  # auto on CPU: explicit
    monkeypatch.setattr(model_lib, "auto_fuses", lambda backend: True)
    assert count_fused_calls(monkeypatch, model, params, False) == 1
    # Probes read the logits and probabilities: always the explicit path.
    assert count_fused_calls(monkeypatch, model, params, ["intermediates"]) == 0
    assert count_fused_calls(monkeypatch, model, params, ["dynamics"]) == 0
    explicit = Transformer(OmegaConf.merge(cfg, {"attn_impl": "explicit"}), V, L)
    assert count_fused_calls(monkeypatch, explicit, params, False) == 0


def test_attention_backend_choice():
    assert not auto_fuses("cpu") and auto_fuses("gpu")
    assert sdpa_implementation("gpu", jnp.bfloat16) == "cudnn"
    assert sdpa_implementation("gpu", jnp.float32) is None  # cuDNN flash needs 16-bit
    assert sdpa_implementation("cpu", jnp.bfloat16) is None


def test_attn_scale_placement_in_bf16():
    """before: q and k each × d_head^-1/4 in bf16, then the product; after: product × scale."""
    q = 3 * jax.random.normal(jax.random.key(0), (1, L, 4, 8))
    k = 3 * jax.random.normal(jax.random.key(1), (1, L, 4, 8))
    bf = jnp.dtype(jnp.bfloat16)
    logits = {}
    for placement in ("before", "after"):
        cfg = OmegaConf.structured(ModelConfig(d_model=32, n_heads=4, dtype="bfloat16",
                                               attn_scale=placement))
        logits[placement] = attn_logits(cfg, q.astype(bf), k.astype(bf), bf)
        assert logits[placement].dtype == bf
        q2, k2, post = qk_for_product(cfg, q.astype(bf), k.astype(bf), bf)
        assert post == (1.0 if placement == "before" else 1 / math.sqrt(8))
    root = jnp.asarray(8 ** -0.25, bf)
    want_before = jnp.einsum("bqhk,bshk->bhqs", q.astype(bf) * root, k.astype(bf) * root)
    want_after = jnp.einsum("bqhk,bshk->bhqs", q.astype(bf), k.astype(bf)) * (1 / math.sqrt(8))
    np.testing.assert_array_equal(np.asarray(logits["before"], np.float32),
                                  np.asarray(want_before, np.float32))
    np.testing.assert_array_equal(np.asarray(logits["after"], np.float32),
                                  np.asarray(want_after, np.float32))
    # The placement changes the bf16 rounding (and nothing else: both within bf16 tolerance).
    assert np.any(np.asarray(logits["before"] != logits["after"]))
    assert_close(logits["before"].astype(jnp.float32), logits["after"].astype(jnp.float32),
                 TOL["bfloat16"])


# ------------------------------------------------------------------ chunked cross-entropy

CHUNK_CASES = [  # B·L = 16 tokens: 5 leaves a remainder of 1, 100 is more than the batch
    (dict(), 5), (dict(), 100), (dict(tie_embeddings=True), 8),
    (dict(parametrization="mup", mup_base_width=16), 5),
    (dict(parametrization="mup", mup_base_width=16, tie_embeddings=True), 5),
    (dict(dtype="bfloat16"), 5),
]


def test_chunked_loss_matches_whole_batch(float64):
    """Loss, its parts and gradients of every case in CHUNK_CASES (in float64 but the bfloat16
    one), z_loss large enough to matter."""
    models, params = models_and_params([{"dtype": "float64", **kw} for kw, _ in CHUNK_CASES])

    @jit0
    def run(ps: List[Any], batch_BxLp1: jax.Array) -> list:
        return [[loss_and_grads(m, p, batch_BxLp1, c, z_loss=1e-2) for c in (chunk, 0)]
                for m, p, (_, chunk) in zip(models, ps, CHUNK_CASES)]

    for case, m, (chunked, whole) in zip(CHUNK_CASES, models, run(params, tokens_BxLp1())):
        tol, loss_tol = TOL[m.cfg.dtype], LOSS_TOL[m.cfg.dtype]
        (loss_c, aux_c), grads_c = chunked
        (loss_w, aux_w), grads_w = whole
        assert float(aux_w["z_loss"]) > 1e-3  # the z-loss term is really exercised
        for key in ("ce", "z_loss", "log_z_mean"):
            assert_scalar_close(aux_c[key], aux_w[key], loss_tol, (case, key))
        assert_scalar_close(loss_c, loss_w, loss_tol, case)
        assert_trees_close(grads_c, grads_w, tol, case)


def test_chunked_cross_entropy_function(float64):
    """Against the plain formula, gradients to both the table and the hidden states (float64)."""
    x_BxLxD = jax.random.normal(jax.random.key(0), (B, L, 32), jnp.float64)
    table_VxD = jax.random.normal(jax.random.key(1), (V, 32), jnp.float64)
    targets_BxL = tokens_BxLp1()[:, 1:]
    readout = lambda t, x: x @ t.T  # noqa: E731
    whole = jit0(jax.grad(lambda t, x: cross_entropy_with_z_loss(
        readout(t, x), targets_BxL, 0.1)[0], argnums=(0, 1)))(table_VxD, x_BxLxD)
    chunked = jit0(jax.grad(lambda t, x: chunked_cross_entropy_with_z_loss(
        readout, t, x, targets_BxL, 0.1, 5)[0], argnums=(0, 1)))(table_VxD, x_BxLxD)
    assert_trees_close(chunked, whole, TOL["float64"])


def test_train_and_eval_steps_with_ce_chunk(float64):
    """One train step and one eval step, chunked against whole (float64)."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([
        "model.d_model=32", "model.n_layers=1", "model.n_heads=4", f"train.seq_len={L}",
        "optim.z_loss=1e-3", float64]))
    model = Transformer(cfg.model, V, L)
    state = jit0(lambda key: init_state(model, cfg, key))(jax.random.key(0))
    steps = {c: make_train_step(model, OmegaConf.merge(cfg, {"train": {"ce_chunk": c}}))
             for c in (0, 5)}

    @jit0
    def both(state: Any, batch_BxLp1: jax.Array, hp: Any) -> dict:
        return {c: steps[c](state, batch_BxLp1, hp)
                + (make_eval_step(model, c)(state.variables, batch_BxLp1),) for c in steps}

    out = both(state, tokens_BxLp1(), hparams_from_config(cfg, loss_limit=math.inf))
    (s0, m0, e0), (s5, m5, e5) = out[0], out[5]
    for key in ("loss", "ce", "z_loss", "grad_norm"):
        assert abs(float(m5[key] - m0[key])) <= 1e-12 * abs(float(m0[key])), key
    assert abs(float(e5 - e0)) <= 1e-12 * float(e0)
    assert_trees_close(s5.params, s0.params, 1e-12)


# ------------------------------------------------------------------ bfloat16 training

def _loss_curve(step, init, cfg: Any, tokens: np.ndarray, seed: int) -> np.ndarray:
    state, hp = init(jax.random.key(seed)), hparams_from_config(cfg, loss_limit=math.inf)
    losses = []
    for i in range(cfg.train.steps):
        state, m = step(state, jnp.asarray(sample_batch(tokens, 8, 32, seed, i)), hp)
        losses.append(m["loss"])
    return np.asarray(jax.device_get(losses))


def test_bf16_training_tracks_float32(corpus_dir: Path):
    """200 steps of a tiny byte model: bf16's loss curve (seed 0) stays within the noise, which
    is how far two float32 seeds' curves (init and data order) lie apart. Smoothed over 25
    steps, RMS over the second half. Observed: bf16 ~4e-4 from float32, seeds ~0.1 apart."""
    text = "".join(p.read_text() for p in sorted(corpus_dir.glob("*.txt")))
    tokens = np.frombuffer(text.encode(), np.uint8)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([
            "model.d_model=32", "model.n_layers=1", "model.n_heads=4", f"model.dtype={dtype}",
            "train.steps=200", "train.seq_len=32", "optim.lr=1e-2", "optim.warmup_steps=20"]))
        model = Transformer(cfg.model, 256, 32)
        # Compiled once for both seeds; the step at full optimisation: it runs 200 times.
        step, init = jax.jit(make_train_step(model, cfg)), jit0(partial(init_state, model, cfg))
        for seed in ((0, 1) if dtype == "float32" else (0,)):
            curves[dtype, seed] = _loss_curve(step, init, cfg, tokens, seed)
    smooth = lambda c: np.convolve(c, np.ones(25) / 25, "valid")  # noqa: E731
    rms = lambda a, b: float(np.sqrt(np.mean(  # noqa: E731
        (smooth(a) - smooth(b))[len(smooth(a)) // 2:] ** 2)))
    noise = rms(curves["float32", 0], curves["float32", 1])
    bf16_gap = rms(curves["bfloat16", 0], curves["float32", 0])
    assert curves["float32", 0][-25:].mean() < curves["float32", 0][:5].mean() - 2  # it learns
    assert not np.array_equal(curves["bfloat16", 0], curves["float32", 0])  # really bf16
    assert bf16_gap < 0.5 * noise, (bf16_gap, noise)


def test_auto_ce_chunk_chunks_large_vocabularies_only():
    from proxies.step import ce_chunk_for

    assert ce_chunk_for(-1, 256) == 0  # byte vocabulary: chunking measured as noise
    assert ce_chunk_for(-1, 32768) == 1024  # the paper's vocabulary: logits never whole
    assert ce_chunk_for(0, 32768) == 0 and ce_chunk_for(5, 256) == 5  # explicit settings win
