"""The numbers the report states and a script turns into verdicts (`dynamics_summary`):
emergence fits, E ⊙ R counts, norm compression, massive activations (no matplotlib)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from analysis.emergence import EmergenceFit, fit_emergence  # noqa: E402
from analysis.dynamics_report.records import (Records, load_records)  # noqa: E402


def finite_median(values: Sequence[float]) -> float:
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
        **{f"median_{k}": finite_median(v) for k, v in get.items()},
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
    return summary_of(rec, emergence_fits(rec))


def summary_of(rec: Records, fits: Dict[int, EmergenceFit]) -> Dict[str, Any]:
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
    return finite_median([rec.last(f"ec/{n}/top_overlap_R") - rec.last(f"ec/{n}/top_overlap_E")
                           for n in names])


def ec_pearson_e_gain(rec: Records) -> float:
    """Median over projections of Pearson(|C|, E) at the last step minus at the first: how much
    more of |C| the energy E explains after training than at init (where norms are nearly
    equal, E nearly flat, and |C| follows |R| by construction)."""
    return finite_median([rec.last(f"ec/{n}/pearson_E") - rec.series(f"ec/{n}/pearson_E")[0]
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
        "swiglu_coincidence": _num(finite_median([v["coincidence"] for v in sw.values()
                                                   if v["coincidence"] is not None]))
        if sw else None,
        "swiglu_chance": _num(finite_median([v["chance"] for v in sw.values()
                                              if v["chance"] is not None])) if sw else None,
        "emergence_r2_mean": _num(float(np.mean(r2))) if r2 else None,
        "r_growth": _num(finite_median([x[-1] / x[0] for x in r if len(x)])),
    }


def _nested_summary(rec: Records, fits: Dict[int, EmergenceFit]) -> Dict[str, Any]:
    L = rec.n_layers
    norms = rec.names("norm", "compression")
    norm = {}
    for kind in sorted({norm_kind(n) for n in norms}) + ["all"]:
        sel = [n for n in norms if kind in ("all", norm_kind(n))]
        norm[kind] = {f"median_{k}": _num(finite_median([rec.last(f"norm/{n}/{k}")
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
            "weight_median": _num(finite_median(
                [rec.last(f"weight/{p}/kurtosis") for p in weight_matrices(rec)])),
            "resid_median": _num(finite_median(
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


def ec_scatter_projections(rec: Records) -> List[str]:
    """The last block's MLP down projection (where SwiGLU outliers land) and the unembedding
    (the logits), when recorded."""
    arrays = rec.arrays(rec.last_step)
    want = [f"block_{rec.n_layers - 1}/mlp/down", "unembed"]
    return [p for p in want if f"ec_sample/{p}" in arrays]


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"
