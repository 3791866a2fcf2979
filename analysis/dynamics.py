"""`python -m analysis.dynamics <run_dir> [--out DIR] [--no-animation]`: a run's training-dynamics
report (analysis/dynamics_report/; the statistics are analysis/emergence.py's)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from analysis.dynamics_report import DynamicsReportError, write_report


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m analysis.dynamics <run_dir> [--out DIR] [--no-animation]`: the report."""
    ap = argparse.ArgumentParser(prog="python -m analysis.dynamics",
                                 description="Write a run's training-dynamics report "
                                             "(report.md, PNG figures, GIF animations).")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the report (default <run_dir>/dynamics)")
    ap.add_argument("--no-animation", action="store_true", help="skip the GIF animations")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.out, animation=not args.no_animation)
    except DynamicsReportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
