"""proxies' train step vs nanodo's (google-deepmind/nanodo, the paper's code base), one process.

    python benchmarks/nanodo.py --nanodo PATH/TO/nanodo [--steps 10 --repeats 9]

nanodo lives outside this project (its model, optimizer and per-step metrics are imported from
the checkout; it needs only flax and optax, which proxies has). Both steps are fp32, batch 32 x
128, tied embeddings, learned positions, no biases, AdamW with clip 1 and a warm-up + cosine
schedule, z-loss off; nanodo's step computes its every-step metrics as its trainer does, proxies'
its ordinary step (per-tensor statistics only on log steps). Each shape's two steps are timed in
alternating windows (order reversed every repeat) so machine load hits both alike; prints medians
of wall and CPU time per step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import SIZES, setup, timed_window  # noqa: E402

TIED = ["model.tie_embeddings=true", "model.pos_emb=learned", "model.use_bias=false",
        "optim.z_loss=0", "optim.warmup_steps=100", "train.steps=1000"]


@struct.dataclass
class LossAux:
    """nanodo.loss.LossAuxData's fields (that module imports nanodo's data pipeline, which
    needs grain): a pytree, as value_and_grad's aux must be."""

    ntokens: jax.Array
    state: Any
    log_perplexity: jax.Array


class Cfg(SimpleNamespace):
    """Enough of ml_collections.ConfigDict for nanodo's optimizer and metrics."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def nanodo_step(d: int, n_layers: int, n_heads: int, vocab: int, batch: int,
                seq: int) -> tuple:
    """(jitted step, state, batches) of nanodo's trainer at this shape."""
    from flax.training.train_state import TrainState
    from nanodo import metrics as metrics_lib
    from nanodo import optimizer
    from nanodo.model import DoConfig, TransformerDo

    opt = Cfg(optimizer="adamw", init_learning_rate=0.0, peak_learning_rate=3e-3,
              final_learning_rate=1e-5, warmup_steps=100, num_train_steps=1000,
              weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_by_global_norm=1.0)
    c = Cfg(opt=opt)
    model = TransformerDo(DoConfig(D=d, H=n_heads, L=seq, N=n_layers, V=vocab, F=4 * d,
                                   fsdp_enabled=False))
    params = model.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))["params"]
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=optimizer.get_optimizer(opt))

    def step(state: TrainState, in_BxL: jax.Array):  # nanodo's _train_step, default loss
        x_BxL, y_BxL = in_BxL[:, :-1], in_BxL[:, 1:]
        weights_BxL = jnp.ones_like(y_BxL, jnp.float32)

        def loss_fn(p):
            logits_BxLxV = state.apply_fn({"params": p}, x_BxL)
            losses_BxL = optax.losses.softmax_cross_entropy_with_integer_labels(
                logits_BxLxV, y_BxL)
            ntokens = weights_BxL.sum()
            mean = jnp.sum(losses_BxL * weights_BxL) / ntokens
            return mean, LossAux(ntokens=ntokens, state={}, log_perplexity=mean)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.opt_state.gradient_step + 1,
                            params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
        return new, metrics_lib.get_metrics(aux, c, loss, state, grads, updates)

    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32))
               for _ in range(4)]
    fn = jax.jit(step)
    state, m = fn(state, batches[0])
    jax.block_until_ready(m)
    return fn, state, batches


def window(fn: Callable, state: Any, batches: List[jax.Array], steps: int) -> tuple:
    """nanodo's counterpart of step_speed.timed_window (its step takes no hparams)."""
    return timed_window(lambda s, b, _: fn(s, b), state, None, batches, steps)


def compare(size: tuple, batch: int, seq: int, steps: int, repeats: int) -> Dict[str, float]:
    name, d, n_layers, n_heads, vocab = size
    ours_fn, ours_state, hp, ours_batches, _ = setup(d, n_layers, n_heads, vocab, batch, seq,
                                                     "float32", TIED)
    do_fn, do_state, do_batches = nanodo_step(d, n_layers, n_heads, vocab, batch, seq)
    wall: Dict[str, List[float]] = {"proxies": [], "nanodo": []}
    cpu: Dict[str, List[float]] = {"proxies": [], "nanodo": []}
    for r in range(repeats):
        for who in (("proxies", "nanodo") if r % 2 == 0 else ("nanodo", "proxies")):
            if who == "proxies":
                ours_state, dt, dc = timed_window(ours_fn, ours_state, hp, ours_batches, steps)
            else:
                do_state, dt, dc = window(do_fn, do_state, do_batches, steps)
            wall[who].append(dt)
            cpu[who].append(dc)
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    return {"proxies_ms": med["proxies"], "nanodo_ms": med["nanodo"],
            "proxies_cpu_ms": med_cpu["proxies"], "nanodo_cpu_ms": med_cpu["nanodo"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanodo", type=Path, required=True, help="a google-deepmind/nanodo checkout")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed window")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--size", action="append", default=[],
                    help="substring of a shape's name (default: all four)")
    args = ap.parse_args()
    if not (args.nanodo / "nanodo" / "model.py").is_file():
        sys.exit(f"error: {args.nanodo} holds no nanodo/model.py; pass a nanodo checkout")
    sys.path.insert(0, str(args.nanodo.resolve()))
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {args.batch} x "
          f"{args.seq}, fp32, {args.repeats} alternating windows of {args.steps} steps")
    print(f"{'shape':26s} {'proxies ms':>10s} {'nanodo ms':>10s} {'speed-up':>8s} "
          f"{'(CPU time)':>10s}")
    for size in SIZES:
        if args.size and not any(s in size[0] for s in args.size):
            continue
        r = compare(size, args.batch, args.seq, args.steps, args.repeats)
        print(f"{size[0]:26s} {r['proxies_ms']:10.1f} {r['nanodo_ms']:10.1f} "
              f"{r['nanodo_ms'] / r['proxies_ms']:7.2f}x "
              f"{r['nanodo_cpu_ms'] / r['proxies_cpu_ms']:9.2f}x")


if __name__ == "__main__":
    main()
