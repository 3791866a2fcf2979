"""`python -m sweeps.docs scale=laptop [sweep.root=runs] [--out docs]`: the figures
docs/repro.md and docs/dynamics.md show, from the result directories a `sweeps.all` /
`sweeps.dynamics` run wrote, never copied by hand.

    docs/repro/<result>.png                   <root>/repro/<result>-<scale>/figure.png
    docs/dynamics/r_by_recipe.png             <root>/repro/dynamics-<scale>/figure.png
    docs/dynamics/outliers_layernorm_gelu.png the LayerNorm + GELU run's dynamics report figure

A result whose directory is missing is named in one line and left out; nothing is trained.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pandas as pd

from proxies.cli import run_cli
from sweeps import RESULTS

DYNAMICS_RUN_FIGURE = "outliers_over_training.png"  # analysis/dynamics_report/ writes it


def parse(argv: Sequence[str]) -> Tuple[str, Path, Path]:
    """(scale, sweep root, docs dir) from `scale=... [sweep.root=...] [--out DIR]`."""
    scale, root, out = "laptop", Path("runs"), Path("docs")
    args = list(argv)
    while args:
        a = args.pop(0)
        if a.startswith("scale="):
            scale = a.split("=", 1)[1]
        elif a.startswith("sweep.root="):
            root = Path(a.split("=", 1)[1])
        elif a == "--out" and args:
            out = Path(args.pop(0))
        else:
            raise SystemExit(f"error: unknown argument {a!r}; usage: python -m sweeps.docs "
                             "scale=laptop [sweep.root=runs] [--out docs]")
    return scale, root, out


def figure_copies(scale: str, root: Path, out: Path) -> List[Tuple[Path, Path]]:
    """(source, destination) of every figure the docs show."""
    repro = root / "repro"
    pairs = [(repro / f"{name}-{scale}" / "figure.png", out / "repro" / f"{name}.png")
             for name in RESULTS]
    dyn = repro / f"dynamics-{scale}"
    pairs.append((dyn / "figure.png", out / "dynamics" / "r_by_recipe.png"))
    gelu = gelu_run(dyn)
    if gelu is not None:
        pairs.append((gelu / "dynamics" / DYNAMICS_RUN_FIGURE,
                      out / "dynamics" / "outliers_layernorm_gelu.png"))
    return pairs


def gelu_run(dyn: Path) -> Optional[Path]:
    """The run directory of the dynamics result's LayerNorm + GELU run (seed 0), if recorded."""
    table = dyn / "main" / "results.csv"
    if not table.exists():
        return None
    df = pd.read_csv(table)
    if "model.mlp" not in df.columns:
        return None
    rows = df[df["model.mlp"] == "gelu"]
    if "train.seed" in rows.columns:
        rows = rows.sort_values("train.seed")
    return (dyn / "main" / rows["run_dir"].iloc[0]).resolve() if len(rows) else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    scale, root, out = parse(sys.argv[1:] if argv is None else argv)

    def entry() -> None:
        for src, dst in figure_copies(scale, root, out):
            if not src.exists():
                print(f"missing: {src} (run `python -m sweeps.all scale={scale}` or "
                      f"`python -m sweeps.dynamics scale={scale}` first); left out")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            print(f"{dst} <- {src}")

    run_cli(entry)


if __name__ == "__main__":
    main()
