"""W&B dashboards (analysis/dashboard.py), offline: fabricated sweep directories, no training,
no login, and no network (every test runs with sockets disabled)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("wandb_workspaces")

from analysis import dashboard as D  # noqa: E402
from proxies import metric_names as M  # noqa: E402
from proxies.tracking import series_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORT_ORDER = ["About this sweep", "LR vs final loss", "LR sensitivity vs params",
                "Max attention logit per layer over training", "log Z over training",
                "Gradient and update RMS vs ε", "Loss curves"]
ISSUE_FAMILIES = ["train", "attn", "logits", "grad_rms", "update_rms", "act", "eval", "spike"]
TENSORS = ("attn/key/kernel", "mlp/up/kernel")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and no W&B credentials, whatever the machine has."""
    def refuse(*a, **k):
        raise RuntimeError("network disabled in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def metric_rows(n_layers: int, lr: float) -> list:
    layers = range(n_layers)
    probes = {**{M.per_layer(M.ATTN_MAX_LOGIT, i): 10.0 * (i + 1) for i in layers},
              **{M.per_layer(M.ATTN_ENTROPY, i): 1.0 for i in layers},
              **{M.per_layer(M.ACT_MAX_ABS, i): 3.0 for i in layers},
              **{M.per_layer(M.ACT_MAX_MEDIAN_RATIO, i): 7.0 for i in layers},
              M.ATTN_MAX_LOGIT: 10.0 * n_layers, M.LOG_Z_MEAN: 5.0, M.LOGITS_MEAN: 0.0,
              M.LOGITS_MAX_ABS: 4.0}
    rms = {M.tensor_key(f, f"block_{i}/{t}"): 1e-3 for f in M.TENSOR_FAMILIES for i in layers
           for t in TENSORS}
    train = {k: 3.0 for k in M.TRAIN_KEYS.values()} | {M.TRAIN_LR: lr}
    return [{"step": 0, M.EVAL_CE: 5.5, **probes},
            {"step": 10, **train, **probes, **rms, M.TOKENS_PER_S: 1e4, M.EVAL_CE: 3.0}]


def fake_run(run_root: Path, swept: dict) -> str:
    """A finished run directory as proxies.train leaves it (config, metrics, summary)."""
    d, L = swept["model.d_model"], swept["model.n_layers"]
    name = f"d{d}L{L}H{swept['model.n_heads']}-{abs(hash(json.dumps(swept))) % 10**10:010d}"
    run = run_root / name
    run.mkdir(parents=True)
    cfg = {"model": {"d_model": d, "n_layers": L, "n_heads": swept["model.n_heads"],
                     "qk_layernorm": swept["model.qk_layernorm"]},
           "optim": {"lr": swept["optim.lr"], "eps": 1e-8, "z_loss": 0.0},
           "run": {"swept": swept}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                               for r in metric_rows(L, swept["optim.lr"])))
    n = 12 * L * d * d
    (run / "summary.json").write_text(json.dumps(
        {"final_eval_ce": 3.0 + swept["optim.lr"] * (1 + swept["model.qk_layernorm"]),
         "final_train_ce": 3.0, "loss_at_init": 5.5, "diverged": False, "steps_done": 10,
         "n_params": 2 * n, "n_params_nonembed": n, "max_attn_logit": 100.0 * d}))
    return name


def fake_sweep(sweep_dir: Path, run_root: Path, name: str = "") -> list:
    """3 sizes × qk-layernorm off/on × 2 LRs, run directories shared under `run_root`, as
    proxies.sweep writes them (runs.json, sweep.yaml)."""
    sweep_dir.mkdir(parents=True)
    points = []
    for d, L in ((32, 1), (64, 2), (96, 3)):
        for qk in (False, True):
            for lr in (1e-3, 1e-2):
                swept = {"model.d_model": d, "model.n_layers": L, "model.n_heads": 2,
                         "model.qk_layernorm": qk, "optim.lr": lr}
                run = fake_run(run_root, swept)
                points.append({"run_dir": os.path.relpath(run_root / run, sweep_dir),
                               "swept": swept})
    (sweep_dir / "runs.json").write_text(json.dumps(points))
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(
        {"sweep": {"name": name or sweep_dir.name}, "wandb": {"project": "proxies"}}))
    return points


