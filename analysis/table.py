"""Any sweep's results table, one row per run, read into the columns the analysis reads.

Sweeps trained elsewhere (Megatron, torchtitan, OLMo-core, Levanter, a W&B project) get the same
LR sensitivity, fits and figures: `python -m analysis --table runs.csv --col lr=learning_rate
--col loss=val_loss --col params=N --series batch_size`. A column map names what the table calls
each role (`ROLES`); every `--series` column splits series; the rest is ignored. A W&B runs
export works as written: flat columns from the UI, or `config` / `summary` columns holding dicts
(`wandb.Api`, saved with pandas), which are flattened to `config.<key>` / `summary.<key>`.

The rules the paper's statistics need are checked before anything is written: each role's
column exists and is numeric, one run per (series, LR); a NaN or infinite loss is a diverged
run (the paper's min(ℓ, ℓ0) counts it as the loss at init).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from proxies.config import LR_KEY, nonembed_params

# role -> (the column the analysis reads, what it is)
ROLES: Dict[str, Tuple[str, str]] = {
    "lr": (LR_KEY, "learning rate (required)"),
    "loss": ("final_eval_ce", "final loss (required)"),
    "params": ("n_params_nonembed", "non-embedding parameter count"),
    "width": ("model.d_model", "width d_model (with depth, gives params = 12·L·d²)"),
    "depth": ("model.n_layers", "depth, layers"),
    "loss_at_init": ("loss_at_init", "loss at init (else ln(vocab), else the table's worst)"),
    "vocab": ("vocab_size", "vocabulary size (loss at init = ln V)"),
    "diverged": ("diverged", "diverged flag (NaN or infinite losses are diverged anyway)"),
    "max_logit": ("max_attn_logit", "max attention logit"),
    "grad_rms": ("grad_rms_median", "gradient RMS"),
    "update_rms": ("update_rms_median", "update RMS ÷ LR"),
    "eps": ("optim.eps", "AdamW ε"),
}
REQUIRED = ("lr", "loss")
SERIES_PREFIX = "table."  # series columns: the analysis splits series by dotted keys
TRUE_WORDS = {"true", "1", "yes", "y", "t", "diverged", "crashed", "failed"}


class TableError(ValueError):
    """A table that cannot be analysed, with the fix in one line."""


@dataclass
class MappedTable:
    table: pd.DataFrame  # the analysis's columns, one row per run
    notes: List[str]  # what was assumed or computed, one line each


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, Parquet or JSON-lines table; dict-valued `config`/`summary` columns flattened."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"no table at {path}; pass a CSV, Parquet or JSON-lines file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=suffix != ".json")
        else:
            df = pd.read_csv(path)
    except Exception as e:  # pandas raises many types for an unreadable file
        raise TableError(f"cannot read {path} as a {suffix.lstrip('.') or 'CSV'} table "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
                         "write it as CSV, Parquet or JSON lines") from None
    return flatten_dict_columns(df)


def _as_dict(v: object) -> Optional[dict]:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.startswith("{"):
        # Python's repr writes nan and inf bare, which no parser reads back
        python = re.sub(r"(?<![\w.])(-?)inf\b", r"\g<1>1e999", re.sub(r"\bnan\b", "None", v))
        for parse, text in ((json.loads, v), (ast.literal_eval, v), (ast.literal_eval, python)):
            try:
                d = parse(text)
                return d if isinstance(d, dict) else None
            except (ValueError, SyntaxError):
                continue
    return None


def flatten_dict_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns whose every value is a dict (or its JSON / Python text) become `<col>.<key>`
    columns, nested keys joined by dots (W&B's value wrappers {"value": v} unwrapped)."""
    for col in list(df.columns):
        values = df[col].dropna()
        dicts = [_as_dict(v) for v in values]
        if not len(values) or any(d is None for d in dicts):
            continue
        rows = [{k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v)
                 for k, v in (_as_dict(x) or {}).items()} for x in df[col]]
        flat = pd.json_normalize(rows, sep=".")
        flat.columns = [f"{col}.{c}" for c in flat.columns]
        flat.index = df.index
        df = pd.concat([df.drop(columns=[col]), flat], axis=1)
    return df


def parse_columns(items: Sequence[str]) -> Dict[str, str]:
    """`--col role=column` items -> {role: column}."""
    out = {}
    for item in items:
        role, sep, col = item.partition("=")
        if not sep or not col:
            raise TableError(f"--col {item!r} needs ROLE=COLUMN, e.g. --col lr=learning_rate")
        if role not in ROLES:
            raise TableError(f"--col {item!r}: no role {role!r}; roles: {', '.join(ROLES)}")
        out[role] = col
    return out


def _column(df: pd.DataFrame, role: str, col: str) -> pd.Series:
    if col not in df.columns:
        raise TableError(f"the table has no column {col!r} for the {ROLES[role][1]}; name it "
                         f"with --col {role}=<column> (columns: {_list(df.columns)})")
    return df[col]


def _numeric(df: pd.DataFrame, role: str, col: str) -> pd.Series:
    raw = _column(df, role, col)
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & ~raw.astype(str).str.lower().isin(
        ["nan", "inf", "-inf", "infinity", "-infinity"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TableError(f"column {col!r} ({ROLES[role][1]}) holds a non-number, "
                         f"{raw.iloc[i]!r} in row {i + 1}; fix or drop that row")
    return values.astype(float)


def _flag(raw: pd.Series) -> pd.Series:
    def true(v: object) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, float, np.integer, np.floating)):
            return bool(v == 1)  # a 0/1 column with a blank cell reads as floats: 1.0 is "1"
        return str(v).strip().lower() in TRUE_WORDS
    return raw.map(true)


