"""`python -m analysis.dashboard <sweep_dir> --entity E --project P [--workspace] [--dry-run]`:
a sweep's W&B Report (and, with --workspace, a project workspace), built from code with W&B's
`wandb-workspaces` library (`pip install -e '.[dashboards]'`).

The report follows the analysis report (analysis/report.py): LR vs final loss per toggle
setting, LR sensitivity vs params, max attention logit per layer over training, log Z over
training, gradient and update RMS vs ε, loss curves, each with the text of its analysis table.
A paper script's result directory (`runs/repro/<result>-<scale>/`) gets the paper figure's
panels instead, declared as `DASHBOARD` in its `sweeps/<result>.py` and recorded in the
result's plan.json; one of its parts' sweep directories gets its sweep report with that figure
first.

Every panel shows the runs of a run set bound to the sweep: W&B group `wandb_group(sweep_dir)`,
or one of the run ids of its grid points (runs are shared between sweeps, and a reused run
keeps the group of the sweep that trained it). Runs are coloured per run id, as in the analysis
figures: by LR (plasma), by size (viridis) or by toggle setting.

`--dry-run` builds the same objects with no login and no network and writes their definition to
`<sweep_dir>/analysis/wandb_report.json` (and `wandb_workspace.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import yaml
from matplotlib import colormaps
from matplotlib.colors import to_hex

from analysis import figures
from analysis.load import SIZE_KEYS, finished, load_sweep, toggle_keys
from analysis.report import frame_table, attn_predictions, eps_table, select, series_table
from proxies import metric_names as M
from proxies.config import (LR_KEY, DEFAULT_TARGETS, DEFAULT_THRESHOLD, WandbConfig,
                            nonembed_params)
from proxies.rundir import CONFIG, METRICS, atomic_write_text, read_config_file
from proxies.tracking import run_id, series_name

STEP = "Step"  # W&B's name for the x axis of history panels
REPORT_JSON = "wandb_report.json"
WORKSPACE_JSON = "wandb_workspace.json"
INSTALL_HINT = ("wandb-workspaces is not installed; pip install -e '.[dashboards]' "
                "(or pip install wandb-workspaces)")
LOGIN_HINT = ("not logged in to W&B: run `wandb login` or set WANDB_API_KEY, or pass --dry-run "
              "to write the dashboard definitions without W&B")
GREY = "#9e9e9e"  # a run with no value to colour by
SWEEP_RECORD = "sweep"  # job_type of a sweep's own W&B record (results table, analysis files)


class DashboardError(Exception):
    """A one-line error naming the fix (printed as `error: ...`, exit 2)."""


class WandbUnavailable(Exception):
    """No login, or W&B refused or could not be reached: one line, exit 1."""


# ------------------------------------------------------------------------ panel declarations

@dataclass(frozen=True)
class PanelSpec:
    """One W&B panel, declared without W&B: the metrics it plots and the runs it shows.

    `y`: history keys (`attn/max_logit`) for a line plot over steps, or one `summary:<key>` /
    `config:<key>` for a scatter plot against `x` (`config:optim.lr`,
    `summary:n_params_nonembed`). `layers`: plot `y`'s per-layer keys (`y/layer_i`) instead.
    `where`: config values the runs must have; `split`: one panel per value of these config
    keys; `largest`: only the largest model's runs. `colour`: `lr`, `size` or `setting`.
    `part`: a paper script's part whose runs it shows ("" = the sweep's only part).
    """

    title: str
    y: Union[str, Tuple[str, ...]]
    x: str = STEP
    log_x: bool = False
    log_y: bool = False
    where: Mapping[str, Any] = field(default_factory=dict)
    split: Tuple[str, ...] = ()
    largest: bool = False
    layers: bool = False
    colour: str = "lr"
    part: str = ""

    @property
    def ys(self) -> Tuple[str, ...]:
        return (self.y,) if isinstance(self.y, str) else tuple(self.y)

    def to_json(self) -> Dict[str, Any]:
        """As a paper result's plan.json records it (sweeps/core.py: write_plan)."""
        d = asdict(self)
        d["where"] = {k: plain(v) for k, v in self.where.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PanelSpec":
        y = d["y"]
        return cls(**{**d, "y": y if isinstance(y, str) else tuple(y),
                      "split": tuple(d.get("split", ()))})


def lr_vs_loss(title: str = "LR vs final eval loss", split: Tuple[str, ...] = (),
               where: Optional[Mapping[str, Any]] = None, part: str = "") -> PanelSpec:
    """The paper's LR-vs-loss panel: final eval loss against LR (log), a colour per size."""
    return PanelSpec(title, "summary:final_eval_ce", x="config:optim.lr", log_x=True,
                     where=dict(where or {}), split=split, colour="size", part=part)


def sensitivity_vs_params(title: str = "LR sensitivity vs non-embedding params",
                          part: str = "", x: str = "summary:n_params_nonembed") -> PanelSpec:
    """LR sensitivity of each run's series (W&B summary `lr_sensitivity`), a colour per
    toggle setting."""
    return PanelSpec(title, "summary:lr_sensitivity", x=x, log_x=True, colour="setting",
                     part=part)


# ----------------------------------------------- W&B names the logging side and panels share

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


# ----------------------------------------------------------------------- what a sweep holds

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
    manifest = sweep_dir / "runs.json"
    if manifest.exists():
        return {e["run_dir"]: e["swept"] for e in json.loads(manifest.read_text())}
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


# -------------------------------------------------------------- the plan (plain, no W&B)

@dataclass
class Grid:
    """A panel grid: panels over one run set (group or run ids, and config values)."""

    name: str
    group: str
    run_ids: List[str]
    where: Dict[str, Any]
    colour_by: str
    colours: Dict[str, str]  # run id -> hex
    panels: List[Dict[str, Any]]  # type, title, x, y, log_x, log_y


@dataclass
class Section:
    title: str
    text: str
    grids: List[Grid] = field(default_factory=list)


@dataclass
class ReportPlan:
    title: str
    description: str
    sections: List[Section]


def plain(v: Any) -> Any:
    """A numpy scalar as the Python value W&B's config holds."""
    return v.item() if isinstance(v, np.generic) else v


def setting_label(where: Mapping[str, Any]) -> str:
    return figures.toggle_label(list(where), tuple(where.values())) if where else "all runs"


def largest_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["size"] == df["size"].max()]