def dry_run(target: Path, *extra: str) -> tuple:
    D.main([str(target), "--dry-run", "--workspace", "--entity", "e", "--project", "p", *extra])
    out = target / "analysis"
    return (json.loads((out / D.REPORT_JSON).read_text()),
            json.loads((out / D.WORKSPACE_JSON).read_text()))


def all_panels(report: dict) -> list:
    return [(s["title"], g, p) for s in report["sections"] for g in s["grids"]
            for p in g["panels"]]


def test_dry_run_report_follows_the_analysis_report_bound_to_the_sweep(tmp_path):
    sweep = tmp_path / "runs" / "lr_sens-0123abcd"
    points = fake_sweep(sweep, tmp_path / "runs")
    report, _ = dry_run(sweep)
    ids = {Path(p["run_dir"]).name for p in points}
    assert [s["title"] for s in report["sections"]] == REPORT_ORDER
    assert report["project"] == "p" and report["entity"] == "e"
    for _, g, _ in all_panels(report):
        assert g["group"] == "lr_sens-0123abcd" and set(g["run_ids"]) <= ids
        assert set(g["colours"]) == set(g["run_ids"])  # every run coloured
    by_section = {}
    for title, g, p in all_panels(report):
        by_section.setdefault(title, []).append((g, p))
    # LR vs final loss: one scatter per toggle setting, over that setting's runs only
    lr_loss = by_section["LR vs final loss"]
    assert [g["where"] for g, _ in lr_loss] == [{"model.qk_layernorm": False},
                                               {"model.qk_layernorm": True}]
    for g, p in lr_loss:
        assert (p["x"], p["y"], p["log_x"]) == ("config:optim.lr", ["summary:final_eval_ce"], True)
        assert len(g["run_ids"]) == 6
    layer_keys = {y for g, p in by_section["Max attention logit per layer over training"]
                  for y in p["y"]}
    assert layer_keys == {M.ATTN_MAX_LOGIT, "summary:max_attn_logit",
                          *(f"attn/max_logit/layer_{i}" for i in range(3))}
    assert {y for _, p in by_section["log Z over training"] for y in p["y"]} == {M.LOG_Z_MEAN}
    rms = {y for _, p in by_section["Gradient and update RMS vs ε"] for y in p["y"]}
    assert rms == {"summary:grad_rms_median", "summary:update_rms_median"}
    (curves_off, _), (curves_on, _) = by_section["Loss curves"]
    assert curves_off["where"]["model.d_model"] == 96 and len(curves_off["run_ids"]) == 2
    # the analysis tables' text (recomputed: no analysis/report.md yet)
    texts = {s["title"]: s["text"] for s in report["sections"]}
    assert "lr_sensitivity" in texts["LR sensitivity vs params"]
    assert "predicted_max_logit" in texts["Max attention logit per layer over training"]
    # the wire spec save() sends holds the same binding in every run set
    grids = [b for b in report["spec"]["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert len(grids) == sum(len(s["grids"]) for s in report["sections"])
    for b in grids:
        (rs,) = b["metadata"]["runSets"]
        text = json.dumps(rs["filters"])
        assert '"value": "lr_sens-0123abcd"' in text and '"op": "IN"' in text
        assert '"name": "jobType"}, "op": "!=", "value": "sweep"' in text  # not the record


def test_dry_run_workspace_has_a_section_per_metric_family(tmp_path):
    sweep = tmp_path / "runs" / "lr_sens-0123abcd"
    fake_sweep(sweep, tmp_path / "runs")
    _, ws = dry_run(sweep)
    families = D.metric_families()
    assert set(ISSUE_FAMILIES) <= set(families) and "param_rms" in families
    assert list(ws["sections"]) == families
    for fam, panels in ws["sections"].items():
        assert panels, fam
        for p in panels:
            assert all(y.split("/")[0] == fam for y in p["y"]) and (p["y"] or p["regex"])
    grad = {p["title"]: p["y"] for p in ws["sections"]["grad_rms"]}
    assert grad["grad_rms/block_*/attn/key/kernel"] == [f"grad_rms/block_{i}/attn/key/kernel"
                                                        for i in range(3)]
    assert [p["regex"] for p in ws["sections"]["spike"]]  # declared, not logged yet
    assert ws["group_by"] == ["JobType", "config.optim.lr"]
    assert ws["groups"] == ["lr_sens-0123abcd"] and len(ws["run_ids"]) == 12
    assert set(ws["group_colours"]) == {f"d{d}L{L}H2 qk_layernorm={qk}" for d, L in
                                        ((32, 1), (64, 2), (96, 3)) for qk in (False, True)}
    assert set(ws["group_colours"]["d32L1H2 qk_layernorm=False"]) == {"0.001", "0.01"}
    assert "lr_sens-0123abcd" in ws["filters"]
    section = ws["spec"]["spec"]["section"]
    assert [k["name"] for k in section["runSets"][0]["grouping"]] == ["jobType", "optim.value.lr"]


def test_without_credentials_one_line_and_nothing_written(tmp_path):
    sweep = tmp_path / "runs" / "lr_sens-0123abcd"
    fake_sweep(sweep, tmp_path / "runs")
    before = sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "NETRC")}
    env["HOME"] = str(tmp_path / "home")
    no_network = ("import runpy, socket\n"
                  "def refuse(*a, **k): raise RuntimeError('network disabled in tests')\n"
                  "socket.socket.connect = refuse\nsocket.getaddrinfo = refuse\n"
                  "runpy.run_module('analysis.dashboard', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", no_network, str(sweep), "--workspace",
                          "--entity", "e", "--project", "p"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "wandb login" in lines[0] and "--dry-run" in lines[0]
    assert sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts) == before


