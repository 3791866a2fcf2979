"""A whole run: the output layout, exact resume, divergence marking, W&B offline, bad input."""

import json
import os
import shutil
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from proxies.metric_names import SUMMARY_KEYS, RunSummary
from proxies.train import train
from proxies.rundir import read_metrics

REPO = Path(__file__).resolve().parent.parent


def comparable(rows):
    """Metrics rows without wall-clock figures."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_run_writes_config_metrics_summary_and_checkpoints(make_cfg):
    cfg = make_cfg()
    summary = train(cfg)
    out = Path(cfg.out_dir)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {
        p.name for p in out.iterdir()}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["d_model"] == 32 and len(config["run"]["corpus_hash"]) == 16
    rows = read_metrics(out / "metrics.jsonl")
    # log steps, and update 1: 2% of the run, where block 0's early max logit is read
    assert [r["step"] for r in rows] == [0, 1, 4, 6, 8, 12]
    log_row = rows[2]
    for key in ("train/loss", "train/ce", "train/z_loss", "train/lr", "train/grad_norm",
                "attn/max_logit", "attn/max_logit/layer_1", "attn/entropy/layer_0",
                "logits/log_z_mean", "logits/mean", "logits/max_abs", "act/max_abs/layer_0",
                "act/max_median_ratio/layer_1", "grad_rms/block_0/attn/query/kernel",
                "update_rms/unembed/embedding", "param_rms/embed/embedding"):
        assert key in log_row, key
    assert "eval/ce" in rows[3] and "train/loss" not in rows[3]  # eval-only step 6
    for key in ("final_eval_ce", "final_train_ce", "loss_at_init", "diverged", "steps_done",
                "n_params", "n_params_nonembed", "max_attn_logit", "tokens_per_s", "wall_s"):
        assert key in summary, key
    assert summary["steps_done"] == 12 and summary["diverged"] is False
    assert summary["final_eval_ce"] < summary["loss_at_init"]
    assert json.loads((out / "summary.json").read_text())["n_params"] == summary["n_params"]
    assert train(cfg)["steps_done"] == 12  # a finished run is left as it is


def test_summary_has_the_documented_keys_and_types(make_cfg):
    cfg = make_cfg("train.probes=false")
    train(cfg)
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    hints = typing.get_type_hints(RunSummary)
    assert set(summary) == set(hints) and set(SUMMARY_KEYS) <= set(hints)
    for key, hint in hints.items():
        allowed = typing.get_args(hint) or (hint,)
        assert isinstance(summary[key], allowed), (key, summary[key])
    assert summary["max_attn_logit"] is None  # no probes, no logits: None, not a made-up 0


def test_resume_matches_an_uninterrupted_run_step_for_step(make_cfg):
    full_cfg = make_cfg(out="full")
    train(full_cfg)
    full = comparable(read_metrics(Path(full_cfg.out_dir) / "metrics.jsonl"))

    cut_cfg = make_cfg(out="cut")
    assert train(cut_cfg, stop_after=7) == {"steps_done": 7, "complete": False}
    out = Path(cut_cfg.out_dir)
    assert not (out / "summary.json").exists()
    # Lose the newest checkpoint too, as a kill between checkpoints would: resume from step 4.
    shutil.rmtree(out / "checkpoints" / "7")
    summary = train(cut_cfg)
    assert summary["steps_done"] == 12
    assert comparable(read_metrics(out / "metrics.jsonl")) == full


def test_divergence_stops_and_marks_the_run(make_cfg):
    # Scalar hyperparameters only: the compiled step of every other 12-step tiny run serves.
    cfg = make_cfg("optim.lr=30.0", "optim.grad_clip=0", "optim.warmup_steps=0",
                   "optim.weight_decay=0")
    summary = train(cfg)
    assert summary["diverged"] is True
    assert summary["steps_done"] < 12
    assert summary["final_train_ce"] is None or summary["final_train_ce"] == summary[
        "final_train_ce"]  # a number or absent, never NaN
    out = Path(cfg.out_dir)
    assert (out / "summary.json").exists() and (out / "metrics.jsonl").exists()
    text = (out / "summary.json").read_text() + (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert summary["loss_at_init"] > 0


def test_divergence_threshold_is_configurable(make_cfg):
    summary = train(make_cfg("train.divergence_loss=1.0"))
    assert summary["diverged"] is True and summary["diverged_at_step"] <= 2


def test_wandb_offline_mirrors_without_network(make_cfg, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = make_cfg("wandb.mode=offline")
    train(cfg)
    assert list((Path(cfg.out_dir) / "wandb").glob("offline-run-*"))


def start_cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "proxies.train", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


BAD_INPUT = [
    (["model.d_modle=64"], "unknown config key 'model.d_modle'"),
    (["+optim.bogus=1"], "unknown config key 'optim.bogus'"),  # a + adds no key to the schema
    (["model.d_model=100", "model.n_heads=3"], "not divisible by model.n_heads"),
    (["data.source=text", "data.path=/no/such/corpus"], "no text files at data.path"),
    (["optim.lr=nan"], "optim.lr=nan must be finite"),
    (["optim.eps=inf"], "optim.eps=inf must be finite"),
    (["model=no_such_preset"], "available: laptop"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Every bad command line below, run side by side, one per core (each is mostly a Python
    start-up): {index: (exit code, stdout, stderr)}."""
    dirs = [tmp_path_factory.mktemp(f"bad{i}") for i in range(len(BAD_INPUT))]

    def run(i):
        proc = start_cli(*BAD_INPUT[i][0], f"out_dir={dirs[i] / 'run'}", cwd=dirs[i])
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return dict(enumerate(pool.map(run, range(len(BAD_INPUT)))))


@pytest.mark.parametrize("i", range(len(BAD_INPUT)), ids=[e for _, e in BAD_INPUT])
def test_bad_input_is_one_line_and_nonzero_exit(i, bad_input_results):
    expect = BAD_INPUT[i][1]
    code, out, err = bad_input_results[i]
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expect in lines[0]
    assert "Traceback" not in err + out


def test_out_dir_with_a_different_config_is_refused(make_cfg, corpus_dir, cache_dir):
    cfg = make_cfg()
    train(cfg)
    before = (Path(cfg.out_dir) / "summary.json").read_text()
    proc = start_cli(f"out_dir={cfg.out_dir}", "train.steps=2", "optim.lr=0.01",
                     "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                     "data.source=text", f"data.path={corpus_dir}", f"data.cache_dir={cache_dir}",
                     cwd=REPO)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "holds a run with a different config" in err
    assert len(err.strip().splitlines()) == 1
    assert (Path(cfg.out_dir) / "summary.json").read_text() == before  # nothing lost


def test_probes_off_records_training_without_probe_metrics(make_cfg):
    cfg = make_cfg("train.probes=false")
    summary = train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert "train/loss" in rows[-1] and "attn/max_logit" not in rows[-1]
    assert not any(k.startswith("grad_rms/") for k in rows[-1])
    assert summary["max_attn_logit"] is None and summary["steps_done"] == 12
