"""Where nanoGPT's CPU step spends its time: run by a Python with PyTorch, from
`benchmarks/nanogpt.py --profile` (which maps the ops to the families it sets beside ours).

    TORCH_PYTHON benchmarks/nanogpt_profile.py --nanogpt PATH/TO/nanoGPT --vocab 65 [--steps 50]

Builds nanoGPT's own GPT and AdamW (its model.py, from its checkout) at the recipe of
benchmarks/nanogpt.py, runs its train loop's step (forward, backward, clip, optimizer step,
zero_grad) eagerly on random ids, and profiles `--steps` steps with torch.profiler. Prints one
JSON object: the median wall ms per step without the profiler, and per (phase, aten op) its self
CPU ms per step, the phase being forward, backward or optimizer (clip, step, zero_grad).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch

PHASES = ("forward", "backward", "optimizer")


def phase_of(evt) -> str | None:
    """The phase whose record_function range holds this event (None: outside every phase)."""
    while evt is not None:
        if evt.name in PHASES:
            return evt.name
        evt = evt.cpu_parent
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nanogpt", type=Path, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    sys.path.insert(0, str(args.nanogpt.resolve()))
    from model import GPT, GPTConfig  # nanoGPT's, from its checkout

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=args.block, vocab_size=args.vocab, n_layer=4, n_head=4,
                          n_embd=128, dropout=0.0, bias=False))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    ids = torch.randint(args.vocab, (args.batch, args.block + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step() -> None:
        with torch.profiler.record_function("forward"):
            _, loss = model(x, y)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    walls = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    self_ms: collections.Counter = collections.Counter()
    for evt in prof.events():
        phase = phase_of(evt)
        if phase is not None and evt.name not in PHASES:
            self_ms[f"{phase}\t{evt.name}"] += evt.self_cpu_time_total / 1e3 / args.steps
    print(json.dumps({"ms_per_step": 1e3 * statistics.median(walls),
                      "threads": torch.get_num_threads(), "self_ms": dict(self_ms)}))


if __name__ == "__main__":
    main()
