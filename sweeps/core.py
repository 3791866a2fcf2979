"""What every paper-reproduction script shares: scales, parts, running, verdicts, the CLI.

A result (one module of `sweeps/`) is a `Result`: the paper's claim, the sweeps it needs at a
given scale (`parts`), a `judge` that turns their tables into a `Verdict`, and a `figure` laid
out like the paper's. `python -m sweeps.<name> scale=laptop [Hydra overrides] [--dry-run]`
trains what is missing (runs are shared with every other sweep, see proxies/sweep.py) and writes
`<sweep.root>/repro/<name>-<scale>/`: plan.json (every run's resolved config, also on
--dry-run), report.md, figure.png/.pdf, verdict.json, and one sweep directory per part.

Every scale starts from the paper's baseline (§2.1: "we use qk-layernorm ... z-loss with
coefficient 1e-4 ... independent weight decay of 1e-4", AdamW β = (0.9, 0.95), ε = 1e-8,
gradient clipping at 1, warm-up 5e3 of 1e5 steps, cosine decay to 1e-5): `BASELINE` below. A
result varies one thing from it unless the paper's caption says otherwise. Warm-up is 5% of the
run at every scale (the paper's 5e3 of 1e5).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import (Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union,
                    get_args)

import yaml
from omegaconf import OmegaConf

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from analysis.dashboard.panels import PanelSpec  # noqa: E402
from analysis.load import SIZE_KEYS, finished, series_keys  # noqa: E402
from analysis.sweep_end import after_sweep  # noqa: E402
from proxies.cli import run_cli  # noqa: E402
from proxies.config import (LR_KEY, DEFAULT_TARGETS, ConfigError, nonembed_params,  # noqa: E402
                            to_plain)
from proxies.cost import print_plan  # noqa: E402
from sweeps.panels import SEED, seed_mean, series_stats  # noqa: E402
from sweeps.verdicts import Effect, Reproduced  # noqa: E402
from proxies.grid import expand_grid  # noqa: E402
from proxies.naming import GridPoint  # noqa: E402
from proxies.sweep import apply_axes_replacement, run_sweep, split_axes_override  # noqa: E402
from proxies.train import CONFIG_DIR  # noqa: E402

Scale = Literal["tiny", "laptop", "gpu", "paper"]
SCALES: Tuple[str, ...] = get_args(Scale)


# ------------------------------------------------------------------------------------ scales

def size(d: int, n_layers: int, head_dim: int = 32) -> Dict[str, int]:
    return {"d_model": d, "n_layers": n_layers, "n_heads": max(1, d // head_dim)}


def size_params(s: Dict[str, int]) -> float:
    """12·L·d²: non-embedding params of a GELU size (what the analysis tables call a size)."""
    return float(nonembed_params(s["d_model"], s["n_layers"]))


def half_decades(lo: float, hi: float) -> List[float]:
    """1, 3 × powers of ten from lo to hi inclusive: the paper's LR grid."""
    out, e = [], -12
    while e <= 2:
        for m in (1.0, 3.0):
            v = float(f"{m}e{e}")
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
        e += 1
    return out


@dataclass(frozen=True)
class ScaleSpec:
    """The grids of one scale. `base` overrides the run config of every part; `sizes` grow
    width and depth together; `held_out` is a larger size for the logit prediction; `widths`
    and `depths` scale one dimension from `sizes[0]`; `warmups` are short vs long warmup;
    `seeds` runs per grid point (verdicts give intervals over them)."""

    base: Dict[str, Any]
    lrs: List[float]
    sizes: List[Dict[str, int]]
    extra_size: Optional[Dict[str, int]]  # another size for the logit fit, below held_out
    held_out: Dict[str, int]
    widths: List[Dict[str, int]]
    depths: List[Dict[str, int]]
    warmups: Tuple[int, int]
    kappa_size: Dict[str, int]  # the κ experiment's model (paper: ~10M params)
    kappa_lr: float
    kappas: List[float]
    eps_lr: float  # the paper's 0.3: the highest LR its largest baseline model trained at
    epsilons: List[float]
    seeds: int = 1
    eps_size: Optional[Dict[str, int]] = None  # the ε part's model; None: the largest size
    target_params: float = DEFAULT_TARGETS[0]  # the paper's 4.8B prediction (sweep default)
    # sweeps/stabilizers.py: its model, its LR grid (to 1, finer near where the baseline without
    # qk-layernorm stops training), QK-clip's τ
    stabilizer_size: Optional[Dict[str, int]] = None
    stabilizer_lrs: Tuple[float, ...] = ()
    qk_clip_tau: float = 100.0  # Kimi K2's τ


