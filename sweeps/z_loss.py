"""z-loss (paper Fig. 3-4, §3.1.2): no weight decay, z-loss 0 vs 1e-4, from the §2.1 baseline.

The paper: "Another instability reported by researchers training large models is divergence in
the output logits from the log probabilities." With p_i = e^{y_i}/Z: "This instability occurs
when the logits diverge and become very negative, as illustrated in Figure 4 for a 2.4M
parameter model at learning rate 0.1. In contrast to the attention logit growth instability,
this divergence occurs towards the end of training. The mitigation proposed by Chowdhery et al.
is to encourage log Z to remain close to zero. They add an auxiliary loss log² Z, referred to as
z-loss, with coefficient 1e-4." "We find that instability related to output logit divergence
occurs in models with no weight decay regardless of scale, and z-loss resolves this
instability." Fig. 3's caption: "Models in this experiment have qk-layernorm."

Setup: the scale's baseline (qk-layernorm, z-loss 1e-4, independent decay) with no weight decay
(`optim.weight_decay=0`) and `optim.z_loss` 0 vs 1e-4, in two parts:
- `main` (Fig. 3): the scale's sizes × LRs, the scale's run length;
- `late` (Fig. 4): the smallest size at the paper's LR 0.1, trained 10× the scale's steps (never
  more than the paper's 1e5), warm-up 5% of that run, log Z probed 20 times. The divergence
  "occurs towards the end of training", which a proxy's few hundred steps do not reach.

The statistic. log p_i = y_i − log Z: the logits "become very negative" when log Z falls
(Z = Σ e^{y_i} shrinks). At init the logits are near 0 and log Z ≈ ln V. Per run (mean log Z
over the held-out probe batch, `logits/log_z_mean`), in units of |log Z at init| so the cut is
the same for any vocabulary:
- drop D = (log Z at init − log Z at the end) / |log Z at init|: D > 0 means log Z fell below
  its value at init, the paper's direction (D > 1: below 0);
- late drop F = (log Z at 75% of the run − log Z at the end) / |log Z at init|: F > 0 means it
  was still falling over the last quarter ("towards the end of training").
A log Z that rises instead (the logits drifting up) is not the paper's instability and counts
against the claim; the sign of the final log Z is reported.

Verdict (intervals over seeds):
- main (decides false / inconclusive), on `late`: without z-loss D > 0 and F > 0, and z-loss
  keeps log Z higher (D without − with z-loss > 0, paired by seed); true when all three
  intervals lie above 0, false when one lies at or below 0, else inconclusive;
- required for true, on `main` (Fig. 3): z-loss lowers LR sensitivity at every size (no z-loss −
  z-loss, paired by seed).
D at LR 0.1 is also reported per size of `main` (short runs).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec, lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main, warmup
from sweeps.qk_layernorm import outcome, overall
from proxies.config import LR_KEY

Z = "optim.z_loss"
LOG_Z = "logits/log_z_mean"
CLAIM = ("without weight decay and z-loss the output logits diverge, becoming very negative "
         "(log Z falls from its value at init) towards the end of training; z-loss 1e-4 "
         "prevents it and lowers LR sensitivity at every size")
FIG4_LR = 0.1  # "a 2.4M parameter model at learning rate 0.1"
PAPER_STEPS = 100_000  # the paper's run length: the late part never trains longer
LATE_FACTOR = 10  # the late part trains this many times the scale's steps
LATE_PROBES = 20  # log Z probes over the late run (5 in its last quarter)
LATE_SHARE = 0.25  # "towards the end of training": the last quarter of the run
NO_DECAY = {"optim": {"weight_decay": 0.0}}
Z_AXIS = {"optim": {"z_loss": [0.0, 1e-4]}}


def late_steps(s: ScaleSpec) -> int:
    return min(LATE_FACTOR * int(s.base["train"]["steps"]), PAPER_STEPS)


def late_train(s: ScaleSpec) -> Dict[str, Any]:
    """The late run's length and logging: 20 probes, 4 evals, 2 checkpoints; none of it when the
    scale already trains the paper's length (then the late runs are `main`'s own)."""
    steps = late_steps(s)
    if steps == s.base["train"]["steps"]:
        return {}
    every = max(1, steps // LATE_PROBES)
    return {"train": {"steps": steps, "log_every": every, "eval_every": max(1, steps // 4),
                      "checkpoint_every": max(1, steps // 2)},
            "optim": {"warmup_steps": warmup(steps)}}


def parts(s: ScaleSpec) -> List[Part]:
    late_cfg = late_train(s)
    return [Part("main", {**NO_DECAY, "sweep": {"lrs": s.lrs, "sizes": s.sizes, "axes": Z_AXIS}}),
            Part("late", {"train": late_cfg.get("train", {}),
                          "optim": {**NO_DECAY["optim"], **late_cfg.get("optim", {})},
                          "sweep": {"lrs": [FIG4_LR], "sizes": s.sizes[:1], "axes": Z_AXIS}})]


def z_label(v: Any) -> str:
    return f"z-loss {v:g}" if v else "no z-loss"


# ------------------------------------------------------------------------- log Z per run

def log_z_points(c: pd.Series, steps: int) -> Tuple[float, float, float]:
    """(log Z at init, at the last probe, at the last probe at or before 75% of the run) of one
    run's log Z curve (index: step). The late value is NaN unless the run lived past 75% of its
    steps (a run stopped earlier has no late phase to judge)."""
    c = c.dropna()
    if c.empty or c.index[0] != 0:
        return float("nan"), float("nan"), float("nan")
    cut = (1 - LATE_SHARE) * steps
    before = c[c.index <= cut]
    late = float(before.iloc[-1]) if c.index[-1] > cut and len(before) else float("nan")
    return float(c.iloc[0]), float(c.iloc[-1]), late


def with_log_z(df: pd.DataFrame, steps: int) -> pd.DataFrame:
    """`df` with columns log_z_init, log_z_end, log_z_late (from each run's metrics unless the
    table has them) and the statistics D (`log_z_drop`) and F (`log_z_late_drop`)."""
    df = df.copy()
    if not {"log_z_init", "log_z_end", "log_z_late"} <= set(df.columns):
        pts = [log_z_points(P.curve(r, LOG_Z), steps) for _, r in df.iterrows()]
        df["log_z_init"], df["log_z_end"], df["log_z_late"] = (
            np.array(pts, float).reshape(-1, 3).T if pts else ([], [], []))
    z0 = df["log_z_init"].abs()
    df["log_z_drop"] = (df["log_z_init"] - df["log_z_end"]) / z0
    df["log_z_late_drop"] = (df["log_z_late"] - df["log_z_end"]) / z0
    return df


def per_seed(df: pd.DataFrame, column: str) -> pd.Series:
    """`column` by seed (mean over the rows of a seed: one run each in `late`)."""
    return P.with_seed(df).groupby(P.SEED)[column].mean()


def judge_late(late: pd.DataFrame) -> Tuple[Reproduced, str, Dict[str, Any]]:
    """The main claim on the late runs: log Z falling without z-loss (D > 0, F > 0) and z-loss
    keeping it higher (D without − with > 0, paired by seed)."""
    off, on = late[late[Z] == 0], late[late[Z] > 0]
    ratio, growth = per_seed(off, "log_z_drop"), per_seed(off, "log_z_late_drop")
    ratio_on = per_seed(on, "log_z_drop")
    seeds = ratio.index.intersection(ratio_on.index)
    e_ratio, e_growth = P.interval(ratio.to_numpy()), P.interval(growth.to_numpy())
    e_paired = P.interval((ratio[seeds] - ratio_on[seeds]).to_numpy())
    parts_r = [outcome(e) for e in (e_ratio, e_growth, e_paired)]
    r = ("false" if "false" in parts_r else
         "true" if all(x == "true" for x in parts_r) else "inconclusive")
    sign = {1.0: "positive", -1.0: "negative"}.get(
        float(np.sign(off["log_z_end"].mean())) if len(off) else 0.0, "none")
    why = (f"without z-loss the drop of log Z from init D = {e_ratio} ({outcome(e_ratio)}: > 0 "
           f"is a fall; final log Z {sign}, the paper's went very negative), late drop "
           f"F = {e_growth} ({outcome(e_growth)}); z-loss keeps log Z higher by {e_paired} in D "
           f"({outcome(e_paired)})")
    measured = {
        "late: mean log Z init → end, no z-loss (seed means)": fmt_init_end(off),
        "late: mean log Z init → end, z-loss 1e-4 (seed means)": fmt_init_end(on),
        "late: sign of the final log Z without z-loss": sign,
        "late: D (drop of log Z from init) without z-loss": str(e_ratio),
        "late: F (drop over the last quarter) without z-loss": str(e_growth),
        "late: D without − with z-loss": str(e_paired)}
    return r, why, measured


def fmt_init_end(df: pd.DataFrame) -> str:
    if df.empty:
        return "no runs"
    return f"{df['log_z_init'].mean():.2f} → {df['log_z_end'].mean():.2f}"


def short_run_log_z(df: pd.DataFrame) -> Dict[str, str]:
    """Per size of `main`, at the LR nearest 0.1: D without / with z-loss (seed means)."""
    lr = min(df[LR_KEY].unique(), key=lambda x: abs(np.log10(x / FIG4_LR)))
    at = df[df[LR_KEY] == lr]
    out = {}
    for n, g in at.groupby("n_params_nonembed", sort=True):
        off, on = g[g[Z] == 0]["log_z_drop"].mean(), g[g[Z] > 0]["log_z_drop"].mean()
        out[P.size_label(n)] = f"{off:+.3f} / {on:+.3f}"
    return out


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    late = with_log_z(t["late"], late_steps(s))
    grid = with_log_z(t["main"], int(s.base["train"]["steps"]))
    late_r, late_why, measured = judge_late(late)
    stats = P.series_stats(grid, [Z])
    effects = P.paired_effects(stats, Z, 0.0, 1e-4)  # no z-loss − z-loss
    fig3_r, fig3_why = P.every_size_verdict(effects, "z-loss 1e-4 without weight decay")
    measured.update({
        "main: LR sensitivity no z-loss − z-loss, per size (mean [95% interval])":
            P.fmt_effects(effects),
        "main: LR sensitivity no z-loss → z-loss (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, Z, 0.0, 1e-4)),
        f"main ({s.base['train']['steps']} steps): D at LR ≈ 0.1, no z-loss / z-loss, "
        "per size": short_run_log_z(grid) if len(grid) else {},
        "verdict rule": ("the late runs decide false/inconclusive; true needs Fig. 3's lower "
                         "LR sensitivity at every size")})
    why = (f"late runs ({late_steps(s)} steps, LR {FIG4_LR:g}, "
           f"{P.size_label(late['n_params_nonembed'].max()) if len(late) else '-'}): {late_r}: "
           f"{late_why}; Fig. 3: {fig3_r}: {fig3_why}")
    return overall(late_r, [fig3_r]), why, measured


# --------------------------------------------------------------------------------- figure

def log_z_panel(ax: plt.Axes, late: pd.DataFrame) -> None:
    """Mean log Z over the late runs' training, red without z-loss, blue with; a line per seed;
    dotted: log Z at init (the paper's instability takes log Z far below it)."""
    colour, style = {0.0: "C3", 1e-4: "C0"}, {0.0: "-", 1e-4: "--"}  # dashed: seen if equal
    for _, r in P.with_seed(late).sort_values([Z, P.SEED]).iterrows():
        c = P.curve(r, LOG_Z)
        if not c.empty:
            ax.plot(c.index, c.values, style.get(r[Z], ":"), color=colour.get(r[Z], "gray"),
                    lw=1.2, alpha=0.8)
    if len(late):
        ax.axhline(float(late["log_z_init"].mean()), color="gray", ls=":", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    for z, col in colour.items():
        ax.plot([], [], style[z], color=col, label=z_label(z))
    ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("mean log Z (held-out batch)")
    ax.grid(alpha=0.3, lw=0.5)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, (ax,) = P.comparison_figure(t["main"], Z, [0.0, 1e-4],
                                     lambda v: f"{z_label(v)}, no weight decay",
                                     "z-loss without weight decay (paper Fig. 3-4): LR vs loss, "
                                     "LR sensitivity, log Z late in training", extra=1)
    late = with_log_z(t["late"], late_steps(s)) if len(t["late"]) else t["late"]
    log_z_panel(ax, late)
    size = P.size_label(late["n_params_nonembed"].max()) if len(late) else "-"
    ax.set_title(f"log Z, {size} params, LR {FIG4_LR:g}, {late_steps(s)} steps", fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(Z,), part="main"), sensitivity_vs_params(part="main"),
             PanelSpec("log Z over a long run at LR 0.1", LOG_Z, split=(Z,), part="late")]

RESULT = Result("z_loss", CLAIM, parts, judge, figure, DASHBOARD)

if __name__ == "__main__":
    main(RESULT)