def _list(cols: Sequence[str], n: int = 12) -> str:
    cols = list(cols)
    return ", ".join(map(str, cols[:n])) + (f", … ({len(cols)} in all)" if len(cols) > n else "")


def map_table(df: pd.DataFrame, columns: Dict[str, str], series: Sequence[str] = (),
              ) -> MappedTable:
    """The analysis's table from `df`: roles by `columns` ({role: column}, a role's own name
    when not given and present), series by `series` columns."""
    cols = {**{r: r for r in ROLES if r in df.columns and r not in columns}, **columns}
    for role in REQUIRED:
        if role not in cols:
            raise TableError(f"no column for the {ROLES[role][1]}; name it with --col "
                             f"{role}=<column> (columns: {_list(df.columns)})")
    notes: List[str] = []
    out = pd.DataFrame(index=df.index)
    for role, col in cols.items():
        if role != "diverged":
            out[ROLES[role][0]] = _numeric(df, role, col)
    lr = out[LR_KEY]
    if (lr <= 0).any() or not np.isfinite(lr).all():
        i = int(np.flatnonzero(((lr <= 0) | ~np.isfinite(lr)).to_numpy())[0])
        raise TableError(f"learning rate {df[cols['lr']].iloc[i]!r} in row {i + 1} is not a "
                         "positive number; fix or drop that row")
    for s in series:
        out[SERIES_PREFIX + s] = _column_for_series(df, s)
    out["n_params_nonembed"] = _params(out, cols, notes)
    nonfinite = ~np.isfinite(out["final_eval_ce"])
    diverged = _flag(_column(df, "diverged", cols["diverged"])) if "diverged" in cols else False
    out["diverged"] = nonfinite | diverged
    out.loc[nonfinite, "final_eval_ce"] = np.nan
    if nonfinite.any():
        notes.append(f"{int(nonfinite.sum())} runs with a NaN or infinite loss count as diverged")
    out["loss_at_init"] = _loss_at_init(out, cols, notes)
    out["status"] = np.where(out["diverged"], "diverged", "done")  # every row has finished
    out["run_dir"] = [f"row {i + 1}" for i in range(len(out))]
    _no_duplicates(out, df, cols, series)
    for role in ("max_logit", "grad_rms"):
        if role not in cols:
            notes.append(f"no {ROLES[role][1]} column (--col {role}=...): its analysis skipped")
    return MappedTable(out.reset_index(drop=True), notes)


def _column_for_series(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        raise TableError(f"--series names {col!r}, which the table does not have "
                         f"(columns: {_list(df.columns)})")
    return df[col]


def _params(out: pd.DataFrame, cols: Dict[str, str], notes: List[str]) -> pd.Series:
    if "params" in cols:
        return out["n_params_nonembed"]
    if "width" in cols and "depth" in cols:
        notes.append("non-embedding params computed from width and depth as 12·L·d² "
                     "(a GELU Transformer's attention and MLP matrices)")
        return pd.Series([float(nonembed_params(int(d), int(L))) for d, L in
                          zip(out["model.d_model"], out["model.n_layers"])], index=out.index)
    notes.append("no parameter count (--col params=..., or width and depth): every run is one "
                 "size, so fits over size are skipped")
    return pd.Series(np.nan, index=out.index)


def _loss_at_init(out: pd.DataFrame, cols: Dict[str, str], notes: List[str]) -> pd.Series:
    if "loss_at_init" in cols:
        return out["loss_at_init"]
    if "vocab" in cols:
        notes.append("loss at init taken as ln(vocab size): a uniform prediction's loss")
        return np.log(out["vocab_size"])
    worst = float(np.nanmax(out["final_eval_ce"])) if out["final_eval_ce"].notna().any() else 0
    notes.append(f"no loss at init (--col loss_at_init=... or --col vocab=...): the table's "
                 f"worst finite loss {worst:.4g} stands in for it, so diverged runs count as that")
    return pd.Series(worst, index=out.index)


def _no_duplicates(out: pd.DataFrame, df: pd.DataFrame, cols: Dict[str, str],
                   series: Sequence[str]) -> None:
    keys = [SERIES_PREFIX + s for s in series] + [
        c for c in ("model.d_model", "model.n_layers", "n_params_nonembed") if c in out.columns]
    dup = out.duplicated(subset=keys + [LR_KEY], keep=False)
    if dup.any():
        rows = [int(i) + 1 for i in np.flatnonzero(dup.to_numpy())[:2]]
        raise TableError(f"rows {rows[0]} and {rows[1]} are the same series at the same learning "
                         f"rate ({cols['lr']}={df[cols['lr']].iloc[rows[0] - 1]}); name the "
                         "column that tells them apart with --series (e.g. a seed), or drop one")


def lr_range_note(table: pd.DataFrame, lr_range: Tuple[float, float]) -> List[str]:
    """A note when the table's LRs do not cover the LR-sensitivity range."""
    lo, hi = float(table[LR_KEY].min()), float(table[LR_KEY].max())
    a, b = lr_range
    if lo <= a * (1 + 1e-9) and hi >= b * (1 - 1e-9):
        return []
    return [f"the table's LRs span [{lo:g}, {hi:g}], not all of the LR-sensitivity range "
            f"[{a:g}, {b:g}]: LR sensitivity averages over the grid points inside it; "
            f"--lr-range {lo:g} {hi:g} uses the table's own grid"]


def describe_roles() -> str:
    return "; ".join(f"{r}: {what}" for r, (_, what) in ROLES.items())