def run_colours(view: SweepView, rows: pd.DataFrame, colour_by: str) -> Dict[str, str]:
    """Run id -> colour: LR on the analysis figures' plasma scale, size small to large on
    viridis, toggle setting on tab10."""
    t = view.table
    if colour_by == "lr":
        norm = figures.lr_norm(t[LR_KEY])
        return {r: to_hex(figures.lr_colour(norm, lr))
                for r, lr in zip(rows["run_id"], rows[LR_KEY])}
    if colour_by == "size":
        cols = figures.size_colours(t["size"])
        return {r: to_hex(cols.get(float(n), GREY)) for r, n in zip(rows["run_id"], rows["size"])}
    if colour_by == "setting":
        keys = toggle_keys(t)
        label = lambda vals: setting_label(dict(zip(keys, vals)))  # noqa: E731
        labels = sorted({label(v) for v in t[keys].itertuples(False)})
        tab = colormaps["tab10"]
        return {r: to_hex(tab(labels.index(label(v)) % 10))
                for r, v in zip(rows["run_id"], rows[keys].itertuples(False))}
    raise DashboardError(f"panel colour {colour_by!r} is not one of lr, size, setting")


def panel_entry(spec: PanelSpec, title: str, rows: pd.DataFrame) -> Dict[str, Any]:
    ys = list(spec.ys)
    if spec.layers:
        n = int(rows["model.n_layers"].max()) if len(rows) else 0
        ys = [M.per_layer(y, i) for y in ys for i in range(n)]
    kind = "line" if spec.x == STEP else "scatter"
    if kind == "scatter" and len(ys) != 1:
        raise DashboardError(f"panel {spec.title!r}: a scatter plot takes one y, got {ys}")
    return {"type": kind, "title": title, "x": spec.x, "y": ys, "log_x": spec.log_x,
            "log_y": spec.log_y}


