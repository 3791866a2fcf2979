"""Accelerator throughput: tokens/s, MFU and peak memory per model size, and runs/hour of a
vmapped sweep group against the same runs one by one. One script, one call:

    python benchmarks/gpu.py --out results.json          # on a GPU: the sizes below, bf16
    python benchmarks/gpu.py --tiny                      # anywhere (CPU): tiny sizes, a smoke run

FLOP convention (stated with every figure): per token, 6·N + 12·L·d·seq, where N counts the
non-embedding parameters plus the readout matrix (its matmul is real compute; the input
embedding is a lookup) and 12·L·d·seq is causal attention's q·kᵀ and probs·v, forward and
backward, without flash-style skipping of masked blocks. MFU = that × tokens/s / the peak: the
dense bf16 matmul peak this script measures on the device (`--peak-tflops` overrides it).
Timings: compile first, several timed windows after a warm-up, `block_until_ready` before each
clock read, random tokens (never all zeros); medians reported.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from proxies.config import Config
from proxies.model import Transformer, count_params
from proxies.optim import hparams_from_config
from proxies.runner import Runner
from proxies.step import init_state


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layers: int
    n_heads: int


# The four sizes (non-embedding params 12·L·d²): the paper's 9.4M and 42M presets,
# GPT-2 small's 124M shape (85M non-embedding + its 38.6M embeddings at V=50257) and 350M.
SIZES = [Size("9.4M", 512, 3, 8), Size("42M", 768, 6, 12), Size("124M", 768, 12, 12),
         Size("350M", 1024, 24, 16)]
TINY = [Size("tiny-d64", 64, 2, 2)]
# Small proxies for the vmapped-group comparison (d <= 512).
GROUP_SIZES = [Size("d128 L4", 128, 4, 4), Size("d256 L4", 256, 4, 4), Size("d512 L3", 512, 3, 8)]
TINY_GROUP = [Size("tiny-d64", 64, 2, 2)]


def make_config(size: Size, vocab: int, seq: int, dtype: str, overrides: Sequence[str]) -> Any:
    cfg = OmegaConf.structured(Config)
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = (size.d_model, size.n_layers,
                                                                size.n_heads)
    cfg.model.dtype, cfg.train.seq_len, cfg.train.probes = dtype, seq, False
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def flops_per_token(size: Size, vocab: int, seq: int, nonembed: int) -> float:
    return 6 * (nonembed + vocab * size.d_model) + 12 * size.n_layers * size.d_model * seq


def measured_peak_flops(dtype: str, n: int, repeats: int = 10) -> float:
    """Dense matmul FLOP/s of this device: the MFU denominator."""
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(1), (n, n), dt)
    b = jax.random.normal(jax.random.key(2), (n, n), dt)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def peak_memory_gb() -> Optional[float]:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def time_steps(runner: Runner, batches: List[jax.Array], steps: int, repeats: int) -> float:
    """Median seconds per step over `repeats` windows of `steps` steps (after one warm-up)."""
    runner.step(batches[0], False)
    jax.block_until_ready(runner.state)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(steps):
            metrics = runner.step(batches[i % len(batches)], False)
        jax.block_until_ready((runner.state, metrics))
        times.append((time.perf_counter() - t) / steps)
    return statistics.median(times)


def build(size: Size, vocab: int, seq: int, batch: int, dtype: str, overrides: Sequence[str],
          group: int = 0) -> tuple:
    """(runner, host batches, non-embedding params) of one run or a vmapped group of `group`."""
    cfg = make_config(size, vocab, seq, dtype, overrides)
    model = Transformer(cfg.model, vocab, seq)
    state = init_state(model, cfg, jax.random.key(0))
    n_nonembed = count_params(state.params)[1]
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32) for _ in range(4)]
    hps = [hparams_from_config(cfg, loss_limit=math.inf)] * max(group, 1)
    if group:  # LRs spread like a sweep's
        hps = [{**hp, "lr": jnp.asarray(lr, jnp.float32)}
               for hp, lr in zip(hps, np.geomspace(1e-4, 1e-2, group))]
    runner = Runner([state] * max(group, 1), hps, vmapped=bool(group))
    batches = [runner.place_batch(b) for b in batches]  # on device: time the step, not copies
    runner.compile(f"bench-{size}-{group}", model, cfg, batches[0])
    return runner, batches, n_nonembed


def throughput(size: Size, args: argparse.Namespace, peak: float) -> Dict[str, Any]:
    t = time.perf_counter()
    runner, batches, nonembed = build(size, args.vocab, args.seq, args.batch, args.dtype,
                                      args.override)
    compile_s = time.perf_counter() - t
    s_step = time_steps(runner, batches, args.steps, args.repeats)
    tok_s = args.batch * args.seq / s_step
    fpt = flops_per_token(size, args.vocab, args.seq, nonembed)
    return {"size": size.name, "d_model": size.d_model, "n_layers": size.n_layers,
            "nonembed_params": nonembed, "batch": args.batch, "seq": args.seq,
            "dtype": args.dtype, "ms_step": s_step * 1e3, "tokens_s": tok_s,
            "flops_per_token": fpt, "mfu": fpt * tok_s / peak, "peak_memory_gb": peak_memory_gb(),
            "setup_and_compile_s": compile_s}


def group_vs_sequential(size: Size, args: argparse.Namespace) -> Dict[str, Any]:
    """Runs/hour of G runs trained as one vmapped program vs the same G one after another (same
    steps per run, so runs/hour = 3600 / (steps × seconds per step per run))."""
    G, steps_per_run = args.group, args.run_steps
    single, batches, _ = build(size, args.vocab, args.group_seq, args.group_batch, args.dtype,
                               args.override)
    s_single = time_steps(single, batches, args.steps, args.repeats)
    del single
    group, batches, _ = build(size, args.vocab, args.group_seq, args.group_batch, args.dtype,
                              args.override, group=G)
    s_group = time_steps(group, batches, args.steps, args.repeats)
    sequential = 3600 / (steps_per_run * s_single)
    vmapped = 3600 * G / (steps_per_run * s_group)
    return {"size": size.name, "group": G, "batch": args.group_batch, "seq": args.group_seq,
            "ms_step_single": s_single * 1e3, "ms_step_group": s_group * 1e3,
            "runs_per_hour_sequential": sequential, "runs_per_hour_vmapped": vmapped,
            "speedup": vmapped / sequential, "steps_per_run": steps_per_run}


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes and steps (CPU smoke run)")
    p.add_argument("--sizes", nargs="*", help="names from SIZES (default: all)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32768, help="the paper's vocabulary size")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--group", type=int, default=8, help="runs in the vmapped group")
    p.add_argument("--group-batch", type=int, default=32)
    p.add_argument("--group-seq", type=int, default=128)
    p.add_argument("--run-steps", type=int, default=10_000, help="steps per run for runs/hour")
    p.add_argument("--peak-tflops", type=float, help="MFU denominator instead of the measured one")
    p.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. "
                   "model.attn_impl=explicit train.ce_chunk=0")
    p.add_argument("--no-group", action="store_true", help="skip the vmapped-group comparison")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        args.seq, args.batch, args.vocab, args.steps, args.repeats = 32, 4, 256, 3, 2
        args.group, args.group_batch, args.group_seq = 4, 4, 32
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse(argv)
    sizes = TINY if args.tiny else [s for s in SIZES if not args.sizes or s.name in args.sizes]
    device = jax.devices()[0]
    peak = (args.peak_tflops * 1e12 if args.peak_tflops else
            measured_peak_flops(args.dtype, 256 if args.tiny else 8192))
    print(f"device: {device.device_kind} ({jax.default_backend()}), {args.dtype}, peak "
          f"{peak / 1e12:.1f} TFLOP/s ({'given' if args.peak_tflops else 'measured matmul'}); "
          "FLOPs/token = 6·(non-embedding + readout params) + 12·L·d·seq")
    rows: List[Dict[str, Any]] = []
    groups: List[Dict[str, Any]] = []
    result = {"device": device.device_kind, "backend": jax.default_backend(),
              "peak_flops": peak, "peak_source": "given" if args.peak_tflops else "measured",
              "flop_convention": "6*(nonembed+readout) + 12*L*d*seq per token",
              "jax": jax.__version__, "args": vars(args), "throughput": rows, "groups": groups}
    for size in sizes:
        r = throughput(size, args, peak)
        rows.append(r)
        save(result, args.out)
        mem = "n/a" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f} GB"
        print(f"{r['size']:>9} ({r['nonembed_params'] / 1e6:6.1f}M non-emb): {r['ms_step']:8.1f} "
              f"ms/step, {r['tokens_s']:>12,.0f} tokens/s, MFU {100 * r['mfu']:5.1f}%, "
              f"peak memory {mem}")
    if not args.no_group:
        for size in TINY_GROUP if args.tiny else GROUP_SIZES:
            g = group_vs_sequential(size, args)
            groups.append(g)
            save(result, args.out)
            print(f"{g['size']:>9} group of {g['group']}: {g['runs_per_hour_vmapped']:,.1f} runs/h "
                  f"vmapped vs {g['runs_per_hour_sequential']:,.1f} one by one "
                  f"(×{g['speedup']:.2f}; {g['steps_per_run']} steps of "
                  f"{g['batch']}×{g['seq']} per run)")
    save(result, args.out)
    return result


def save(result: Dict[str, Any], out: Optional[str]) -> None:
    """Written after every row, so a time limit keeps what was measured."""
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
