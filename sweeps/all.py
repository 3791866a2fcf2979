"""`python -m sweeps.all scale=laptop [--dry-run] [overrides]`: every result, one after another.

Prints the planned runs and an estimated time first (runs shared between results are counted
once), then runs each script and writes `<sweep.root>/repro/summary.md`: claim · measured ·
verdict · figure, with each script's wall time.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from proxies.cli import run_cli
from proxies.cost import print_plan
from sweeps import RESULTS
from sweeps.core import (Plan, Result, Verdict, cell, execute, parse_args, plan, unique_points,
                         write_plan)


def results() -> List[Result]:
    return [importlib.import_module(f"sweeps.{name}").RESULT for name in RESULTS]


def summary_md(rows: Sequence[Tuple[Plan, Verdict, float]], root: Path) -> str:
    lines = ["# Reproducing small-scale proxies: summary\n",
             "wall: this invocation (runs trained by an earlier script or invocation are reused); "
             "training: the summed training time of every run the result uses.\n",
             "| result | claim | measured | verdict | seed spread | figure | wall | training |",
             "|---|---|---|---|---|---|---|---|"]
    for p, v, wall in rows:
        fig = (p.out / "figure.png").relative_to(root)
        saved = json.loads((p.out / "verdict.json").read_text())
        spread = ", ".join(f"{s:.3f}" for s in saved.get("seed_spread", {}).values()) or "–"
        lines.append(f"| {p.result.name} | {cell(v.claim)} | {cell(v.why)} | **{v.reproduced}** | "
                     f"{spread} | [png]({fig}) | {wall / 60:.1f} min | "
                     f"{saved['train_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    scale, dry, rest = parse_args(sys.argv[1:] if argv is None else argv)

    def entry() -> None:
        plans = [plan(r, scale, rest) for r in results()]
        for p in plans:
            print_plan(f"  {p.result.name}", unique_points(p.all_points()), table=False)
            write_plan(p)
        print_plan(f"sweeps.all ({scale}), runs shared between results counted once",
                   unique_points([pt for p in plans for pt in p.all_points()]), table=False)
        if dry:
            return
        rows = []
        for p in plans:
            t0 = time.time()
            v = execute(p)
            rows.append((p, v, time.time() - t0))
            root = p.out.parent
            (root / "summary.md").write_text(summary_md(rows, root))
        print(f"summary: {plans[0].out.parent / 'summary.md'}")

    run_cli(entry)


if __name__ == "__main__":
    main()
