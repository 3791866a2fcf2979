"""README's claims table and docs/repro.md's results are what `python -m sweeps.docs` writes
from results/<scale>/*/verdict.json: a test fails when the committed text is stale."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sweeps import docs as D

ROOT = Path(__file__).resolve().parents[1]


def block(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def test_the_committed_claims_and_results_are_what_results_renders():
    readme = (ROOT / "README.md").read_text()
    repro = (ROOT / "docs" / "repro.md").read_text()
    results = ROOT / "results"
    fix = "run `python -m sweeps.docs scale=laptop` and commit README.md, docs/ and results/"
    assert block(readme, D.CLAIMS_START, D.CLAIMS_END) == D.claims_table("laptop", results), fix
    assert block(repro, D.RESULTS_START, D.RESULTS_END) == D.results_section(
        "laptop", results), fix


VERDICT = {"claim": "c", "scale": "laptop", "reproduced": "false", "why": "because",
           "measured": {"effect | per size": {"0.1M": "+0.010 [-0.002, +0.022] (95% t, n=3)"},
                        "rule": "r"},
           "runs": 42, "seeds": 3, "train_s": 5400.0, "tokens_per_param": [20.8, 41.7]}


def test_a_row_comes_from_the_verdict_and_a_missing_result_says_it_has_not_run(tmp_path):
    d = tmp_path / "laptop" / "warmup"
    d.mkdir(parents=True)
    (d / "verdict.json").write_text(json.dumps(VERDICT))
    assert D.claim_row("warmup", "laptop", tmp_path) == (
        "| `warmup` | Fig 5: " + D.result_module("warmup").claim + " | **false** "
        "([why](docs/repro.md#warmup)) | 20.8–41.7 | 42 runs, 3 seeds | 1.5 h |")
    missing = D.claim_row("kappa", "laptop", tmp_path)
    assert "not run at this scale yet (`python -m sweeps.kappa scale=laptop`)" in missing
    assert "(estimate)" in missing and "| 0.521 |" in missing  # 200 steps of 2,048 tokens, 0.79M
    section = D.results_section("laptop", tmp_path)
    assert "**false**: because" in section and "| effect \\| per size | 0.1M: +0.010" in section
    assert '<a id="kappa"></a>\n### `kappa`\n\nNot run at the laptop scale yet.' in section


def test_a_result_over_the_scales_budget_gets_its_cost_there_and_at_the_next_scale(
        tmp_path, monkeypatch):
    monkeypatch.setitem(D.BUDGET_S, "laptop", 60.0)
    row = D.claim_row("kappa", "laptop", tmp_path)
    assert "not tested: over the laptop budget of 60 s; at `gpu` scale 30 runs, " in row, row
    assert "on one H100 (estimate) | 0.521 | 30 runs | ~" in row


def test_the_docs_are_rewritten_only_between_their_markers(tmp_path):
    text = f"before\n{D.CLAIMS_START}\nold table\n{D.CLAIMS_END}\nafter\n"
    assert D.between(text, D.CLAIMS_START, D.CLAIMS_END, "new") == (
        f"before\n{D.CLAIMS_START}\nnew\n{D.CLAIMS_END}\nafter\n")
    with pytest.raises(SystemExit, match="markers .* are missing; put them back"):
        D.between("no markers", D.CLAIMS_START, D.CLAIMS_END, "new")


def test_keep_results_copies_the_small_files_of_each_result_dir(tmp_path):
    src = tmp_path / "runs" / "repro" / "z_loss-laptop"
    src.mkdir(parents=True)
    for f in ("verdict.json", "effects.csv", "report.md", "figure.png", "plan.json"):
        (src / f).write_text(f)
    assert D.keep_results("laptop", tmp_path / "runs", tmp_path / "results") == ["z_loss"]
    kept = sorted(p.name for p in (tmp_path / "results" / "laptop" / "z_loss").iterdir())
    assert kept == ["effects.csv", "records.tar.gz", "report.md", "verdict.json"]


def test_every_claimed_result_has_its_figure_shown(tmp_path):
    """Each row of the claims table (the onset study included) has its figure copied into
    docs/repro/ beside the results the docs link to."""
    pairs = dict(D.figure_copies("laptop", tmp_path / "runs", tmp_path / "docs"))
    for name in D.CLAIMED:
        src = tmp_path / "runs" / "repro" / f"{name}-laptop" / "figure.png"
        assert pairs[src] == tmp_path / "docs" / "repro" / f"{name}.png"


def test_a_missing_figure_names_the_sweep_that_draws_it(tmp_path, capsys):
    """Run before any sweep, the docs builder names, per missing figure, the one sweep to run."""
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    (tmp_path / "repo" / "README.md").write_text(f"{D.CLAIMS_START}\n{D.CLAIMS_END}\n")
    (tmp_path / "repo" / "docs" / "repro.md").write_text(f"{D.RESULTS_START}\n{D.RESULTS_END}\n")
    D.main(["scale=laptop", f"sweep.root={tmp_path / 'runs'}", "--repo", str(tmp_path / "repo")])
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("missing:")]
    for name in (*D.CLAIMED, "dynamics"):
        assert any(f"{name}-laptop" in ln and f"python -m sweeps.{name} scale=laptop" in ln
                   for ln in said), name


def test_a_results_records_archive_is_byte_identical_when_nothing_changed(tmp_path):
    """records.tar.gz holds the plan, each part's sweep record and table, and the records (not
    the checkpoints) of every run the tables name, under runs/; written again from unchanged
    records it has the same bytes (so git keeps one copy), and a changed record changes it."""
    import tarfile
    root = tmp_path / "runs"
    result = root / "repro" / "z_loss-laptop"
    part = result / "main"
    part.mkdir(parents=True)
    (result / "verdict.json").write_text("{}")
    (result / "plan.json").write_text("{}")
    (part / "sweep.yaml").write_text("sweep: {}\n")
    (part / "results.csv").write_text("run_dir,final_eval_ce\n../../../r1,2.0\n")
    run = root / "r1"
    (run / "checkpoints").mkdir(parents=True)
    for f in ("config.yaml", "summary.json", "metrics.jsonl", "signals.jsonl",
              "checkpoints/state"):
        (run / f).write_text(f)
    out = tmp_path / "results"
    D.keep_results("laptop", root, out)
    archive = out / "laptop" / "z_loss" / D.RECORDS
    first = archive.read_bytes()
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["runs/r1/config.yaml", "runs/r1/metrics.jsonl",
                                  "runs/r1/signals.jsonl", "runs/r1/summary.json",
                                  "runs/repro/z_loss-laptop/main/results.csv",
                                  "runs/repro/z_loss-laptop/main/sweep.yaml",
                                  "runs/repro/z_loss-laptop/plan.json"]
        assert {m.mtime for m in tar.getmembers()} == {0}
    os.utime(run / "metrics.jsonl", (1e9, 1e9))  # touched, not changed
    D.keep_results("laptop", root, out)
    assert archive.read_bytes() == first
    (run / "metrics.jsonl").write_text("changed")
    D.keep_results("laptop", root, out)
    assert archive.read_bytes() != first
