"""The W&B mirror of a run's records.

The run directory's files (proxies/rundir.py) are the source of truth; W&B only mirrors them and
is imported only when used.
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from proxies.config import WandbConfig, WandbMode, series_of, unhandled
from proxies.metric_names import STEP
from proxies.rundir import finite_or_none

if TYPE_CHECKING:
    import pandas as pd


def wandb_mode(cfg: WandbConfig) -> tuple[str, Optional[str]]:
    """Resolve `auto`: online only with credentials. Returns (mode, notice or None)."""
    mode = WandbMode(cfg.mode)
    match mode:
        case WandbMode.online | WandbMode.offline | WandbMode.disabled:
            return mode.value, None
        case WandbMode.auto:
            pass
        case _:
            unhandled("wandb.mode", mode)
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            pass
    if has_key:
        return "online", None
    return "disabled", ("W&B disabled (no credentials); local records only. "
                        "Set wandb.mode=offline to also write W&B files.")


SIZE_LETTERS = {"model.d_model": "d", "model.n_layers": "L", "model.n_heads": "H"}


def series_name(swept: Mapping[str, Any]) -> str:
    """A grid point's series (its swept values but the LR), the W&B job_type its run logs and
    the dashboards group by: `d64L2H2 qk_layernorm=False`; `base` when only the LR was swept."""
    series = series_of(dict(swept))
    size = "".join(f"{SIZE_LETTERS[k]}{v}" for k, v in series.items() if k in SIZE_LETTERS)
    toggles = " ".join(f"{k.split('.')[-1]}={v}" for k, v in series.items()
                       if k not in SIZE_LETTERS)
    return " ".join(p for p in (size, toggles) if p) or "base"


def run_id(run_dir: str | Path) -> str:
    """A run's W&B id: its run directory's name (a resumed run continues its W&B run)."""
    return Path(os.path.normpath(run_dir)).name


def swept_config(swept: Dict[str, Any]) -> Dict[str, Any]:
    """Swept values as top-level W&B config keys by their last name (`optim.lr` -> `lr`), so
    panels can group and colour by them without digging into the nested config."""
    return {k.split(".")[-1]: v for k, v in swept.items()}


class Tracker:
    """Mirrors each row the run logs (and its summary) and the run's alerts to W&B, when W&B is
    on. The run id is the run directory's name, so a resumed run continues its W&B run."""

    def __init__(self, out_dir: Path, wandb_cfg: WandbConfig, config: Dict[str, Any],
                 run_id: str, quiet: bool = False):
        self._wandb = None
        self.name = wandb_cfg.name or run_id
        mode, notice = wandb_mode(wandb_cfg)
        if notice and not quiet:
            print(notice)
        if mode != "disabled":
            import wandb  # only paid for when logging to W&B
            swept = (config.get("run") or {}).get("swept") or {}
            self._wandb = wandb.init(
                project=wandb_cfg.project, group=wandb_cfg.group, job_type=wandb_cfg.job_type,
                tags=list(wandb_cfg.tags), config={**config, **swept_config(swept)},
                name=self.name, dir=str(out_dir), mode=mode, id=run_id, resume="allow",
                settings=wandb.Settings(silent=True))

    def log(self, row: Dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.log({k: finite_or_none(v) for k, v in row.items() if k != STEP},
                            step=row[STEP])

    def alert(self, title: str, text: str, warn: bool = True) -> None:
        if self._wandb is not None:
            import wandb

            level = wandb.AlertLevel.WARN if warn else wandb.AlertLevel.INFO
            self._wandb.alert(title=f"{self.name}: {title}", text=text, level=level)

    def finish(self, summary: Dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update({k: finite_or_none(v) for k, v in summary.items()})
            self._wandb.finish()
            self._wandb = None


def log_sweep(sweep_dir: Path, group: str, wandb_cfg: WandbConfig, table: "pd.DataFrame",
              sensitivity: Mapping[str, float]) -> bool:
    """The sweep-level W&B record: the results table, the analysis folder (report.md and
    figures) as an artifact, and each run's series LR sensitivity (by the table's run_dir) in
    its W&B summary. Logged once per state of the table: again only when a rerun finished more
    runs. True if logged."""
    mode, _ = wandb_mode(wandb_cfg)
    if mode == "disabled":
        return False
    analysis = sweep_dir / "analysis"
    marker = analysis / "wandb_logged.json"
    state = sorted(f"{r}:{s}" for r, s in zip(table.get("run_dir", []), table.get("status", [])))
    if marker.exists() and json.loads(marker.read_text()).get("state") == state:
        return False
    import wandb

    name = group  # unique (a paper result's part dirs are all called main, eps, ...)
    run = wandb.init(project=wandb_cfg.project, group=group, job_type="sweep",
                     name=f"{name} (sweep)", id=f"sweep-{name}", resume="allow",
                     dir=str(sweep_dir), mode=mode, tags=list(wandb_cfg.tags),
                     settings=wandb.Settings(silent=True))
    run.log({"results": wandb.Table(dataframe=table.astype(str))})
    if analysis.is_dir():
        artifact = wandb.Artifact(f"{name}-analysis", type="analysis")
        for f in sorted(analysis.iterdir()):
            if f.suffix in (".md", ".png", ".csv", ".gif"):
                artifact.add_file(str(f))
        run.log_artifact(artifact)
    run.finish()
    for run_dir, value in sensitivity.items():
        path = sweep_dir / run_dir  # the table's run_dir is relative to the sweep dir
        r = wandb.init(project=wandb_cfg.project, id=path.name, resume="allow", mode=mode,
                       dir=str(path), settings=wandb.Settings(silent=True))
        r.summary["lr_sensitivity"] = value
        r.finish()
    analysis.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"state": state}) + "\n")
    return True
