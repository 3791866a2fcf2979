"""`python -m analysis.dashboard`: the command line, the dry run's files and the one-line
errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from analysis.dashboard.reports import n_panels, report_plan
from analysis.dashboard.views import (DashboardError, WandbUnavailable, is_sweep_dir,
                                      paper_result_of)
from analysis.dashboard.wandb_objects import (build_report, build_workspace, existing_report_id,
                                              logged_in, report_json, save_workspace, wandb_libs,
                                              workspace_json)
from analysis.dashboard.workspaces import workspace_plan
from proxies.config import WandbConfig
from proxies.rundir import RunDirError, atomic_write_text

REPORT_JSON = "wandb_report.json"

WORKSPACE_JSON = "wandb_workspace.json"

LOGIN_HINT = ("not logged in to W&B: run `wandb login` or set WANDB_API_KEY, or pass --dry-run "
              "to write the dashboard definitions without W&B")


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=str, ensure_ascii=False) + "\n")


def check_target(d: Path) -> Path:
    """The sweep or paper result directory, absolute (its name is the W&B group)."""
    if not d.is_dir():
        raise DashboardError(f"no sweep directory at {d}; pass the directory `python -m "
                             "proxies.sweep` printed (or runs/repro/<result>-<scale>)")
    if not (is_sweep_dir(d) or paper_result_of(Path(os.path.normpath(d.absolute())))):
        raise DashboardError(f"{d} holds no sweep (no runs.json, no run directories); pass the "
                             "directory `python -m proxies.sweep` printed")
    return Path(os.path.normpath(d.absolute()))


def default_project(target: Path) -> str:
    """The W&B project the sweep's runs logged to (`wandb.project` in its sweep.yaml)."""
    for y in [target / "sweep.yaml", *sorted(target.glob("*/sweep.yaml"))]:
        if y.exists():
            cfg = yaml.safe_load(y.read_text()) or {}
            return str((cfg.get("wandb") or {}).get("project") or WandbConfig().project)
    return WandbConfig().project


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m analysis.dashboard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path,
                    help="a sweep directory, or a paper result's runs/repro/<result>-<scale>")
    ap.add_argument("--entity", default="", help="W&B entity (default: your login's)")
    ap.add_argument("--project", default="",
                    help="W&B project (default: wandb.project in the sweep's sweep.yaml)")
    ap.add_argument("--workspace", action="store_true",
                    help="also save a workspace: a section per metric family, runs grouped by "
                         "series, coloured by LR")
    ap.add_argument("--dry-run", action="store_true",
                    help="no login, no network: write analysis/wandb_report.json (and "
                         "wandb_workspace.json) instead of saving")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> List[str]:
    """Build the report (and workspace); write them (dry run) or save them. Returns the lines
    to print."""
    target = check_target(args.sweep_dir)
    if not args.dry_run and not logged_in():
        raise WandbUnavailable(LOGIN_HINT)
    wandb_libs()  # missing: say so before reading the sweep
    plan, views = report_plan(target)
    project = args.project or default_project(target)
    entity = args.entity
    if not args.dry_run and not entity:
        import wandb
        entity = wandb.Api().default_entity or ""
    report = build_report(plan, entity, project, bind_project=not args.dry_run)
    name = views[0].group if len(views) == 1 else target.name
    wplan = workspace_plan(name, views) if args.workspace else None
    workspace = build_workspace(wplan, entity, project) if wplan else None
    if args.dry_run:
        out = target / "analysis"
        write_json(out / REPORT_JSON, report_json(plan, report, entity, project))
        lines = [f"report (dry run): {out / REPORT_JSON}, {n_panels(plan)} panels in "
                 f"{len(plan.sections)} sections"]
        if workspace is not None:
            write_json(out / WORKSPACE_JSON, workspace_json(wplan, workspace, entity, project))
            lines.append(f"workspace (dry run): {out / WORKSPACE_JSON}, "
                         f"{len(wplan.sections)} sections")
        return lines
    try:
        report.id = existing_report_id(entity, project, plan.title)
        report.save()
        lines = [f"report: {report.url}"]
        if workspace is not None:
            lines.append(f"workspace: {save_workspace(workspace, wplan, entity, project)}")
    except Exception as e:  # the network, a missing project, permissions: one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise WandbUnavailable(f"saving to W&B {entity}/{project} failed ({type(e).__name__}: "
                          f"{first}); check --entity/--project, `wandb login` and the network")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        for line in run(args):
            print(line)
    except (DashboardError, RunDirError) as e:  # RunDirError: a damaged sweep record
        fail(str(e), 2)
    except WandbUnavailable as e:
        fail(str(e), 1)


def fail(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)
