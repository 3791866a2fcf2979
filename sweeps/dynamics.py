"""Training dynamics: outliers, massive activations and where they come from, in the modern recipe
(RMSNorm + SwiGLU) beside the classic one (LayerNorm + GELU).

    python -m sweeps.dynamics scale=laptop|gpu [--dry-run] [Hydra overrides]

Trains one model of each recipe long enough for outliers to show, with `dynamics.enabled=true`,
writes each run's `dynamics/report.md` (python -m analysis.dynamics) and judges the findings of
the training-dynamics literature (../shared/spec/paper.md, "Training-dynamics studies"):

- weights stay near-Gaussian while the residual stream turns heavy-tailed;
- the outliers of a matmul C = A·B follow the correlation R (cosines), not the energy E (norms);
- normalisation compresses outliers, the learned scale re-amplifies chosen channels;
- SwiGLU: down-projection-input outliers sit where gate and up outliers coincide;
- the outlier ratio r = max|h| / median|h| grows over training in a way the emergence law
  f(t) = A·exp(−λx)·log x + K, x = γt + t₀ fits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np

from analysis.dashboard import PanelSpec
from sweeps.core import SPECS, Part, Result, ScaleSpec, Tables, main, size

MODERN = {"model": {"norm": "rmsnorm", "mlp": "swiglu"}}
CLASSIC = {"model": {"norm": "layernorm", "mlp": "gelu"}}
CLAIM = ("weights stay near-Gaussian while activations turn heavy-tailed; matmul outliers follow "
         "R not E; norms compress outliers and their scale re-amplifies some channels; SwiGLU "
         "outliers sit where gate and up outliers coincide; the outlier ratio's growth fits the "
         "emergence law")

# Per scale: model size, LR, steps and probe interval. Long enough for the residual stream's
# outliers to grow (the paper scripts' 200 laptop steps are not).
RUNS: Dict[str, Dict[str, Any]] = {
    "tiny": {"size": size(32, 2, 16), "lr": 1e-2, "steps": 8, "every": 2, "probe_batch": 2},
    "laptop": {"size": size(128, 4), "lr": 3e-3, "steps": 2000, "every": 100, "probe_batch": 8},
    "gpu": {"size": size(768, 6, 64), "lr": 1e-3, "steps": 10_000, "every": 250,
            "probe_batch": 8},
    "paper": {"size": size(1024, 12, 64), "lr": 1e-3, "steps": 100_000, "every": 2500,
              "probe_batch": 8},
}


def scale_of(s: ScaleSpec) -> str:
    return next(k for k, v in SPECS.items() if v is s)


def parts(s: ScaleSpec) -> List[Part]:
    r = RUNS[scale_of(s)]
    steps = r["steps"]
    return [Part("main", {
        "train": {"steps": steps, "log_every": max(1, r["every"] // 2),
                  "eval_every": max(1, steps // 4), "checkpoint_every": max(1, steps // 4)},
        "dynamics": {"enabled": True, "every": r["every"], "batch_size": r["probe_batch"]},
        "sweep": {"lrs": [r["lr"]], "sizes": [r["size"]], "variants": [MODERN, CLASSIC],
                  "analysis": False}})]


def recipe(row: Any) -> str:
    return "RMSNorm + SwiGLU" if row["model.mlp"] == "swiglu" else "LayerNorm + GELU"


def run_dirs(t: Tables) -> Dict[str, Path]:
    df = t["main"]
    return {recipe(r): Path(os.path.normpath(Path(r["sweep_dir"]) / r["run_dir"]))
            for _, r in df.iterrows()}


def summaries(t: Tables) -> Dict[str, Dict[str, Any]]:
    """Each run's headline numbers (analysis.dynamics_report.summarize), its report written."""
    from analysis.dynamics_report import summarize, write_report
    out = {}
    for name, d in run_dirs(t).items():
        write_report(d, animation=True)
        out[name] = summarize(d)
    return out


def verdict(flags: List[bool]) -> str:
    if flags and all(flags):
        return "true"
    return "false" if flags and not any(flags) else "inconclusive"


