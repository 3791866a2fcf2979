"""`python -m analysis.monitor RUN_DIR... [--out DIR]`: replay the early-warning monitor and the
reactive detectors on recorded runs, and score them.

Each run's `signals.jsonl` (one row per update, written with `train.monitor.enabled`) goes
through a fresh monitor with the run's own settings (config.yaml: `train.monitor`, `optim.eps`),
so the replay says what the live run said, and through the reactive detectors large trainers use
(proxies/monitor.py `reactive_warnings`). A detector *warned* a diverged run when its first
warning came before the divergence step (summary.json `diverged_at_step`); its *lead* is the
steps in between. A warning in a run that finished without diverging is a false alarm.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from proxies import monitor as MO
from proxies.config import MonitorConfig
from proxies.rundir import (CONFIG, SIGNALS, SUMMARY, RunDirError, read_config_file, read_jsonl,
                            read_summary_file)

EARLY = "early warning (monitor)"


class MonitorReplayError(RunDirError):
    """A run directory the replay cannot read; the message names the fix (one line wherever it
    surfaces: a RunDirError)."""


@dataclass(frozen=True)
class RunReplay:
    run_dir: Path
    steps: int  # the run's planned updates
    diverged_at: Optional[int]
    first: Dict[str, Optional[int]]  # detector -> its first warning step (None: never)
    warnings: List[MO.EarlyWarning]  # the monitor's, every signal
    signals: pd.DataFrame  # per update (index), each signal over its limit (1 = at the limit)
    label: str = ""  # what the run is: size, LR and the settings the scoring set varies


def replay_run(run_dir: Path) -> RunReplay:
    """The monitor and the reactive detectors over one run's recorded signals."""
    run_dir = Path(run_dir)
    if not (run_dir / SIGNALS).exists():
        raise MonitorReplayError(
            f"{run_dir} has no {SIGNALS} (trained with the monitor off, or before it existed): "
            "train it with train.monitor.enabled=true (the default); a sweep that reused it "
            "retrains it once that directory is moved away")
    cfg = read_config_file(run_dir / CONFIG)
    summary = read_summary_file(run_dir / SUMMARY) or {}
    rows = read_jsonl(run_dir / SIGNALS)[0]
    settings = cfg["train"].get("monitor") or asdict(MonitorConfig())  # older runs: defaults
    mon = MO.from_config(settings, cfg["optim"]["eps"], cfg["optim"]["warmup_steps"])
    warnings, derived = MO.replay(mon, rows)
    signals = pd.DataFrame([{k: v / mon.limits[k].value for k, v in d.items()} for d in derived],
                           index=[int(r["step"]) for r in rows])
    first = {EARLY: min((w.step for w in warnings), default=None),
             **MO.reactive_warnings(rows)}
    diverged_at = summary.get("diverged_at_step") if summary.get("diverged") else None
    return RunReplay(run_dir, int(cfg["train"]["steps"]), diverged_at, first, warnings, signals,
                     run_label(cfg))


def run_label(cfg: Dict) -> str:
    """"d64 L2, LR 0.3, qk-LN off, z-loss 0, ε 1e-08": what sets one scored run apart."""
    m, o = cfg["model"], cfg["optim"]
    return (f"d{m['d_model']} L{m['n_layers']}, LR {o['lr']:g}, qk-LN "
            f"{'on' if m['qk_layernorm'] else 'off'}, z-loss {o['z_loss']:g}, ε {o['eps']:g}")


def score(replays: Sequence[RunReplay]) -> pd.DataFrame:
    """Per detector: diverged runs warned before they diverged, the median lead (steps and share
    of the run), and false alarms (warnings in runs that finished without diverging)."""
    detectors = list(replays[0].first) if replays else []
    diverged = [r for r in replays if r.diverged_at is not None]
    calm = [r for r in replays if r.diverged_at is None]
    out = []
    for d in detectors:
        warned = [r for r in diverged if warned_before(r, d)]
        leads = [r.diverged_at - r.first[d] for r in warned]
        shares = [(r.diverged_at - r.first[d]) / r.steps for r in warned]
        alarms = sum(r.first[d] is not None for r in calm)
        out.append({"detector": d,
                    "diverged runs warned": f"{len(leads)}/{len(diverged)}",
                    "warned share": len(leads) / len(diverged) if diverged else math.nan,
                    "median lead (steps)": float(np.median(leads)) if leads else math.nan,
                    "median lead (share of run)": float(np.median(shares)) if shares else math.nan,
                    "false alarms": f"{alarms}/{len(calm)}",
                    "false-alarm share": alarms / len(calm) if calm else math.nan})
    return pd.DataFrame(out)


def warned_before(r: RunReplay, detector: str) -> bool:
    """The detector's first warning came before the run diverged."""
    s = r.first[detector]
    return r.diverged_at is not None and s is not None and s < r.diverged_at


