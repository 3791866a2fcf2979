"""`python -m sweeps.docs scale=laptop [sweep.root=runs] [--repo .]`: the claims table of
README.md, the results section of docs/repro.md and the figures both show, from the result
directories a `sweeps.<result>` / `sweeps.all` / `sweeps.dynamics` run wrote, never by hand.

    (paths under --repo, the repository's root by default)
    results/<scale>/<result>/                 verdict.json, effects.csv, report.md of
                                              <root>/repro/<result>-<scale>/ (committed: small)
                                              and records.tar.gz, its run records (`RECORDS`)
    README.md, between CLAIMS_START/END       one row per result, from results/<scale>/
    docs/repro.md, between RESULTS_START/END  each verdict with its numbers, from the same

    docs/repro/<result>.png                   <root>/repro/<result>-<scale>/figure.png
    docs/dynamics/r_by_recipe.png             <root>/repro/dynamics-<scale>/figure.png
    docs/dynamics/outliers_layernorm_gelu.png the LayerNorm + GELU run's dynamics report figure

A result whose directory is missing is named in one line, and its row says it has not run at
that scale, with its dry-run cost; nothing is trained. tests/test_docs_claims.py fails when the
committed README or docs/repro.md differ from what results/ renders.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from proxies.cli import run_cli
from proxies.cost import CPU_FLOPS, GPU_FLOPS, RUN_OVERHEAD_S, fmt_duration, run_flops
from proxies.rundir import SIGNALS
from sweeps import RESULTS
from sweeps.core import Result, cell, fmt_value, plan

DYNAMICS_RUN_FIGURE = "outliers_over_training.png"  # analysis/dynamics_report/ writes it
# The rows, in order: the onset study says what a scale can show; the early warning (beyond
# the paper, outside sweeps.all) comes last.
CLAIMED = ("onset",) + RESULTS + ("early_warning",)


def parse(argv: Sequence[str]) -> Tuple[str, Path, Path]:
    """(scale, sweep root, repository root) from `scale=... [sweep.root=...] [--repo DIR]`."""
    scale, root, repo = "laptop", Path("runs"), Path(".")
    args = list(argv)
    while args:
        a = args.pop(0)
        if a.startswith("scale="):
            scale = a.split("=", 1)[1]
        elif a.startswith("sweep.root="):
            root = Path(a.split("=", 1)[1])
        elif a == "--repo" and args:
            repo = Path(args.pop(0))
        else:
            raise SystemExit(f"error: unknown argument {a!r}; usage: python -m sweeps.docs "
                             "scale=laptop [sweep.root=runs] [--repo .]")
    return scale, root, repo


def figure_copies(scale: str, root: Path, out: Path) -> List[Tuple[Path, Path]]:
    """(source, destination) of every figure the docs show."""
    repro = root / "repro"
    pairs = [(repro / f"{name}-{scale}" / "figure.png", out / "repro" / f"{name}.png")
             for name in CLAIMED]
    dyn = repro / f"dynamics-{scale}"
    pairs.append((dyn / "figure.png", out / "dynamics" / "r_by_recipe.png"))
    gelu = gelu_run(dyn)
    if gelu is not None:
        pairs.append((gelu / "dynamics" / DYNAMICS_RUN_FIGURE,
                      out / "dynamics" / "outliers_layernorm_gelu.png"))
    return pairs


def result_of(src: Path, root: Path, scale: str) -> str:
    """The result whose sweep writes `src` (a path under root/repro/<result>-<scale>/)."""
    return src.relative_to(root / "repro").parts[0].removesuffix(f"-{scale}")


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


# ------------------------------------------------------------------ the claims, from results/

RESULTS_DIR = Path("results")
KEPT = ("verdict.json", "effects.csv", "report.md")  # what results/<scale>/<result>/ keeps
CLAIMS_START = "<!-- claims: written by `python -m sweeps.docs` from results/; do not edit -->"
CLAIMS_END = "<!-- end of claims -->"
RESULTS_START = "<!-- results: written by `python -m sweeps.docs` from results/; do not edit -->"
RESULTS_END = "<!-- end of results -->"


def result_module(name: str) -> Result:
    return importlib.import_module(f"sweeps.{name}").RESULT


def keep_results(scale: str, root: Path, results: Path) -> List[str]:
    """Copy each result directory's KEPT files to results/<scale>/<result>/, with RECORDS (its
    run records); the names kept."""
    kept = []
    for name in CLAIMED:
        src = root / "repro" / f"{name}-{scale}"
        if not (src / "verdict.json").exists():
            continue
        dst = results / scale / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in KEPT:
            if (src / f).exists():
                shutil.copyfile(src / f, dst / f)
        write_archive(record_paths(src, root), root, dst / RECORDS)
        kept.append(name)
    return kept


# ------------------------------------------------------------------ the run records, archived
# Each result's records in one archive that depends on their bytes alone (sorted names, fixed
# mtimes and owners, no name or time in the gzip header): an unchanged result writes the same
# bytes, so git stores it once. Its names start with runs/, the default sweep root and run
# store: `tar xzf records.tar.gz` in an empty directory, then `python -m sweeps.<result>
# scale=<scale>` there judges the records again without training.

RECORDS = "records.tar.gz"
ARCHIVE_ROOT = Path("runs")
PART_FILES = ("sweep.yaml", "results.csv", "runs.json")
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "events.jsonl",
             SIGNALS)  # the monitor's readings: early_warning judges again from them


def record_paths(result_dir: Path, root: Path) -> List[Path]:
    """The files behind a result, relative to the sweep root: its plan, each part's sweep
    record and table, and the records (not checkpoints) of every run its tables name."""
    top = root.resolve()
    found = {result_dir / "plan.json"}
    for part in (p for p in result_dir.iterdir() if (p / "results.csv").exists()):
        found.update(part / f for f in PART_FILES)
        for run_dir in pd.read_csv(part / "results.csv")["run_dir"].dropna():
            found.update((part / run_dir).resolve() / f for f in RUN_FILES)
    return sorted(p.resolve().relative_to(top) for p in found if p.exists())


def write_archive(paths: Sequence[Path], root: Path, out: Path) -> None:
    """`paths` (relative to `root`) as a gzipped tar under ARCHIVE_ROOT/, whose bytes depend
    only on theirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in paths:
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo((ARCHIVE_ROOT / rel).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)
    if not out.exists() or out.read_bytes() != packed:
        out.write_bytes(packed)


