"""What follows a sweep, read from its directory: the analysis report and the sweep-level W&B
record. `python -m proxies.sweep` runs it as an end-of-job callback (proxies/configs/sweep.yaml
names `SweepEnd`, so the library never imports the analysis); the paper scripts call
`after_sweep` per part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from analysis.report import analyze, print_report, run_sensitivity
from proxies.config import WandbConfig
from proxies.results import table_from_dirs
from proxies.tracking import log_sweep


def after_sweep(sweep_dir: Path) -> None:
    """The report (when the sweep's `sweep.analysis` is on) with the options recorded in its
    sweep.yaml, then the W&B record (when W&B is on) with each run's series LR sensitivity."""
    cfg = OmegaConf.load(sweep_dir / "sweep.yaml")
    sw = cfg.sweep
    if sw.analysis:
        rep = analyze(sweep_dir, list(sw.target_params), sw.threshold, tuple(sw.lr_range),
                      hold_out=list(sw.hold_out))
        print_report(rep, sweep_dir / "analysis" / "report.md")
    wandb_cfg = OmegaConf.merge(OmegaConf.structured(WandbConfig), cfg.wandb)
    table = table_from_dirs(sweep_dir)
    log_sweep(sweep_dir, cfg.wandb.group or sweep_dir.name, wandb_cfg, table,
              run_sensitivity(table, tuple(sw.lr_range)))


class SweepEnd(Callback):
    """After `python -m proxies.sweep` returns its sweep directory: `after_sweep` on it (not
    after a dry run or a failed sweep, which return none)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, Path):
            after_sweep(job_return.return_value)
