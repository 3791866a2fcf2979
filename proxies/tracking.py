"""The run directory's records (metrics.jsonl, summary.json) and the W&B mirror.

The local files are the source of truth; W&B only mirrors them and is imported only when used.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from proxies.config import WandbConfig


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a null marks a non-finite value
    return v


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """All complete lines of a metrics.jsonl (a half-written last line from a kill is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only rows with step <= last_step (used when resuming from a checkpoint)."""
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: _finite_or_none(v) for k, v in obj.items()}, indent=2) + "\n")
    os.replace(tmp, path)  # atomic, so a kill never leaves a broken summary


def wandb_mode(cfg: WandbConfig) -> tuple[str, Optional[str]]:
    """Resolve `auto`: online only with credentials. Returns (mode, notice or None)."""
    if cfg.mode != "auto":
        return cfg.mode, None
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
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to W&B."""

    def __init__(self, out_dir: Path, wandb_cfg: WandbConfig, config: Dict[str, Any],
                 run_name: str, quiet: bool = False):
        self.path = out_dir / "metrics.jsonl"
        self._file = open(self.path, "a")
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
        row = {k: _finite_or_none(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, summary: Dict[str, Any]) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.summary.update({k: _finite_or_none(v) for k, v in summary.items()})
            self._wandb.finish()
