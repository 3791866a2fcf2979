"""The report's Markdown: a header and one section per study."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from analysis.emergence import EmergenceFit  # noqa: E402
from analysis.dynamics_report.summary import ec_scatter_projections, fmt  # noqa: E402
from analysis.dynamics_report.hist import (HistFamily, N_GIF_FRAMES)  # noqa: E402
from analysis.dynamics_report.records import (Records)  # noqa: E402
from analysis.dynamics_report.summary import (ec_counts)  # noqa: E402


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |"
              for r in rows]
    return "\n".join(lines)


def report_header(rec: Records) -> List[str]:
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


def section_hist(rec: Records, hfs: List[HistFamily], gifs: List[Path],
                  n_frames: int) -> List[str]:
    first = int(rec.steps[0])
    rows = []
    for hf in hfs:
        k = hf.key
        rows.append([hf.family.title, f"`{k}`",
                     f"{fmt(rec.series(k + '/kurtosis')[0])} → {fmt(rec.last(k + '/kurtosis'))}",
                     f"{fmt(rec.series(k + '/max_abs')[0])} → {fmt(rec.last(k + '/max_abs'))}",
                     f"{fmt(rec.series(k + '/max_median_ratio')[0])} → "
                     f"{fmt(rec.last(k + '/max_median_ratio'))}"])
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


def section_outliers(rec: Records, fits: Dict[int, EmergenceFit]) -> List[str]:
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
            + ", ".join(f"block {i} {fmt(a)} → {fmt(b)}" for i, a, b in
                        zip(fits, r_first, r_last)) + ".",
            "Kurtosis at the last step: "
            + ", ".join(f"block {i} {fmt(k)}" for i, k in zip(fits, k_last)) + ".",
            f"Emergence fits f(t) = A·exp(−λx)·log x + K, x = γt + t₀ (t in steps): "
            f"{len(r2)} of {len(fits)} layers fitted, mean R² "
            f"{fmt(float(np.mean(r2)) if r2 else None)}.",
            "", md_table(["layer", "A", "λ", "γ", "t₀", "K", "R²", "peak step", "fit"], rows), ""]


def section_ec(rec: Records) -> List[str]:
    c = ec_counts(rec)
    n = c["n_projections"]
    if not n:
        return ["## 4. Energy vs correlation (C = E ⊙ R)", "", "No ec/ records.", ""]
    return ["## 4. Energy vs correlation (C = E ⊙ R)", "",
            "![E vs R](energy_vs_correlation.png)", "",
            f"At step {rec.last_step}: |C| correlates more with |R| than with E in "
            f"{c['pearson_R_wins']} of {n} projections (median Pearson {fmt(c['median_pearson_R'])}"
            f" with |R| vs {fmt(c['median_pearson_E'])} with E).",
            f"C's top-|C| entries are more often top entries of |R| than of E in "
            f"{c['top_overlap_R_wins']} of {n} projections, of E more often in "
            f"{c['top_overlap_E_wins']} (median overlap {fmt(c['median_top_overlap_R'])} for |R| "
            f"vs {fmt(c['median_top_overlap_E'])} for E; chance "
            f"{fmt(c['median_chance_overlap'])}).",
            f"Scatter: {', '.join(ec_scatter_projections(rec)) or 'no samples'}.", ""]


def section_norm(rec: Records, summ: Dict[str, Any]) -> List[str]:
    norms = rec.names("norm", "compression")
    rows = [[m] + [rec.last(f"norm/{m}/{k}") for k in
                   ("max_rms_in", "max_rms_normed", "max_rms_scaled", "compression",
                    "reamplification")] for m in norms]
    med = "; ".join(f"{k}: compression {fmt(v['median_compression'])}, reamplification "
                    f"{fmt(v['median_reamplification'])}" for k, v in summ["norm"].items())
    return [f"## 5. Norm compression ({rec.model.get('norm', '?')})", "",
            "![norms](norm_compression.png)", "",
            f"Medians at step {rec.last_step}: {med}.", "",
            md_table(["norm layer", "max/RMS before", "normalised", "scaled", "compression",
                      "reamplification"], rows), ""]


def section_swiglu(rec: Records, summ: Dict[str, Any]) -> List[str]:
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


def section_massive(rec: Records, summ: Dict[str, Any]) -> List[str]:
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
            f"Largest r: {fmt(m['max_r'])} at `{m['max_r_site']}`, step {m['max_r_step']}.", "",
            md_table(["residual site", "max count", "count (last)", "r (last)", "max r",
                      "step of max r"], rows), ""]
