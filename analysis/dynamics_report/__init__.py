"""The training-dynamics report of one run: `<run_dir>/dynamics/report.md` and its figures.

Reads what the dynamics probes wrote (proxies/rundir.py: dynamics/stats.jsonl, one row of
scalars per probe step, and dynamics/hist/step_*.npz, fixed-edge histograms and E/R samples) and
measures the studies of the paper's "Training-dynamics studies" section: distributions over
training, the max/median ratio r_ℓ,t of the residual stream with its emergence fit
f(t) = A·exp(−λx)·log x + K, x = γt + t₀, C = E ⊙ R (energy vs correlation), norm compression,
SwiGLU coincidence, massive activations. The report states numbers, never verdicts:
`dynamics_summary` returns the headline numbers for a script that turns them into verdicts.

Figures follow one convention: training step on a sequential colour map with a colour bar,
layers on another sequential map (shallow to deep), log axes where values span decades."""

from __future__ import annotations

import importlib
from typing import Any

from analysis.dynamics_report.records import (DynamicsReportError, Records,  # noqa: F401
                                              depth_key, load_records, subsample)
from analysis.dynamics_report.summary import (dynamics_summary, ec_counts,  # noqa: F401
                                              ec_lead, ec_pearson_e_gain, ec_projections,
                                              ec_scatter_projections, emergence_fits,
                                              first_probe, norm_kind, weight_matrices)

# The report's figures need matplotlib; the numbers above do not. Names of the drawing
# modules load them on first use.
_LAZY = {"write": ("write_report",),
         "hist": ("FAMILIES", "Family", "HistFamily", "SignedLogAxis", "fig_hist_over_training",
                  "hist_family", "pick_member", "write_hist_gif"),
         "figures": ("fig_energy_vs_correlation",
                     "fig_norm_compression", "fig_outliers", "fig_swiglu"),
         "markdown": ("md_table",)}


def __getattr__(name: str) -> Any:
    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"analysis.dynamics_report.{module}"), name)
    raise AttributeError(f"module 'analysis.dynamics_report' has no attribute {name!r}")
