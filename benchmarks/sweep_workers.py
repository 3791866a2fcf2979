"""A sweep trained by local worker processes (`sweep.workers`) against the same sweep in one
process: wall time of the whole command, that a rerun trains nothing, and that the results agree.

    python benchmarks/sweep_workers.py                        # +exp=lr_sens, workers 1 vs all cores
    python benchmarks/sweep_workers.py --workers 1,2 -- train.steps=100

Each setting trains into its own fresh run store (the same grid, nothing shared). Results: the
largest difference of any run's final held-out CE between settings (float32 rounding only: a
one-core worker runs XLA single-threaded, which sums in another order than the multi-threaded
process; any two worker counts agree exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List


def sweep(root: Path, workers: int, exp: str, extra: List[str]) -> float:
    cmd = [sys.executable, "-m", "proxies.sweep", f"+exp={exp}", f"sweep.workers={workers}",
           f"sweep.root={root}", f"sweep.run_root={root / 'runs'}", "wandb.mode=disabled",
           "sweep.analysis=false", *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"error: {' '.join(cmd[2:5])} failed: {p.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def final_ce(root: Path) -> Dict[str, float]:
    return {s.parent.name: json.loads(s.read_text())["final_eval_ce"]
            for s in (root / "runs").glob("*/summary.json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", default="lr_sens")
    ap.add_argument("--workers", default=f"1,{len(os.sched_getaffinity(0))}",
                    help="comma-separated sweep.workers settings")
    ap.add_argument("extra", nargs="*", help="overrides for every sweep (after --)")
    args = ap.parse_args()
    settings = [int(w) for w in args.workers.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in settings:
            root = Path(tmp) / f"w{w}"
            wall = sweep(root, w, args.exp, args.extra)
            rerun = sweep(root, w, args.exp, args.extra)
            results[w] = (wall, rerun, final_ce(root))
    base_wall, _, base_ce = results[settings[0]]
    print(f"+exp={args.exp} {' '.join(args.extra)}: {len(base_ce)} runs, "
          f"{len(os.sched_getaffinity(0))} cores")
    for w, (wall, rerun, ce) in results.items():
        diff = max(abs(ce[k] - base_ce[k]) for k in base_ce) if ce.keys() == base_ce.keys() \
            else float("nan")
        print(f"  sweep.workers={w}: {wall:6.0f} s  (x{base_wall / wall:.2f})  rerun {rerun:4.0f} s"
              f"  max |final eval CE - workers={settings[0]}| {diff:.2e}")


if __name__ == "__main__":
    main()