def fine_lrs(centre: float, below: int, above: int, ratio: float = 10 ** 0.1) -> List[float]:
    """LRs `centre`·ratio^k, k = -below..above (3 significant figures): a grid ~1.26× apart."""
    return [float(f"{centre * ratio ** k:.3g}") for k in range(-below, above + 1)]


def stabilizer_grid(lo: float, centre: float, below: int, above: int) -> Tuple[float, ...]:
    """Half decades from `lo` to 1 plus the fine steps around `centre` (a fine step within
    12% of a half-decade point is that point)."""
    coarse = half_decades(lo, 1.0)
    fine = [f for f in fine_lrs(centre, below, above)
            if all(abs(f / c - 1) > 0.12 for c in coarse)]
    return tuple(sorted(coarse + fine))


def _train(steps, batch, seq, log_every, eval_every, eval_batches, checkpoint_every):
    return {"steps": steps, "batch_size": batch, "seq_len": seq, "log_every": log_every,
            "eval_every": eval_every, "eval_batches": eval_batches,
            "checkpoint_every": checkpoint_every}


WARMUP_SHARE = 0.05  # the paper's 5e3 warm-up steps of 1e5


def warmup(steps: int) -> int:
    return max(1, round(WARMUP_SHARE * steps))


def merge(*trees: Dict[str, Any]) -> Dict[str, Any]:
    """Nested dict merge, later trees win (the part's keys over the scale's base)."""
    out: Dict[str, Any] = {}
    for t in trees:
        for k, v in t.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


def config_file(path: str) -> Dict[str, Any]:
    """A YAML file of proxies/configs/ as a plain dict (its `# @package` line is a comment)."""
    return yaml.safe_load((Path(CONFIG_DIR) / path).read_text())


def baseline(steps: int) -> Dict[str, Any]:
    """The paper's §2.1 recipe (proxies/configs/recipe/paper.yaml, the one place it is stated)
    with the warm-up at 5% of `steps`."""
    return merge(config_file("recipe/paper.yaml"), {"optim": {"warmup_steps": warmup(steps)}})


# The laptop (2 CPU cores, byte-level stdlib corpus) keeps its small sizes and float32 (bfloat16
# is slow on CPUs); the gpu and paper scales compute in bfloat16 on the paper's data.
_BF16 = {"dtype": "bfloat16"}
_C4 = config_file("data/c4.yaml")


