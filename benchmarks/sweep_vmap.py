"""A vmapped group of runs against the same runs one by one: runs/hour and tokens/s.

    python benchmarks/sweep_vmap.py                       # d64 L2 and d128 L4, groups of 8
    python benchmarks/sweep_vmap.py --group 16 --steps 300

Times the train step only (the part vmap changes), after compilation, median of repeats, and
converts to runs/hour for a run of --run-steps steps. `sweep.vmap=auto` vmaps on accelerators only;
this script is how that choice is checked on a backend.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from proxies.config import Config
from proxies.model import Transformer
from proxies.optim import hparams_from_config
from proxies.step import init_state, make_train_step
from proxies.runner import vmapped_step


def time_steps(fn, args_fn, steps: int, repeats: int) -> float:
    """Median seconds per call of fn(*args) over `repeats` windows of `steps` calls."""
    out = fn(*args_fn(0))
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(steps):
            out = fn(*args_fn(i))
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / steps)
    return statistics.median(times)


def bench(d: int, n_layers: int, n_heads: int, group: int, batch: int, seq: int, steps: int,
          repeats: int, run_steps: int, dtype: str) -> None:
    cfg = OmegaConf.structured(Config)
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = d, n_layers, n_heads
    cfg.model.dtype, cfg.train.seq_len, cfg.train.steps = dtype, seq, run_steps
    model = Transformer(cfg.model, 256, seq)
    state = init_state(model, cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, 256, (batch, seq + 1), dtype=np.int32))
               for _ in range(4)]
    lrs = np.geomspace(1e-4, 1e-1, group)
    hps = []
    for lr in lrs:
        cfg.optim.lr = float(lr)
        hps.append(hparams_from_config(cfg, loss_limit=math.inf))

    one = jax.jit(make_train_step(model, cfg))
    states = [state] * group

    def seq_args(i):
        return states[i % group], batches[i % 4], hps[i % group]
    t_one = time_steps(one, seq_args, steps, repeats)

    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa
    g_state, g_hp = stack(states), stack(hps)
    alive = jnp.ones(group, bool)
    vm = jax.jit(vmapped_step(make_train_step(model, cfg)))
    t_group = time_steps(vm, lambda i: (g_state, batches[i % 4], g_hp, alive), steps,
                         repeats)
    tok = batch * seq
    rph_one = 3600 / (t_one * run_steps)
    rph_group = 3600 * group / (t_group * run_steps)
    print(f"d{d} L{n_layers} H{n_heads}  group {group}: one by one {t_one * 1e3:8.1f} ms/step "
          f"({tok / t_one:10,.0f} tok/s, {rph_one:7.1f} runs/h) | vmapped "
          f"{t_group * 1e3:8.1f} ms/step ({group * tok / t_group:10,.0f} tok/s total, "
          f"{tok / t_group:9,.0f} per run, {rph_group:7.1f} runs/h) -> x{rph_group / rph_one:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-steps", type=int, default=200, help="steps of one run (runs/hour)")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"jax {jax.__version__}, batch {args.batch} x seq {args.seq}, {args.dtype}, "
          f"runs of {args.run_steps} steps")
    for d, n_layers, n_heads in ((64, 2, 2), (128, 4, 4)):
        bench(d, n_layers, n_heads, args.group, args.batch, args.seq, args.steps, args.repeats,
              args.run_steps, args.dtype)


if __name__ == "__main__":
    main()
