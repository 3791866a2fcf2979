"""The results table of a sweep directory: one row per run directory, read from its files.

Each run directory's config.yaml records the values its sweep swept (`run.swept`), so the table can
always be rebuilt from the directories alone: by `proxies.sweep`, by Hydra multirun jobs, and by
analysis.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd

from proxies import metric_names as M
from proxies.config import identity_hash, identity_of
from proxies import rundir as R

SUMMARY_COLUMNS = M.SUMMARY_KEYS


def grad_rms_summary(metrics_rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Median and min over tensors of the last logged gradient and update RMS."""
    rows = [r for r in metrics_rows if any(k.startswith(M.GRAD_RMS + "/") for k in r)]
    out: Dict[str, float] = {}
    if rows:
        for kind in (M.GRAD_RMS, M.UPDATE_RMS):
            vals = np.array([v for k, v in rows[-1].items()
                             if k.startswith(kind + "/") and v is not None], float)
            if vals.size:
                out[f"{kind}_median"] = float(np.median(vals))
                out[f"{kind}_min"] = float(vals.min())
    return out


def early_logits(rows: List[Dict[str, Any]], steps: int) -> Dict[str, Optional[float]]:
    """Block 0's max attention logit and the max over layers on the probe row of update
    `early_step(steps)` (None where there is no such row: probes off, or the run stopped
    before it)."""
    at, key = M.early_step(steps), M.per_layer(M.ATTN_MAX_LOGIT, 0)
    row = next((r for r in rows if r.get(M.STEP) == at and r.get(key) is not None), None)
    if row is None:
        return {M.LOGIT_BLOCK0_EARLY: None, M.LOGIT_EARLY: None}
    return {M.LOGIT_BLOCK0_EARLY: float(row[key]),
            M.LOGIT_EARLY: float(row.get(M.ATTN_MAX_LOGIT, row[key]))}


def first_mlp_path(rows: List[Dict[str, Any]]) -> Optional[str]:
    """The tensor path of block 0's first MLP layer in these rows (gate for swiglu, up for gelu)."""
    for path in M.FIRST_MLP_KERNELS:
        if any(M.tensor_key(M.GRAD_RMS, path) in r for r in rows):
            return path
    return None


def mlp0_tail(rows: List[Dict[str, Any]], steps: int,
              log_every: int) -> Dict[str, Optional[float]]:
    """Gradient and update RMS of block 0's first MLP layer, each the mean over the finite values
    of the log rows in the last `tail_steps(steps, log_every)` updates the run trained (a
    diverged run: the updates before it stopped)."""
    path = first_mlp_path(rows)
    out: Dict[str, Optional[float]] = {M.GRAD_RMS_MLP0_TAIL: None, M.UPDATE_RMS_MLP0_TAIL: None}
    if path is None:
        return out
    keys = {M.GRAD_RMS_MLP0_TAIL: M.tensor_key(M.GRAD_RMS, path),
            M.UPDATE_RMS_MLP0_TAIL: M.tensor_key(M.UPDATE_RMS, path)}
    logged = [r for r in rows if r.get(keys[M.GRAD_RMS_MLP0_TAIL]) is not None]
    if not logged:
        return out
    since = max(r[M.STEP] for r in logged) - M.tail_steps(steps, log_every)
    for name, key in keys.items():
        vals = [float(r[key]) for r in logged if r[M.STEP] > since and r.get(key) is not None
                and math.isfinite(r[key])]
        out[name] = float(np.mean(vals)) if vals else None
    return out


FINISHED = ("done", "diverged")  # the statuses of a run with a summary
# A finished run whose config.yaml no longer hashes to the config it trained with (edited by
# hand, or written by another version): its figures are not that config's, so never used.
EDITED = "config_changed"


def recorded_config_changed(run_dir: Path, summary: Dict[str, Any]) -> bool:
    """The run's config.yaml no longer has the identity its summary recorded."""
    trained = summary.get("config_hash")
    recorded = R.read_config_file(run_dir / R.CONFIG)
    return bool(trained and recorded) and identity_hash(identity_of(recorded)) != trained


