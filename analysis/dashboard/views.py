"""A sweep or paper result directory as the dashboards see it: its W&B group, its runs,
the parts and panels its plan.json records."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd
import yaml

from analysis.dashboard.panels import PanelSpec
from analysis.load import load_sweep
from proxies.config import nonembed_params
from proxies.sweep_table import read_manifest
from proxies.rundir import CONFIG, read_config_file
from proxies.tracking import run_id, series_name

SWEEP_RECORD = "sweep"  # job_type of a sweep's own W&B record (results table, analysis files)


class DashboardError(Exception):
    """A one-line error naming the fix (printed as `error: ...`, exit 2)."""


class WandbUnavailable(Exception):
    """No login, or W&B refused or could not be reached: one line, exit 1."""

PLAN = "plan.json"  # a paper result's record of its parts and panels (sweeps/core.py)


def read_plan(result_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        plan = json.loads((result_dir / PLAN).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and {"result", "scale", "parts"} <= plan.keys() else None


def paper_result_of(sweep_dir: Path) -> Optional[Tuple[str, str]]:
    """(result, scale) when `sweep_dir` is a paper script's result directory (it holds the
    plan.json the script writes), else None."""
    plan = read_plan(sweep_dir)
    return (str(plan["result"]), str(plan["scale"])) if plan else None


def paper_part_of(sweep_dir: Path) -> Optional[Tuple[str, str, str]]:
    """(result, scale, part) when `sweep_dir` is one of the parts its parent's plan.json
    lists."""
    plan = read_plan(sweep_dir.parent)
    if plan is None or sweep_dir.name not in plan["parts"]:
        return None
    return str(plan["result"]), str(plan["scale"]), sweep_dir.name


def wandb_group(sweep_dir: Path) -> str:
    """The W&B group of a sweep's runs, as the sweep recorded it (`wandb.group` in sweep.yaml:
    the sweep directory's name, or a paper part's `<result dir>-<part>`). A sweep recorded
    before the group was, falls back to those names."""
    sweep_dir = Path(os.path.normpath(Path(sweep_dir).absolute()))
    try:
        recorded = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        recorded = {}
    group = (recorded.get("wandb") or {}).get("group")
    if group:
        return str(group)
    if paper_part_of(sweep_dir):
        return f"{sweep_dir.parent.name}-{sweep_dir.name}"
    return sweep_dir.name


def js_number(x: float) -> str:
    """A number as JavaScript's String() writes it: W&B's grouped-run values (0.0003, 1e-7)."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    if 1e-6 <= abs(x) < 1e21:
        return format(Decimal(repr(x)), "f")
    mant, exp = repr(x).split("e")
    return f"{mant}e{'+' if int(exp) > 0 else '-'}{abs(int(exp))}"


@dataclass
class SweepView:
    """A sweep directory as the dashboards see it: its W&B group and one row per grid point
    (analysis.load.load_sweep) with `run_id`, `series` and `size` (12·L·d², known before a
    run finishes) added."""

    dir: Path
    group: str
    table: pd.DataFrame


def sweep_name(sweep_dir: Path) -> str:
    """The `sweep.name` recorded in sweep.yaml ("" when there is none)."""
    try:
        cfg = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    return str((cfg.get("sweep") or {}).get("name") or "")


def swept_values(sweep_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Each grid point's swept values by its `run_dir` as load_sweep names it: from runs.json,
    or each run's config.yaml (`run.swept`) in a Hydra multirun directory."""
    entries = read_manifest(sweep_dir)
    if entries is not None:
        return {e["run_dir"]: e["swept"] for e in entries}
    return {d.parent.name: (read_config_file(d).get("run") or {}).get("swept") or {}
            for d in sweep_dir.glob(f"*/{CONFIG}")}


def load_view(sweep_dir: Path) -> SweepView:
    df = load_sweep(sweep_dir)
    if df.empty:
        raise DashboardError(f"{sweep_dir} holds no runs yet; run the sweep first (or pass "
                             "the directory `python -m proxies.sweep` printed)")
    swept = swept_values(sweep_dir)
    df["run_id"] = df["run_dir"].map(run_id)
    df["series"] = df["run_dir"].map(lambda r: series_name(swept.get(r, {})))
    df["size"] = [float(nonembed_params(int(d), int(L)))  # the GELU size, known before a run ends
                  for d, L in zip(df["model.d_model"], df["model.n_layers"])]
    return SweepView(sweep_dir, wandb_group(sweep_dir), df)


def is_sweep_dir(d: Path) -> bool:
    return (d / "runs.json").exists() or any(d.glob(f"*/{CONFIG}"))


def paper_specs(result_dir: Path) -> List[PanelSpec]:
    """The panels a paper script recorded in its result's plan.json (its `DASHBOARD`)."""
    plan = read_plan(result_dir) or {}
    if "dashboard" not in plan:
        raise DashboardError(f"{result_dir / PLAN} records no dashboard panels (written before "
                             f"they were); rerun python -m sweeps.{plan.get('result', '<result>')} "
                             f"scale={plan.get('scale', '<scale>')} --dry-run to record them")
    return [PanelSpec.from_json(d) for d in plan["dashboard"]]


def part_views(result_dir: Path) -> Dict[str, SweepView]:
    return {d.name: load_view(d) for d in sorted(result_dir.iterdir())
            if d.is_dir() and is_sweep_dir(d)}


def verdict_text(result_dir: Path) -> str:
    """The result's report.md (claim, verdict, the numbers that decide it) without its local
    figure and links."""
    md = result_dir / "report.md"
    if not md.exists():
        return f"_no verdict yet: `python -m sweeps.{result_dir.name.rpartition('-')[0]}` " \
               "writes it_"
    keep = [ln for ln in md.read_text().splitlines()[1:]
            if not ln.startswith(("![", "Per-part sweep reports"))]
    return "\n".join(keep).strip()
