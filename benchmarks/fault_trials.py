"""Kill/resume trials: interrupt `python -m proxies.train` at random moments, rerun, compare.

    python benchmarks/fault_trials.py [--trials 12] [--steps 60] [--seed 0]

Each trial starts a small run (embedded corpus), sends SIGKILL, SIGTERM or SIGINT after a random
delay (during start-up, training, eval or a checkpoint write, wherever it lands), reruns the same
command until it completes, and compares metrics.jsonl with an uninterrupted run's (wall-clock
figures aside). Prints one line per trial and the tally.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxies.rundir import METRICS, read_metrics

SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")


def command(out: Path, steps: int) -> list:
    return [sys.executable, "-m", "proxies.train", "model.d_model=64", "model.n_layers=2",
            "model.n_heads=2", f"train.steps={steps}", "train.batch_size=8", "train.seq_len=64",
            "train.log_every=5", "train.eval_every=20", "train.checkpoint_every=15",
            "train.quiet=true", "wandb.mode=disabled", f"out_dir={out}"]


def comparable(out: Path) -> list:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in read_metrics(out / METRICS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref"
        t0 = time.time()
        subprocess.run(command(ref, args.steps), check=True, capture_output=True)
        full_s = time.time() - t0
        want = comparable(ref)
        tally = {"exact": 0, "differs": 0}
        codes: dict = {}
        for i in range(args.trials):
            out = Path(tmp) / f"t{i}"
            signame = SIGNALS[i % len(SIGNALS)]
            delay = rng.uniform(0.5, full_s)
            proc = subprocess.Popen(command(out, args.steps), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            proc.send_signal(getattr(signal, signame))
            _, err = proc.communicate()
            codes.setdefault(signame, []).append(proc.returncode)
            rows_at_stop = len(read_metrics(out / METRICS))
            reruns = 0
            while reruns < 3:
                reruns += 1
                if subprocess.run(command(out, args.steps), capture_output=True).returncode == 0:
                    break
            ok = comparable(out) == want
            tally["exact" if ok else "differs"] += 1
            print(f"trial {i:2d}: {signame:7s} after {delay:4.1f} s -> exit {proc.returncode:4d}, "
                  f"{rows_at_stop:2d} rows kept, {reruns} rerun(s): "
                  f"{'exact' if ok else 'DIFFERS'}  {err.strip()[:90]}")
    print(f"\n{args.trials} trials ({args.steps} steps, uninterrupted run {full_s:.1f} s incl. "
          f"start-up): {json.dumps(tally)}; exit codes {json.dumps(codes)}")


if __name__ == "__main__":
    main()