def view_for(spec: PanelSpec, views: Mapping[str, SweepView]) -> Optional[SweepView]:
    if spec.part:
        return views.get(spec.part)
    return next(iter(views.values())) if len(views) == 1 else views.get("main")


def expand(spec: PanelSpec, view: SweepView
           ) -> List[Tuple[Dict[str, Any], str, pd.DataFrame]]:
    """(where, title, rows) per panel the spec stands for: its `where`, one per `split`
    setting present (named in the title), narrowed to the largest model when asked."""
    rows = select(view.table, dict(spec.where)) if spec.where else view.table
    split = [k for k in spec.split if k in rows.columns]
    groups = rows.groupby(split, sort=True, dropna=False) if split else [((), rows)]
    out = []
    for vals, g in groups:
        vals = vals if isinstance(vals, tuple) else (vals,)
        setting = {k: plain(v) for k, v in zip(split, vals)}
        where = {**spec.where, **setting}
        if spec.largest:
            g = largest_rows(g)
            where.update({k: plain(g[k].iloc[0]) for k in SIZE_KEYS if len(g)})
        title = f"{spec.title} ({setting_label(setting)})" if setting else spec.title
        out.append((where, title, g))
    return out


def grids_for(specs: Sequence[PanelSpec], views: Mapping[str, SweepView]) -> List[Grid]:
    """Panels bound to the same runs (part, config values, colouring) share one grid, in the
    order they first appear."""
    grids: Dict[tuple, Grid] = {}
    for spec in specs:
        view = view_for(spec, views)
        if view is None:
            continue  # a part not run yet: its panels wait for it
        for where, title, rows in expand(spec, view):
            key = (view.group, json.dumps(where, sort_keys=True, default=str), spec.colour)
            if key not in grids:
                name = setting_label(where) if len(views) == 1 else \
                    f"{view.dir.name}: {setting_label(where)}"
                grids[key] = Grid(name, view.group, sorted(rows["run_id"]), where, spec.colour,
                                  run_colours(view, rows, spec.colour), [])
            grids[key].panels.append(panel_entry(spec, title, rows))
    return list(grids.values())


# ---------------------------------------------------------------- the text of the analysis

def analysis_text(view: SweepView) -> Dict[str, str]:
    """The analysis report's notes and tables by topic (`notes`, `sensitivity`, `attn`,
    `eps`): from analysis/report.md when the analysis ran, else recomputed with its defaults."""
    md = view.dir / "analysis" / "report.md"
    if md.exists():
        return report_md_sections(md.read_text())
    notes: List[str] = []
    df = view.table
    preds, _ = attn_predictions(df, DEFAULT_TARGETS, DEFAULT_THRESHOLD, notes)
    eps, _ = eps_table(df, notes)
    notes.append(f"no analysis report yet (`python -m analysis {view.dir}` writes it): tables "
                 "recomputed with the default options")
    return {"notes": "\n".join(f"- {n}" for n in notes),
            "sensitivity": frame_table(series_table(df)), "attn": frame_table(preds),
            "eps": frame_table(eps)}


def report_md_sections(text: str) -> Dict[str, str]:
    """`## ` sections of analysis/report.md by topic; the figures (local PNGs) left out."""
    topics = {"Notes": "notes", "LR sensitivity": "sensitivity",
              "Attention-logit growth": "attn", "Gradient RMS": "eps"}
    out: Dict[str, str] = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = chunk.partition("\n")
        for prefix, topic in topics.items():
            if heading.startswith(prefix):
                out[topic] = f"**{heading.strip()}**\n\n{body.strip()}\n"
    return out


