"""Loss, schedule, AdamW toggles and μParam."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from proxies.config import Config
from proxies.model import Transformer
from proxies.optim import (adamw, clip_by_global_norm, cross_entropy_with_z_loss,
                           hparams_from_config, learning_rate, optimizer_hparams)
from proxies.step import init_state, make_train_step


def test_z_loss_is_coef_times_mean_squared_log_normalizer():
    logits = jnp.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]])
    targets = jnp.array([[2, 0]])
    log_z = np.log(np.exp([1, 2, 3]).sum()), np.log(np.exp([0, 0, 5]).sum())
    ce = np.mean([log_z[0] - 3.0, log_z[1] - 0.0])
    loss, aux = cross_entropy_with_z_loss(logits, targets, 1e-4)
    assert float(aux["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(aux["z_loss"]) == pytest.approx(1e-4 * np.mean(np.square(log_z)), rel=1e-5)
    assert float(loss) == pytest.approx(ce + 1e-4 * np.mean(np.square(log_z)), rel=1e-6)
    assert float(cross_entropy_with_z_loss(logits, targets, 0.0)[1]["z_loss"]) == 0.0


def _hp(**kw):
    cfg = OmegaConf.structured(Config)
    for k, v in kw.items():
        cfg.optim[k] = v
    return optimizer_hparams(cfg)


@pytest.mark.parametrize("independent", [False, True])
def test_weight_decay_coupled_vs_independent(independent):
    # With a zero gradient Adam's step is 0, so the update is pure decay:
    # coupled θ·(1 − s_t·η·λ); independent θ·(1 − s_t·λ), with s_t = lr_t / η.
    params = {"w": jnp.full((4, 4), 2.0), "b": jnp.full((4,), 2.0)}
    mask = {"w": True, "b": False}
    hp = _hp(lr=0.1, weight_decay=0.5)
    lr_t = jnp.float32(0.05)  # s_t = 0.5
    tx = adamw(hp, lr_t, {"w": 1.0, "b": 1.0}, mask, independent)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    expected = -0.5 * 0.5 * 2.0 if independent else -0.05 * 0.5 * 2.0
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(updates["b"], 0.0)  # vectors are not decayed


def test_schedule_warmup_then_cosine_to_min_lr():
    hp = _hp(lr=1.0, min_lr=0.1, warmup_steps=10)
    lr = lambda s: float(learning_rate(jnp.int32(s), hp, 110, "cosine"))  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert lr(110) == pytest.approx(0.1)
    assert float(learning_rate(jnp.int32(60), hp, 110, "linear")) == pytest.approx(0.55)
    assert float(learning_rate(jnp.int32(60), hp, 110, "constant")) == pytest.approx(1.0)
    no_warm = _hp(lr=1.0, warmup_steps=0)
    assert float(learning_rate(jnp.int32(0), no_warm, 100, "constant")) == 1.0


def test_grad_clip_by_global_norm_and_off():
    g = {"a": jnp.array([3.0, 4.0])}
    clipped, norm = clip_by_global_norm(g, jnp.float32(1.0))
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8], rtol=1e-6)
    same, _ = clip_by_global_norm(g, jnp.float32(0.0))
    np.testing.assert_allclose(same["a"], [3.0, 4.0])


def _activation_change_rms(width: int, parametrization: str) -> np.ndarray:
    """RMS change of each block's output and of the logits after 3 Adam steps at LR 1e-2."""
    cfg = OmegaConf.structured(Config)
    overrides = dict(d_model=width, n_layers=2, n_heads=width // 16,
                     parametrization=parametrization, mup_base_width=32)
    for k, v in overrides.items():
        cfg.model[k] = v
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay = 1e-2, 0, 0.0
    cfg.train.seq_len, cfg.train.steps = 16, 3
    model = Transformer(cfg.model, 64, 16)
    state = init_state(model, cfg, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (8, 17), 0, 64)

    def activations(params):
        logits, st = model.apply({"params": params}, batch[:, :-1], capture_intermediates=True,
                                 mutable=["intermediates"])
        inter = st["intermediates"]
        return [inter["block_0"]["__call__"][0], inter["block_1"]["__call__"][0], logits]

    before = activations(state.params)
    step = jax.jit(make_train_step(model, cfg))
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    for _ in range(3):
        state, _ = step(state, batch, hp)
    return np.array([float(jnp.sqrt(jnp.mean((a - b) ** 2)))
                     for a, b in zip(activations(state.params), before)])


