"""The W&B mirror of a run's records.

The run directory's files (proxies/rundir.py) are the source of truth; W&B only mirrors them and
is imported only when used.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Dict, Optional

from proxies.config import WandbConfig, WandbMode, unhandled
from proxies.metric_names import STEP
from proxies.rundir import finite_or_none


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


class Tracker:
    """Mirrors each row the run logs (and its summary) to W&B, when W&B is on."""

    def __init__(self, out_dir: Path, wandb_cfg: WandbConfig, config: Dict[str, Any],
                 run_name: str, quiet: bool = False):
        self._wandb = None
        mode, notice = wandb_mode(wandb_cfg)
        if notice and not quiet:
            print(notice)
        if mode != "disabled":
            import wandb  # only paid for when logging to W&B
            self._wandb = wandb.init(
                project=wandb_cfg.project, group=wandb_cfg.group, tags=list(wandb_cfg.tags),
                config=config, name=run_name, dir=str(out_dir), mode=mode,
                id=run_name, resume="allow", settings=wandb.Settings(silent=True))

    def log(self, row: Dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.log({k: finite_or_none(v) for k, v in row.items() if k != STEP},
                            step=row[STEP])

    def finish(self, summary: Dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update({k: finite_or_none(v) for k, v in summary.items()})
            self._wandb.finish()
            self._wandb = None