# ------------------------------------------------------------------------- the report plans

def sweep_sections(view: SweepView, text: Mapping[str, str]) -> List[Section]:
    """The analysis report's figures as W&B sections, in its order, with its tables."""
    df = view.table
    split = tuple(toggle_keys(df))
    n_layers = int(df["model.n_layers"].max())
    per_layer = [PanelSpec(f"max attention logit, layer {i}", M.per_layer(M.ATTN_MAX_LOGIT, i),
                           log_y=True, split=split) for i in range(n_layers)]
    rms = [PanelSpec(f"median {name} RMS (end of training) vs params", f"summary:{key}_median",
                     x="summary:n_params_nonembed", log_x=True, log_y=True, split=split)
           for name, key in (("gradient", M.GRAD_RMS), ("update / LR", M.UPDATE_RMS))]
    if "optim.eps" in split:  # ε swept: RMS against ε itself, all settings in one grid
        rms += [PanelSpec(f"median {name} RMS vs AdamW ε", f"summary:{key}_median",
                          x="config:optim.eps", log_x=True, log_y=True)
                for name, key in (("gradient", M.GRAD_RMS), ("update / LR", M.UPDATE_RMS))]
    specs = [
        ("LR vs final loss", "", [lr_vs_loss(split=split)]),
        ("LR sensitivity vs params", text.get("sensitivity", ""), [sensitivity_vs_params()]),
        ("Max attention logit per layer over training", text.get("attn", ""), [
            PanelSpec("max attention logit (end of training) vs params", "summary:max_attn_logit",
                      x="summary:n_params_nonembed", log_x=True, log_y=True, split=split),
            PanelSpec("max attention logit, all layers", M.ATTN_MAX_LOGIT, log_y=True,
                      split=split), *per_layer]),
        ("log Z over training", "", [PanelSpec("mean log Z (held-out batch)", M.LOG_Z_MEAN,
                                               split=split)]),
        ("Gradient and update RMS vs ε", text.get("eps", ""), rms),
        ("Loss curves", "", [PanelSpec("train CE and eval CE, largest model",
                                       (M.TRAIN_CE, M.EVAL_CE), split=split, largest=True)]),
    ]
    return [Section(title, body, grids_for(panels, {"": view})) for title, body, panels in specs]


def binding_note(views: Sequence[SweepView]) -> str:
    groups = ", ".join(f"`{v.group}`" for v in views)
    n = sum(len(v.table) for v in views)
    return (f"Each panel shows runs of W&B group {groups} or one of the sweep's {n} run ids "
            "(run directory names; runs are shared between sweeps). Colours: LR on plasma, "
            "size small to large on viridis, toggle settings on tab10.")


def sweep_report(view: SweepView) -> ReportPlan:
    text = analysis_text(view)
    intro = Section("About this sweep", "\n\n".join(
        t for t in (binding_note([view]), text.get("notes", "")) if t))
    done = len(finished(view.table))
    return ReportPlan(f"{view.group}: sweep report",
                      f"{view.dir.name}: {done} of {len(view.table)} runs finished; "
                      "built by python -m analysis.dashboard",
                      [intro, *sweep_sections(view, text)])


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


def paper_section(result: str, scale: str, result_dir: Path,
                  views: Mapping[str, SweepView]) -> Section:
    return Section(f"Paper figure: {result} ({scale})", verdict_text(result_dir),
                   grids_for(paper_specs(result_dir), views))


def paper_report(result_dir: Path, result: str, scale: str,
                 views: Mapping[str, SweepView]) -> ReportPlan:
    if not views:
        raise DashboardError(f"{result_dir} holds no part sweeps yet; run python -m "
                             f"sweeps.{result} scale={scale} first")
    intro = Section("About this result", binding_note(list(views.values())) + "\n\nParts: "
                    + ", ".join(f"`{p}` (group `{v.group}`)" for p, v in views.items()))
    return ReportPlan(f"{result} ({scale}): paper figure", f"python -m sweeps.{result} "
                      f"scale={scale}; built by python -m analysis.dashboard",
                      [intro, paper_section(result, scale, result_dir, views)])


