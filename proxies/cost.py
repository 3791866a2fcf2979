"""What a sweep will cost before it trains: params and FLOPs of each run from its config, and
the time they take at an assumed throughput (`--dry-run` prints it)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pandas as pd
from omegaconf import DictConfig

from proxies.config import (LR_KEY, DataSource, PosEmb, nonembed_params, series_of,
                            unhandled)
from proxies.naming import GridPoint
from proxies.rundir import run_finished


# Throughput assumed by cost estimates (FLOPs = 6·params + 12·L·d·seq per token, see
# `run_flops`): a 2-core x86 CPU runs these small fp32 models at 60-170 GFLOP/s (measured with
# benchmarks/step_speed.py); one H100 at 40% of its 989 TFLOP/s dense bf16 peak.
CPU_FLOPS = 70e9


GPU_FLOPS = 0.4 * 989e12


RUN_OVERHEAD_S = 5.0  # compile, data and first eval per run (CPU, small models)


def run_params(run: DictConfig, vocab_size: int) -> Tuple[int, int]:
    """(all params, non-embedding params) of a run's model, counted from its config."""
    m, seq = run.model, run.train.seq_len
    nonembed = nonembed_params(m.d_model, m.n_layers, m.mlp)
    embed = (vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
             + _pos_params(m.pos_emb, seq, m.d_model))
    return nonembed + embed, nonembed


def _pos_params(pos_emb: PosEmb, seq: int, d: int) -> int:
    match pos_emb:
        case PosEmb.learned:
            return seq * d
        case PosEmb.rope:
            return 0
        case _:
            unhandled("model.pos_emb", pos_emb)


def vocab_guess(run: DictConfig) -> int:
    """The vocabulary a run will have, without loading its data (32768 for a tokenizer file)."""
    d = run.data
    match d.source:
        case DataSource.tokens:
            if d.vocab_size:
                return int(d.vocab_size)
        case DataSource.stdlib | DataSource.text | DataSource.hf:
            pass  # the tokenizer decides
        case _:
            unhandled("data.source", d.source)
    if d.tokenizer == "byte":
        return 256
    if d.tokenizer == "bpe":
        return int(d.bpe_vocab_size)
    return 32768


def run_flops(run: DictConfig) -> float:
    """Training FLOPs of a run: (6·params + 12·L·d·seq) per token, plus its evals (1/3 of that
    per held-out token)."""
    t = run.train
    n_all, _ = run_params(run, vocab_guess(run))
    per_token = 6 * n_all + 12 * run.model.n_layers * run.model.d_model * t.seq_len
    train_tokens = t.steps * t.batch_size * t.seq_len
    eval_tokens = (t.steps // t.eval_every + 1) * t.eval_batches * t.batch_size * t.seq_len
    return per_token * (train_tokens + eval_tokens / 3)


def estimate(points: List[GridPoint]) -> Dict[str, float]:
    """Runs to train, runs reused, total FLOPs and the wall time on a 2-core CPU and one H100."""
    todo = [run for _, run in points if not run_finished(run.out_dir)]
    flops = sum(run_flops(run) for run in todo)
    return {"runs": len(points), "todo": len(todo), "reused": len(points) - len(todo),
            "flops": flops, "cpu_s": flops / CPU_FLOPS + RUN_OVERHEAD_S * len(todo),
            "gpu_s": flops / GPU_FLOPS + RUN_OVERHEAD_S * len(todo)}


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365 * 86400):.3g} years"


def grid_summary(points: List[GridPoint]) -> pd.DataFrame:
    """One row per series (everything but the LR): its LRs, params, steps × tokens, runs done."""
    rows: Dict[str, Dict[str, Any]] = {}
    for values, run in points:
        series = series_of(values)
        # Parts of one result may differ in length alone: a row per (series, steps, shape).
        key = json.dumps([series, run.train.steps, run.train.batch_size, run.train.seq_len],
                         sort_keys=True, default=str)
        _, nonembed = run_params(run, vocab_guess(run))
        r = rows.setdefault(key, {**{k.split(".")[-1]: v for k, v in series.items()},
                                  "nonembed_params": f"{nonembed / 1e6:.3g}M",
                                  "steps": run.train.steps,
                                  "tokens/step": run.train.batch_size * run.train.seq_len,
                                  "lrs": [], "done": 0})
        r["lrs"].append(f"{values[LR_KEY]:g}")
        r["done"] += int(run_finished(run.out_dir))
    df = pd.DataFrame(list(rows.values()))
    df["lrs"] = df["lrs"].map(lambda v: ",".join(v))
    return df


def print_plan(name: str, points: List[GridPoint], table: bool = True) -> Dict[str, float]:
    """Print the grid (a row per series) and the cost estimate; return the estimate."""
    est = estimate(points)
    if table:
        with pd.option_context("display.width", 200, "display.max_columns", 40,
                               "display.max_colwidth", 60):
            print(grid_summary(points).to_string(index=False))
    print(f"{name}: {est['runs']} runs ({est['reused']} already done, {est['todo']} to train), "
          f"{est['flops']:.3g} FLOPs to go: ~{fmt_duration(est['cpu_s'])} on a 2-core CPU, "
          f"~{fmt_duration(est['gpu_s'])} on one H100 at 40% MFU (estimates)")
    return est
