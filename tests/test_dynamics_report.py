"""The training-dynamics report (analysis/dynamics_report/) on one tiny SwiGLU + RMSNorm run."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import tiny_cfg

from analysis import dynamics as adyn
from analysis.dynamics_report import FAMILIES, dynamics_summary, write_report
from proxies.train import train

FIGURES = ("hist_over_training.png", "outliers_over_training.png", "energy_vs_correlation.png",
           "norm_compression.png", "swiglu.png")
N_LAYERS = 2  # tiny_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_dir, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "run"
    train(tiny_cfg(out, corpus_dir, cache_dir, "dynamics.enabled=true", "dynamics.every=4",
                   "dynamics.batch_size=2", "model.mlp=swiglu", "model.norm=rmsnorm",
                   "train.steps=24"))
    return out


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    return write_report(run_dir)


def test_report_and_every_figure_written(report, run_dir):
    assert report == run_dir / "dynamics" / "report.md"
    text = report.read_text()
    for name in FIGURES + tuple(f"hist_{f.name}.gif" for f in FAMILIES):
        assert (report.parent / name).stat().st_size > 1000, name
        assert f"({name})" in text, f"{name} not linked from report.md"
    gif_bytes = sum(p.stat().st_size for p in report.parent.glob("*.gif"))
    assert gif_bytes < 2_000_000
    assert "model: d = 32, L = 2" in text and "norm = rmsnorm, mlp = swiglu" in text
    assert "No entry passed the absolute rule" in text  # far from |a| > 100 at this size


def test_fit_table_has_a_row_per_layer(report):
    section = report.read_text().split("## 3.")[1].split("## 4.")[0]
    rows = [line for line in section.splitlines() if line.startswith("| block ")]
    assert len(rows) == N_LAYERS
    assert all(line.count("|") == 10 for line in rows)  # 9 columns, failed fits included


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_summarize_headline_numbers(run_dir):
    s = dynamics_summary(run_dir)
    assert s["steps"] == list(range(0, 25, 4))
    assert set(s["r_last"]) == set(s["emergence"]) == set(range(N_LAYERS))
    assert all(_finite(r) and r >= 1 for r in s["r_last"].values())  # max >= median
    for fit in s["emergence"].values():
        assert {"A", "lam", "gamma", "t0", "K", "r2", "peak_t", "ok", "message"} <= set(fit)
        if fit["ok"]:
            assert all(_finite(fit[k]) for k in ("A", "lam", "gamma", "t0", "K", "r2"))
    ec = s["ec"]
    assert ec["n_projections"] == 7 * N_LAYERS + 1  # q, k, v, out, gate, up, down; unembed
    assert 0 <= ec["pearson_R_wins"] <= ec["n_projections"]
    assert all(_finite(ec[k]) for k in ("share_pearson_R_wins", "share_top_overlap_R_wins",
                                        "median_pearson_E", "median_pearson_R"))
    assert set(s["norm"]) == {"ln_attn", "ln_mlp", "ln_final", "all"}
    assert all(_finite(v) and v > 0 for d in s["norm"].values() for v in d.values())
    assert set(s["swiglu"]) == set(range(N_LAYERS))
    assert all(_finite(v) and 0 <= v <= 1 for d in s["swiglu"].values() for v in d.values())
    assert _finite(s["kurtosis"]["weight_median"]) and _finite(s["kurtosis"]["resid_median"])
    assert s["massive"]["max_count"] == 0 and _finite(s["massive"]["max_r"])
    flat = ("n_projections", "r_beats_e_pearson", "r_beats_e_top", "weight_kurtosis_median",
            "resid_kurtosis_median", "compression_median", "reamplification_max",
            "swiglu_coincidence", "swiglu_chance", "r_growth")  # what sweeps/dynamics.py reads
    assert all(_finite(s[k]) for k in flat), {k: s[k] for k in flat}
    assert s["r_beats_e_pearson"] == ec["share_pearson_R_wins"]


def test_cli_refuses_a_run_without_records(run_dir, tmp_path):
    bare = tmp_path / "no_dynamics"  # what a run trained with dynamics.enabled=false leaves
    bare.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        shutil.copy(run_dir / name, bare / name)
    before = sorted(p.name for p in bare.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "analysis.dynamics", str(bare)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no dynamics records in {bare}; train with dynamics.enabled=true"]
    assert sorted(p.name for p in bare.rglob("*")) == before  # nothing written


def test_cli_out_and_no_animation(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    adyn.main([str(run_dir), "--out", str(out), "--no-animation"])
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.md'}"
    assert all((out / name).exists() for name in FIGURES)
    assert not list(out.glob("*.gif"))
    assert "Not written (--no-animation)" in (out / "report.md").read_text()