def earliest(r: RunReplay) -> bool:
    """A diverged run the monitor warned before it diverged and before every reactive detector
    (strictly; one that never warned before the divergence is beaten)."""
    if not warned_before(r, EARLY):
        return False
    return all(not warned_before(r, d) or r.first[EARLY] < r.first[d]
               for d in r.first if d != EARLY)


def markdown(table: pd.DataFrame) -> str:
    """The score table as markdown (shares as percentages)."""
    cols = ["detector", "diverged runs warned", "median lead (steps)",
            "median lead (share of run)", "false alarms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lead = "–" if math.isnan(r["median lead (steps)"]) else f"{r['median lead (steps)']:.0f}"
        share = ("–" if math.isnan(r["median lead (share of run)"])
                 else f"{100 * r['median lead (share of run)']:.1f}%")
        lines.append(f"| {r['detector']} | {r['diverged runs warned']} | {lead} | {share} | "
                     f"{r['false alarms']} |")
    return "\n".join(lines) + "\n"


SIGNAL_COLORS = dict(zip(MO.SIGNALS, ("tab:red", "tab:purple", "tab:orange", "tab:blue",
                                      "tab:green")))
REACTIVE_STYLES = (":", "--", "-.")


def pick_runs(replays: Sequence[RunReplay], n: int = 4) -> List[RunReplay]:
    """Up to `n` runs to draw, one of each kind there is: the diverged run that diverged last
    (the most room to warn) and the one that diverged first, a run that trained but was warned
    (a false alarm), one that trained unwarned."""
    diverged = sorted((r for r in replays if r.diverged_at is not None),
                      key=lambda r: r.diverged_at)
    calm = [r for r in replays if r.diverged_at is None]
    kinds = [diverged[-1:], diverged[:1], [r for r in calm if r.first[EARLY] is not None][:1],
             [r for r in calm if r.first[EARLY] is None][:1]]
    pick: List[RunReplay] = []
    for r in (r for kind in kinds for r in kind):
        if all(r is not p for p in pick):
            pick.append(r)
    return pick[:n] or list(replays[:n])


def draw_signals(ax, r: RunReplay) -> None:
    """One run: each signal over its limit (log axis, the limit at 1), the monitor's warnings
    as solid lines in their signal's colour, the reactive detectors' first warnings dashed
    black, the divergence step thick black."""
    for name in MO.SIGNALS:
        col = r.signals.get(name)
        if col is not None and np.isfinite(col.to_numpy(float)).any():
            ax.plot(col.index, col.abs(), color=SIGNAL_COLORS[name], lw=1.2, label=name)
    ax.axhline(1.0, color="grey", lw=0.8)
    for w in r.warnings:
        ax.axvline(w.step, color=SIGNAL_COLORS[w.signal], lw=1.5)
    reactive = [d for d in r.first if d != EARLY]
    for d, style in zip(reactive, REACTIVE_STYLES):
        if r.first[d] is not None:
            ax.axvline(r.first[d], color="k", lw=1.0, ls=style, label=d)
    if r.diverged_at is not None:
        ax.axvline(r.diverged_at, color="k", lw=2.5, label="diverged")
    ax.set_yscale("log")
    ax.set_xlabel("update")
    end = f"diverged at {r.diverged_at}" if r.diverged_at is not None else "no divergence"
    ax.set_title(f"{r.label or r.run_dir.name}\n{end}", fontsize=8)


def signals_figure(replays: Sequence[RunReplay], n: int = 4):
    """Up to `n` runs side by side (`draw_signals`), one legend below."""
    import matplotlib.pyplot as plt

    pick = pick_runs(replays, n)
    fig, axes = plt.subplots(1, len(pick), figsize=(4.2 * len(pick), 3.4), squeeze=False)
    for ax, r in zip(axes[0], pick):
        draw_signals(ax, r)
    axes[0][0].set_ylabel("signal / its limit (1 = limit)")
    shared_legend(fig, axes[0])
    fig.tight_layout()
    return fig


def legend_handles(axes) -> Tuple[List[object], List[str]]:
    """(handles, labels) of every labelled line on `axes`, each label once."""
    handles: Dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    return list(handles.values()), list(handles)


def shared_legend(fig, axes) -> None:
    handles, labels = legend_handles(axes)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.1))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis.monitor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=None,
                    help="write score.csv, score.md and signals.png here")
    args = ap.parse_args(argv)
    try:
        replays = [replay_run(d) for d in args.run_dirs]
    except MonitorReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for r in replays:
        said = ", ".join(f"{d}: {s}" for d, s in r.first.items() if s is not None) or "no warning"
        end = f"diverged at {r.diverged_at}" if r.diverged_at is not None else "did not diverge"
        print(f"{r.run_dir}: {end}; {said}")
        for w in r.warnings:
            print(f"  {w.line()}")
    table = score(replays)
    print(markdown(table))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "score.csv", index=False)
        (args.out / "score.md").write_text(markdown(table))
        signals_figure(replays).savefig(args.out / "signals.png", dpi=150, bbox_inches="tight")
        print(f"score: {args.out / 'score.md'}")


if __name__ == "__main__":
    main()
