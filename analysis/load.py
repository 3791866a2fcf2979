"""Read a sweep directory (local files only, no W&B) into pandas."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pandas as pd

from proxies.config import LR_KEY, SIZE_KEYS
from proxies.sweep_table import FINISHED, table_from_dirs
from proxies.rundir import CONFIG, METRICS, read_config_file, read_metrics

# Run-config values analysis needs even when a sweep did not sweep them.
CONFIG_COLUMNS = SIZE_KEYS + ("model.qk_layernorm", "optim.z_loss", "optim.eps", LR_KEY)


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """The results table rebuilt from the run directories, plus CONFIG_COLUMNS from each run's
    config.yaml. Runs still going or interrupted have status partial/pending and NaN figures."""
    sweep_dir = Path(sweep_dir)
    df = table_from_dirs(sweep_dir)
    if df.empty:
        return df
    for col in CONFIG_COLUMNS:
        if col not in df.columns:
            vals = []
            for run in df["run_dir"]:
                cfg = read_config_file(sweep_dir / run / CONFIG)
                section, key = col.split(".")
                vals.append((cfg.get(section) or {}).get(key, np.nan))
            df[col] = vals
    return df


def load_metrics(sweep_dir: str | Path, run_dir: str) -> pd.DataFrame:
    """One run's metrics.jsonl as a DataFrame indexed by step (missing values NaN)."""
    rows = read_metrics(Path(sweep_dir) / run_dir / METRICS)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index("step").astype(float, errors="ignore")


PARAMS = "n_params_nonembed"


def is_size_key(key: str) -> bool:
    """A column that tells model sizes apart: the size config keys, or the parameter count of
    a table that has only that (analysis.table)."""
    return key in SIZE_KEYS or key == PARAMS


def series_keys(df: pd.DataFrame) -> List[str]:
    """Swept keys other than the LR: each combination of them is one series."""
    # Size keys always (the parameter count where a table has no size keys); any other key only
    # where it varies within the sweep.
    keys = [c for c in df.columns if "." in c and c != LR_KEY and
            (c in SIZE_KEYS or df[c].nunique(dropna=False) > 1)]
    if not any(k in SIZE_KEYS for k in keys) and PARAMS in df.columns:
        keys.append(PARAMS)
    return keys


def toggle_keys(df: pd.DataFrame) -> List[str]:
    """Series keys that are not model-size keys."""
    return [k for k in series_keys(df) if not is_size_key(k)]


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (done or diverged)."""
    return df[df["status"].isin(FINISHED)] if len(df) else df
