"""Probes of the numeric training dynamics, run on log steps only (never inside the train step).

A probe is one forward pass on a fixed held-out batch with the model's `intermediates` collection
made mutable, so each block reports what it `sow`ed: max attention logit and attention entropy per
layer, residual-stream outliers per layer, and output-logit statistics.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from proxies import metric_names as M


def make_probe(model: nn.Module, n_layers: int) -> Callable[[Any, jax.Array], Dict[str, jax.Array]]:
    """Jitted `(variables, batch) -> {metric name: scalar}` with the names metrics.jsonl uses."""

    def probe(variables: Dict[str, Any], batch_BxLp1: jax.Array) -> Dict[str, jax.Array]:
        logits_BxLxV, state = model.apply(variables, batch_BxLp1[:, :-1],
                                          mutable=["intermediates"])
        inter = state.get("intermediates", {})  # nothing sown by a zero-layer model
        out: Dict[str, jax.Array] = {}
        sown = {M.ATTN_MAX_LOGIT: lambda blk: blk["attn"]["max_logit"],
                M.ATTN_ENTROPY: lambda blk: blk["attn"]["entropy"],
                M.ATTN_ENTROPY_MIN_HEAD: lambda blk: blk["attn"]["entropy_min_head"],
                M.ACT_MAX_ABS: lambda blk: blk["act_max_abs"],
                M.ACT_MAX_MEDIAN_RATIO: lambda blk: blk["act_max_median_ratio"]}
        for i in range(n_layers):
            for family, read in sown.items():
                out[M.per_layer(family, i)] = read(inter[f"block_{i}"])[0]
        if n_layers:  # a zero-layer (bigram) model has no attention
            out[M.ATTN_MAX_LOGIT] = jnp.max(jnp.stack(
                [out[M.per_layer(M.ATTN_MAX_LOGIT, i)] for i in range(n_layers)]))
            out[M.ATTN_ENTROPY_MIN_HEAD] = jnp.min(jnp.stack(
                [out[M.per_layer(M.ATTN_ENTROPY_MIN_HEAD, i)] for i in range(n_layers)]))
        log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
        out[M.LOG_Z_MEAN] = jnp.mean(log_z_BxL)
        out[M.LOGITS_MEAN] = jnp.mean(logits_BxLxV)
        out[M.LOGITS_MAX_ABS] = jnp.max(jnp.abs(logits_BxLxV))
        return out

    return jax.jit(probe)


def flatten_tensor_stats(prefix: str, tree: Any) -> Dict[str, float]:
    """{'grad_rms': {'block_0': {'attn': {...}}}} -> {'grad_rms/block_0/attn/query/kernel': x}."""
    return {f"{prefix}/{path}": float(np.asarray(v)) for path, v in flatten_tree(tree).items()}


# ------------------------------------------------------------------ training-dynamics probe

# Norm layers and the sites before / after each (the normalised value is recomputed from the
# input, so the model needs no extra sow for it).
_NORMS = {"ln_attn": ("resid_in", "attn_in"), "ln_mlp": ("resid_mid", "mlp_in")}
_RESIDUAL = ("resid_in", "resid_mid", "resid_out")
N_EC_SAMPLE = 256  # strided entries of each projection's C kept for an E vs R scatter


def _site_tree(dyn: Any) -> Dict[str, jax.Array]:
    """{'block_0/attn/q': x, ...} from the `dynamics` collection (sow keeps 1-tuples: '/0')."""
    return {path.rsplit("/", 1)[0]: v for path, v in flatten_tree(dyn).items()}


def _projections(sites: Dict[str, jax.Array], params: Any, n_layers: int,
                 ) -> Dict[str, Tuple[jax.Array, jax.Array]]:
    """(A, B) of each projection C = A·B: its input activations and its kernel as a matrix."""
    out: Dict[str, Tuple[jax.Array, jax.Array]] = {}
    for i in range(n_layers):
        b, p = f"block_{i}", params[f"block_{i}"]
        D = p["attn"]["query"]["kernel"].shape[0]
        for proj in ("query", "key", "value"):
            out[f"{b}/attn/{proj}"] = (sites[f"{b}/attn_in"],
                                       p["attn"][proj]["kernel"].reshape(D, -1))
        kernel_out = p["attn"]["out"]["kernel"]
        out[f"{b}/attn/out"] = (sites[f"{b}/attn/ctx"],
                                kernel_out.reshape(-1, kernel_out.shape[-1]))
        for proj in ("gate", "up"):
            if proj in p["mlp"]:
                out[f"{b}/mlp/{proj}"] = (sites[f"{b}/mlp_in"], p["mlp"][proj]["kernel"])
        out[f"{b}/mlp/down"] = (sites[f"{b}/mlp/down_in"], p["mlp"]["down"]["kernel"])
    if "unembed" in params:
        out["unembed"] = (sites["final_out"], params["unembed"]["embedding"].T)
    return out


def _ec_sample(A: jax.Array, B: jax.Array, k: int) -> jax.Array:
    """(|C|, E, |R|) of C's k largest entries and of N_EC_SAMPLE strided ones, as rows."""
    from proxies.dynamics import energy_correlation
    A = A.reshape(-1, A.shape[-1]).astype(jnp.float32)
    E, R = energy_correlation(A, B.astype(jnp.float32))
    absC, E, absR = (jnp.abs(E * R)).ravel(), E.ravel(), jnp.abs(R).ravel()
    _, top = jax.lax.top_k(absC, k)
    strided = jnp.linspace(0, absC.shape[0] - 1, N_EC_SAMPLE).astype(jnp.int32)
    idx = jnp.concatenate([top, strided])
    return jnp.stack([absC[idx], E[idx], absR[idx]], axis=-1)