def read_verdict(results: Path, scale: str, name: str) -> Optional[Dict[str, Any]]:
    f = results / scale / name / "verdict.json"
    return json.loads(f.read_text()) if f.exists() else None


def fmt_span(lo: float, hi: float) -> str:
    """A tokens-per-parameter range, 3 significant figures."""
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"


# Training time one result may take at a scale (2 cores): a result over it is not run there; its
# row gives its cost there and at the next scale instead of a verdict.
BUDGET_S = {"laptop": 3 * 3600.0}
NEXT_SCALE = {"tiny": "laptop", "laptop": "gpu", "gpu": "paper"}


@functools.lru_cache(maxsize=None)  # a plan is Hydra composing every part: ~1 s
def planned(name: str, scale: str) -> Tuple[Tuple[float, float], float, float, int]:
    """(tokens per param range, seconds to train every run on 2 CPU cores and on one H100,
    runs) of a result's plan at a scale, whatever is trained already (so the text does not
    depend on this machine's runs)."""
    p = plan(result_module(name), scale)
    points = p.all_points()
    flops = sum(run_flops(run) for _, run in points)
    overhead = RUN_OVERHEAD_S * len(points)
    return p.tokens_per_param(), flops / CPU_FLOPS + overhead, flops / GPU_FLOPS + overhead, \
        len(points)


