"""The report's plan, plain data: sections of panel grids bound to run sets, the text of
the analysis tables, run colours as the analysis figures draw them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex

from analysis import figures
from analysis.dashboard.panels import (STEP, PanelSpec, lr_vs_loss, plain, sensitivity_vs_params)
from analysis.dashboard.views import (DashboardError, SweepView, is_sweep_dir, load_view,
                                      paper_part_of, paper_result_of, paper_specs, part_views,
                                      verdict_text)
from analysis.load import SIZE_KEYS, finished, toggle_keys
from analysis.report import (attn_predictions, eps_table, frame_table, select, series_table)
from proxies import metric_names as M
from proxies.config import DEFAULT_TARGETS, DEFAULT_THRESHOLD, LR_KEY

GREY = "#9e9e9e"  # a run with no value to colour by


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


def n_panels(plan: ReportPlan) -> int:
    return sum(len(g.panels) for s in plan.sections for g in s.grids)
