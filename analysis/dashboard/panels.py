"""The paper-figure panels a script declares (W&B panels without W&B): `PanelSpec`, as
plan.json records it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

STEP = "Step"  # W&B's name for the x axis of history panels


@dataclass(frozen=True)
class PanelSpec:
    """One W&B panel, declared without W&B: the metrics it plots and the runs it shows.

    `y`: history keys (`attn/max_logit`) for a line plot over steps, or one `summary:<key>` /
    `config:<key>` for a scatter plot against `x` (`config:optim.lr`,
    `summary:n_params_nonembed`). `layers`: plot `y`'s per-layer keys (`y/layer_i`) instead.
    `where`: config values the runs must have; `split`: one panel per value of these config
    keys; `largest`: only the largest model's runs. `colour`: `lr`, `size` or `setting`.
    `part`: a paper script's part whose runs it shows ("" = the sweep's only part).
    """

    title: str
    y: Union[str, Tuple[str, ...]]
    x: str = STEP
    log_x: bool = False
    log_y: bool = False
    where: Mapping[str, Any] = field(default_factory=dict)
    split: Tuple[str, ...] = ()
    largest: bool = False
    layers: bool = False
    colour: str = "lr"
    part: str = ""

    @property
    def ys(self) -> Tuple[str, ...]:
        return (self.y,) if isinstance(self.y, str) else tuple(self.y)

    def to_json(self) -> Dict[str, Any]:
        """As a paper result's plan.json records it (sweeps/core.py: write_plan)."""
        d = asdict(self)
        d["where"] = {k: plain(v) for k, v in self.where.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PanelSpec":
        y = d["y"]
        return cls(**{**d, "y": y if isinstance(y, str) else tuple(y),
                      "split": tuple(d.get("split", ()))})


def lr_vs_loss(title: str = "LR vs final eval loss", split: Tuple[str, ...] = (),
               where: Optional[Mapping[str, Any]] = None, part: str = "") -> PanelSpec:
    """The paper's LR-vs-loss panel: final eval loss against LR (log), a colour per size."""
    return PanelSpec(title, "summary:final_eval_ce", x="config:optim.lr", log_x=True,
                     where=dict(where or {}), split=split, colour="size", part=part)


def sensitivity_vs_params(title: str = "LR sensitivity vs non-embedding params",
                          part: str = "", x: str = "summary:n_params_nonembed") -> PanelSpec:
    """LR sensitivity of each run's series (W&B summary `lr_sensitivity`), a colour per
    toggle setting."""
    return PanelSpec(title, "summary:lr_sensitivity", x=x, log_x=True, colour="setting",
                     part=part)


def plain(v: Any) -> Any:
    """A numpy scalar as the Python value W&B's config holds."""
    return v.item() if isinstance(v, np.generic) else v
