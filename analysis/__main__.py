"""`python -m analysis <sweep_dir> [--target-params 4.8e9 ...]`: write the report, print tables.

`python -m analysis --table runs.csv --col lr=learning_rate --col loss=val_loss --col params=N
[--series batch_size,seed]`: the same report for a results table from anywhere (analysis.table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from analysis.report import analyze, analyze_table, print_report
from analysis.table import (TableError, describe_roles, lr_range_note, map_table, parse_columns,
                            read_table)
from proxies.config import DEFAULT_LR_RANGE, DEFAULT_TARGETS, DEFAULT_THRESHOLD
from proxies.rundir import RunDirError


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    ap.add_argument("sweep_dir", type=Path, nargs="?", help="a proxies sweep directory")
    ap.add_argument("--table", type=Path, default=None,
                    help="a results table instead (CSV, Parquet or JSON lines, one row per run)")
    ap.add_argument("--col", action="append", default=[], metavar="ROLE=COLUMN",
                    help=f"--table: the column holding a role ({describe_roles()})")
    ap.add_argument("--series", default="", metavar="COL,COL",
                    help="--table: columns that split series (settings other than size and LR)")
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
    where = parse_where(args.where)
    if args.table is not None:
        return analyze_file(args, where)
    if args.sweep_dir is None:
        fail("pass a sweep directory, or --table runs.csv with --col ROLE=COLUMN")
    if not args.sweep_dir.is_dir():
        fail(f"no sweep directory at {args.sweep_dir}; pass the directory "
             "`python -m proxies.sweep` printed")
    if not ((args.sweep_dir / "runs.json").exists() or any(args.sweep_dir.glob("*/config.yaml"))):
        fail(f"{args.sweep_dir} holds no sweep (no runs.json, no run directories); pass the "
             "directory `python -m proxies.sweep` printed")
    try:
        rep = analyze(args.sweep_dir, args.target_params, args.threshold, tuple(args.lr_range),
                      hold_out=args.hold_out, where=where, out=args.out)
    except KeyError as e:
        fail(str(e.args[0]))
    except RunDirError as e:  # a damaged sweep record
        fail(str(e))
    print_report(rep, (args.out or args.sweep_dir / "analysis") / "report.md")


def parse_where(items) -> dict:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--where {item!r} needs KEY=VALUE, e.g. --where model.qk_layernorm=false")
        where[key] = yaml.safe_load(value)
    return where


def analyze_file(args: argparse.Namespace, where: dict) -> None:
    """`--table`: map the table, then the sweep report; nothing is written on bad input."""
    series = [c.strip() for c in args.series.split(",") if c.strip()]
    try:
        mapped = map_table(read_table(args.table), parse_columns(args.col), series)
    except TableError as e:
        fail(str(e))
    if args.sweep_dir is not None:
        fail("pass a sweep directory or --table, not both")
    out = args.out or args.table.with_name(args.table.stem + "-analysis")
    where = {(k if k in mapped.table.columns else f"table.{k}"): v for k, v in where.items()}
    notes = mapped.notes + lr_range_note(mapped.table, tuple(args.lr_range))
    try:
        rep = analyze_table(mapped.table, out, args.table.name, args.target_params,
                            args.threshold, tuple(args.lr_range), hold_out=args.hold_out,
                            where=where, notes=notes)
    except KeyError as e:
        fail(str(e.args[0]))
    print_report(rep, out / "report.md")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
