"""The results table of a sweep directory: one row per run directory, read from its files.

Each run directory's config.yaml records the values its sweep swept (`run.swept`), so the table can
always be rebuilt from the directories alone: by `proxies.sweep`, by Hydra multirun jobs, and by
analysis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
import yaml

from proxies.tracking import read_metrics

SUMMARY_COLUMNS = ("n_params", "n_params_nonembed", "final_eval_ce", "final_train_ce",
                   "loss_at_init", "diverged", "diverged_at_step", "steps_done",
                   "max_attn_logit", "final_max_attn_logit", "max_abs_log_z", "tokens_per_s",
                   "wall_s")


def _grad_rms_summary(run_dir: Path) -> Dict[str, float]:
    """Median and min over tensors of the last logged gradient and update RMS."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl")
            if any(k.startswith("grad_rms/") for k in r)]
    out: Dict[str, float] = {}
    if rows:
        for kind in ("grad_rms", "update_rms"):
            vals = np.array([v for k, v in rows[-1].items()
                             if k.startswith(kind + "/") and v is not None], float)
            if vals.size:
                out[f"{kind}_median"] = float(np.median(vals))
                out[f"{kind}_min"] = float(vals.min())
    return out


def run_row(run_dir: Path, swept: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Swept values, status (done | diverged | partial | pending) and summary figures of a run."""
    if swept is None:
        cfg_file = run_dir / "config.yaml"
        cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.exists() else {}
        swept = (cfg.get("run") or {}).get("swept") or {}
    row: Dict[str, Any] = dict(swept)
    s_path = run_dir / "summary.json"
    summary = json.loads(s_path.read_text()) if s_path.exists() else {}
    if summary:
        row["status"] = "diverged" if summary.get("diverged") else "done"
    else:
        row["status"] = "partial" if (run_dir / "checkpoints").exists() else "pending"
    for k in SUMMARY_COLUMNS:
        row[k] = summary.get(k, np.nan)
    row.update(_grad_rms_summary(run_dir))
    row["run_dir"] = run_dir.name
    return row


def table_from_dirs(sweep_dir: Path) -> pd.DataFrame:
    """The table of a sweep directory: its grid points from `runs.json` (written by
    `proxies.sweep`; run directories may live outside it, shared with other sweeps), or else
    every run directory (a folder with config.yaml) inside it (Hydra multirun)."""
    sweep_dir = Path(sweep_dir)
    manifest = sweep_dir / "runs.json"
    if manifest.exists():
        rows = []
        for entry in json.loads(manifest.read_text()):
            row = run_row(sweep_dir / entry["run_dir"], entry["swept"])
            row["run_dir"] = entry["run_dir"]
            rows.append(row)
        return pd.DataFrame(rows)
    dirs = sorted(p.parent for p in sweep_dir.glob("*/config.yaml"))
    return pd.DataFrame([run_row(d) for d in dirs])


def write_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # parallel jobs write their own
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written table
