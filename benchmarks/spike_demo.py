"""Injected loss spikes under each `train.spike.action`: loss curves and final held-out CE.

    python benchmarks/spike_demo.py [--steps 300] [--at 150 151 152] [--out docs/faults]

Trains the laptop preset four times on the embedded corpus: clean, and with the batches of the
updates `--at` replaced by garbage (one token repeated) under action=log, skip and rollback.
Prints each run's final eval CE, spikes and rollbacks; writes spikes.png (train loss over steps,
spike events marked) into --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from proxies.config import Config  # noqa: E402
from proxies.rundir import EVENTS, METRICS, read_jsonl, read_metrics  # noqa: E402
from proxies.train import train  # noqa: E402

RUNS = {"clean": "k", "log": "C3", "skip": "C1", "rollback": "C0"}
# The clean run on top, thin and dashed, so the runs that follow it exactly stay visible.
WIDTH = {"clean": 0.9, "log": 3.0, "skip": 1.4, "rollback": 1.4}
STYLE = {"clean": "--", "log": "-", "skip": "-", "rollback": "-"}
ORDER = {"clean": 4, "log": 1, "skip": 2, "rollback": 3}


def run(name: str, args: argparse.Namespace, root: Path) -> tuple[dict, list, list]:
    over = [f"train.steps={args.steps}", "train.log_every=2", f"train.eval_every={args.steps}",
            f"train.checkpoint_every={args.checkpoint_every}", "train.quiet=true",
            "wandb.mode=disabled", f"out_dir={root / name}",
            f"train.spike.skip_batches={args.skip_batches}"]
    if name != "clean":
        over += [f"train.spike.action={name}",
                 f"train.inject_spike_at=[{','.join(map(str, args.at))}]"]
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(over))
    summary = train(cfg)
    return summary, read_metrics(root / name / METRICS), read_jsonl(root / name / EVENTS)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--at", type=int, nargs="+", default=[150, 151, 152])
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--skip-batches", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("docs/faults"))
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, colour in RUNS.items():
            summary, rows, events = run(name, args, Path(tmp))
            steps = [r["step"] for r in rows if r.get("train/loss") is not None]
            loss = [r["train/loss"] for r in rows if r.get("train/loss") is not None]
            if summary["diverged"]:
                label = (f"{name}: marked diverged at step {summary['diverged_at_step']} "
                         "(loss > 2 × loss at init)")
            else:
                label = (f"{name}: final eval CE {summary['final_eval_ce']:.3f}, "
                         f"{summary['spikes']} spikes, {summary['rollbacks']} rollbacks")
            ax.plot(steps, loss, color=colour, lw=WIDTH[name], ls=STYLE[name], label=label,
                    zorder=ORDER[name])
            for e in events:
                ax.axvline(e["step"], color=colour, ls=":", lw=0.8)
            results[name] = {k: summary[k] for k in ("final_eval_ce", "spikes", "rollbacks",
                                                     "diverged", "diverged_at_step")}
            results[name]["events"] = [(e["step"], e["action"]) for e in events]
    for name, r in results.items():
        print(f"{name:9s} {json.dumps(r)}")
    ax.set(xlabel="step", ylabel="train loss (every 2nd step)", yscale="log",
           title=f"Garbage batches at updates {args.at[0]}–{args.at[-1]} (laptop preset), "
                 "by train.spike.action")
    ax.axvspan(args.at[0] - 0.5, args.at[-1] + 0.5, color="0.85", zorder=0,
               label="injected garbage")
    ax.legend(fontsize=8)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out / "spikes.png", dpi=130)
    print(f"figure: {args.out / 'spikes.png'}")


if __name__ == "__main__":
    main()
