"""`python -m analysis <sweep_dir> [--target-params 4.8e9 ...]`: write the report, print tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.report import DEFAULT_TARGETS, analyze


def print_report(rep, out: Path) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        fmt = lambda x: f"{x:.4g}"  # noqa: E731
        if not rep.series.empty:
            print(rep.series.to_string(index=False, float_format=fmt))
        if not rep.predictions.empty:
            cols = [c for c in rep.predictions.columns if not c.startswith("coef")]
            print("\nattention-logit growth, extrapolated:")
            print(rep.predictions[cols].to_string(index=False, float_format=fmt))
    for n in rep.notes:
        print(f"note: {n}")
    print(f"report: {out / 'analysis' / 'report.md'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--target-params", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                    help="sizes (non-embedding params) to extrapolate the attention-logit fit to")
    ap.add_argument("--threshold", type=float, default=1e4,
                    help="predicted max attention logit above which a size is flagged")
    ap.add_argument("--lr-range", type=float, nargs=2, default=(3e-4, 3e-1))
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: no sweep directory at {args.sweep_dir}; pass the directory "
              "`python -m proxies.sweep` printed", file=sys.stderr)
        sys.exit(2)
    rep = analyze(args.sweep_dir, args.target_params, args.threshold, tuple(args.lr_range))
    print_report(rep, args.sweep_dir)


if __name__ == "__main__":
    main()
