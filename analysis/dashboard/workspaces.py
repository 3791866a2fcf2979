"""The workspace's plan, plain data: a section per metric family, runs grouped by series
then LR and coloured by LR."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from analysis.dashboard.panels import STEP
from analysis.dashboard.reports import run_colours
from analysis.dashboard.views import SweepView, js_number
from proxies import metric_names as M
from proxies.config import LR_KEY
from proxies.rundir import METRICS

# Sections in this order; any other family metric_names.py defines follows them.
FAMILY_ORDER = ("train", "eval", "attn", "logits", "act", "grad_rms", "update_rms",
                "param_rms", "spike", "perf")

LOG_Y_FAMILIES = ("grad_rms", "update_rms", "param_rms", "act", "attn/max_logit")


def declared_names() -> List[str]:
    """Every metric name (and per-layer family) proxies/metric_names.py declares."""
    return [v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and "/" in v]


def metric_families() -> List[str]:
    """Every metric family (first name segment) proxies/metric_names.py defines."""
    fams = {n.split("/")[0] for n in declared_names()} | set(M.TENSOR_FAMILIES)
    return [f for f in FAMILY_ORDER if f in fams] + sorted(fams - set(FAMILY_ORDER))


def last_row_keys(path: Path, tail: int = 1 << 18) -> set:
    """Metric names of the last readable row of a metrics.jsonl (read from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            chunk = f.read()
    except OSError:
        return set()
    for line in reversed(chunk.splitlines()):
        try:
            return set(json.loads(line)) - {M.STEP}
        except ValueError:
            continue
    return set()


def logged_keys(views: Sequence[SweepView]) -> set:
    return {k for v in views for rd in v.table["run_dir"]
            for k in last_row_keys(v.dir / rd / METRICS)}


def tensor_kind(key: str) -> str:
    """`grad_rms/block_3/attn/key/kernel` -> `grad_rms/block_*/attn/key/kernel`: one panel per
    kind of tensor, its layers as lines (a panel per tensor would be hundreds)."""
    return re.sub(r"/block_\d+/", "/block_*/", key)


def layer_order(key: str) -> Tuple[str, int]:
    m = re.search(r"(?:layer|block)_(\d+)", key)
    return (re.sub(r"(?:layer|block)_\d+", "", key), int(m.group(1)) if m else -1)


def family_panels(family: str, keys: set) -> List[Dict[str, Any]]:
    """Line plots over steps of a family: one per logged name (per-tensor families: one per
    tensor kind); a name metric_names.py declares but no run logged yet gets a regex panel."""
    mine = sorted((k for k in keys if k.split("/")[0] == family), key=layer_order)
    by_title: Dict[str, List[str]] = {}
    for k in mine:
        by_title.setdefault(tensor_kind(k) if family in M.TENSOR_FAMILIES else k, []).append(k)
    panels = [{"type": "line", "title": t, "x": STEP, "y": ys, "regex": "",
               "log_y": t.startswith(LOG_Y_FAMILIES)} for t, ys in by_title.items()]
    declared = [n for n in declared_names() if n.split("/")[0] == family]
    declared += [family] if family in M.TENSOR_FAMILIES else []
    for n in declared:
        if not any(k == n or k.startswith(n + "/") for k in mine):
            panels.append({"type": "line", "title": f"{n} (all logged)", "x": STEP, "y": [],
                           "regex": f"^{re.escape(n)}(/.*)?$",
                           "log_y": n.startswith(LOG_Y_FAMILIES)})
    return panels


@dataclass
class WorkspacePlan:
    name: str
    groups: List[str]
    run_ids: List[str]
    group_by: List[str]  # JobType (the series), then the LR
    group_colours: Dict[str, Dict[str, str]]  # series -> LR as W&B writes it -> the LR's colour
    run_colours: Dict[str, str]
    sections: Dict[str, List[Dict[str, Any]]]


def workspace_plan(name: str, views: Sequence[SweepView]) -> WorkspacePlan:
    keys = logged_keys(views)
    groups, ids, gcol, rcol = [], [], {}, {}
    for v in views:
        groups.append(v.group)
        ids += list(v.table["run_id"])
        rcol.update(run_colours(v, v.table, "lr"))
        for series, lr, rid in zip(v.table["series"], v.table[LR_KEY], v.table["run_id"]):
            gcol.setdefault(series, {})[js_number(lr)] = rcol[rid]
    return WorkspacePlan(f"{name} (proxies)", groups, sorted(set(ids)),
                         ["JobType", "config.optim.lr"], gcol, rcol,
                         {f: family_panels(f, keys) for f in metric_families()})
