"""Probes of the numeric training dynamics, run on log steps only (never inside the train step).

A probe is one forward pass on a fixed held-out batch with the model's `intermediates` collection
made mutable, so each block reports what it `sow`ed: max attention logit and attention entropy per
layer, residual-stream outliers per layer, and output-logit statistics.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def make_probe(model: nn.Module, n_layers: int) -> Callable[[Any, jax.Array], Dict[str, jax.Array]]:
    """Jitted `(params, batch) -> {metric name: scalar}` with the names metrics.jsonl uses."""

    def probe(params: Any, batch_BxLp1: jax.Array) -> Dict[str, jax.Array]:
        logits_BxLxV, state = model.apply({"params": params}, batch_BxLp1[:, :-1],
                                          mutable=["intermediates"])
        inter = state.get("intermediates", {})  # nothing sown by a zero-layer model
        out: Dict[str, jax.Array] = {}
        for i in range(n_layers):
            blk = inter[f"block_{i}"]
            out[f"attn/max_logit/layer_{i}"] = blk["attn"]["max_logit"][0]
            out[f"attn/entropy/layer_{i}"] = blk["attn"]["entropy"][0]
            out[f"act/max_abs/layer_{i}"] = blk["act_max_abs"][0]
            out[f"act/max_median_ratio/layer_{i}"] = blk["act_max_median_ratio"][0]
        if n_layers:  # a zero-layer (bigram) model has no attention
            out["attn/max_logit"] = jnp.max(jnp.stack(
                [out[f"attn/max_logit/layer_{i}"] for i in range(n_layers)]))
        log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
        out["logits/log_z_mean"] = jnp.mean(log_z_BxL)
        out["logits/mean"] = jnp.mean(logits_BxLxV)
        out["logits/max_abs"] = jnp.max(jnp.abs(logits_BxLxV))
        return out

    return jax.jit(probe)


def flatten_tensor_stats(prefix: str, tree: Any) -> Dict[str, float]:
    """{'grad_rms': {'block_0': {'attn': {...}}}} -> {'grad_rms/block_0/attn/query/kernel': x}."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + "/" + "/".join(str(getattr(k, "key", k)) for k in path): float(np.asarray(v))
            for path, v in flat}