def judge(t: Tables, s: ScaleSpec) -> Tuple[str, str, Dict[str, Any]]:
    sums = summaries(t)
    findings: Dict[str, Tuple[str, str]] = {}
    for name, sm in sums.items():
        findings.update({f"{name}: {k}": v for k, v in judge_run(sm).items()})
    measured = {k: f"{v}: {why}" for k, (v, why) in findings.items()}
    flags = [v == "true" for v, _ in findings.values() if v != "inconclusive"]
    n_true = sum(v == "true" for v, _ in findings.values())
    overall = verdict(flags) if len(flags) == len(findings) else "inconclusive"
    missed = [f"{k} ({v})" for k, (v, _) in findings.items() if v != "true"]
    why = f"{n_true} of {len(findings)} findings reproduced" + (
        f"; not: {', '.join(missed)}" if missed else "")
    return overall, why, measured


def judge_run(sm: Dict[str, Any]) -> Dict[str, Tuple[str, str]]:
    """Finding -> (true | false | inconclusive, the numbers) for one run's summary."""
    out: Dict[str, Tuple[str, str]] = {}
    wk, rk = sm.get("weight_kurtosis_median"), sm.get("resid_kurtosis_median")
    if wk is not None and rk is not None:
        out["heavy tails"] = ("true" if wk < 4 and rk > 2 * wk else "false",
                              f"kurtosis of weights {wk:.2f} (Gaussian 3) vs residual stream "
                              f"{rk:.2f}, medians over tensors at the last step")
    pe, pt, n = sm.get("r_beats_e_pearson"), sm.get("r_beats_e_top"), sm.get("n_projections")
    if pe is not None and n:
        out["outliers follow R"] = ("true" if pe > 0.5 and pt > 0.5 else
                                    "false" if pe < 0.5 and pt < 0.5 else "inconclusive",
                                    f"|C| correlates more with |R| than with E in {pe:.0%} of "
                                    f"{n} projections; C's top entries are top-R more often "
                                    f"than top-E in {pt:.0%}")
    comp, ream = sm.get("compression_median"), sm.get("reamplification_max")
    if comp is not None:
        # A 10% change of the dynamic range (max/RMS) counts; at init both ratios are ~1.
        out["norm compresses, scale re-amplifies"] = (
            "true" if comp > 1.1 and ream is not None and ream > 1.1 else "false",
            f"median compression (max/RMS before ÷ after normalising) {comp:.2f}, largest "
            f"re-amplification by the learned scale {ream:.2f}")
    co, ch = sm.get("swiglu_coincidence"), sm.get("swiglu_chance")
    if co is not None:
        out["SwiGLU coincidence"] = ("true" if co > 10 * max(ch, 1e-12) else "false",
                                     f"share of down-input top outliers where gate and up are "
                                     f"both top {co:.3f} vs {ch:.2g} by chance (median over "
                                     "layers)")
    r2 = sm.get("emergence_r2_mean")
    if r2 is not None:
        grew = sm.get("r_growth")
        out["emergence law"] = (
            "true" if r2 > 0.9 and grew is not None and grew > 1.5 else
            "inconclusive" if grew is not None and grew <= 1.5 else "false",
            f"mean R² of the fits over layers {r2:.2f}; r grew {grew:.1f}× from first to last "
            "probe (median over layers)" if grew is not None else f"mean R² {r2:.2f}")
    return out


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    from proxies.rundir import read_dynamics
    dirs = run_dirs(t)
    fig, axs = plt.subplots(1, len(dirs), figsize=(6 * len(dirs), 4.2), squeeze=False,
                            sharey=True)
    for ax, (name, d) in zip(axs[0], sorted(dirs.items())):
        rows = read_dynamics(d)
        steps = np.array([r["step"] for r in rows])
        layers = sorted({k.split("/")[1] for r in rows for k in r
                         if k.startswith("massive/block_") and k.endswith("resid_out/ratio")},
                        key=lambda b: int(b.split("_")[1]))
        cmap = plt.get_cmap("viridis")
        for j, b in enumerate(layers):
            r = [row.get(f"massive/{b}/resid_out/ratio") for row in rows]
            ax.plot(steps, [np.nan if v is None else v for v in r], "o-", ms=3,
                    color=cmap(j / max(1, len(layers) - 1)), label=f"block {b.split('_')[1]}")
        ax.set(xlabel="step", title=name)  # r spans well under a decade: a linear axis
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axs[0][0].set_ylabel("r = max|h| / median|h|")
    fig.suptitle("Outlier ratio r of the residual stream out of each block, over training "
                 "(per-run details: <run>/dynamics/report.md)", fontsize=11)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [PanelSpec("residual-stream max / median per layer over training",
                       "act/max_median_ratio", layers=True, split=("model.norm", "model.mlp"))]

RESULT = Result("dynamics", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
