"""Train-step speed: compile time, ms/step, tokens/s and peak memory per model size.

    python benchmarks/step_speed.py                 # the reference sizes at batch 32 x 128
    python benchmarks/step_speed.py --probe-overhead  # also: whole loop with vs without probes
    python benchmarks/step_speed.py --dynamics-overhead  # whole loop with vs without dynamics.*
    python benchmarks/step_speed.py --no-table --monitor-overhead  # ... without train.monitor
    python benchmarks/step_speed.py --no-table --ab train.ce_chunk=0,1024 --ab-size V32768
        # A/B of config values, interleaved in one process: medians of alternating windows
    python benchmarks/step_speed.py --no-table --ab model.attn_impl=explicit,auto --fuse-on-cpu
        # fused (jax.nn.dot_product_attention) vs explicit attention, which auto skips on CPU
    python benchmarks/step_speed.py --no-table --profile laptop
        # where a step's time goes: XLA kernel time per model site, forward and backward

Prints one row per configuration; medians over --repeats timed windows after a warm-up.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

import proxies.model
from proxies.config import Config
from proxies.model import Transformer, count_params
from proxies.optim import hparams_from_config
from proxies.step import init_state, make_train_step

SIZES = [  # (name, d_model, n_layers, n_heads, vocab)
    ("d64 L2 H2 V256", 64, 2, 2, 256),
    ("laptop: d128 L4 H4 V256", 128, 4, 4, 256),
    ("d256 L4 H4 V256", 256, 4, 4, 256),
    ("d128 L4 H4 V32768", 128, 4, 4, 32768),
]


def setup(d: int, n_layers: int, n_heads: int, vocab: int, batch: int, seq: int, dtype: str,
          overrides: Sequence[str] = ()) -> tuple:
    """(compiled step, state, hparams, batches, compile seconds) of one configuration."""
    cfg = OmegaConf.structured(Config)
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = d, n_layers, n_heads
    cfg.model.dtype = dtype
    cfg.train.seq_len = seq
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    model = Transformer(cfg.model, vocab, seq)
    state = init_state(model, cfg, jax.random.key(0))
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32))
               for _ in range(4)]
    t = time.perf_counter()
    step = jax.jit(make_train_step(model, cfg)).lower(state, batches[0], hp).compile()
    compile_s = time.perf_counter() - t
    state, m = step(state, batches[0], hp)
    jax.block_until_ready(m)
    return step, state, hp, batches, compile_s


def timed_window(step, state, hp, batches, steps: int) -> tuple:
    """(state after, wall seconds per step, process CPU seconds per step) over `steps` steps. CPU
    time is the steadier measure on a machine shared with other work."""
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
        state, m = step(state, batches[i % len(batches)], hp)
    jax.block_until_ready(m)
    return state, (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def bench(d: int, n_layers: int, n_heads: int, vocab: int, batch: int, seq: int, steps: int,
          repeats: int, dtype: str) -> dict:
    step, state, hp, batches, compile_s = setup(d, n_layers, n_heads, vocab, batch, seq, dtype)
    n_params = count_params(state.params)[0]
    mem = step.memory_analysis()
    times = []
    for _ in range(repeats):
        state, dt, _ = timed_window(step, state, hp, batches, steps)
        times.append(dt)
    ms = statistics.median(times) * 1e3
    temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else float("nan")
    return {"params": n_params, "compile_s": compile_s, "ms_step": ms,
            "tokens_s": batch * seq / (ms / 1e3), "temp_mb": temp_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ab(key: str, values: List[str], size: tuple, batch: int, seq: int, steps: int, repeats: int,
       dtype: str) -> None:
    """Each value of `key` compiled once, then timed in alternating windows (order reversed
    every repeat) so drifting machine load hits every variant alike; medians per variant."""
    name, d, n_layers, n_heads, vocab = size
    runs = {v: list(setup(d, n_layers, n_heads, vocab, batch, seq, dtype, [f"{key}={v}"]))
            for v in values}
    wall: Dict[str, List[float]] = {v: [] for v in values}
    cpu: Dict[str, List[float]] = {v: [] for v in values}
    for r in range(repeats):
        for v in (values if r % 2 == 0 else values[::-1]):
            step, state, hp, batches, _ = runs[v]
            runs[v][1], dt, dc = timed_window(step, state, hp, batches, steps)
            wall[v].append(dt)
            cpu[v].append(dc)
    base_wall, base_cpu = statistics.median(wall[values[0]]), statistics.median(cpu[values[0]])
    print(f"\nA/B {key}, {name}, batch {batch} x {seq}, {dtype}, {repeats} x {steps} steps "
          f"(medians; IQR of wall time):")
    for v in values:
        med, q, mc = statistics.median(wall[v]), statistics.quantiles(wall[v], n=4), \
            statistics.median(cpu[v])
        mem = runs[v][0].memory_analysis()
        temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else float("nan")
        print(f"  {key}={v:8s} wall {med * 1e3:8.1f} ms/step (IQR {q[0] * 1e3:.1f}-"
              f"{q[2] * 1e3:.1f}) x{med / base_wall:.3f}   CPU {mc * 1e3:8.1f} ms/step "
              f"x{mc / base_cpu:.3f}   compile {runs[v][4]:.1f} s  XLA temp {temp_mb:.0f} MB")


def kernel_sites(hlo_text: str) -> Dict[str, str]:
    """Each compiled instruction's model site: its op_name with the block number and autodiff's
    wrappers taken out, prefixed fwd or bwd (autodiff's transpose) or step (optimizer, loss)."""
    sites = {}
    for line in hlo_text.splitlines():
        m = re.match(r'\s+(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]+)"', line)
        if not m:
            continue
        op = m.group(2).split("/", 1)[-1]
        where = "bwd" if "transpose(jvp(" in op else "fwd" if "jvp(" in op else "step"
        op = re.sub(r"transpose\(jvp\((\w+)\)\)|jvp\((\w+)\)", r"\1\2", op)
        sites[m.group(1)] = f"{where} {re.sub(r'block_[0-9]+', 'block_N', op)}"
    return sites


def kernel_profile(step, state, hp, batches, steps: int) -> tuple:
    """(wall ms per step without the profiler, {model site: XLA kernel ms per step}) over
    `steps` steps (jax.profiler's trace; kernel times summed over threads)."""
    sites = kernel_sites(step.as_text())
    state, wall, _ = timed_window(step, state, hp, batches, steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            state, _, _ = timed_window(step, state, hp, batches, steps)
        trace = next(Path(trace_dir).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_site: Dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in sites:
            per_site[sites[e["name"]]] += e["dur"] / 1e3 / steps
    return wall * 1e3, dict(per_site)


FAMILIES = ("matmul", "attention core", "layernorm", "GELU", "embedding and loss",
            "residual and other elementwise", "layout (copy, transpose, concatenate)",
            "optimizer, clip, step metrics", "host (dispatch, autograd, Python)")
LAYOUT_OPS = {"transpose", "copy", "concatenate", "reshape", "slice", "pad", "dynamic_slice",
              "dynamic_update_slice", "broadcast_in_dim"}
PROJECTIONS = ("/query/", "/key/", "/value/", "/out/")


def site_family(site: str) -> str:
    """The op family (FAMILIES) of one of `kernel_sites`' model sites."""
    op = site.rsplit("/", 1)[-1].split(" ")[-1]
    if site.startswith("step "):
        return "optimizer, clip, step metrics"
    if op == "dot_general":
        inside_attention = "/attn/" in site and not any(p in site for p in PROJECTIONS)
        return "attention core" if inside_attention else "matmul"
    if op in LAYOUT_OPS:
        return "layout (copy, transpose, concatenate)"
    if "/attn/" in site and not any(p in site for p in PROJECTIONS):
        return "attention core"
    if "/ln_" in site or "norm" in site.lower():
        return "layernorm"
    if "/mlp/" in site:
        return "GELU"
    if "embed" in site or "take" in site or "jvp()" in site:
        return "embedding and loss"
    return "residual and other elementwise"


def profile(size: tuple, batch: int, seq: int, steps: int, dtype: str, top: int) -> None:
    """XLA's kernel time per model site, largest first: which ops a step's time goes to, and
    how much of the wall time is kernels at all."""
    name, d, n_layers, n_heads, vocab = size
    step, state, hp, batches, _ = setup(d, n_layers, n_heads, vocab, batch, seq, dtype)
    wall, per_site = kernel_profile(step, state, hp, batches, steps)
    total = sum(per_site.values())
    print(f"\nprofile, {name}, batch {batch} x {seq}, {dtype}: {wall:.1f} ms/step wall "
          f"(without the profiler), {total:.1f} ms/step in XLA kernels (summed over threads)")
    for site, ms in sorted(per_site.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:7.2f} ms  {ms / total * 100:4.1f}%  {site}  [{site_family(site)}]")


def loop_wall(steps: int, overrides: Sequence[str]) -> float:
    """One whole training loop (laptop preset, stdlib bytes): its summary's wall_s, which leaves
    out compilation (the loop's clock starts after the step and any probe compile)."""
    from proxies.train import train
    with tempfile.TemporaryDirectory() as out:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([
            f"train.steps={steps}", "train.quiet=true", f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}", "wandb.mode=disabled", f"out_dir={out}",
            *overrides]))
        return float(train(cfg)["wall_s"])


def loop_overhead(what: str, steps: int, off: Sequence[str], on: Sequence[str],
                  pairs: int) -> None:
    """Whole loops without and with `what`, alternated `pairs` times: the median of each and
    of the pairs' time ratios (alternating shares any drift in the machine's load)."""
    walls = [(loop_wall(steps, off), loop_wall(steps, on)) for _ in range(pairs)]
    offs, ons = zip(*walls)
    ratio = statistics.median(b / a for a, b in walls)
    print(f"\n{what} overhead, laptop preset, {steps} steps, {pairs} alternating pairs: "
          f"{statistics.median(offs):.2f} s off, {statistics.median(ons):.2f} s on "
          f"(median pair ratio {(ratio - 1) * 100:+.1f}% time; pairs: "
          f"{', '.join(f'{(b / a - 1) * 100:+.1f}%' for a, b in walls)})")


def probe_overhead(steps: int, log_every: int, pairs: int) -> None:
    """Whole training loop with probes on vs off."""
    base = [f"train.log_every={log_every}"]
    loop_overhead(f"probe (log_every={log_every})", steps, [*base, "train.probes=false"],
                  [*base, "train.probes=true"], pairs)


def dynamics_overhead(steps: int, every: int, pairs: int) -> None:
    """Training loop (probes on) with the training-dynamics probes on vs off (the dynamics probe
    compiles on its step-0 call, before the loop's clock starts)."""
    base = [f"dynamics.every={every}"]
    loop_overhead(f"dynamics ({steps // every} probes in the loop)", steps,
                  [*base, "dynamics.enabled=false"], [*base, "dynamics.enabled=true"], pairs)


def monitor_overhead(steps: int, pairs: int) -> None:
    """Training loop with the early-warning monitor on vs off: its readings in the step, their
    fetch, the forecasts every `train.monitor.every` updates and signals.jsonl."""
    loop_overhead("early-warning monitor", steps, ["train.monitor.enabled=false"],
                  ["train.monitor.enabled=true"], pairs)


def step_instructions(cfg: Any, vocab: int, batch: int, seq: int) -> str:
    """The compiled train step's HLO instructions, without metadata and source locations."""
    model = Transformer(cfg.model, vocab, seq)
    state = init_state(model, cfg, jax.random.key(0))
    tokens = jnp.zeros((batch, seq + 1), jnp.int32)
    text = jax.jit(make_train_step(model, cfg)).lower(
        state, tokens, hparams_from_config(cfg, loss_limit=math.inf)).compile().as_text()
    keep = [re.sub(r", stack_frame_id=\d+", "", re.sub(r"metadata=\{[^}]*\}", "", line))
            for line in text.splitlines(keepends=True) if line.startswith((" ", "ENTRY", "%", "}"))]
    return "".join(keep)


def print_hlo_hashes(batch: int, seq: int, dtype: str) -> None:
    import hashlib
    for label, over in (("laptop preset", []),
                        ("+ paper baseline (qk-LN, z-loss, independent decay)",
                         ["model.qk_layernorm=true", "optim.z_loss=1e-4",
                          "optim.independent_wd=true"])):
        for monitor in (True, False):  # the early warning's readings in the step, or not
            cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(
                [f"train.seq_len={seq}", f"model.dtype={dtype}", *over,
                 f"train.monitor.enabled={str(monitor).lower()}"]))
            text = step_instructions(cfg, 256, batch, seq)
            print(f"{label}, monitor {'on' if monitor else 'off'}: "
                  f"{hashlib.sha256(text.encode()).hexdigest()[:12]} "
                  f"({text.count(chr(10))} instructions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed window")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--probe-overhead", action="store_true")
    ap.add_argument("--overhead-steps", type=int, default=200)
    ap.add_argument("--overhead-pairs", type=int, default=3,
                    help="alternating off/on loops per overhead measurement")
    ap.add_argument("--monitor-overhead", action="store_true")
    ap.add_argument("--log-every", type=int, default=Config().train.log_every)
    ap.add_argument("--dynamics-overhead", action="store_true")
    ap.add_argument("--no-table", action="store_true", help="only the overhead measurements")
    ap.add_argument("--dynamics-every", type=int, default=Config().dynamics.every)
    ap.add_argument("--ab", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="interleaved A/B of a config key's values (repeatable)")
    ap.add_argument("--ab-size", action="append", default=[],
                    help="substring of a size's name for --ab (default: the laptop preset)")
    ap.add_argument("--ab-repeats", type=int, default=21)
    ap.add_argument("--profile", action="append", default=[], metavar="SIZE",
                    help="XLA kernel time per model site for a size (substring of its name)")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--fuse-on-cpu", action="store_true",
                    help="let model.attn_impl=auto take the fused path on CPU too")
    ap.add_argument("--hlo-hash", action="store_true",
                    help="print a hash of the compiled laptop step's instructions (source "
                         "locations left out) and stop: equal hashes in two checkouts mean the "
                         "same step, whatever the timings say")
    args = ap.parse_args()
    if args.hlo_hash:
        return print_hlo_hashes(args.batch, args.seq, args.dtype)
    if args.fuse_on_cpu:
        proxies.model.auto_fuses = lambda backend: True
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"jax {jax.__version__}, batch {args.batch} x seq {args.seq}, {args.dtype}")
    if not args.no_table:
        print(f"{'config':26s} {'params':>10s} {'compile s':>9s} {'ms/step':>8s} "
              f"{'tokens/s':>9s} {'XLA temp MB':>11s} {'peak RSS MB':>11s}")
    for name, d, L, H, V in ([] if args.no_table else SIZES):
        r = bench(d, L, H, V, args.batch, args.seq, args.steps, args.repeats, args.dtype)
        print(f"{name:26s} {r['params']:10,d} {r['compile_s']:9.2f} {r['ms_step']:8.1f} "
              f"{r['tokens_s']:9,.0f} {r['temp_mb']:11.1f} {r['peak_rss_mb']:11.0f}")
    for spec in args.ab:
        key, values = spec.split("=", 1)
        for want in args.ab_size or ["laptop"]:
            size = next(sz for sz in SIZES if want in sz[0])
            ab(key, values.split(","), size, args.batch, args.seq, args.steps, args.ab_repeats,
               args.dtype)
    for want in args.profile:
        size = next(sz for sz in SIZES if want in sz[0])
        profile(size, args.batch, args.seq, args.steps, args.dtype, args.profile_top)
    if args.probe_overhead:
        probe_overhead(args.overhead_steps, args.log_every, args.overhead_pairs)
    if args.dynamics_overhead:
        dynamics_overhead(max(args.overhead_steps, 300), args.dynamics_every, args.overhead_pairs)
    if args.monitor_overhead:
        monitor_overhead(args.overhead_steps, args.overhead_pairs)


if __name__ == "__main__":
    main()