def test_mup_coordinate_check():
    # Under SP, Adam's per-entry step makes activations move ~width^0.5-1 faster as width
    # grows; under μParam every layer's activation change is flat across widths.
    widths = (32, 64, 128)
    slope = lambda ys: np.polyfit(np.log(widths), np.log(ys), 1)[0]  # noqa: E731
    sp = np.stack([_activation_change_rms(w, "sp") for w in widths])  # widths x (b0, b1, logits)
    mup = np.stack([_activation_change_rms(w, "mup") for w in widths])
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(mup))
    for layer in (0, 1):
        assert slope(sp[:, layer]) > 0.3, sp
        assert abs(slope(mup[:, layer])) < 0.1, mup
        assert mup[:, layer].max() / mup[:, layer].min() < 1.3, mup
    assert slope(mup[:, 2]) < slope(sp[:, 2]) - 0.3  # logits: SP grows, μP does not


# --- μParam (simple): LR × base-fan-in / fan-in -------------------------------------------------

def _hand_fan_in(layer: str, d: int, mlp: str) -> int:
    """Fan-in of a block matrix counted by hand from the architecture: q, k, v, the attention
    output (H·K = d) and the MLP's up/gate read d features; the down projection reads the MLP
    hidden width (4d for GELU, round(8d/3) for SwiGLU)."""
    if layer == "down":
        return 4 * d if mlp == "gelu" else int(round(8 * d / 3))
    assert layer in ("query", "key", "value", "out", "up", "gate"), layer
    return d


def _model_params(d: int, mlp: str, parametrization: str, base: int):
    cfg = OmegaConf.structured(Config)
    for k, v in dict(d_model=d, n_layers=2, n_heads=d // 16, mlp=mlp, use_bias=True,
                     parametrization=parametrization, mup_base_width=base).items():
        cfg.model[k] = v
    model = Transformer(cfg.model, 64, 8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return cfg, model, params


def _flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("mlp,d", [("gelu", 96), ("swiglu", 80), ("swiglu", 32)])
def test_mup_simple_multipliers_are_base_fan_in_over_fan_in(mlp, d):
    from proxies.optim import lr_multipliers
    base = 32
    cfg, _, params = _model_params(d, mlp, "mup_simple", base)
    mults = _flat(lr_multipliers(params, cfg.model))
    flat = _flat(params)
    kernels = [n for n in flat if n.startswith("block_") and n.endswith("/kernel")]
    assert len(kernels) == 2 * (4 + (3 if mlp == "swiglu" else 2))
    for name, w in flat.items():
        if name in kernels:
            layer = name.split("/")[-2]
            fan = _hand_fan_in(layer, d, mlp)
            # The hand count is the model's real fan-in: its init std is 1/sqrt(fan_in).
            assert 1 / float(jnp.var(w)) == pytest.approx(fan, rel=0.1), name
            assert mults[name] == pytest.approx(_hand_fan_in(layer, base, mlp) / fan), name
        elif name == "unembed/embedding":  # the readout, a linear layer of fan-in d
            assert mults[name] == pytest.approx(base / d), name
        else:  # the embedding, norm scales, biases keep η
            assert mults[name] == 1.0, name
    if d == base:
        assert all(m == 1.0 for m in mults.values())


def test_mup_simple_changes_only_lrs_and_mup_scales_hidden_lrs_by_one_over_m():
    sp_cfg, sp_model, params = _model_params(80, "swiglu", "sp", 32)
    ms_cfg, ms_model, _ = _model_params(80, "swiglu", "mup_simple", 32)
    mu_cfg, _, _ = _model_params(80, "swiglu", "mup", 32)
    x = jnp.arange(8)[None]
    # Same init and the same forward pass as SP: μParam (simple) touches nothing but LRs.
    np.testing.assert_array_equal(sp_model.apply({"params": params}, x),
                                  ms_model.apply({"params": params}, x))
    from proxies.optim import lr_multipliers
    assert set(_flat(lr_multipliers(params, sp_cfg.model)).values()) == {1.0}
    simple = _flat(lr_multipliers(params, ms_cfg.model))
    full = _flat(lr_multipliers(params, mu_cfg.model))
    for name, m in full.items():
        hidden = name.startswith("block_") and name.endswith("/kernel")
        assert m == pytest.approx(32 / 80 if hidden else 1.0), name
    # SwiGLU's hidden width round(8d/3) is not proportional to d: only the down projection
    # tells base-fan-in/fan-in (85/213) from 1/m (32/80).
    down = "block_0/mlp/down/kernel"
    assert simple[down] == pytest.approx(85 / 213) and simple[down] != pytest.approx(0.4)