def run_row(run_dir: Path, swept: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Swept values, status (done | diverged | partial | pending) and summary figures of a run."""
    if swept is None:
        swept = (R.read_config_file(run_dir / R.CONFIG).get("run") or {}).get("swept") or {}
    row: Dict[str, Any] = dict(swept)
    summary = R.read_summary_file(run_dir / R.SUMMARY) or {}  # unreadable: rebuilt on resume
    if summary and recorded_config_changed(run_dir, summary):
        row["status"] = EDITED
    elif summary:
        row["status"] = "diverged" if summary.get("diverged") else "done"
    else:
        row["status"] = "partial" if (run_dir / R.CHECKPOINTS).exists() else "pending"
    for k in SUMMARY_COLUMNS:
        row[k] = summary.get(k, np.nan)
    row.update(grad_rms_summary(R.read_metrics(run_dir / R.METRICS)))
    row["run_dir"] = run_dir.name
    return row


MANIFEST = "runs.json"


def read_manifest(sweep_dir: Path) -> Optional[List[Dict[str, Any]]]:
    """A sweep directory's grid points from `runs.json` ([{run_dir, swept}], written by
    `proxies.sweep`), None when it has none; a damaged one is refused in one line (the sweep
    command rewrites it before it trains)."""
    manifest = Path(sweep_dir) / MANIFEST
    if not manifest.exists():
        return None
    try:
        entries = json.loads(manifest.read_text())
        ok = isinstance(entries, list) and all(
            isinstance(e, dict) and isinstance(e.get("run_dir"), str)
            and isinstance(e.get("swept"), dict) for e in entries)
        reason = "" if ok else "not a list of {run_dir, swept} entries"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}" if str(e) else "empty"
    if reason:
        raise R.RunDirError(f"{manifest} is damaged ({reason}); rerun the sweep command that made "
                            "it (it rewrites runs.json and retrains nothing finished), or delete "
                            f"it to read the run directories inside {sweep_dir}")
    return entries


def table_from_dirs(sweep_dir: Path) -> pd.DataFrame:
    """The table of a sweep directory: its grid points from `runs.json` (written by
    `proxies.sweep`; run directories may live outside it, shared with other sweeps), or else
    every run directory (a folder with config.yaml) inside it (Hydra multirun)."""
    sweep_dir = Path(sweep_dir)
    entries = read_manifest(sweep_dir)
    if entries is not None:
        rows = []
        for entry in entries:
            row = run_row(sweep_dir / entry["run_dir"], entry["swept"])
            row["run_dir"] = entry["run_dir"]
            rows.append(row)
        return pd.DataFrame(rows)
    dirs = sorted(p.parent for p in sweep_dir.glob(f"*/{R.CONFIG}"))
    return pd.DataFrame([run_row(d) for d in dirs])


def table_damaged(path: Path) -> Optional[str]:
    """Why `results.csv` at `path` cannot be read back as a sweep table (None when it can, or
    when there is none)."""
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except Exception as e:  # pandas raises many types for a garbled CSV
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
    missing = {"run_dir", "status"} - set(df.columns)
    return f"no {', '.join(sorted(missing))} column" if missing else None


def write_table(df: pd.DataFrame, path: Path) -> None:
    R.atomic_write(path, lambda f: df.to_csv(f, index=False))


TABLE = "results.csv"
TABLE_LOCK = ".results.lock"


@contextlib.contextmanager
def table_lock(sweep_dir: Path) -> Iterator[None]:
    """Serialise rebuilds of one sweep's table (jobs finishing at once, on any machine sharing
    the directory): each rebuild reads every run, so the last writer's table is complete."""
    import fcntl

    with open(Path(sweep_dir) / TABLE_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def update_table(sweep_dir: Path) -> pd.DataFrame:
    """Rebuild and write `<sweep_dir>/results.csv` from its run directories."""
    with table_lock(sweep_dir):
        df = table_from_dirs(sweep_dir)
        write_table(df, Path(sweep_dir) / TABLE)
    return df