def report_plan(target: Path) -> Tuple[ReportPlan, List[SweepView]]:
    """The report for a sweep, a paper part (its figure first) or a paper result directory,
    and the sweeps it shows."""
    result = paper_result_of(target)
    if result and not is_sweep_dir(target):
        views = part_views(target)
        return paper_report(target, *result, views), list(views.values())
    part = paper_part_of(target)
    views = part_views(target.parent) if part else {target.name: load_view(target)}
    view = views[target.name]
    plan = sweep_report(view)
    if part:
        plan.sections.insert(1, paper_section(part[0], part[1], target.parent, views))
    return plan, [view]


# --------------------------------------------------------------------- the workspace plan

# Sections in this order; any other family metric_names.py defines follows them.
FAMILY_ORDER = ("train", "eval", "attn", "logits", "act", "grad_rms", "update_rms",
                "param_rms", "spike", "perf")
LOG_Y_FAMILIES = ("grad_rms", "update_rms", "param_rms", "act", "attn/max_logit")


def declared_names() -> List[str]:
    """Every metric name (and per-layer family) proxies/metric_names.py declares."""
    return [v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and "/" in v]


def metric_families() -> List[str]:
    """Every metric family (first name segment) proxies/metric_names.py defines."""
    fams = {n.split("/")[0] for n in declared_names()} | set(M.TENSOR_FAMILIES)
    return [f for f in FAMILY_ORDER if f in fams] + sorted(fams - set(FAMILY_ORDER))


def last_row_keys(path: Path, tail: int = 1 << 18) -> set:
    """Metric names of the last readable row of a metrics.jsonl (read from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            chunk = f.read()
    except OSError:
        return set()
    for line in reversed(chunk.splitlines()):
        try:
            return set(json.loads(line)) - {M.STEP}
        except ValueError:
            continue
    return set()


def logged_keys(views: Sequence[SweepView]) -> set:
    return {k for v in views for rd in v.table["run_dir"]
            for k in last_row_keys(v.dir / rd / METRICS)}


def tensor_kind(key: str) -> str:
    """`grad_rms/block_3/attn/key/kernel` -> `grad_rms/block_*/attn/key/kernel`: one panel per
    kind of tensor, its layers as lines (a panel per tensor would be hundreds)."""
    return re.sub(r"/block_\d+/", "/block_*/", key)


def layer_order(key: str) -> Tuple[str, int]:
    m = re.search(r"(?:layer|block)_(\d+)", key)
    return (re.sub(r"(?:layer|block)_\d+", "", key), int(m.group(1)) if m else -1)


def family_panels(family: str, keys: set) -> List[Dict[str, Any]]:
    """Line plots over steps of a family: one per logged name (per-tensor families: one per
    tensor kind); a name metric_names.py declares but no run logged yet gets a regex panel."""
    mine = sorted((k for k in keys if k.split("/")[0] == family), key=layer_order)
    by_title: Dict[str, List[str]] = {}
    for k in mine:
        by_title.setdefault(tensor_kind(k) if family in M.TENSOR_FAMILIES else k, []).append(k)
    panels = [{"type": "line", "title": t, "x": STEP, "y": ys, "regex": "",
               "log_y": t.startswith(LOG_Y_FAMILIES)} for t, ys in by_title.items()]
    declared = [n for n in declared_names() if n.split("/")[0] == family]
    declared += [family] if family in M.TENSOR_FAMILIES else []
    for n in declared:
        if not any(k == n or k.startswith(n + "/") for k in mine):
            panels.append({"type": "line", "title": f"{n} (all logged)", "x": STEP, "y": [],
                           "regex": f"^{re.escape(n)}(/.*)?$",
                           "log_y": n.startswith(LOG_Y_FAMILIES)})
    return panels


@dataclass
class WorkspacePlan:
    name: str
    groups: List[str]
    run_ids: List[str]
    group_by: List[str]  # JobType (the series), then the LR
    group_colours: Dict[str, Dict[str, str]]  # series -> LR as W&B writes it -> the LR's colour
    run_colours: Dict[str, str]
    sections: Dict[str, List[Dict[str, Any]]]


def workspace_plan(name: str, views: Sequence[SweepView]) -> WorkspacePlan:
    keys = logged_keys(views)
    groups, ids, gcol, rcol = [], [], {}, {}
    for v in views:
        groups.append(v.group)
        ids += list(v.table["run_id"])
        rcol.update(run_colours(v, v.table, "lr"))
        for series, lr, rid in zip(v.table["series"], v.table[LR_KEY], v.table["run_id"]):
            gcol.setdefault(series, {})[js_number(lr)] = rcol[rid]
    return WorkspacePlan(f"{name} (proxies)", groups, sorted(set(ids)),
                         ["JobType", "config.optim.lr"], gcol, rcol,
                         {f: family_panels(f, keys) for f in metric_families()})


# ------------------------------------------------------- the wandb_workspaces objects

def wandb_libs():
    """(reports.v2, workspaces, expr) of wandb-workspaces, imported only when building."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError:
        raise DashboardError(INSTALL_HINT) from None
    return wr, ws, expr


