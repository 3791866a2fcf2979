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

from analysis.dashboard import cli  # noqa: F401 (tests patch what its run() calls)
from analysis.dashboard.cli import (  # noqa: F401
    LOGIN_HINT,
    REPORT_JSON,
    WORKSPACE_JSON,
    check_target,
    default_project,
    fail,
    main,
    parse_args,
    run,
    write_json,
)
from analysis.dashboard.panels import (  # noqa: F401
    STEP,
    PanelSpec,
    lr_vs_loss,
    plain,
    sensitivity_vs_params,
)
from analysis.dashboard.reports import (  # noqa: F401
    GREY,
    Grid,
    ReportPlan,
    Section,
    analysis_text,
    binding_note,
    expand,
    grids_for,
    largest_rows,
    n_panels,
    panel_entry,
    paper_report,
    paper_section,
    report_md_sections,
    report_plan,
    run_colours,
    setting_label,
    sweep_report,
    sweep_sections,
    view_for,
)
from analysis.dashboard.views import (  # noqa: F401
    PLAN,
    SWEEP_RECORD,
    DashboardError,
    SweepView,
    WandbUnavailable,
    is_sweep_dir,
    js_number,
    load_view,
    paper_part_of,
    paper_result_of,
    paper_specs,
    part_views,
    read_plan,
    sweep_name,
    swept_values,
    verdict_text,
    wandb_group,
)
from analysis.dashboard.wandb_objects import (  # noqa: F401
    INSTALL_HINT,
    build_report,
    build_workspace,
    existing_report_id,
    logged_in,
    report_json,
    run_filter,
    save_workspace,
    wandb_libs,
    wire_spec,
    workspace_json,
    workspace_view_name,
    wr_metric,
    wr_panel,
)
from analysis.dashboard.workspaces import (  # noqa: F401
    FAMILY_ORDER,
    LOG_Y_FAMILIES,
    WorkspacePlan,
    declared_names,
    family_panels,
    last_row_keys,
    layer_order,
    logged_keys,
    metric_families,
    tensor_kind,
    workspace_plan,
)
