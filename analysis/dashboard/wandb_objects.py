"""The plans as wandb-workspaces objects, and saving them: the one module that imports
wandb_workspaces (and only when called)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Sequence

from analysis.dashboard.panels import STEP, plain
from analysis.dashboard.reports import ReportPlan
from analysis.dashboard.views import SWEEP_RECORD, DashboardError
from analysis.dashboard.workspaces import WorkspacePlan
from proxies.config import LR_KEY, WandbConfig

INSTALL_HINT = ("wandb-workspaces is not installed; pip install -e '.[dashboards]' "
                "(or pip install wandb-workspaces)")


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


def report_json(plan: ReportPlan, report, entity: str, project: str) -> Dict[str, Any]:
    return {"title": plan.title, "entity": entity, "project": project,
            "description": plan.description,
            "runset_project": f"{entity or '<default entity>'}/{project}, resolved at save",
            "sections": [asdict(s) for s in plan.sections], "spec": wire_spec(report)}


def workspace_json(plan: WorkspacePlan, workspace, entity: str,
                   project: str) -> Dict[str, Any]:
    return {**asdict(plan), "entity": entity, "project": project,
            "filters": workspace.runset_settings.filters, "spec": wire_spec(workspace)}


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
