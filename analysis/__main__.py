"""`python -m analysis <sweep_dir> [--target-params 4.8e9 ...]`: write the report, print tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from analysis.report import analyze, print_report
from proxies.config import DEFAULT_LR_RANGE, DEFAULT_TARGETS, DEFAULT_THRESHOLD


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--target-params", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                    help="sizes (non-embedding params) to extrapolate the attention-logit fit to")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="predicted max attention logit above which a size is flagged")
    ap.add_argument("--lr-range", type=float, nargs=2, default=DEFAULT_LR_RANGE,
                    help="LR range [a, b] LR sensitivity averages over")
    ap.add_argument("--hold-out", type=float, nargs="+", default=[], metavar="PARAMS",
                    help="sizes (non-embedding params, ±10%%) left out of the attention-logit fit "
                         "and used to check its prediction")
    ap.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                    help="analyse only runs with these swept values, e.g. model.qk_layernorm=false")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the report (default <sweep_dir>/analysis)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        fail(f"no sweep directory at {args.sweep_dir}; pass the directory "
             "`python -m proxies.sweep` printed")
    if not ((args.sweep_dir / "runs.json").exists() or any(args.sweep_dir.glob("*/config.yaml"))):
        fail(f"{args.sweep_dir} holds no sweep (no runs.json, no run directories); pass the "
             "directory `python -m proxies.sweep` printed")
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--where {item!r} needs KEY=VALUE, e.g. --where model.qk_layernorm=false")
        where[key] = yaml.safe_load(value)
    try:
        rep = analyze(args.sweep_dir, args.target_params, args.threshold, tuple(args.lr_range),
                      hold_out=args.hold_out, where=where, out=args.out)
    except KeyError as e:
        fail(str(e.args[0]))
    print_report(rep, (args.out or args.sweep_dir / "analysis") / "report.md")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
