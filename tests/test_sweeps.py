"""The paper-reproduction scripts: every one runs at tiny scale, writes its verdict and figure,
shares runs with the others; gpu and paper scales plan the paper's grids without training.

The tiny runs of `python -m sweeps.all` and `python -m sweeps.dynamics` are trained once, in the
background from the session's start (tests/conftest.py: sweeps_runs); the tests read them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import sweeps_tiny_args
from sweeps import RESULTS
from sweeps.all import results
from sweeps.core import SPECS, half_decades, main, plan

VERDICT_KEYS = {"claim", "scale", "reproduced", "why", "measured"}


@pytest.fixture(scope="module")
def all_run(sweeps_runs):
    """(root, printed) of `python -m sweeps.all scale=tiny` (tests/conftest.py starts it with the
    session, in the background): it trains every script's runs (a run shared between scripts
    once) and writes every result directory and the summary, exactly as each script would
    (`execute` of the script's plan)."""
    return sweeps_runs.result("all")


@pytest.fixture(scope="module")
def root(all_run):
    return all_run[0]


@pytest.fixture(scope="module")
def all_printed(all_run):
    return all_run[1]


tiny_args = sweeps_tiny_args


@pytest.mark.parametrize("name", RESULTS)
def test_every_script_runs_at_tiny_scale_and_writes_its_verdict(name, root, all_printed,
                                                                corpus_dir, cache_dir):
    result = next(r for r in results() if r.name == name)
    out = root / "repro" / f"{name}-tiny"
    saved = json.loads((out / "verdict.json").read_text())
    assert VERDICT_KEYS <= set(saved) and saved["scale"] == "tiny"
    assert saved["reproduced"] in ("true", "false", "inconclusive") and saved["why"]
    assert saved["measured"]
    # The verdict the script judged (printed as it finished) is the one saved and reported.
    assert f"{name} (tiny): {saved['reproduced']}: {saved['why']}\n" in all_printed
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "figure.pdf").exists()
    assert f"**Verdict: {saved['reproduced']}.**" in (out / "report.md").read_text()
    p = plan(result, "tiny", tiny_args(root, corpus_dir, cache_dir)[1:])
    for part in p.configs:
        assert (out / part / "results.csv").exists() and (out / part / "analysis").is_dir()
    assert saved["tokens_per_param"] == pytest.approx(list(p.tokens_per_param()), rel=1e-3)
    assert saved["seeds"] == SPECS["tiny"].seeds
    assert_effects_match_the_verdict(out, saved)


def assert_effects_match_the_verdict(out, saved):
    """effects.csv holds the per-seed values behind each interval verdict.json states: every
    (effect, part) names a statistic of `measured`, whose text starts with those values' mean."""
    effects = pd.read_csv(out / "effects.csv", keep_default_na=False)
    assert list(effects.columns) == ["effect", "part", "seed", "value"]
    for (name, part), g in effects.groupby(["effect", "part"]):
        shown = saved["measured"][name] if part == "" else saved["measured"][name][str(part)]
        assert shown.startswith(f"{g['value'].astype(float).mean():+.3f}"), (name, part, shown)
        assert f"n={len(g)})" in shown or len(g) < 2, shown


def test_all_writes_the_summary(root, all_printed):
    table = (root / "repro" / "summary.md").read_text()
    assert table.count("\n| ") == len(RESULTS) + 1  # header + one row per result
    for name in RESULTS:
        saved = json.loads((root / "repro" / f"{name}-tiny" / "verdict.json").read_text())
        (row,) = [ln for ln in table.splitlines() if ln.startswith(f"| {name} |")]
        assert f"**{saved['reproduced']}**" in row and f"({name}-tiny/figure.png)" in row


def test_every_script_reuses_every_run_and_one_rerun_returns_its_verdict(
        root, all_printed, corpus_dir, cache_dir, capsys):
    """The scripts and sweeps.all train the same runs: after sweeps.all, every script finds all
    of its runs done; one script run in full concludes again and returns the verdict it saves."""
    args = tiny_args(root, corpus_dir, cache_dir)
    for result in results():
        assert main(result, [*args, "--dry-run"]) is None
        printed = capsys.readouterr().out
        assert f"{result.name} (tiny): " in printed and "already done, 0 to train)" in printed
    from sweeps.warmup import RESULT as warmup
    verdict = main(warmup, args)
    assert "already done, 0 to train)" in capsys.readouterr().out
    saved = json.loads((root / "repro" / "warmup-tiny" / "verdict.json").read_text())
    assert (saved["reproduced"], saved["why"]) == (verdict.reproduced, verdict.why)


