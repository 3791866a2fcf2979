"""The training-dynamics report of one run: `<run_dir>/dynamics/report.md` and its figures.

Reads what the dynamics probes wrote (proxies/rundir.py: dynamics/stats.jsonl, one row of
scalars per probe step, and dynamics/hist/step_*.npz, fixed-edge histograms and E/R samples) and
measures the studies of the paper's "Training-dynamics studies" section: distributions over
training, the max/median ratio r_ℓ,t of the residual stream with its emergence fit
f(t) = A·exp(−λx)·log x + K, x = γt + t₀, C = E ⊙ R (energy vs correlation), norm compression,
SwiGLU coincidence, massive activations. The report states numbers, never verdicts:
`dynamics_summary` returns the headline numbers for a script that turns them into verdicts.

Figures follow one convention: training step on a sequential colour map with a colour bar,
layers on another sequential map (shallow to deep), log axes where values span decades.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from analysis.emergence import EmergenceFit, fit_emergence  # noqa: E402
from proxies.rundir import (  # noqa: E402
    CONFIG, DYNAMICS, METRICS, hist_files, read_config_file, read_dynamics, read_metrics)

N_HIST_STEPS = 5  # probe steps overlaid in the static histogram figure
N_GIF_FRAMES = 30  # at most this many frames per animation (keeps all GIFs near 1 MB)
N_EC_SAMPLE = 256  # strided rows of each ec_sample after C's top k (proxies.probes.N_EC_SAMPLE)
STEP_CMAP = plt.cm.viridis
LAYER_CMAP = plt.cm.plasma
E_COLOUR, R_COLOUR = "tab:orange", "tab:blue"
STAT_FAMILIES = ("act", "weight", "grad")


class DynamicsReportError(ValueError):
    """A run directory the report cannot be made from; the message names the fix."""


# ------------------------------------------------------------------------------ the records

@dataclass
class Records:
    """One run's dynamics records, scalars aligned on the probe steps (nan where missing)."""

    run_dir: Path
    steps: np.ndarray
    stats: Dict[str, np.ndarray]
    hist_paths: Dict[int, Path]
    model: Dict[str, Any]
    per_decade: int
    loss: List[Tuple[int, float]] = field(default_factory=list)  # (step, train/loss)
    eval_ce: List[Tuple[int, float]] = field(default_factory=list)  # (step, eval/ce)

    @property
    def n_layers(self) -> int:
        n = self.model.get("n_layers")
        if isinstance(n, int):
            return n
        return len({m.group(1) for k in self.stats if (m := re.match(r"act/block_(\d+)/", k))})

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])

    def series(self, key: str) -> np.ndarray:
        return self.stats.get(key, np.full(len(self.steps), np.nan))

    def last(self, key: str) -> float:
        return float(self.series(key)[-1])

    def sites(self, kind: str) -> List[str]:
        """Sites (act) or parameter paths (weight, grad) that have stats, in record order."""
        pat = re.compile(rf"^{kind}/(.+)/kurtosis$")
        return [m.group(1) for k in self.stats if (m := pat.match(k))]

    def names(self, prefix: str, suffix: str) -> List[str]:
        """The middle part of stats keys `prefix/<name>/suffix`, in depth order."""
        pat = re.compile(rf"^{re.escape(prefix)}/(.+)/{re.escape(suffix)}$")
        return sorted((m.group(1) for k in self.stats if (m := pat.match(k))), key=depth_key)

    def arrays(self, step: int) -> Dict[str, np.ndarray]:
        return _load_npz(self.hist_paths[step])


@functools.lru_cache(maxsize=64)
def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def depth_key(name: str) -> Tuple[int, str]:
    """Order names by block index (block_10 after block_9), unnumbered ones (ln_final,
    unembed) last; within a block, by name."""
    m = re.match(r"block_(\d+)/(.*)", name)
    return (int(m.group(1)), m.group(2)) if m else (10 ** 9, name)