def _describe(x: jax.Array, edges: np.ndarray) -> tuple:
    """Histogram and outlier statistics of one tensor (compiled once per shape)."""
    from proxies import dynamics as D
    st = D.outlier_stats(x)
    scalars = {k: st[k] for k in ("kurtosis", "max_abs", "max_median_ratio", "max_rms_ratio")}
    scalars["top_channel"] = st["top_channels"][0]
    arrays = {"hist": D.histogram(x, edges), "channels": st["top_channels"],
              "positions": st["top_positions"]}
    return scalars, arrays


def _energy(A: jax.Array, B: jax.Array, top_frac: float) -> tuple:
    from proxies import dynamics as D
    A = A.reshape(-1, B.shape[0])
    summary = D.energy_correlation_summary(A, B, top_frac=top_frac)
    k = D.n_top(A.shape[0] * B.shape[1], top_frac)  # static: the summary's own top count
    return ({key: summary[key] for key in ("pearson_E", "pearson_R", "top_overlap_E",
                                           "top_overlap_R", "chance_overlap")},
            _ec_sample(A, B, k))


def make_dynamics_probe(model: nn.Module, cfg: DictConfig) -> Callable[[Any, jax.Array], tuple]:
    """`(variables, batch) -> (scalars, arrays)`: the training-dynamics statistics of one forward
    and backward pass on a fixed held-out batch. Scalars (kurtosis, outlier ratios, massive
    activations, norm compression, SwiGLU coincidence, energy vs correlation) go to
    dynamics/stats.jsonl; arrays (fixed-edge histograms, top channels/positions, E/R samples) to
    dynamics/hist/step_*.npz (proxies/rundir.py). One jitted forward/backward, then one small
    jitted function per statistic and tensor shape: far less to compile than one program of a
    few hundred statistics, and it runs only every dynamics.every steps."""
    from functools import partial

    from proxies import dynamics as D
    from proxies.model import normalized
    from proxies.optim import cross_entropy_with_z_loss

    dc, n_layers = cfg.dynamics, cfg.model.n_layers
    edges, top = D.hist_edges(per_decade=dc.per_decade), dc.top_frac

    @jax.jit
    def forward_backward(variables: Dict[str, Any], batch_BxLp1: jax.Array) -> tuple:
        inputs, targets = batch_BxLp1[:, :-1], batch_BxLp1[:, 1:]

        def loss_fn(p):
            logits, state = model.apply({**variables, "params": p}, inputs, mutable=["dynamics"])
            return cross_entropy_with_z_loss(logits, targets, 0.0)[1]["ce"], state["dynamics"]

        (_, dyn), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return _site_tree(dyn), grads

    describe = jax.jit(partial(_describe, edges=edges))
    massive = jax.jit(D.massive_activations)
    compression = jax.jit(lambda x_in, x_out: D.norm_compression(
        x_in, normalized(cfg.model, x_in), x_out))
    swiglu = jax.jit(partial(D.swiglu_coincidence, top_frac=top))
    energy = jax.jit(partial(_energy, top_frac=top))

    def probe(variables: Dict[str, Any], batch_BxLp1: jax.Array) -> tuple:
        sites, grads = forward_backward(variables, batch_BxLp1)
        params = variables["params"]
        scalars: Dict[str, jax.Array] = {}
        arrays: Dict[str, jax.Array] = {}
        tensors = {**{f"act/{k}": v for k, v in sites.items()},
                   **{f"weight/{k}": v for k, v in flatten_tree(params).items()},
                   **{f"grad/{k}": v for k, v in flatten_tree(grads).items()}}
        for name, x in tensors.items():
            sc, ar = describe(x)
            scalars.update({f"{name}/{k}": v for k, v in sc.items()})
            arrays[f"hist/{name}"] = ar["hist"]
            arrays[f"top/{name}/channels"] = ar["channels"]
            arrays[f"top/{name}/positions"] = ar["positions"]
        for name, x in sites.items():
            if name.rsplit("/", 1)[-1] in _RESIDUAL or name == "final_norm_in":
                m = massive(x)
                scalars.update({f"massive/{name}/{k}": m[k] for k in ("count", "ratio", "share")})
        norms = {f"block_{i}/{ln}": (sites[f"block_{i}/{a}"], sites[f"block_{i}/{b}"])
                 for i in range(n_layers) for ln, (a, b) in _NORMS.items()
                 if ln in params[f"block_{i}"]}  # input norms only (norm_placement)
        norms["ln_final"] = (sites["final_norm_in"], sites["final_out"])
        for name, (x_in, x_out) in norms.items():
            scalars.update({f"norm/{name}/{k}": v for k, v in compression(x_in, x_out).items()})
        for i in range(n_layers):
            if f"block_{i}/mlp/gate_pre" in sites:
                sw = swiglu(sites[f"block_{i}/mlp/gate_pre"], sites[f"block_{i}/mlp/up_out"])
                for key in ("coincidence", "chance", "near_zero_swish", "near_zero_gate"):
                    scalars[f"swiglu/block_{i}/{key}"] = sw[key]
        for name, (A, B) in _projections(sites, params, n_layers).items():
            summary, sample = energy(A, B)
            scalars.update({f"ec/{name}/{k}": v for k, v in summary.items()})
            arrays[f"ec_sample/{name}"] = sample
        return scalars, arrays

    return probe


def flatten_tree(tree: Any) -> Dict[str, jax.Array]:
    """{'block_0/attn/query/kernel': leaf, ...}: the one way probes name a pytree's leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in flat}