def test_scripts_share_runs_with_each_other(root, all_printed):
    """The paper's baseline is one set of runs: qk-layernorm's "on" arm and warmup's short arm
    (the baseline's own 5% warm-up) are the same runs, every seed of them."""
    qk = pd.read_csv(root / "repro" / "qk_layernorm-tiny" / "main" / "results.csv")
    wu = pd.read_csv(root / "repro" / "warmup-tiny" / "main" / "results.csv")
    base = root / "repro" / "x" / "main"
    qk_on = {os.path.normpath(base / r) for r in qk[qk["model.qk_layernorm"]]["run_dir"]}
    short = {os.path.normpath(base / r)
             for r in wu[wu["optim.warmup_steps"] == SPECS["tiny"].warmups[0]]["run_dir"]}
    seeds, sizes, lrs = SPECS["tiny"].seeds, len(SPECS["tiny"].sizes), len(SPECS["tiny"].lrs)
    assert qk_on == short and len(qk_on) == seeds * sizes * lrs


def test_paper_scale_dry_run_plans_the_papers_grid():
    from sweeps.logit_prediction import RESULT as logit
    from sweeps.qk_layernorm import RESULT as qk
    p = plan(qk, "paper")
    runs = [run for _, run in p.all_points()]
    assert sorted({run.optim.lr for run in runs}) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1,
                                                       3e-1, 1.0]
    nonembed = sorted({12 * r.model.n_layers * r.model.d_model ** 2 for r in runs})
    assert nonembed[0] == pytest.approx(9.4e6, rel=0.01) and nonembed[-1] == pytest.approx(
        1.2e9, rel=0.05) and len(nonembed) == 8
    assert {r.model.d_model // r.model.n_heads for r in runs} == {64}
    for r in runs:
        assert (r.train.steps, r.train.batch_size, r.train.seq_len) == (100_000, 256, 512)
        assert r.model.dtype == "bfloat16" and r.data.hf_name == "allenai/c4"
        assert r.optim.warmup_steps == 5000 and (r.optim.b1, r.optim.b2) == (0.9, 0.95)
    assert len(runs) == 8 * 9 * 2
    held = max(12 * r.model.n_layers * r.model.d_model ** 2
               for _, r in plan(logit, "paper").all_points())
    assert held == pytest.approx(4.83e9, rel=0.01)  # the paper's 4.8B check


def test_gpu_and_paper_dry_runs_print_the_grid_and_cost_without_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    # Three commands at once: each spends its time starting Python, JAX and Hydra.
    dry = {scale: start("sweeps.qk_layernorm", f"scale={scale}", "--dry-run",
                        f"sweep.root={tmp_path}", f"sweep.run_root={tmp_path}")
           for scale in ("gpu", "paper")}
    bad = start("sweeps.kappa", "scale=huge")
    for scale, proc in dry.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "to train)" in out and "FLOPs" in out and "H100" in out
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f"repro/qk_layernorm-{s}/plan.json" for s in dry}  # the plan, no runs
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.strip().splitlines() == [
        "error: scale='huge' is not one of tiny, laptop, gpu, paper; pick one of those"]


def test_half_decades_is_the_papers_lr_grid():
    assert half_decades(1e-4, 1.0) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    assert half_decades(3e-4, 3e-1) == SPECS["laptop"].lrs


def test_the_dynamics_script_judges_each_finding_per_recipe(sweeps_runs):
    root, printed = sweeps_runs.result("dynamics")  # python -m sweeps.dynamics scale=tiny
    out = root / "repro" / "dynamics-tiny"
    saved = json.loads((out / "verdict.json").read_text())
    assert f"dynamics (tiny): {saved['reproduced']}: {saved['why']}\n" in printed
    for recipe in ("RMSNorm + SwiGLU", "LayerNorm + GELU"):
        for finding in ("heavy tails", "outliers follow R", "norm compresses, scale re-amplifies",
                        "emergence law"):
            value = saved["measured"][f"{recipe}: {finding}"]
            assert value.split(":")[0] in ("true", "false", "inconclusive"), value
    assert "RMSNorm + SwiGLU: SwiGLU coincidence" in saved["measured"]
    from sweeps.dynamics import MIN_SEEDS
    assert len(list((root / "runs").glob("*/dynamics/report.md"))) == 2 * max(
        MIN_SEEDS, SPECS["tiny"].seeds)  # two recipes