def load_records(run_dir: Path) -> Records:
    """The run's dynamics records; DynamicsReportError (one line) when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DynamicsReportError(f"no run directory at {run_dir}; pass a run's out_dir")
    rows = read_dynamics(run_dir)
    if not rows:
        raise DynamicsReportError(f"no dynamics records in {run_dir}; train with "
                                  "dynamics.enabled=true")
    by_step = {int(r["step"]): r for r in rows}  # a repeated step (resume): the last row wins
    steps = np.array(sorted(by_step))
    keys = sorted({k for r in rows for k in r if k != "step"})
    stats = {k: np.array([_as_float(by_step[s].get(k)) for s in steps]) for k in keys}
    cfg = read_config_file(run_dir / CONFIG)
    metrics = read_metrics(run_dir / METRICS)
    loss, eval_ce = ([(int(r["step"]), float(r[k])) for r in metrics
                      if isinstance(r.get(k), (int, float))] for k in ("train/loss", "eval/ce"))
    hists = {s: p for s, p in hist_files(run_dir).items() if s in by_step}
    return Records(run_dir=run_dir, steps=steps, stats=stats, hist_paths=hists,
                   model=dict(cfg.get("model") or {}),
                   per_decade=int((cfg.get("dynamics") or {}).get("per_decade", 4)), loss=loss,
                   eval_ce=eval_ce)


def _as_float(v: Any) -> float:
    # JSON null marks a non-finite value (proxies.rundir.finite_or_none).
    return float(v) if isinstance(v, (int, float)) else float("nan")


def subsample(steps: Sequence[int], n: int) -> List[int]:
    """At most n steps, evenly spread, first and last always in."""
    steps = list(steps)
    if len(steps) <= n:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]


# ------------------------------------------------------------------------------ numbers

def _finite_median(values: Sequence[float]) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _num(x: Optional[float]) -> Optional[float]:
    """A JSON-friendly number: None where undefined (nan)."""
    return None if x is None or not math.isfinite(x) else float(x)


def emergence_fits(rec: Records) -> Dict[int, EmergenceFit]:
    """Per block ℓ, the emergence fit of r_ℓ,t (max/median of the residual stream out of ℓ)."""
    out = {}
    for i in range(rec.n_layers):
        r = rec.series(f"massive/block_{i}/resid_out/ratio")
        keep = np.isfinite(r)
        out[i] = fit_emergence(rec.steps[keep], r[keep])
    return out


def ec_projections(rec: Records) -> List[str]:
    return rec.names("ec", "pearson_E")


def ec_counts(rec: Records) -> Dict[str, float]:
    """How often |C| follows |R| rather than E, over the projections at the last step."""
    names = ec_projections(rec)
    get = {k: np.array([rec.last(f"ec/{n}/{k}") for n in names])
           for k in ("pearson_E", "pearson_R", "top_overlap_E", "top_overlap_R", "chance_overlap")}
    n = len(names)
    r_p = int(np.sum(get["pearson_R"] > get["pearson_E"]))
    r_t = int(np.sum(get["top_overlap_R"] > get["top_overlap_E"]))
    e_t = int(np.sum(get["top_overlap_E"] > get["top_overlap_R"]))
    return {
        "n_projections": n,
        "pearson_R_wins": r_p,
        "share_pearson_R_wins": r_p / n if n else float("nan"),
        "top_overlap_R_wins": r_t,
        "top_overlap_E_wins": e_t,
        "share_top_overlap_R_wins": r_t / n if n else float("nan"),
        **{f"median_{k}": _finite_median(v) for k, v in get.items()},
    }


def norm_kind(name: str) -> str:
    """block_3/ln_attn -> ln_attn; ln_final -> ln_final."""
    return name.rsplit("/", 1)[-1]


def weight_matrices(rec: Records) -> List[str]:
    # Biases and norm scales are vectors (a scale starts constant: kurtosis undefined), so the
    # "weights stay near-Gaussian" comparison is over matrices: kernels and embeddings.
    return [p for p in rec.sites("weight") if not p.endswith(("/bias", "/scale"))]


def dynamics_summary(run_dir: Path) -> Dict[str, Any]:
    """The headline numbers of the report, for a script to turn into verdicts.

    Keys: run_dir, steps (probe steps), model; r_last {layer: r at the last step} and
    emergence {layer: {A, lam, gamma, t0, K, r2, peak_t, ok, message}}; ec (n_projections,
    pearson_R_wins, share_pearson_R_wins, top_overlap_R_wins, top_overlap_E_wins,
    share_top_overlap_R_wins, median_{pearson,top_overlap}_{E,R}, median_chance_overlap); norm
    {ln_attn|ln_mlp|ln_final|all: {median_compression, median_reamplification}}; swiglu
    {layer: {coincidence, chance, near_zero_swish, near_zero_gate}} at the last step, or None
    without SwiGLU; kurtosis {weight_median, resid_median} at the last step (weight matrices;
    residual stream out of each block); massive {max_count, max_r, max_r_site, max_r_step}.
    The same headlines flat, one number each (what sweeps/dynamics.py reads): n_projections,
    r_beats_e_pearson, r_beats_e_top (shares), weight_kurtosis_median, resid_kurtosis_median,
    compression_median, reamplification_max (over norm layers), swiglu_coincidence,
    swiglu_chance (medians over layers), emergence_r2_mean (fitted layers), r_growth (median
    over layers of r at the last step ÷ r at the first).
    At the first probe (init; first_step says which step, n_probes how many): the same numbers
    with an `_init` suffix (weight_kurtosis_median, resid_kurtosis_median, compression_median,
    reamplification_max, swiglu_coincidence), ec_top_lead(_init) (median over projections of
    top_overlap_R − top_overlap_E) and ec_pearson_E_gain (median over projections of the change
    of Pearson(|C|, E) from the first probe to the last): the nulls sweeps/dynamics.py judges
    against.
    Undefined numbers are None (JSON null), never nan.
    """
    rec = load_records(run_dir)
    return _summary(rec, emergence_fits(rec))


def _summary(rec: Records, fits: Dict[int, EmergenceFit]) -> Dict[str, Any]:
    nested = _nested_summary(rec, fits)
    return {**nested, **_flat_summary(rec, fits, nested), **_init_summary(rec)}


def first_probe(rec: Records) -> Records:
    """The records cut to the first probe step (step 0 in a run trained from scratch): the
    model at init, where every null of the training-dynamics verdicts is measured."""
    return replace(rec, steps=rec.steps[:1], stats={k: v[:1] for k, v in rec.stats.items()},
                   hist_paths={s: p for s, p in rec.hist_paths.items() if s == rec.steps[0]})


def ec_lead(rec: Records) -> float:
    """Median over projections, at the last step, of R's lead over E among C's top entries:
    top_overlap_R − top_overlap_E (> 0: C's outliers are top-|R| entries more than top-E)."""
    names = ec_projections(rec)
    return _finite_median([rec.last(f"ec/{n}/top_overlap_R") - rec.last(f"ec/{n}/top_overlap_E")
                           for n in names])


def ec_pearson_e_gain(rec: Records) -> float:
    """Median over projections of Pearson(|C|, E) at the last step minus at the first: how much
    more of |C| the energy E explains after training than at init (where norms are nearly
    equal, E nearly flat, and |C| follows |R| by construction)."""
    return _finite_median([rec.last(f"ec/{n}/pearson_E") - rec.series(f"ec/{n}/pearson_E")[0]
                           for n in ec_projections(rec)])


def _init_summary(rec: Records) -> Dict[str, Any]:
    """The headline numbers the verdicts compare with their value at the first probe (init),
    and the EC numbers that need both steps (see dynamics_summary)."""
    first = first_probe(rec)
    nested = _nested_summary(first, {})
    flat = _flat_summary(first, {}, nested)
    keys = ("weight_kurtosis_median", "resid_kurtosis_median", "compression_median",
            "reamplification_max", "swiglu_coincidence")
    return {"first_step": int(rec.steps[0]), "n_probes": int(len(rec.steps)),
            **{f"{k}_init": flat[k] for k in keys},
            "ec_top_lead": _num(ec_lead(rec)), "ec_top_lead_init": _num(ec_lead(first)),
            "ec_pearson_E_gain": _num(ec_pearson_e_gain(rec))}


def _flat_summary(rec: Records, fits: Dict[int, EmergenceFit],
                  nested: Dict[str, Any]) -> Dict[str, Any]:
    r = [rec.series(f"massive/block_{i}/resid_out/ratio") for i in range(rec.n_layers)]
    sw = nested["swiglu"] or {}
    r2 = [f.r2 for f in fits.values() if f.ok]
    return {
        "n_projections": nested["ec"]["n_projections"],
        "r_beats_e_pearson": nested["ec"]["share_pearson_R_wins"],
        "r_beats_e_top": nested["ec"]["share_top_overlap_R_wins"],
        "weight_kurtosis_median": nested["kurtosis"]["weight_median"],
        "resid_kurtosis_median": nested["kurtosis"]["resid_median"],
        "compression_median": nested["norm"].get("all", {}).get("median_compression"),
        "reamplification_max": _num(float(np.nanmax(
            [rec.last(f"norm/{n}/reamplification") for n in rec.names("norm", "compression")]
            or [np.nan]))),
        "swiglu_coincidence": _num(_finite_median([v["coincidence"] for v in sw.values()
                                                   if v["coincidence"] is not None]))
        if sw else None,
        "swiglu_chance": _num(_finite_median([v["chance"] for v in sw.values()
                                              if v["chance"] is not None])) if sw else None,
        "emergence_r2_mean": _num(float(np.mean(r2))) if r2 else None,
        "r_growth": _num(_finite_median([x[-1] / x[0] for x in r if len(x)])),
    }


def _nested_summary(rec: Records, fits: Dict[int, EmergenceFit]) -> Dict[str, Any]:
    L = rec.n_layers
    norms = rec.names("norm", "compression")
    norm = {}
    for kind in sorted({norm_kind(n) for n in norms}) + ["all"]:
        sel = [n for n in norms if kind in ("all", norm_kind(n))]
        norm[kind] = {f"median_{k}": _num(_finite_median([rec.last(f"norm/{n}/{k}")
                                                          for n in sel]))
                      for k in ("compression", "reamplification")}
    sw_layers = [int(n.split("_")[1]) for n in rec.names("swiglu", "coincidence")]
    swiglu = {i: {k: _num(rec.last(f"swiglu/block_{i}/{k}"))
                  for k in ("coincidence", "chance", "near_zero_swish", "near_zero_gate")}
              for i in sw_layers} or None
    return {
        "run_dir": str(rec.run_dir),
        "steps": [int(s) for s in rec.steps],
        "model": {k: rec.model.get(k) for k in ("d_model", "n_layers", "norm", "mlp")},
        "r_last": {i: _num(rec.last(f"massive/block_{i}/resid_out/ratio")) for i in range(L)},
        "emergence": {i: _fit_dict(f) for i, f in fits.items()},
        "ec": {k: (v if isinstance(v, int) else _num(v)) for k, v in ec_counts(rec).items()},
        "norm": norm,
        "swiglu": swiglu,
        "kurtosis": {
            "weight_median": _num(_finite_median(
                [rec.last(f"weight/{p}/kurtosis") for p in weight_matrices(rec)])),
            "resid_median": _num(_finite_median(
                [rec.last(f"act/block_{i}/resid_out/kurtosis") for i in range(L)])),
        },
        "massive": _massive_summary(rec),
    }


def _fit_dict(f: EmergenceFit) -> Dict[str, Any]:
    return {"A": _num(f.A), "lam": _num(f.lam), "gamma": _num(f.gamma), "t0": _num(f.t0),
            "K": _num(f.K), "r2": _num(f.r2), "peak_t": _num(f.peak_t), "ok": f.ok,
            "message": f.message}


def _massive_summary(rec: Records) -> Dict[str, Any]:
    sites = rec.names("massive", "ratio")
    counts = [np.nanmax(np.r_[rec.series(f"massive/{s}/count"), 0]) for s in sites]
    best = (float("nan"), None, None)
    for s in sites:
        r = rec.series(f"massive/{s}/ratio")
        if np.isfinite(r).any() and not (np.nanmax(r) <= best[0]):
            j = int(np.nanargmax(r))
            best = (float(r[j]), s, int(rec.steps[j]))
    return {"max_count": int(max(counts, default=0)), "max_r": _num(best[0]),
            "max_r_site": best[1], "max_r_step": best[2]}


# ------------------------------------------------------------------------------ histograms

@dataclass(frozen=True)
class Family:
    """A site family of the histogram figure: which tensors may represent it."""

    name: str  # file-name part: hist_<name>.gif
    title: str
    kind: str  # act | weight | grad
    member: Callable[[str], bool]


def _act(pattern: str) -> Callable[[str], bool]:
    return lambda s: re.fullmatch(pattern, s) is not None


def _block_matrix(path: str) -> bool:
    # Embedding gradients are mostly exact zeros (rows of tokens not in the batch), so their
    # kurtosis measures sparsity; the block matrices show the tails.
    return path.startswith("block_") and not path.endswith(("/bias", "/scale"))


FAMILIES = (
    Family("resid_out", "residual stream out of a block", "act", _act(r"block_\d+/resid_out")),
    Family("q", "attention queries q", "act", _act(r"block_\d+/attn/q")),
    Family("k", "attention keys k", "act", _act(r"block_\d+/attn/k")),
    Family("probs", "attention probabilities", "act", _act(r"block_\d+/attn/probs")),
    Family("down_in", "MLP down-projection input", "act", _act(r"block_\d+/mlp/down_in")),
    Family("logits", "output logits", "act", _act(r"logits")),
    Family("weights", "weight matrices in the blocks", "weight", _block_matrix),
    Family("grads", "gradients of the block matrices", "grad", _block_matrix),
)


def pick_member(rec: Records, fam: Family) -> Optional[str]:
    """The family's tensor with the largest kurtosis at the last step: where heavy tails show
    first (for weights, the least Gaussian matrix)."""
    cands = [s for s in rec.sites(fam.kind) if fam.member(s)
             and f"hist/{fam.kind}/{s}" in rec.arrays(rec.last_step)]
    if not cands:
        return None
    kurt = [rec.last(f"{fam.kind}/{s}/kurtosis") for s in cands]
    return cands[int(np.argmax(np.nan_to_num(kurt, nan=-np.inf)))]


@dataclass(frozen=True)
class SignedLogAxis:
    """x = sign(v)·(log10|v| − floor) for the log bins of proxies.dynamics.hist_edges, the
    central bin (|v| < 1e-8, zeros included) at x = 0. The empty band of magnitudes between
    the central bin and the smallest occupied bin is cut out, so data fill the axis; a side
    without data (attention probabilities are >= 0) is cut to a margin."""

    x_B: np.ndarray  # x of every bin (nan: bins cut out)
    centre: int  # index of the central bin
    floor: float
    x_max: float
    top_decade: int
    sides: Tuple[bool, bool]  # (negative side has data, positive side has data)

    @staticmethod
    def fit(edges: np.ndarray, per_decade: int, counts: Sequence[np.ndarray]) -> "SignedLogAxis":
        p = edges[len(edges) // 2:]
        P = len(p)
        b = np.arange(2 * P + 1)
        sign = np.sign(b - P)
        j = np.where(b > P, b - P - 1, P - 1 - b)  # magnitude index, 0 at 1e-8, P-1 beyond 1e4
        centre = np.log10(p[0]) + (j + 0.5) / per_decade
        occupied = np.any(np.stack(counts) > 0, axis=0) & (b != P)
        j_min = int(j[occupied].min()) if occupied.any() else P // 2
        j_max = int(j[occupied].max()) if occupied.any() else P // 2
        floor = np.log10(p[0]) + (j_min - 1) / per_decade  # one empty bin between 0 and data
        x = np.where(b == P, 0.0, sign * (centre - floor))
        x = np.where((b != P) & (j >= j_min), x, np.nan)  # the central bin is drawn as a marker
        top = np.log10(p[0]) + (j_max + 1) / per_decade
        return SignedLogAxis(x_B=x, centre=P, floor=float(floor), x_max=float(top - floor),
                             top_decade=int(np.floor(top + 1e-9)),
                             sides=(bool(occupied[:P].any()), bool(occupied[P + 1:].any())))

    def apply(self, ax: plt.Axes) -> None:
        # Decades at least half a decade from 0 (closer ones would print over the 0 label),
        # at most ~4 a side, counted down from the largest.
        decades = [d for d in range(math.ceil(self.floor), self.top_decade + 1)
                   if d - self.floor >= 0.5]
        decades = decades[::-1][::max(1, math.ceil(len(decades) / 4))]
        neg, pos = self.sides if any(self.sides) else (True, True)
        ticks, labels = [0.0], ["0"]
        for on, sgn, fmt in ((pos, 1, "$10^{{{}}}$"), (neg, -1, "$-10^{{{}}}$")):
            if on:
                ticks += [sgn * (d - self.floor) for d in decades]
                labels += [fmt.format(d) for d in decades]
        ax.set_xticks(ticks, labels)
        margin = 0.1 * self.x_max
        ax.set_xlim(-self.x_max if neg else -margin, self.x_max if pos else margin)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)

    def central_share(self, counts: np.ndarray) -> float:
        total = counts.sum()
        return float(counts[self.centre] / total) if total else 0.0


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    s = counts / total if total else np.zeros(len(counts))
    return np.where(s > 0, s, np.nan)  # log y: empty bins are gaps, not −inf


@dataclass
class HistFamily:
    """One family's histograms at the probe steps, ready to draw."""

    family: Family
    site: str
    counts: Dict[int, np.ndarray]  # step -> counts over the fixed bins
    axis: SignedLogAxis

    @property
    def key(self) -> str:
        return f"{self.family.kind}/{self.site}"

    def y_floor(self) -> float:
        # Half the smallest non-zero share possible: one entry of the largest histogram.
        return 0.5 / max(c.sum() for c in self.counts.values())


def hist_family(rec: Records, fam: Family, steps: Sequence[int]) -> Optional[HistFamily]:
    from proxies.dynamics import hist_edges  # jax import: only when histograms are drawn

    site = pick_member(rec, fam)
    if site is None:
        return None
    counts = {s: rec.arrays(s)[f"hist/{fam.kind}/{site}"] for s in steps
              if f"hist/{fam.kind}/{site}" in rec.arrays(s)}
    if not counts:
        return None
    edges = hist_edges(per_decade=rec.per_decade)
    return HistFamily(fam, site, counts, SignedLogAxis.fit(edges, rec.per_decade,
                                                           list(counts.values())))


def _step_norm(rec: Records) -> Normalize:
    return Normalize(vmin=float(rec.steps[0]), vmax=float(max(rec.steps[-1], rec.steps[0] + 1)))


def _draw_hist(ax: plt.Axes, hf: HistFamily, counts: np.ndarray, colour: Any,
               lw: float = 1.2) -> Tuple[Any, Any]:
    """The log bins as a step line and the central bin (|x| < 1e-8) as a diamond at 0."""
    (line,) = ax.plot(hf.axis.x_B, _shares(counts), drawstyle="steps-mid", lw=lw, color=colour)
    c = hf.axis.central_share(counts)
    (dot,) = ax.plot([0.0] if c > 0 else [], [c] if c > 0 else [], "D", ms=5, color=colour)
    return line, dot


def _hist_axes(ax: plt.Axes, hf: HistFamily, rec: Records) -> None:
    hf.axis.apply(ax)
    ax.set_yscale("log")
    ax.set_ylim(hf.y_floor(), 1.5)
    k = rec.last(f"{hf.key}/kurtosis")
    ax.set_title(f"{hf.family.title}: {hf.site}\n(largest kurtosis in the family: {k:.3g} at "
                 f"step {rec.last_step})", fontsize=9)
    ax.set_xlabel("value x (signed log scale; ◆ at 0: |x| < 1e-8, zeros)", fontsize=8)
    ax.set_ylabel("share of entries per bin", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, lw=0.5)


def _step_colourbar(fig: Figure, axes: Any, rec: Records) -> None:
    sm = ScalarMappable(norm=_step_norm(rec), cmap=STEP_CMAP)
    fig.colorbar(sm, ax=axes, label="training step", fraction=0.03, pad=0.02)


def fig_hist_over_training(hfs: List[HistFamily], rec: Records) -> Figure:
    ncols = 2
    nrows = math.ceil(len(hfs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    norm = _step_norm(rec)
    for ax, hf in zip(axes.flat, hfs):
        for s, c in hf.counts.items():
            _draw_hist(ax, hf, c, STEP_CMAP(norm(s)))
        _hist_axes(ax, hf, rec)
    for ax in axes.flat[len(hfs):]:
        ax.set_visible(False)
    _step_colourbar(fig, axes, rec)
    steps = sorted({s for hf in hfs for s in hf.counts})
    fig.suptitle(f"Distributions over training (fixed bins, {rec.per_decade} per decade of |x|); "
                 f"steps {', '.join(map(str, steps))}", fontsize=11)
    return fig


def write_hist_gif(hf: HistFamily, rec: Records, path: Path, fps: float = 3.0) -> None:
    """Frames = probe steps: the histogram at that step over the first one (grey).

    The axes are drawn once and each frame blits only the moving artists (a full redraw per
    frame costs ~0.1 s); frames are written by Pillow, as matplotlib's PillowWriter does.
    """
    from PIL import Image

    norm = _step_norm(rec)
    steps = sorted(hf.counts)
    fig, ax = plt.subplots(figsize=(6.2, 3.5), dpi=72, layout="constrained")
    _draw_hist(ax, hf, hf.counts[steps[0]], "0.7", lw=1)
    line, dot = _draw_hist(ax, hf, hf.counts[steps[0]], "k", lw=1.6)
    _hist_axes(ax, hf, rec)
    ax.set_title("")  # the two-line centre title of the static figure
    ax.set_title(f"{hf.family.title}: {hf.site}", fontsize=9, loc="left")
    ax.set_title(f"grey: step {steps[0]}", fontsize=8, loc="right", color="0.4")
    label = ax.text(0.98, 0.95, "", transform=ax.transAxes, ha="right", va="top", fontsize=10,
                    weight="bold")
    moving = (line, dot, label)
    for a in moving:
        a.set_animated(True)  # left out of the background
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    frames = []
    for s in steps:
        counts = hf.counts[s]
        line.set_data(hf.axis.x_B, _shares(counts))
        c = hf.axis.central_share(counts)
        dot.set_data([0.0] if c > 0 else [], [c] if c > 0 else [])
        for a in (line, dot):
            a.set_color(STEP_CMAP(norm(s)))
        label.set_text(f"step {s}")
        fig.canvas.restore_region(background)
        for a in moving:
            ax.draw_artist(a)
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
    plt.close(fig)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                   loop=0)


# ------------------------------------------------------------------------------ outliers

def _layer_colour(i: int, n: int) -> Any:
    return LAYER_CMAP(0.05 + 0.8 * i / max(1, n - 1))


def _log_if_spans(ax: plt.Axes, values: np.ndarray, decades: float = 1.0) -> None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and np.log10(v.max() / v.min()) >= decades:
        ax.set_yscale("log")


def fig_outliers(rec: Records, fits: Dict[int, EmergenceFit]) -> Figure:
    fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    L = rec.n_layers
    t = np.linspace(rec.steps[0], rec.steps[-1], 200)
    all_r, all_k = [], []
    for i in range(L):
        c = _layer_colour(i, L)
        r = rec.series(f"massive/block_{i}/resid_out/ratio")
        kurt = rec.series(f"act/block_{i}/resid_out/kurtosis")
        ax_r.plot(rec.steps, r, "o-", ms=3, lw=1.2, color=c, label=f"block {i}")
        if fits[i].ok:
            ax_r.plot(t, fits[i].predict(t), "--", lw=1, color=c)
        ax_k.plot(rec.steps, kurt, "o-", ms=3, lw=1.2, color=c, label=f"block {i}")
        all_r.append(r)
        all_k.append(kurt)
    ax_r.plot([], [], "--", color="0.4", label="emergence fit")
    _log_if_spans(ax_r, np.concatenate(all_r))
    _log_if_spans(ax_k, np.concatenate(all_k))
    ax_k.axhline(3, color="0.5", lw=0.8, ls=":", label="Gaussian (3)")
    ax_r.set_title("r = max|h| / median|h| of the residual stream out of each block\n"
                   "dashed: f(t) = A·exp(−λx)·log x + K, x = γt + t₀", fontsize=10)
    ax_r.set_ylabel("r (ratio)")
    ax_k.set_title("kurtosis of the residual stream out of each block", fontsize=10)
    ax_k.set_ylabel("kurtosis (Pearson; Gaussian = 3)")
    for ax in (ax_r, ax_k):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(fontsize=8, ncol=2 if L > 6 else 1)
    return fig


# ------------------------------------------------------------------------------ E vs R

def ec_scatter_projections(rec: Records) -> List[str]:
    """The last block's MLP down projection (where SwiGLU outliers land) and the unembedding
    (the logits), when recorded."""
    arrays = rec.arrays(rec.last_step)
    want = [f"block_{rec.n_layers - 1}/mlp/down", "unembed"]
    return [p for p in want if f"ec_sample/{p}" in arrays]


def _plain_log_ticks(ax: plt.Axes, which: str) -> None:
    """Log ticks printed as plain numbers at 1, 2, 5 × 10^k, or at every integer multiple when
    the data span less than a decade (E often does): matplotlib's default labels such a range
    with overlapping 6×10^0-style minor labels, or with one tick only."""
    ax.autoscale_view()
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if hi / lo >= 10 else tuple(float(k) for k in range(1, 10))
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ec_scatter(ax: plt.Axes, sample: np.ndarray, col: int, xlabel: str) -> None:
    k = max(0, sample.shape[0] - N_EC_SAMPLE)  # the first k rows are C's top-|C| entries
    c, x = sample[:, 0], sample[:, col]
    ok = (c > 0) & (x > 0)
    rest, top = ok & (np.arange(len(c)) >= k), ok & (np.arange(len(c)) < k)
    ax.scatter(x[rest], c[rest], s=6, color="0.6", alpha=0.6, lw=0,
               label=f"strided sample ({int(rest.sum())})")
    ax.scatter(x[top], c[top], s=12, color="tab:red", lw=0, label=f"top-|C| entries ({k})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, "x")
    _plain_log_ticks(ax, "y")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("|C| = E·|R|", fontsize=9)
    ax.grid(alpha=0.3, lw=0.5)
    ax.tick_params(labelsize=8)


def _dumbbell(ax: plt.Axes, names: List[str], e: np.ndarray, r: np.ndarray, xlabel: str,
              chance: Optional[np.ndarray] = None) -> None:
    order = np.argsort(r - e, kind="stable")  # R's lead over E, smallest at the bottom
    y = np.arange(len(names))
    ax.hlines(y, e[order], r[order], color="0.75", lw=1)
    ax.plot(e[order], y, "o", color=E_COLOUR, ms=5, label="E (energy: norm products)")
    ax.plot(r[order], y, "s", color=R_COLOUR, ms=5, label="|R| (correlation: cosines)")
    if chance is not None:
        ax.plot(chance[order], y, "|", color="0.3", ms=7, label="chance overlap")
    ax.set_yticks(y, [names[i] for i in order], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3,
              frameon=False)


def fig_energy_vs_correlation(rec: Records) -> Figure:
    projs = ec_scatter_projections(rec)
    fig = plt.figure(figsize=(13, 4.0 + 3.6 + 0.16 * len(ec_projections(rec))),
                     layout="constrained")
    top_h = 3.6
    sub = fig.subfigures(2, 1, height_ratios=[top_h, 0.16 * len(ec_projections(rec)) + 1.5])
    ax_top = sub[0].subplots(1, max(2, 2 * len(projs)), squeeze=False)[0]
    arrays = rec.arrays(rec.last_step)
    for j, p in enumerate(projs):
        sample = arrays[f"ec_sample/{p}"]
        _ec_scatter(ax_top[2 * j], sample, 1, "E = ‖a_i‖·‖b_j‖")
        _ec_scatter(ax_top[2 * j + 1], sample, 2, "|R| = |cos θ_ij|")
        ax_top[2 * j].set_title(f"{p}: |C| vs E", fontsize=9)
        ax_top[2 * j + 1].set_title(f"{p}: |C| vs |R|", fontsize=9)
    ax_top[0].legend(fontsize=7, loc="upper left")
    sub[0].suptitle(f"C = A·B = E ⊙ R at step {rec.last_step} (log-log)", fontsize=10)
    names = ec_projections(rec)
    ax_p, ax_o = sub[1].subplots(1, 2)
    get = {k: np.array([rec.last(f"ec/{n}/{k}") for n in names])
           for k in ("pearson_E", "pearson_R", "top_overlap_E", "top_overlap_R", "chance_overlap")}
    _dumbbell(ax_p, names, get["pearson_E"], get["pearson_R"], "Pearson correlation with |C|")
    _dumbbell(ax_o, names, get["top_overlap_E"], get["top_overlap_R"],
              "share of C's top-|C| entries also top in E / in |R|", get["chance_overlap"])
    ax_p.set_title("which factor |C| follows, per projection (sorted by R − E)", fontsize=9)
    ax_o.set_title("top-entry overlap, per projection (sorted by R − E)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------ norms, SwiGLU

def fig_norm_compression(rec: Records) -> Figure:
    norms = rec.names("norm", "compression")
    n = len(norms)
    fig = plt.figure(figsize=(13, 8), layout="constrained")
    gs = fig.add_gridspec(2, 2)
    ax_b = fig.add_subplot(gs[0, :])
    x = np.arange(n)
    parts = (("in", "before the norm", "tab:red"),
             ("normed", "after normalising", "tab:grey"),
             ("scaled", "after the learned scale", "tab:green"))
    for j, (k, label, colour) in enumerate(parts):
        v = [rec.last(f"norm/{m}/max_rms_{k}") for m in norms]
        ax_b.bar(x + (j - 1) * 0.27, v, width=0.27, color=colour, label=label, bottom=0)
    tops = [max(rec.last(f"norm/{m}/max_rms_{k}") for k in ("in", "normed", "scaled"))
            for m in norms]
    for i, m in enumerate(norms):  # the two ratios the lower panels follow over training
        ax_b.annotate(f"÷{rec.last(f'norm/{m}/compression'):.2f}\n"
                      f"×{rec.last(f'norm/{m}/reamplification'):.2f}", (x[i], tops[i]),
                      xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                      fontsize=7)
    ax_b.set_yscale("log")
    # max|x| >= RMS always, so 1 (all entries equally large) is the natural baseline.
    ax_b.set_ylim(1, np.nanmax(tops) * 1.6 if np.isfinite(tops).any() else 10)
    _plain_log_ticks(ax_b, "y")
    ax_b.set_xticks(x, norms, rotation=30, ha="right", fontsize=8)
    ax_b.set_ylabel("dynamic range max|x| / RMS")
    ax_b.set_title(f"Dynamic range at each norm layer (depth order), step {rec.last_step}; "
                   "labels: ÷compression, ×reamplification", fontsize=10)
    ax_b.legend(fontsize=8)
    ax_b.grid(axis="y", which="both", alpha=0.3, lw=0.5)
    for col, (k, title) in enumerate((
            ("compression", "compression = (max/RMS before) ÷ (max/RMS normalised)"),
            ("reamplification", "reamplification = (max/RMS scaled) ÷ (max/RMS normalised)"))):
        ax = fig.add_subplot(gs[1, col])
        for i, m in enumerate(norms):
            ax.plot(rec.steps, rec.series(f"norm/{m}/{k}"), "o-", ms=2.5, lw=1,
                    color=_layer_colour(i, n), label=m)
        ax.axhline(1, color="0.4", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{k} (ratio; 1 = unchanged)")
        ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, ncol=2 if n > 8 else 1, title="norm layer (shallow → deep)",
              title_fontsize=7, loc="best")
    return fig


def _style_legend(ax: plt.Axes, layers: Sequence[int], L: int,
                  styles: Sequence[Tuple[str, dict]]) -> None:
    """One entry per layer (colour) and one per line style: not layers × styles entries."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_layer_colour(i, L), lw=2, label=f"block {i}")
               for i in layers]
    handles += [Line2D([], [], color="0.3", label=label, **kw) for label, kw in styles]
    ax.legend(handles=handles, fontsize=7, ncol=2 if len(handles) > 8 else 1, loc="best")


def fig_swiglu(rec: Records) -> Figure:
    layers = [int(n.split("_")[1]) for n in rec.names("swiglu", "coincidence")]
    L = max(layers) + 1
    fig, (ax_c, ax_z) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    chance = np.concatenate([rec.series(f"swiglu/block_{i}/chance") for i in layers])
    for i in layers:
        c = _layer_colour(i, L)
        # Linear y: coincidence is often exactly 0 at small scale (k top entries: steps of
        # 1/k), and chance sits decades below; its value goes in the legend.
        ax_c.plot(rec.steps, rec.series(f"swiglu/block_{i}/coincidence"), "o-", ms=3, lw=1.2,
                  color=c)
        ax_c.plot(rec.steps, rec.series(f"swiglu/block_{i}/chance"), ":", lw=1, color=c)
        ax_z.plot(rec.steps, rec.series(f"swiglu/block_{i}/near_zero_swish"), "o-", ms=3,
                  lw=1.2, color=c)
        ax_z.plot(rec.steps, rec.series(f"swiglu/block_{i}/near_zero_gate"), "s--", ms=3,
                  lw=1, color=c, mfc="none")
    _style_legend(ax_c, layers, L, [
        ("coincidence", {"marker": "o", "ms": 3}),
        (f"chance (k/NH)² ≈ {_f(_finite_median(chance))}", {"ls": ":"})])
    _style_legend(ax_z, layers, L, [
        ("swish(gate)", {"marker": "o", "ms": 3}),
        ("gate pre-activation", {"marker": "s", "ms": 3, "ls": "--", "mfc": "none"})])
    ax_c.set_ylim(bottom=0)
    ax_c.set_title("share of the top-|h| entries of h = swish(gate) ⊙ up\n"
                   "where gate and up are both in their own top k", fontsize=10)
    ax_c.set_ylabel("coincidence share")
    ax_z.set_title("near zero: share of entries with |v| < 0.01·RMS(v)", fontsize=10)
    ax_z.set_ylabel("near-zero share")
    for ax in (ax_c, ax_z):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, lw=0.5)
    return fig


# ------------------------------------------------------------------------------ markdown

def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _f(c) for c in r) + " |"
              for r in rows]
    return "\n".join(lines)


def _header(rec: Records) -> List[str]:
    m = rec.model
    steps = [int(s) for s in rec.steps]
    shown = ", ".join(map(str, steps)) if len(steps) <= 12 else \
        f"{steps[0]}, {steps[1]}, …, {steps[-1]}"
    lines = ["# Training dynamics", "",
             f"- run: `{rec.run_dir}`",
             f"- model: d = {m.get('d_model', '?')}, L = {m.get('n_layers', '?')}, "
             f"heads = {m.get('n_heads', '?')}, norm = {m.get('norm', '?')}, "
             f"mlp = {m.get('mlp', '?')}",
             f"- steps probed: {len(steps)} ({shown})"]
    for name, series in (("train loss", rec.loss), ("eval CE", rec.eval_ce)):
        if series:
            (s0, l0), (s1, l1) = series[0], series[-1]
            lines.append(f"- {name}: {l0:.3f} at step {s0} → {l1:.3f} at step {s1}")
    return lines + [""]


def _section_hist(rec: Records, hfs: List[HistFamily], gifs: List[Path],
                  n_frames: int) -> List[str]:
    first = int(rec.steps[0])
    rows = []
    for hf in hfs:
        k = hf.key
        rows.append([hf.family.title, f"`{k}`",
                     f"{_f(rec.series(k + '/kurtosis')[0])} → {_f(rec.last(k + '/kurtosis'))}",
                     f"{_f(rec.series(k + '/max_abs')[0])} → {_f(rec.last(k + '/max_abs'))}",
                     f"{_f(rec.series(k + '/max_median_ratio')[0])} → "
                     f"{_f(rec.last(k + '/max_median_ratio'))}"])
    out = ["## 1. Distributions over training", "",
           "![histograms](hist_over_training.png)", "",
           "Each family is drawn for its tensor with the largest kurtosis at the last step. "
           f"Step {first} → step {rec.last_step} (a Gaussian has kurtosis 3):", "",
           md_table(["family", "tensor", "kurtosis", "max abs", "max abs / median abs"], rows),
           ""]
    out += ["## 2. Animations", ""]
    if gifs:
        out += [f"- [{p.stem.removeprefix('hist_')}]({p.name})" for p in gifs]
        out += ["", f"{n_frames} frames each: probe steps, evenly spread when there are more "
                f"than {N_GIF_FRAMES} (the first step drawn in grey)."]
    else:
        out.append("Not written (--no-animation).")
    return out + [""]


def _section_outliers(rec: Records, fits: Dict[int, EmergenceFit]) -> List[str]:
    rows = []
    for i, f in fits.items():
        peak = ("no peak" if f.peak_t is None else f"{f.peak_t:.4g}"
                + (" (beyond the last step)" if f.peak_t > rec.last_step else ""))
        if f.ok:
            rows.append([f"block {i}", f.A, f.lam, f.gamma, f.t0, f.K, f.r2, peak, f.message])
        else:
            rows.append([f"block {i}"] + ["–"] * 7 + [f.message])
    r_last = [rec.last(f"massive/block_{i}/resid_out/ratio") for i in fits]
    r_first = [rec.series(f"massive/block_{i}/resid_out/ratio")[0] for i in fits]
    k_last = [rec.last(f"act/block_{i}/resid_out/kurtosis") for i in fits]
    r2 = [f.r2 for f in fits.values() if f.ok]
    return ["## 3. Outlier ratio r per layer over training", "",
            "![outliers](outliers_over_training.png)", "",
            f"r = max|h| / median|h| of the residual stream out of each block, step "
            f"{int(rec.steps[0])} → {rec.last_step}: "
            + ", ".join(f"block {i} {_f(a)} → {_f(b)}" for i, a, b in
                        zip(fits, r_first, r_last)) + ".",
            "Kurtosis at the last step: "
            + ", ".join(f"block {i} {_f(k)}" for i, k in zip(fits, k_last)) + ".",
            f"Emergence fits f(t) = A·exp(−λx)·log x + K, x = γt + t₀ (t in steps): "
            f"{len(r2)} of {len(fits)} layers fitted, mean R² "
            f"{_f(float(np.mean(r2)) if r2 else None)}.",
            "", md_table(["layer", "A", "λ", "γ", "t₀", "K", "R²", "peak step", "fit"], rows), ""]


def _section_ec(rec: Records) -> List[str]:
    c = ec_counts(rec)
    n = c["n_projections"]
    if not n:
        return ["## 4. Energy vs correlation (C = E ⊙ R)", "", "No ec/ records.", ""]
    return ["## 4. Energy vs correlation (C = E ⊙ R)", "",
            "![E vs R](energy_vs_correlation.png)", "",
            f"At step {rec.last_step}: |C| correlates more with |R| than with E in "
            f"{c['pearson_R_wins']} of {n} projections (median Pearson {_f(c['median_pearson_R'])}"
            f" with |R| vs {_f(c['median_pearson_E'])} with E).",
            f"C's top-|C| entries are more often top entries of |R| than of E in "
            f"{c['top_overlap_R_wins']} of {n} projections, of E more often in "
            f"{c['top_overlap_E_wins']} (median overlap {_f(c['median_top_overlap_R'])} for |R| "
            f"vs {_f(c['median_top_overlap_E'])} for E; chance "
            f"{_f(c['median_chance_overlap'])}).",
            f"Scatter: {', '.join(ec_scatter_projections(rec)) or 'no samples'}.", ""]


def _section_norm(rec: Records, summ: Dict[str, Any]) -> List[str]:
    norms = rec.names("norm", "compression")
    rows = [[m] + [rec.last(f"norm/{m}/{k}") for k in
                   ("max_rms_in", "max_rms_normed", "max_rms_scaled", "compression",
                    "reamplification")] for m in norms]
    med = "; ".join(f"{k}: compression {_f(v['median_compression'])}, reamplification "
                    f"{_f(v['median_reamplification'])}" for k, v in summ["norm"].items())
    return [f"## 5. Norm compression ({rec.model.get('norm', '?')})", "",
            "![norms](norm_compression.png)", "",
            f"Medians at step {rec.last_step}: {med}.", "",
            md_table(["norm layer", "max/RMS before", "normalised", "scaled", "compression",
                      "reamplification"], rows), ""]


def _section_swiglu(rec: Records, summ: Dict[str, Any]) -> List[str]:
    if not summ["swiglu"]:
        return ["## 6. SwiGLU", "", f"Not a SwiGLU model (mlp = {rec.model.get('mlp', '?')}).",
                ""]
    rows = []
    for i, v in summ["swiglu"].items():
        co = rec.series(f"swiglu/block_{i}/coincidence")
        rows.append([f"block {i}", v["coincidence"], float(np.nanmean(co)), v["chance"],
                     v["near_zero_swish"], v["near_zero_gate"]])
    return ["## 6. SwiGLU", "", "![swiglu](swiglu.png)", "",
            f"Coincidence: share of the top-|h| entries of the down-projection input where gate "
            f"and up are both in their own top k; chance = (k/NH)². Near zero: |v| < "
            f"0.01·RMS(v). Last step {rec.last_step}, coincidence also averaged over steps:", "",
            md_table(["layer", "coincidence", "mean over steps", "chance", "near-zero swish",
                      "near-zero gate"], rows), ""]


def _section_massive(rec: Records, summ: Dict[str, Any]) -> List[str]:
    rows = []
    for s in rec.names("massive", "ratio"):
        r = rec.series(f"massive/{s}/ratio")
        j = int(np.nanargmax(r)) if np.isfinite(r).any() else 0
        rows.append([s, int(np.nanmax(np.r_[rec.series(f"massive/{s}/count"), 0])),
                     rec.last(f"massive/{s}/count"), rec.last(f"massive/{s}/ratio"),
                     r[j], int(rec.steps[j])])
    m = summ["massive"]
    if m["max_count"] == 0:
        verdict = ("No entry passed the absolute rule (|a| > 100 and ≥ 1000× the median |a|) "
                   "at any probe step (expected for small models); the ratio r = max|h| / "
                   "median|h| is tracked instead.")
    else:
        verdict = (f"Up to {m['max_count']} entries passed the absolute rule (|a| > 100 and ≥ "
                   "1000× the median |a|) at one site and step.")
    return ["## 7. Massive activations", "", verdict,
            f"Largest r: {_f(m['max_r'])} at `{m['max_r_site']}`, step {m['max_r_step']}.", "",
            md_table(["residual site", "max count", "count (last)", "r (last)", "max r",
                      "step of max r"], rows), ""]


# ------------------------------------------------------------------------------ the report

def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, out: Optional[Path] = None, animation: bool = True) -> Path:
    """Write report.md and its figures to `out` (default <run_dir>/dynamics); the report's path.

    Raises DynamicsReportError (one line, nothing written) when the run has no dynamics records.
    """
    rec = load_records(run_dir)
    if not rec.hist_paths or rec.last_step not in rec.hist_paths:
        raise DynamicsReportError(f"{run_dir}: dynamics/hist/step_{rec.last_step:07d}.npz is "
                                  "missing; rerun the training command to rewrite the records")
    out = Path(out) if out is not None else rec.run_dir / DYNAMICS
    out.mkdir(parents=True, exist_ok=True)
    fits = emergence_fits(rec)
    summ = _summary(rec, fits)
    hist_steps = [s for s in rec.steps if s in rec.hist_paths]
    hfs = [hf for fam in FAMILIES
           if (hf := hist_family(rec, fam, subsample(hist_steps, N_HIST_STEPS))) is not None]
    _save(fig_hist_over_training(hfs, rec), out / "hist_over_training.png")
    gifs = []
    gif_steps = subsample(hist_steps, N_GIF_FRAMES)
    if animation:
        for fam in FAMILIES:
            hf = hist_family(rec, fam, gif_steps)
            if hf is not None:
                write_hist_gif(hf, rec, out / f"hist_{fam.name}.gif")
                gifs.append(out / f"hist_{fam.name}.gif")
    _save(fig_outliers(rec, fits), out / "outliers_over_training.png")
    if ec_projections(rec):
        _save(fig_energy_vs_correlation(rec), out / "energy_vs_correlation.png")
    if rec.names("norm", "compression"):
        _save(fig_norm_compression(rec), out / "norm_compression.png")
    if summ["swiglu"]:
        _save(fig_swiglu(rec), out / "swiglu.png")
    lines = (_header(rec) + _section_hist(rec, hfs, gifs, len(gif_steps))
             + _section_outliers(rec, fits) + _section_ec(rec) + _section_norm(rec, summ)
             + _section_swiglu(rec, summ)
             + _section_massive(rec, summ))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