def test_bad_sweep_dir_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for d in (tmp_path / "nope", tmp_path / "empty"):
        with pytest.raises(SystemExit) as e:
            D.main([str(d), "--dry-run"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "empty" / "analysis").exists()


def test_paper_script_result_gets_its_figure_panels(tmp_path):
    result = tmp_path / "runs" / "repro" / "qk_layernorm-tiny"
    fake_sweep(result / "main", tmp_path / "runs", name="qk_layernorm-main")
    write_fake_plan(result, "qk_layernorm", "tiny", ["main"])
    (result / "report.md").write_text("# qk_layernorm (tiny)\n\n**Verdict: true.** because\n\n"
                                      "![figure](figure.png)\n")
    assert D.wandb_group(result / "main") == "qk_layernorm-tiny-main"
    report, _ = dry_run(result)
    assert [s["title"] for s in report["sections"]] == ["About this result",
                                                       "Paper figure: qk_layernorm (tiny)"]
    figure = report["sections"][1]
    assert "Verdict: true" in figure["text"] and "figure.png" not in figure["text"]
    panels = {p["title"]: (g, p) for _, g, p in all_panels(report)}
    assert set(panels) == {"LR vs final eval loss (qk_layernorm=False)",
                           "LR vs final eval loss (qk_layernorm=True)",
                           "LR sensitivity vs non-embedding params", "max attention logit vs LR"}
    g, p = panels["max attention logit vs LR"]
    assert g["group"] == "qk_layernorm-tiny-main" and len(g["run_ids"]) == 12
    assert (p["x"], p["y"], p["log_y"]) == ("config:optim.lr", ["summary:max_attn_logit"], True)
    # the part's own directory: its sweep report, the paper figure right after the intro
    part, _ = dry_run(result / "main")
    titles = [s["title"] for s in part["sections"]]
    assert titles == REPORT_ORDER[:1] + ["Paper figure: qk_layernorm (tiny)"] + REPORT_ORDER[1:]
    assert {g["group"] for _, g, _ in all_panels(part)} == {"qk_layernorm-tiny-main"}


def write_fake_plan(result_dir: Path, result: str, scale: str, parts: list) -> None:
    """The plan.json a paper script writes, with its declared panels (sweeps/core.py)."""
    import importlib

    from sweeps.core import SPECS
    panels = importlib.import_module(f"sweeps.{result}").RESULT.panels(SPECS[scale])
    (result_dir / "plan.json").write_text(json.dumps(
        {"result": result, "scale": scale, "parts": {p: {} for p in parts},
         "dashboard": [s.to_json() for s in panels]}))


def test_a_result_recorded_before_its_panels_is_refused_in_one_line(tmp_path, capsys):
    result = tmp_path / "runs" / "repro" / "qk_layernorm-tiny"
    fake_sweep(result / "main", tmp_path / "runs", name="qk_layernorm-main")
    (result / "plan.json").write_text(json.dumps(
        {"result": "qk_layernorm", "scale": "tiny", "parts": {"main": {}}}))
    with pytest.raises(SystemExit) as e:
        D.main([str(result), "--dry-run"])
    assert e.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "python -m sweeps.qk_layernorm scale=tiny --dry-run" in err


def test_every_paper_script_declares_panels_of_its_parts():
    import importlib

    from sweeps import RESULTS
    from sweeps.core import SPECS
    for name in (*RESULTS, "dynamics"):
        result = importlib.import_module(f"sweeps.{name}").RESULT
        parts = {p.name for p in result.parts(SPECS["tiny"])}
        specs = result.panels(SPECS["tiny"])
        assert specs, name
        for s in specs:
            assert isinstance(s, D.PanelSpec) and s.colour in ("lr", "size", "setting")
            assert D.PanelSpec.from_json(json.loads(json.dumps(s.to_json()))) == s  # plan.json
            assert s.part in parts or (not s.part and len(parts) == 1) or s.part == "", name
            for key in (s.x, *s.ys):
                assert key == D.STEP or ":" not in key or key.split(":")[0] in ("summary",
                                                                                "config")
            if s.x != D.STEP:
                assert len(s.ys) == 1, (name, s.title)


def test_saving_updates_the_report_of_the_same_title(tmp_path, monkeypatch, capsys):
    """The online path with W&B faked: run sets name the project, an existing report with the
    same title is updated in place."""
    import wandb
    import wandb_workspaces.reports.v2 as wr
    sweep = tmp_path / "runs" / "lr_sens-0123abcd"
    fake_sweep(sweep, tmp_path / "runs")
    title = "lr_sens-0123abcd: sweep report"

    class FakeApi:
        default_entity = "me"

        def reports(self, path):
            assert path == "me/p"
            return [type("R", (), {"display_name": title, "id": "old-id"})()]

    saved = []
    monkeypatch.setattr(D.cli, "logged_in", lambda: True)  # as cli.run looks it up
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setattr(wr.Report, "save", lambda self, **k: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://w/{self.id}"))
    D.main([str(sweep), "--project", "p"])
    (rep,) = saved
    assert rep.id == "old-id" and rep.entity == "me" and rep.title == title
    runsets = [rs for b in rep.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets]
    assert runsets and all((rs.entity, rs.project) == ("me", "p") for rs in runsets)
    assert capsys.readouterr().out.strip() == "report: https://w/old-id"
    assert not (sweep / "analysis").exists()


def test_helpers():
    assert [D.js_number(x) for x in (3e-4, 1e-2, 0.1, 1.0, 1e-7, 2.5e-5)] == [
        "0.0003", "0.01", "0.1", "1", "1e-7", "0.000025"]
    assert series_name({"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2,
                          "optim.z_loss": 1e-4, "optim.lr": 0.01}) == "d64L2H2 z_loss=0.0001"
    assert series_name({"optim.independent_wd": True, "optim.weight_decay": 1e-4,
                          "optim.lr": 0.01}) == "independent_wd=True weight_decay=0.0001"
    assert series_name({"optim.lr": 0.01}) == "base"
    md = "# Sweep\n\n## Notes\n\n- a note\n\n## LR sensitivity per series\n\n| a |\n|---|\n" \
         "| 1 |\n\n## Figures\n\n![x](x.png)\n"
    sec = D.report_md_sections(md)
    assert set(sec) == {"notes", "sensitivity"} and "| 1 |" in sec["sensitivity"]


class FakeGraphQL:
    """`wandb.Api()` as wandb-workspaces' save() uses it, with no network: the project list, the
    report list, and a GraphQL transport that records each query and its variables, gives a
    project's internal id, answers an upsert with the view it was sent, and finds no saved
    workspace view."""

    default_entity = "me"
    sent: list = []

    def __init__(self, *args, **kwargs):
        self._service_api = self  # the SDK's GraphQL transport, as wandb-workspaces finds it

    app_url = "https://wandb.test"

    def projects(self, entity):
        return [type("P", (), {"name": "p"})()]

    def reports(self, path):
        return []

    def execute_graphql(self, query, variables=None):
        variables = dict(variables or {})
        FakeGraphQL.sent.append((query, variables))
        if "upsertView" in query:
            return {"upsertView": {"inserted": True, "view": {
                "id": f"id-{len(FakeGraphQL.sent)}", "name": variables.get("name") or "v",
                "displayName": variables.get("displayName", ""),
                "description": variables.get("description", ""),
                "project": {"name": variables["projectName"],
                            "entityName": variables["entityName"]},
                "spec": variables["spec"]}}}
        if "internalId" in query:  # a run set names its project by W&B's id for it
            return {"project": {"internalId": f"{variables['entityName']}/"
                                              f"{variables['projectName']}-id"}}
        return {"project": {"allViews": {"edges": []}}}  # no saved workspace view


def test_saving_sends_the_planned_report_and_workspace_through_wandb_graphql(
        tmp_path, monkeypatch, capsys):
    """The save path itself, with only `wandb.Api` faked (as wandb-workspaces tests its own):
    the report's upsertView carries every planned panel, grid by grid, each run set filtered
    to the sweep's group and runs with the sweep-level record left out and its setting's config
    values; the workspace's carries a section per metric family with its panels and the same
    binding. Dropping a panel or changing a filter changes what is sent."""
    import wandb
    from analysis.dashboard.reports import report_plan
    from analysis.dashboard.workspaces import workspace_plan
    sweep = tmp_path / "runs" / "lr_sens-0123abcd"
    fake_sweep(sweep, tmp_path / "runs")
    FakeGraphQL.sent = []
    monkeypatch.setattr(D.cli, "logged_in", lambda: True)
    monkeypatch.setattr(wandb, "Api", FakeGraphQL)
    D.main([str(sweep), "--project", "p", "--workspace"])
    upserts = [json.loads(v["spec"]) | {"_vars": v} for q, v in FakeGraphQL.sent
               if "upsertView" in q]
    report, workspace = upserts
    assert report["_vars"]["type"] == "runs" and report["_vars"]["entityName"] == "me"
    plan, views = report_plan(sweep)
    grids = [b for b in report["blocks"] if b["type"] == "panel-grid"]
    planned = [g for s in plan.sections for g in s.grids]
    assert len(grids) == len(planned)
    for block, g in zip(grids, planned):
        panels = block["metadata"]["panelBankSectionConfig"]["panels"]
        assert [p["config"].get("chartTitle") or p["config"].get("title") for p in panels] == [
            p["title"] for p in g.panels]
        (rs,) = block["metadata"]["runSets"]
        text = json.dumps(rs["filters"])
        assert f'"value": "{g.group}"' in text
        assert '"name": "jobType"}, "op": "!=", "value": "sweep"' in text
        for key, value in g.where.items():
            assert key in text and json.dumps(value) in text
    assert workspace["_vars"]["type"] == "project-view"
    wplan = workspace_plan(views[0].group, views)
    sections = workspace["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == list(wplan.sections)
    assert [len(s["panels"]) for s in sections] == [len(p) for p in wplan.sections.values()]
    ws_filters = json.dumps(workspace["section"]["runSets"][0]["filters"])
    assert '"value": "lr_sens-0123abcd"' in ws_filters
    out = capsys.readouterr().out
    assert "report: https://wandb.test/me/p/reports/" in out and "workspace: https://" in out