def _base(steps: int, train: Dict[str, Any], model: Optional[Dict[str, Any]] = None,
          data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    out = merge(baseline(steps), {"model": model or {}, "train": train})
    return {**out, "data": data} if data else out


SPECS: Dict[str, ScaleSpec] = {
    "tiny": ScaleSpec(
        base=_base(4, _train(4, 2, 16, 2, 2, 1, 4)),
        lrs=[1e-3, 1e-1], sizes=[size(16, 1, 8), size(32, 1, 16)],
        extra_size=size(32, 2, 16), held_out=size(48, 2, 16),
        widths=[size(16, 1, 8), size(32, 1, 16)], depths=[size(16, 1, 8), size(16, 2, 8)],
        warmups=(warmup(4), 2), kappa_size=size(32, 1, 16), kappa_lr=1e-2,
        kappas=[1.0, 1e2], eps_lr=1e-2, epsilons=[1e-8, 1e-2], seeds=2,
        stabilizer_size=size(16, 1, 8), stabilizer_lrs=(1e-1,), qk_clip_tau=1.0),
    # Three seeds (sweeps/verdicts.py: MIN_SEEDS): the laptop differences being judged (~0.01 in
    # LR sensitivity) are about what a change of seed moves, so every verdict carries a
    # t-interval over seeds, and "true" or "false" needs three.
    "laptop": ScaleSpec(
        base=_base(200, _train(200, 16, 128, 25, 100, 32, 100)),
        lrs=half_decades(3e-4, 3e-1), sizes=[size(64, 2), size(96, 3), size(128, 4)],
        extra_size=size(160, 5), held_out=size(192, 6),
        # Fig 7's layout: width at a fixed depth of 4, depth at the fixed width 64, both from
        # d64 L4 and both ending at 0.79M, so the largest sizes compare at equal params.
        widths=[size(64, 4), size(96, 4), size(128, 4)],
        depths=[size(64, 4), size(64, 8), size(64, 16)], warmups=(warmup(200), 4 * warmup(200)),
        kappa_size=size(128, 4), kappa_lr=3e-3,
        kappas=[1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4], eps_lr=0.3,
        epsilons=[1e-8, 1e-6, 1e-4, 1e-3, 1e-2], seeds=3,
        # Without qk-layernorm the laptop sizes still train at 0.3 (qk_layernorm's (a)): fine
        # steps from 0.19 to 0.95; τ = 30, Kimi K2's small-scale ablation value (App. D)
        stabilizer_size=size(64, 2), stabilizer_lrs=stabilizer_grid(1e-3, 0.3, 2, 5),
        qk_clip_tau=30.0),
    # One GPU in about a day: the paper's architecture and data, its smallest sizes (9.4M-85M),
    # 1e4 steps of 32 × 512 tokens. C4 is read with HF datasets: point data.path at a local
    # save_to_disk copy (nothing is downloaded unless data.hf_name is left to the hub).
    # Depth at the paper's fixed width 512, width at its fixed depth 6, head dim 64 throughout.
    "gpu": ScaleSpec(
        base=_base(10_000, _train(10_000, 32, 512, 100, 500, 8, 1000), _BF16, _C4),
        lrs=half_decades(1e-4, 1.0), sizes=[size(512, 3, 64), size(640, 4, 64),
                                            size(768, 6, 64)],
        extra_size=size(768, 9, 64), held_out=size(768, 12, 64),
        widths=[size(512, 6, 64), size(768, 6, 64), size(1024, 6, 64)],
        depths=[size(512, 3, 64), size(512, 6, 64), size(512, 12, 64)],
        warmups=(warmup(10_000), 4 * warmup(10_000)), kappa_size=size(512, 3, 64),
        kappa_lr=1e-2, kappas=[1.0, 10.0, 100.0, 1e3, 3e3, 1e4, 3e4], eps_lr=0.3,
        epsilons=[1e-15, 1e-8, 1e-6, 1e-4], seeds=3,
        # The paper's 9.4M model without qk-layernorm diverges between 1e-2 and 1e-1 (Fig. 1)
        stabilizer_size=size(512, 3, 64), stabilizer_lrs=stabilizer_grid(1e-4, 3e-2, 3, 5)),
    # The paper's grids (9.4M ... 1.2B non-embedding params, 1e5 steps of 256 × 512, C4, bf16)
    # for a cluster; one seed, as the paper ran (verdicts then say there is no interval).
    "paper": ScaleSpec(
        base=_base(100_000, _train(100_000, 256, 512, 100, 5000, 8, 5000), _BF16, _C4),
        lrs=half_decades(1e-4, 1.0),
        sizes=[size(512, 3, 64), size(640, 4, 64), size(768, 6, 64), size(768, 12, 64),
               size(1024, 12, 64), size(1024, 24, 64), size(2048, 12, 64), size(2048, 24, 64)],
        extra_size=None, held_out=size(4096, 24, 128),
        widths=[size(512, 6, 64), size(1024, 6, 64), size(2048, 6, 64), size(4096, 6, 64)],
        depths=[size(512, 3, 64), size(512, 6, 64), size(512, 12, 64), size(512, 24, 64)],
        warmups=(warmup(100_000), 4 * warmup(100_000)), kappa_size=size(512, 3, 64),
        kappa_lr=1e-2, kappas=[1.0, 10.0, 100.0, 1e3, 3e3, 1e4, 3e4],
        eps_lr=0.3, epsilons=[1e-15, 1e-8, 1e-6], seeds=1, eps_size=size(4096, 24, 128),
        stabilizer_size=size(768, 6, 64), stabilizer_lrs=stabilizer_grid(1e-4, 1e-2, 3, 5)),
}


# ---------------------------------------------------------------------------------- results

@dataclass
class Part:
    """One sweep of a result: nested overrides of the sweep config (`sweep.*` and run keys)."""

    name: str
    overrides: Dict[str, Any]


@dataclass
class Verdict:
    claim: str
    scale: str
    reproduced: Reproduced
    why: str  # one sentence
    measured: Dict[str, Any] = field(default_factory=dict)  # the statistics that decide

    def line(self) -> str:
        return f"{self.reproduced}: {self.why}"


Tables = Dict[str, pd.DataFrame]  # finished-run tables by part name (analysis.load.load_sweep)


@dataclass
class Result:
    name: str
    claim: str
    parts: Callable[[ScaleSpec], List[Part]]
    judge: Callable[[Tables, ScaleSpec], Tuple[Reproduced, str, Dict[str, Any]]]
    figure: Callable[[Tables, ScaleSpec], plt.Figure]
    # W&B panels of the paper figure (python -m analysis.dashboard reads them from plan.json)
    dashboard: Union[Sequence[PanelSpec], Callable[[ScaleSpec], Sequence[PanelSpec]]]
    paper: str = ""  # where the claim is in the paper ("Fig 1–2"), or "ours"

    def panels(self, spec: ScaleSpec) -> List[PanelSpec]:
        return list(self.dashboard(spec) if callable(self.dashboard) else self.dashboard)


def part_config(result: Result, part: Part, scale: str, overrides: Sequence[str]) -> DictConfig:
    """The sweep config of one part: schema, scale base, the part's grid, then the user's
    Hydra overrides (`sweep.axes=...` replaces the part's axes)."""
    spec = SPECS[scale]
    node = merge(spec.base, part.overrides)
    node = merge({"sweep": {"seeds": spec.seeds}}, node,
                 {"sweep": {"name": f"{result.name}-{part.name}",
                            "target_params": [spec.target_params]}})
    name = f"{result.name}_{part.name}_{scale}"
    ConfigStore.instance().store(group="repro", name=name, node=node, package="_global_")
    rest, axes = split_axes_override(list(overrides))
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("sweep", overrides=[f"+repro={name}", *rest])
    apply_axes_replacement(cfg, axes)
    cfg.sweep.dir = str(result_dir(cfg, result, scale) / part.name)
    # The parts of every result are called main, eps, ...: their W&B group names the result too.
    cfg.wandb.group = cfg.wandb.group or f"{result_dir(cfg, result, scale).name}-{part.name}"
    return cfg


def result_dir(cfg: DictConfig, result: Result, scale: str) -> Path:
    return Path(cfg.sweep.root) / "repro" / f"{result.name}-{scale}"


@dataclass
class Plan:
    result: Result
    scale: str
    configs: Dict[str, DictConfig]
    points: Dict[str, List[GridPoint]]

    @property
    def out(self) -> Path:
        return result_dir(next(iter(self.configs.values())), self.result, self.scale)

    def all_points(self) -> List[GridPoint]:
        return [p for pts in self.points.values() for p in pts]

    def tokens_per_param(self) -> Tuple[float, float]:
        """(fewest, most) training tokens per non-embedding parameter over the plan's runs
        (zero-layer baselines, which have none, left out)."""
        tpp = [r.train.steps * r.train.batch_size * r.train.seq_len / n
               for _, r in self.all_points()
               if (n := nonembed_params(r.model.d_model, r.model.n_layers, r.model.mlp))]
        return (min(tpp), max(tpp)) if tpp else (float("nan"), float("nan"))


def plan(result: Result, scale: str, overrides: Sequence[str] = ()) -> Plan:
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not one of {', '.join(SCALES)}; pick one of those")
    configs = {p.name: part_config(result, p, scale, overrides)
               for p in result.parts(SPECS[scale])}
    return Plan(result, scale, configs, {k: expand_grid(c) for k, c in configs.items()})


def write_plan(p: Plan) -> Path:
    """`<result dir>/plan.json`: per part, its sweep settings and the resolved config of every run
    it trains (model, optim, train and data keys), so the setup can be held against the paper
    without training anything."""
    parts = {}
    for name, cfg in p.configs.items():
        runs = [{"swept": values, "run_dir": run.out_dir,
                 **{k: v for k, v in to_plain(run).items() if k in RUN_SECTIONS}}
                for values, run in p.points[name]]
        parts[name] = {"sweep": OmegaConf.to_container(cfg.sweep, resolve=True,
                                                       enum_to_str=True), "runs": runs}
    out = p.out
    out.mkdir(parents=True, exist_ok=True)
    panels = [s.to_json() for s in p.result.panels(SPECS[p.scale])]
    (out / "plan.json").write_text(json.dumps({"result": p.result.name, "scale": p.scale,
                                               "claim": p.result.claim, "parts": parts,
                                               "dashboard": panels},
                                              indent=1, default=_jsonable) + "\n")
    return out / "plan.json"


RUN_SECTIONS = ("model", "optim", "train", "data")


def unique_points(points: Sequence[GridPoint]) -> List[GridPoint]:
    """Points with distinct run directories (parts and scripts share runs)."""
    seen, out = set(), []
    for p in points:
        if p.run.out_dir not in seen:
            seen.add(p.run.out_dir)
            out.append(p)
    return out


def execute(p: Plan) -> Verdict:
    """Train what is missing, then analyse each part, judge, draw and write the result dir."""
    t0 = time.time()
    tables = {}
    for name, cfg in p.configs.items():
        out, _ = run_sweep(cfg, p.points[name])
        # the part's own report and W&B record, from the table the verdict reads too
        tables[name] = after_sweep(out).assign(sweep_dir=str(out))
    return conclude(p, tables, time.time() - t0)


def conclude(p: Plan, tables: Tables, wall_s: float) -> Verdict:
    spec = SPECS[p.scale]
    done = {k: finished(t) for k, t in tables.items()}
    reproduced, why, measured = p.result.judge(done, spec)
    without = one_lr_left_out(p.result, done, spec)
    if without:
        measured = {**measured, "verdict with one LR left out (each LR of the grid)": without}
    early = {k: w for k in done if (w := warmup_divergences(done[k], p.configs[k]))}
    if early:
        measured = {**measured, "divergences inside the warm-up, per part": early}
        why += ("; some runs diverged inside their warm-up, before the LR reached its peak "
                "(the verdict may rest on the warm-up's length)")
    effects = effect_rows(measured)
    v = Verdict(p.result.claim, p.scale, reproduced, why, shown(measured))
    measured = v.measured
    out = p.out
    out.mkdir(parents=True, exist_ok=True)
    fig = p.result.figure(done, spec)
    fig.savefig(out / "figure.png", dpi=130)
    fig.savefig(out / "figure.pdf")
    plt.close(fig)
    unfinished = sum(len(t) - len(done[k]) for k, t in tables.items())
    spread = {k: s for k, s in ((k, seed_spread(t)) for k, t in done.items()) if s == s}
    effects.to_csv(out / "effects.csv", index=False)
    (out / "verdict.json").write_text(json.dumps(
        {**asdict(v), "wall_s": round(wall_s, 1), "train_s": round(training_time(done), 1),
         "seeds": spec.seeds, "tokens_per_param": [float(f"{x:.4g}") for x in p.tokens_per_param()],
         "unfinished_runs": unfinished, "runs": sum(len(t) for t in tables.values()),
         "seed_spread": spread},
        indent=2, default=_jsonable, ensure_ascii=False) + "\n")
    lines = [f"# {p.result.name} ({p.scale})\n", f"**Claim.** {p.result.claim}\n",
             f"**Verdict: {v.reproduced}.** {v.why}\n", "| statistic | value |", "|---|---|"]
    lines += [f"| {cell(k)} | {cell(fmt_value(val))} |" for k, val in measured.items()]
    if spread:
        lines += ["", "Seed spread of LR sensitivity (median over series of its standard deviation "
                  "over seeds): " + ", ".join(f"{k} {s:.4f}" for k, s in spread.items())]
    lines += ["", "![figure](figure.png)\n", "Per-part sweep reports: " + ", ".join(
        f"[{k}]({k}/analysis/report.md)" for k in p.configs), ""]
    if unfinished:
        lines.insert(3, f"_{unfinished} runs unfinished: judged on the finished ones._\n")
    (out / "report.md").write_text("\n".join(lines))
    print(f"{p.result.name} ({p.scale}): {v.line()}\n  -> {out / 'report.md'}")
    return v


WARMUP_KEY = "optim.warmup_steps"


def warmup_divergences(t: pd.DataFrame, cfg: DictConfig) -> str:
    """'' when no run of the part diverged inside its warm-up; else how many, at which LRs, and
    the earliest step (each run's warm-up is its row's `optim.warmup_steps` where the part
    sweeps it, else the part's)."""
    if "diverged_at_step" not in t.columns or t.empty:
        return ""
    step = pd.to_numeric(t["diverged_at_step"], errors="coerce")
    warm = (pd.to_numeric(t[WARMUP_KEY], errors="coerce") if WARMUP_KEY in t.columns
            else pd.Series(float(cfg.optim.warmup_steps), index=t.index))
    inside = step.notna() & (step <= warm)
    if not inside.any():
        return ""
    lrs = ", ".join(f"{x:g}" for x in sorted(t.loc[inside, LR_KEY].unique()))
    return (f"{int(inside.sum())} of {int(step.notna().sum())} diverged runs (LR {lrs}; earliest "
            f"at step {int(step[inside].min())}, warm-up {int(warm[inside].min())} steps)")


EFFECT_COLUMNS = ["effect", "part", "seed", "value"]


def shown(measured: Dict[str, Any]) -> Dict[str, Any]:
    """`measured` with every interval as its text (mean [lo, hi] (95% t, n=...)), one level deep
    as judges key them (a statistic, or a statistic per size or part)."""
    def text(v: Any) -> Any:
        return str(v) if isinstance(v, Effect) else v
    return {k: ({kk: text(x) for kk, x in v.items()} if isinstance(v, dict) else text(v))
            for k, v in measured.items()}


def effect_rows(measured: Dict[str, Any]) -> pd.DataFrame:
    """effects.csv: one row per per-seed value behind every interval the verdict reports
    (`effect`: the statistic's name in verdict.json; `part`: the size or part it is keyed by
    there, empty when it is a single interval)."""
    rows = []
    for name, v in measured.items():
        keyed = v.items() if isinstance(v, dict) else [("", v)]
        for part, e in keyed:
            if isinstance(e, Effect):
                rows += [{"effect": name, "part": part, "seed": seed, "value": x}
                         for seed, x in zip(e.seeds, e.values)]
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


# A part needs this many LRs before one is left out (with fewer, LR sensitivity has no spread).
LEAVE_OUT_MIN_LRS = 3


def one_lr_left_out(result: Result, done: Tables, spec: ScaleSpec) -> Dict[str, str]:
    """The verdict judged again without each LR in turn (that LR's runs dropped from every part
    with at least LEAVE_OUT_MIN_LRS LRs): how much the verdict rests on one LR. A judge that
    cannot decide on the smaller grid says so rather than stopping the result."""
    def lrs(t: pd.DataFrame) -> List[float]:
        return sorted(t[LR_KEY].unique().tolist()) if LR_KEY in t.columns else []
    wide = {k for k, t in done.items() if len(lrs(t)) >= LEAVE_OUT_MIN_LRS}
    out: Dict[str, str] = {}
    for lr in sorted({lr for k in wide for lr in lrs(done[k])}):
        fewer = {k: t[t[LR_KEY] != lr] if k in wide else t for k, t in done.items()}
        try:
            out[f"{lr:g}"] = result.judge(fewer, spec)[0]
        except (ValueError, KeyError, IndexError, ZeroDivisionError) as e:
            out[f"{lr:g}"] = f"not judged ({type(e).__name__}: {e})"
    return out


def seed_spread(df: pd.DataFrame) -> float:
    """The median over series of LR sensitivity's standard deviation over seeds: how much a
    change of seed alone moves the statistic the verdicts compare (NaN for one seed, and for a
    part with one LR, whose LR sensitivity is 0 by construction)."""
    if SEED not in df.columns or df[SEED].nunique() < 2 or "final_eval_ce" not in df.columns:
        return float("nan")
    if df.groupby(series_keys(df), dropna=False)[LR_KEY].nunique().max() < 2:
        return float("nan")
    toggles = [k for k in series_keys(df) if k not in SIZE_KEYS and k != SEED]
    sd = seed_mean(series_stats(df, toggles), toggles)["lr_sensitivity_sd"]
    return float(sd.median()) if sd.notna().any() else float("nan")


def training_time(tables: Tables) -> float:
    """Seconds the result's distinct runs spent training (their summaries' wall_s, compilation
    excluded): what the result costs, however many of its runs earlier scripts trained."""
    walls = {}
    for t in tables.values():
        for r in t.itertuples():
            walls[str(Path(r.sweep_dir, r.run_dir).resolve())] = float(r.wall_s or 0.0)
    return sum(w for w in walls.values() if w == w)


def cell(text: str) -> str:
    """Text for a Markdown table cell ('|log Z|' would split the cell, a newline end the row)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def fmt_value(v: Any) -> str:
    """A measured value as report.md and docs/repro.md show it."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):  # "; " since an interval's text holds ", "
        return "; ".join(f"{k}: {fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    return str(v)


# ---------------------------------------------------------------------------------- the CLI

def parse_args(argv: Sequence[str]) -> Tuple[str, bool, List[str]]:
    """(scale, dry run, the remaining Hydra overrides) from `scale=... [--dry-run] [k=v ...]`."""
    scale, dry, rest = "laptop", False, []
    for a in argv:
        if a.startswith("scale="):
            scale = a.split("=", 1)[1]
        elif a in ("--dry-run", "sweep.dry_run=true", "sweep.dry_run=True"):
            dry = True
        elif a in ("-h", "--help"):
            print(f"usage: python -m sweeps.<name> scale={'|'.join(SCALES)} [--dry-run] "
                  "[Hydra overrides, e.g. train.steps=300 'sweep.lrs=[1e-3,1e-2]']")
            sys.exit(0)
        else:
            rest.append(a)
    return scale, dry, rest


def main(result: Result, argv: Optional[Sequence[str]] = None) -> Optional[Verdict]:
    """`python -m sweeps.<name> scale=... [--dry-run] [overrides]`; bad input exits 2, one line."""
    scale, dry, rest = parse_args(sys.argv[1:] if argv is None else argv)
    out: List[Optional[Verdict]] = [None]

    def entry() -> None:
        p = plan(result, scale, rest)
        print(f"# {result.name} ({scale}): {result.claim}")
        print_plan(f"{result.name} ({scale})", unique_points(p.all_points()))
        print(f"plan: {write_plan(p)}")
        if not dry:
            out[0] = execute(p)

    run_cli(entry)
    return out[0]

