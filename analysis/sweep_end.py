"""What follows a sweep, read from its directory: the analysis report and the sweep-level W&B
record. `python -m proxies.sweep` runs it as an end-of-job callback (proxies/configs/sweep.yaml
names `SweepEnd`, so the library never imports the analysis); the paper scripts call
`after_sweep` per part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.load import load_sweep
from analysis.report import analyze, print_report, run_sensitivity, series_table
from proxies.config import WandbConfig
from proxies.tracking import log_sweep, wandb_mode


def after_sweep(sweep_dir: Path) -> pd.DataFrame:
    """The report (when the sweep's `sweep.analysis` is on) with the options recorded in its
    sweep.yaml, then the W&B record (when W&B is on) with each run's series LR sensitivity.
    The sweep's table is read once and its series table computed once, for both; returns the
    table (analysis.load.load_sweep)."""
    cfg = OmegaConf.load(sweep_dir / "sweep.yaml")
    sw = cfg.sweep
    table = load_sweep(sweep_dir)
    series = None
    if sw.analysis:
        rep = analyze(sweep_dir, list(sw.target_params), sw.threshold, tuple(sw.lr_range),
                      hold_out=list(sw.hold_out), table=table)
        print_report(rep, sweep_dir / "analysis" / "report.md")
        series = rep.series
    wandb_cfg = OmegaConf.merge(OmegaConf.structured(WandbConfig), cfg.wandb)
    if wandb_mode(wandb_cfg)[0] != "disabled" and not table.empty:
        if series is None:
            series = series_table(table, tuple(sw.lr_range))
        log_sweep(sweep_dir, cfg.wandb.group or sweep_dir.name, wandb_cfg, table,
                  run_sensitivity(table, series))
    return table


class SweepEnd(Callback):
    """After `python -m proxies.sweep` returns its sweep directory: `after_sweep` on it (not
    after a dry run or a failed sweep, which return none)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, Path):
            after_sweep(job_return.return_value)