def run_filter(groups: Sequence[str], run_ids: Sequence[str], where: Mapping[str, Any]):
    """(group is one of `groups` or ID is one of `run_ids`), not the sweep's own record, and
    every config value of `where`: what binds a run set to a sweep."""
    _, _, expr = wandb_libs()
    bound = [expr.Metric("Group") == g for g in groups]
    if run_ids:
        bound.append(expr.Metric("ID").isin(list(run_ids)))
    binding = bound[0] if len(bound) == 1 else expr.Or(*bound)
    conds = [expr.Metric("JobType") != SWEEP_RECORD]
    conds += [expr.Config(k) == plain(v) for k, v in where.items()]
    return expr.And(binding, *conds)


def wr_metric(key: str):
    """`summary:k` / `config:k` as the library's metric objects; a history key as it is."""
    wr, _, _ = wandb_libs()
    section, _, name = key.partition(":")
    return {"summary": wr.SummaryMetric, "config": wr.Config}.get(section, str)(name or key)


def wr_panel(p: Mapping[str, Any], n_runs: int):
    wr, _, _ = wandb_libs()
    if p["type"] == "scatter":
        return wr.ScatterPlot(title=p["title"], x=wr_metric(p["x"]), y=wr_metric(p["y"][0]),
                              log_x=p["log_x"] or None, log_y=p["log_y"] or None)
    # W&B draws 10 runs per line plot unless told: a sweep has more
    return wr.LinePlot(title=p["title"], x=STEP, y=list(p["y"]), log_y=p["log_y"] or None,
                       metric_regex=p.get("regex") or None, max_runs_to_show=max(10, n_runs))


def build_report(plan: ReportPlan, entity: str, project: str, bind_project: bool):
    """The wr.Report. `bind_project`: name the project in each run set (resolved to W&B's
    project id at save, which needs the network; a dry run leaves it to the report's)."""
    wr, _, _ = wandb_libs()
    blocks: List[Any] = []
    for sec in plan.sections:
        blocks.append(wr.H2(text=sec.title))
        if sec.text:
            blocks.append(wr.MarkdownBlock(text=sec.text))
        for g in sec.grids:
            rs = wr.Runset(entity=entity if bind_project else "",
                           project=project if bind_project else "", name=g.name,
                           filters=run_filter([g.group], g.run_ids, g.where),
                           run_settings={r: wr.RunSettings(color=c) for r, c in g.colours.items()})
            blocks.append(wr.PanelGrid(runsets=[rs],
                                       panels=[wr_panel(p, len(g.run_ids)) for p in g.panels]))
    return wr.Report(project=project, entity=entity, title=plan.title,
                     description=plan.description, blocks=blocks, width="fluid")


