"""The early warning scored (ours, beyond the paper): does the monitor (proxies/monitor.py), which
forecasts from the signals the paper names, warn before a run diverges, earlier than the
reactive detectors large trainers use, without warning runs that train?

    python -m sweeps.early_warning scale=laptop|gpu [--dry-run] [Hydra overrides]

The runs: the scale's §2.1 baseline with qk-layernorm off (the paper's attention-logit
instability, Fig 1) and with qk-layernorm and z-loss off (adding output-logit divergence,
Fig 3-4), at the smallest size and the next, over LRs from where runs train to where they
diverge; and Adam ε raised to 1e-3 at the smallest size (the update collapse of Fig 12-13, which
slows training rather than diverging it). Every run records its monitor's signals each update;
each is replayed (python -m analysis.monitor) with the monitor's defaults and with the reactive
detectors: a loss or gradient-norm z-score above 6 over the last 128 updates (OLMo-core,
MaxText), a loss above 10× the largest seen (Megatron-LM).

Scored: the share of diverged runs the monitor warned before they diverged and before every
reactive detector (`earliest`), and the share of runs that finished without diverging that it
warned (false alarms), each with its exact (Clopper-Pearson) 95% interval over runs. Verdict:
true when the first interval lies above 1/2 and the second below 5%; false when the first lies
below 1/2 or the second above 5%; else inconclusive.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.monitor import (EARLY, RunReplay, draw_signals, earliest, legend_handles,
                              pick_runs, replay_run, score, warned_before)
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, half_decades, main

CLAIM = ("ours: the early warning (forecast from the paper's signals) warns most diverged runs "
         "before they diverge and before the reactive detectors, with at most 5% false alarms")
MOST, FALSE_ALARMS = 0.5, 0.05
EPS_LARGE = 1e-3  # ~ the laptop's first-MLP gradient RMS: updates shrink (adam_eps)
NO_QK = {"model": {"qk_layernorm": False}}
NO_QK_NO_Z = {"model": {"qk_layernorm": False}, "optim": {"z_loss": 0.0}}


def lrs(s: ScaleSpec) -> List[float]:
    """From the scale's third-highest LR (runs train) to 10× its top (runs diverge)."""
    return half_decades(trains(s), 10 * s.lrs[-1])


def trains(s: ScaleSpec) -> float:
    """The scale's third-highest LR (its lowest on a shorter grid)."""
    return s.lrs[-min(3, len(s.lrs))]


def parts(s: ScaleSpec) -> List[Part]:
    return [Part("main", {"sweep": {"lrs": lrs(s), "sizes": s.sizes[:2],
                                    "variants": [NO_QK, NO_QK_NO_Z]}}),
            Part("eps", {"optim": {"eps": EPS_LARGE},
                         "sweep": {"lrs": [trains(s), s.lrs[-1]], "sizes": s.sizes[:1]}})]


def replays(t: Tables) -> List[RunReplay]:
    return [replay_run(Path(row["sweep_dir"]) / row["run_dir"])
            for df in t.values() for _, row in df.iterrows()]


def exact(k: int, n: int) -> Tuple[float, float]:
    """Clopper-Pearson 95% interval of a share k/n (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def fmt_share(k: int, n: int) -> str:
    lo, hi = exact(k, n)
    return (f"{k}/{n} = {k / n:.0%} [{lo:.0%}, {hi:.0%}] (95% Clopper-Pearson, n={n})" if n
            else "no runs")


def verdict(k: int, n: int, f: int, m: int) -> Reproduced:
    """The rule over counts: k of n diverged runs warned earliest, f of m calm runs warned."""
    (k_lo, k_hi), (f_lo, f_hi) = exact(k, n), exact(f, m)
    if (n and k_hi < MOST) or (m and f_lo > FALSE_ALARMS):
        return "false"
    if n and m and k_lo > MOST and f_hi < FALSE_ALARMS:
        return "true"
    return "inconclusive"


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    rs = replays(t)
    diverged = [r for r in rs if r.diverged_at is not None]
    calm = [r for r in rs if r.diverged_at is None]
    k = sum(earliest(r) for r in diverged)
    f = sum(r.first[EARLY] is not None for r in calm)
    reproduced = verdict(k, len(diverged), f, len(calm))
    table = score(rs)
    by_signal = Counter(min(r.warnings, key=lambda w: w.step).signal
                        for r in calm if r.warnings)
    measured = {
        "diverged runs the monitor warned first": fmt_share(k, len(diverged)),
        "runs that trained and were warned (false alarms)": fmt_share(f, len(calm)),
        "false alarms by the signal that warned first": (
            ", ".join(f"{k}: {v}" for k, v in by_signal.most_common()) or "none"),
        "score per detector": {r["detector"]: (
            f"warned {r['diverged runs warned']} diverged runs before they diverged"
            + ("" if np.isnan(r["median lead (steps)"]) else
               f", median lead {r['median lead (steps)']:.0f} steps "
               f"({r['median lead (share of run)']:.1%} of the run)")
            + f"; false alarms {r['false alarms']}") for _, r in table.iterrows()},
        "verdict rule": (f"true: the first interval above {MOST:.0%} and the second below "
                         f"{FALSE_ALARMS:.0%}; false: the first below {MOST:.0%} or the second "
                         f"above {FALSE_ALARMS:.0%}"),
    }
    why = (f"the monitor warned first on {fmt_share(k, len(diverged))} of the diverged runs; "
           f"false alarms on {fmt_share(f, len(calm))} of the runs that trained")
    return reproduced, why, measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    rs = replays(t)
    table = score(rs)
    pick = pick_runs(rs, 4)
    fig = plt.figure(figsize=(16, 8.5))
    grid = fig.add_gridspec(2, max(4, len(pick)))
    ax_w, ax_f = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_key = fig.add_subplot(grid[0, 2:])
    diverged = [r for r in rs if r.diverged_at is not None]
    calm = [r for r in rs if r.diverged_at is None]
    order = list(table["detector"])
    y = np.arange(len(order))
    for ax, runs, count, title in (
            (ax_w, diverged, lambda r, d: warned_before(r, d),
             f"diverged runs warned before they diverged (n={len(diverged)})"),
            (ax_f, calm, lambda r, d: r.first[d] is not None,
             f"false alarms: runs that trained, warned (n={len(calm)})")):
        for i, d in enumerate(order):
            k = sum(count(r, d) for r in runs)
            lo, hi = exact(k, len(runs))
            share = k / len(runs) if runs else np.nan
            ax.barh(i, share, color="tab:red" if d == EARLY else "grey")
            ax.errorbar(share, i, xerr=[[share - lo], [hi - share]], color="k", capsize=3)
        ax.set_yticks(y, order, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of runs (95% Clopper-Pearson)")
        ax.set_title(title, fontsize=9)
    ax_f.axvline(FALSE_ALARMS, color="tab:red", ls="--", lw=0.8)
    axes = [fig.add_subplot(grid[1, j]) for j in range(len(pick))]
    for ax, r in zip(axes, pick):
        draw_signals(ax, r)
    if axes:
        axes[0].set_ylabel("signal / its limit (1 = the limit)")
    ax_key.axis("off")
    ax_key.legend(*legend_handles(axes), loc="center", fontsize=9,
                  title="below: signals (lines), a warning (vertical, its signal's colour)")
    fig.suptitle("Ours: the early warning (red) against reactive detectors (grey); below, "
                 "signals of a few runs with their warnings", fontsize=10)
    fig.tight_layout()
    return fig


RESULT = Result("early_warning", CLAIM, parts, judge, figure, [], paper="ours")

if __name__ == "__main__":
    main(RESULT)