def not_run(name: str, scale: str) -> Tuple[str, str, str, str]:
    """(verdict, tokens / param, runs, training) cells of a result with no verdict at `scale`:
    the command to run, or, over the scale's budget, its cost there and at the next scale."""
    (lo, hi), cpu_s, _, runs = planned(name, scale)
    tpp, count, cost = fmt_span(lo, hi), f"{runs} runs", f"~{fmt_duration(cpu_s)} (estimate)"
    budget = BUDGET_S.get(scale, float("inf"))
    if cpu_s <= budget:
        return (f"not run at this scale yet (`python -m sweeps.{name} scale={scale}`)", tpp,
                count, cost)
    nxt = NEXT_SCALE[scale]
    (nlo, nhi), _, gpu_s, nruns = planned(name, nxt)
    return (f"not tested: over the {scale} budget of {fmt_duration(budget)}; at `{nxt}` scale "
            f"{nruns} runs, {fmt_span(nlo, nhi)} tokens/param, ~{fmt_duration(gpu_s)} on one "
            "H100 (estimate)", tpp, count, cost)


def claim_row(name: str, scale: str, results: Path) -> str:
    r = result_module(name)
    v = read_verdict(results, scale, name)
    paper = r.claim if r.claim.startswith(r.paper) else f"{r.paper}: {r.claim}"
    if v is None:
        return "| " + " | ".join([f"`{name}`", paper, *not_run(name, scale)]) + " |"
    lo, hi = v["tokens_per_param"]
    return (f"| `{name}` | {paper} | **{v['reproduced']}** ([why](docs/repro.md#{name})) | "
            f"{fmt_span(lo, hi)} | {v['runs']} runs, {v['seeds']} seeds | "
            f"{fmt_duration(v['train_s'])} |")


def claims_table(scale: str, results: Path) -> str:
    """README's claims table at `scale`."""
    head = [f"| result | the paper (figure: claim) | {scale} verdict | tokens / param | runs | "
            "training (2 cores) |", "|---|---|---|---|---|---|"]
    return "\n".join(head + [claim_row(n, scale, results) for n in CLAIMED])


def results_section(scale: str, results: Path) -> str:
    """docs/repro.md's results: per result, its verdict, why, and every number that decides it."""
    out = []
    for name in CLAIMED:
        v = read_verdict(results, scale, name)
        out.append(f'<a id="{name}"></a>\n### `{name}`\n')
        if v is None:
            out.append(f"Not run at the {scale} scale yet.\n")
            continue
        lo, hi = v["tokens_per_param"]
        out += [f"**{v['reproduced']}**: {v['why']}\n",
                f"{v['runs']} runs, {v['seeds']} seeds, {fmt_span(lo, hi)} tokens per "
                f"non-embedding parameter, {fmt_duration(v['train_s'])} of training. "
                f"![figure](repro/{name}.png)\n",
                "| statistic | value |", "|---|---|"]
        out += [f"| {cell(k)} | {cell(fmt_value(x))} |" for k, x in v["measured"].items()]
        out.append("")
    return "\n".join(out).rstrip("\n")


def between(text: str, start: str, end: str, body: str) -> str:
    """`text` with what lies between the markers `start` and `end` replaced by `body`."""
    if start not in text or end not in text:
        raise SystemExit(f"error: the markers {start!r} … {end!r} are missing; put them back "
                         "where the generated text goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def write_docs(scale: str, results: Path, readme: Path, repro: Path) -> None:
    readme.write_text(between(readme.read_text(), CLAIMS_START, CLAIMS_END,
                              claims_table(scale, results)))
    repro.write_text(between(repro.read_text(), RESULTS_START, RESULTS_END,
                             results_section(scale, results)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    scale, root, repo = parse(sys.argv[1:] if argv is None else argv)
    out = repo / "docs"

    def entry() -> None:
        for src, dst in figure_copies(scale, root, out):
            if not src.exists():
                print(f"missing: {src} (run `python -m sweeps.{result_of(src, root, scale)} "
                      f"scale={scale}` first); left out")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            print(f"{dst} <- {src}")
        kept = keep_results(scale, root, repo / RESULTS_DIR)
        print(f"{repo / RESULTS_DIR / scale}: {', '.join(kept) or 'no result directory yet'}")
        write_docs(scale, repo / RESULTS_DIR, repo / "README.md", out / "repro.md")
        print(f"{repo / 'README.md'} and {out / 'repro.md'}: claims and results at {scale} scale")

    run_cli(entry)


if __name__ == "__main__":
    main()
