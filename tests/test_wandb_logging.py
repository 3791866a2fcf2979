"""What a run and a sweep put into W&B, read back from the offline run files (no network): the
sweep's group, series job type, readable names, swept config keys, summaries, the sweep-level
record, and alerts."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from analysis import load
from analysis.dashboard import wandb_group
from analysis.sweep_end import after_sweep
from proxies.sweep_table import table_from_dirs
from proxies.tracking import series_name as series_label
from proxies.sweep import run_sweep
from proxies.train import train
from tests.test_sweep import sweep_cfg

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402


def records(path: Path) -> Iterator[pb.Record]:
    """The records of a W&B run file (a log of 32 KiB blocks; 7-byte headers: crc, length,
    type 1 full, 2 first, 3 middle, 4 last)."""
    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(chunks)
            chunks = b""
            yield r


def offline_runs(directory: Path) -> List[Dict]:
    """Each offline run under `directory/wandb`, first started first: its run record, config,
    summary and alerts."""
    out = []
    for f in sorted((directory / "wandb").glob("offline-run-*/run-*.wandb")):
        run, config, summary, alerts = None, {}, {}, []
        for r in records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
                config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                config.update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "summary":
                summary.update({u.key: json.loads(u.value_json) for u in r.summary.update})
            elif kind == "alert":
                alerts.append(r.alert.title)
            elif kind == "history":
                summary.update({i.key or "/".join(i.nested_key): i.value_json
                                for i in r.history.item})
        out.append({"run": run, "config": config, "summary": summary, "alerts": alerts})
    # in the order they started: W&B names the folder of a run resumed within the same second
    # `<id>-1`, which sorts before `<id>`
    return sorted(out, key=lambda r: (r["run"].start_time.seconds, r["run"].start_time.nanos))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_an_offline_sweep_names_groups_and_summarises_its_runs_in_wandb(
        offline, tmp_path, corpus_dir, cache_dir, monkeypatch):
    cfg = sweep_cfg(tmp_path, corpus_dir, cache_dir, "wandb.mode=offline", "sweep.analysis=true",
                    "sweep.sizes=[{d_model: 32, n_layers: 1, n_heads: 2}]",
                    "wandb.project=proxies-test")
    out, table = run_sweep(cfg)
    reads = []
    monkeypatch.setattr(load, "table_from_dirs", lambda d: reads.append(d) or table_from_dirs(d))
    after_sweep(out)  # what `python -m proxies.sweep` runs at its end
    assert len(reads) == 1  # the report and the W&B record share one read of the runs
    assert len(table) == 2
    for run_dir in (tmp_path / "runs").iterdir():
        first, *later = offline_runs(run_dir)
        run, config = first["run"], first["config"]
        assert run.run_group == wandb_group(out) == out.name
        assert run.job_type == "d32L1H2"
        assert run.display_name == f"d32L1H2 lr={config['lr']:g}"
        assert "t" in run.tags and run.project == "proxies-test"
        assert config["optim"]["lr"] == config["lr"]  # swept values also top-level
        assert {"final_eval_ce", "max_attn_logit", "diverged", "grad_rms_median",
                "update_rms_median"} <= first["summary"].keys()
        # the sweep's end adds each run's series LR sensitivity to its W&B summary
        assert any("lr_sensitivity" in r["summary"] for r in later), [
            (r["run"].start_time.seconds, sorted(r["summary"])) for r in [first, *later]]
    (sweep_run,) = offline_runs(out)
    assert sweep_run["run"].job_type == "sweep" and sweep_run["run"].run_group == out.name
    assert "results/_type" in sweep_run["summary"]  # the results table (a wandb.Table)
    assert (out / "analysis" / "wandb_logged.json").exists()
    run_sweep(cfg)
    after_sweep(out)  # nothing new finished: the sweep-level record is not logged again
    assert len(offline_runs(out)) == 1


def test_series_labels_name_size_and_toggles_not_the_lr():
    assert series_label({"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2,
                         "model.qk_layernorm": True, "optim.lr": 1e-3}) == \
        "d64L2H2 qk_layernorm=True"
    assert series_label({"optim.z_loss": 1e-4, "optim.lr": 1e-2}) == "z_loss=0.0001"
    assert series_label({"optim.lr": 1e-2}) == "base"


def test_alerts_fire_on_divergence_spikes_and_a_large_attention_logit(offline, make_cfg,
                                                                      capsys, monkeypatch):
    alerts = []  # wandb.alert calls of offline runs, captured (the real call runs too)
    real_alert = wandb.sdk.wandb_run.Run.alert

    def alert(run, title, text, *args, **kwargs):
        alerts.append((run.id, title))
        return real_alert(run, title, text, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "alert", alert)
    spiky = make_cfg("wandb.mode=offline", "wandb.alert_logit=0.5", "train.spike.window=4",
                     "train.spike.min_samples=2", "train.inject_spike_at=[9]", "train.quiet=false",
                     out="spiky")
    train(spiky)
    titles = [t for _, t in alerts]
    assert sum("max attention logit crossed" in t for t in titles) == 1  # once, not every row
    assert any("spike" in t for t in titles)
    alerts.clear()
    diverging = make_cfg("wandb.mode=offline", "train.divergence_loss=1.0", "train.quiet=false",
                         out="diverging")
    train(diverging)
    assert [(i, t) for i, t in alerts if t.endswith(": diverged")] == [
        (Path(diverging.out_dir).name, f"{Path(diverging.out_dir).name}: diverged")]
    printed = capsys.readouterr().out
    assert "max attention logit" in printed and "diverged at step" in printed