def build_workspace(plan: WorkspacePlan, entity: str, project: str):
    """The ws.Workspace: a section per metric family, runs grouped by series (JobType) then LR,
    each LR group and run coloured by its LR."""
    wr, ws, expr = wandb_libs()
    n = len(plan.run_ids)
    sections = [ws.Section(name=fam, panels=[wr_panel(p, n) for p in panels],
                           is_open=fam in ("train", "attn"))
                for fam, panels in plan.sections.items()]
    colours = {ws.GroupPath(series, lr): c for series, by_lr in plan.group_colours.items()
               for lr, c in by_lr.items()}
    runset = ws.RunsetSettings(
        filters=run_filter(plan.groups, plan.run_ids, {}),
        groupby=[expr.Metric("JobType"), expr.Config(LR_KEY)], group_colors=colours,
        run_settings={r: ws.RunSettings(color=c) for r, c in plan.run_colours.items()},
        pinned_columns=["summary:final_eval_ce", "summary:max_attn_logit",
                        "summary:lr_sensitivity", "summary:diverged"])
    # every group on the plots for a laptop sweep; a paper-scale one would not render them all
    settings = ws.WorkspaceSettings(x_axis=STEP, max_runs=max(10, min(n, 100)))
    return ws.Workspace(entity=entity, project=project, name=plan.name, sections=sections,
                        settings=settings, runset_settings=runset)


def wire_spec(obj) -> Dict[str, Any]:
    """What save() sends: the object's model, as JSON."""
    return obj._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


# ------------------------------------------------------------------- dry run and saving

def report_json(plan: ReportPlan, report, entity: str, project: str) -> Dict[str, Any]:
    return {"title": plan.title, "entity": entity, "project": project,
            "description": plan.description,
            "runset_project": f"{entity or '<default entity>'}/{project}, resolved at save",
            "sections": [asdict(s) for s in plan.sections], "spec": wire_spec(report)}


def workspace_json(plan: WorkspacePlan, workspace, entity: str,
                   project: str) -> Dict[str, Any]:
    return {**asdict(plan), "entity": entity, "project": project,
            "filters": workspace.runset_settings.filters, "spec": wire_spec(workspace)}


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=str, ensure_ascii=False) + "\n")


def logged_in() -> bool:
    """Credentials as the runs' W&B mirror finds them (WANDB_API_KEY or ~/.netrc)."""
    from proxies.tracking import wandb_mode
    return wandb_mode(WandbConfig())[0] == "online"


def existing_report_id(entity: str, project: str, title: str) -> str:
    """The id of the report with this title in entity/project ("" if none): rerunning the
    command updates it rather than adding another."""
    import wandb
    for r in wandb.Api().reports(f"{entity}/{project}"):
        if r.display_name == title:
            return r.id
    return ""


def workspace_view_name(plan: WorkspacePlan) -> str:
    """A fixed internal view name per workspace, so saving again updates the same view."""
    return f"nw-{hashlib.sha1(plan.name.encode()).hexdigest()[:11]}-v"


def save_workspace(workspace, plan: WorkspacePlan, entity: str, project: str) -> str:
    from wandb_workspaces.workspaces import internal
    name = workspace_view_name(plan)
    try:
        workspace._internal_id = internal.View.from_name(entity, project, name).id
    except ValueError:
        pass  # not saved before: a new view
    workspace._internal_name = name
    workspace.save()
    return workspace.url


# ---------------------------------------------------------------------------------- the CLI

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


def n_panels(plan: ReportPlan) -> int:
    return sum(len(g.panels) for s in plan.sections for g in s.grids)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        for line in run(args):
            print(line)
    except DashboardError as e:
        fail(str(e), 2)
    except WandbUnavailable as e:
        fail(str(e), 1)


def fail(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