def test_docs_figures_claims_and_results_are_the_result_dirs(root, all_printed, tmp_path):
    """sweeps.docs on a copy of the repository's README and docs/repro.md: the figures are the
    result dirs' own, results/tiny/ keeps each verdict, and the claims table shows it."""
    from sweeps import docs as D
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "docs").mkdir()
    shutil.copyfile(repo / "README.md", tmp_path / "README.md")
    shutil.copyfile(repo / "docs" / "repro.md", tmp_path / "docs" / "repro.md")
    D.main(["scale=tiny", f"sweep.root={root}", "--repo", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    for name in RESULTS:
        made = (root / "repro" / f"{name}-tiny" / "figure.png").read_bytes()
        assert (tmp_path / "docs" / "repro" / f"{name}.png").read_bytes() == made
        saved = json.loads((tmp_path / "results" / "tiny" / name / "verdict.json").read_text())
        assert f"| **{saved['reproduced']}** ([why](docs/repro.md#{name})) |" in readme
    assert D.claims_table("tiny", tmp_path / "results") in readme


# What each result's runs may change from the §2.1 baseline (sweeps.core.baseline), per part:
# {key: the values the part must hold}; every other baseline key must equal the baseline.
# From the paper's "Each figure's setup" (the run's own size, LR and seed vary everywhere).
BASELINE_KEYS = ("model.qk_layernorm", "optim.z_loss", "optim.independent_wd",
                 "optim.weight_decay", "optim.warmup_steps", "optim.min_lr", "optim.b1",
                 "optim.b2", "optim.eps", "optim.grad_clip")
VARIES = {
    "qk_layernorm": {"main": {"model.qk_layernorm": {False, True}}},
    "warmup": {"main": {"optim.warmup_steps": None}},
    "weight_decay": {"coupled": {"optim.independent_wd": {False}, "optim.weight_decay": {0.1}},
                     "independent": {}},
    "default_vs_none": {"main": {"model.qk_layernorm": {False, True},
                                 "optim.z_loss": {0.0, 1e-4},
                                 "optim.independent_wd": {False, True},
                                 "optim.weight_decay": {0.1, 1e-4}}},
    "adam_eps": {"scaling": {}, "eps": {"optim.eps": None}},
    "kappa": {"kappa": {}, "bigram": {}},
    "logit_prediction": {"main": {"model.qk_layernorm": {False}}},
    "mup": {"main": {}, "no_qk_layernorm": {"model.qk_layernorm": {False}}},
    "depth_width": {"main": {}, "no_qk_layernorm": {"model.qk_layernorm": {False}}},
    "z_loss": {"main": {"optim.z_loss": {0.0, 1e-4}, "optim.weight_decay": {0.0}},
               "late": {"optim.z_loss": {0.0, 1e-4}, "optim.weight_decay": {0.0},
                        "optim.warmup_steps": None}},
    # beyond the paper: the stabilisers from the baseline without qk-layernorm, each also with it
    "stabilizers": {"main": {"model.qk_layernorm": {False, True}}},
}


# §2.1's model at every scale (proxies/configs/recipe/paper.yaml), whatever the result.
SECTION_2_1 = {"model.pos_emb": "rope", "model.use_bias": False, "model.tie_embeddings": False,
               "model.init_std": "fan_in"}


def select(run: dict, key: str):
    section, name = key.split(".")
    return run[section][name]


@pytest.mark.parametrize("scale", ["tiny", "laptop", "gpu", "paper"])
def test_plan_json_holds_the_papers_baseline_and_each_figures_variation(scale, tmp_path):
    from sweeps.core import baseline, write_plan
    for result in results():
        saved = json.loads(write_plan(plan(result, scale, [f"sweep.root={tmp_path}"])
                                      ).read_text())
        assert saved["scale"] == scale and set(saved["parts"]) == set(VARIES[result.name])
        for part, spec in saved["parts"].items():
            varies = VARIES[result.name][part]
            runs = spec["runs"]
            assert runs and len({r["train"]["seed"] for r in runs}) == SPECS[scale].seeds
            for key, want in SECTION_2_1.items():
                assert {select(r, key) for r in runs} == {want}, (result.name, part, key)
            for key in BASELINE_KEYS:
                values = {select(r, key) for r in runs}
                if key in varies:
                    assert varies[key] is None or values == varies[key], (result.name, key)
                    continue
                base = {select(baseline(r["train"]["steps"]), key) for r in runs}
                assert values == base, (result.name, part, key, values, base)
