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

The statistic: the output logits themselves (`logits/mean`, the mean logit over the held-out
probe batch), as the paper's Fig. 4 plots them. Cross-entropy is shift-invariant, so log Z can
rise while the logits fall; the logits are what "become very negative". Per run, in nats:
- drift M = mean logit at the end − at init (< 0: the logits fell, the paper's direction);
- late drift M_late = mean logit at the end − at 75% of the run (< 0: still falling over the
  last quarter, "towards the end of training").
Reported beside them, each with its interval: log Z's drop from init in units of |log Z at init|
(D > 0: log Z fell), and the final loss (diverged runs at the loss at init), per arm and paired.

Verdict (intervals over seeds):
- main (decides false / inconclusive), on `late`: without z-loss M < 0 and M_late < 0, and
  z-loss keeps the mean logit higher (M with − without z-loss > 0, paired by seed); true when
  all three intervals are on the claimed side of 0, false when one is wholly on the other side,
  else inconclusive;
- required for true, on `main` (Fig. 3): z-loss lowers LR sensitivity at every size (no z-loss −
  z-loss, paired by seed).
M at LR 0.1 is also reported per size of `main` (short runs).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec, lr_vs_loss, sensitivity_vs_params
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main, warmup
from sweeps.verdicts import overall
from analysis.sensitivity import counted_loss
from proxies.config import LR_KEY
from proxies.metric_names import LOG_Z_MEAN as LOG_Z, LOGITS_MEAN as MEAN_LOGIT

Z = "optim.z_loss"
CLAIM = ("without weight decay and z-loss the output logits diverge, becoming very negative "
         "(the mean output logit falls from its value at init) towards the end of training; "
         "z-loss 1e-4 "
         "prevents it and lowers LR sensitivity at every size")
FIG4_LR = 0.1  # "a 2.4M parameter model at learning rate 0.1"
PAPER_STEPS = 100_000  # the paper's run length: the late part never trains longer
LATE_FACTOR = 10  # the late part trains this many times the scale's steps
LATE_PROBES = 20  # logit probes over the late run (5 in its last quarter)
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


# ------------------------------------------------------------ the logits and log Z per run

CURVES = {"mean_logit": MEAN_LOGIT, "log_z": LOG_Z}  # column prefix -> the run's metric


def curve_points(c: pd.Series, steps: int) -> Tuple[float, float, float]:
    """(value at init, at the last probe, at the last probe at or before 75% of the run) of one
    run's curve (index: step). The late value is NaN unless the run lived past 75% of its steps
    (a run stopped earlier has no late phase to judge)."""
    c = c.dropna()
    if c.empty or c.index[0] != 0:
        return float("nan"), float("nan"), float("nan")
    cut = (1 - LATE_SHARE) * steps
    before = c[c.index <= cut]
    late = float(before.iloc[-1]) if c.index[-1] > cut and len(before) else float("nan")
    return float(c.iloc[0]), float(c.iloc[-1]), late


def with_logit_stats(df: pd.DataFrame, steps: int) -> pd.DataFrame:
    """`df` with `<prefix>_init/_end/_late` for the mean logit and log Z (from each run's metrics
    unless the table has them), the drifts M (`logit_drift`) and M_late (`logit_late_drift`),
    log Z's drop D (`log_z_drop`) and the counted final loss (`loss`)."""
    df = df.copy()
    for prefix, metric in CURVES.items():
        cols = [f"{prefix}_{k}" for k in ("init", "end", "late")]
        if not set(cols) <= set(df.columns):
            pts = [curve_points(P.curve(r, metric), steps) for _, r in df.iterrows()]
            df[cols[0]], df[cols[1]], df[cols[2]] = (
                np.array(pts, float).reshape(-1, 3).T if pts else ([], [], []))
    df["logit_drift"] = df["mean_logit_end"] - df["mean_logit_init"]
    df["logit_late_drift"] = df["mean_logit_end"] - df["mean_logit_late"]
    df["log_z_drop"] = (df["log_z_init"] - df["log_z_end"]) / df["log_z_init"].abs()
    df["loss"] = counted_loss(df)[0] if len(df) else []
    return df


def per_seed(df: pd.DataFrame, column: str) -> pd.Series:
    """`column` by seed (mean over the rows of a seed: one run each in `late`)."""
    return P.with_seed(df).groupby(P.SEED)[column].mean()


def paired(off: pd.DataFrame, on: pd.DataFrame, column: str) -> V.Effect:
    """`column` with z-loss − without, paired by seed."""
    a, b = per_seed(on, column), per_seed(off, column)
    seeds = a.index.intersection(b.index)
    return V.interval((a[seeds] - b[seeds]).astype(float))


def judge_late(late: pd.DataFrame) -> Tuple[Reproduced, str, Dict[str, Any]]:
    """The main claim on the late runs: without z-loss the mean logit falls (M < 0) and is still
    falling late (M_late < 0); z-loss keeps it higher (M with − without > 0, paired by seed)."""
    off, on = late[late[Z] == 0], late[late[Z] > 0]
    drift = V.interval(per_seed(off, "logit_drift"))
    late_drift = V.interval(per_seed(off, "logit_late_drift"))
    higher = paired(off, on, "logit_drift")
    verdicts = [V.below(drift, parts=3), V.below(late_drift, parts=3),
                V.above(higher, parts=3)]
    why = (f"without z-loss the mean logit drifts {drift} nats from init ({verdicts[0]}: < 0 is "
           f"the paper's fall), {late_drift} over the last quarter ({verdicts[1]}); z-loss keeps "
           f"it higher by {higher} ({verdicts[2]})")
    measured = {
        "late: mean logit init → end (seed means)": {
            z_label(0.0): fmt_init_end(off, "mean_logit"), z_label(1e-4): fmt_init_end(on, "mean_logit")},
        "late: M, drift of the mean logit from init (nats)": {
            z_label(0.0): drift, z_label(1e-4): V.interval(per_seed(on, "logit_drift"))},
        "late: M_late, drift over the last quarter, no z-loss": late_drift,
        "late: M with − without z-loss": higher,
        "late: log Z init → end (seed means)": {
            z_label(0.0): fmt_init_end(off, "log_z"), z_label(1e-4): fmt_init_end(on, "log_z")},
        "late: D, drop of log Z from init / |log Z at init| (reported)": {
            z_label(0.0): V.interval(per_seed(off, "log_z_drop")),
            z_label(1e-4): V.interval(per_seed(on, "log_z_drop"))},
        "late: final loss with − without z-loss (reported)": paired(off, on, "loss")}
    return V.all_of(verdicts), why, measured


def fmt_init_end(df: pd.DataFrame, prefix: str) -> str:
    if df.empty:
        return "no runs"
    return f"{df[f'{prefix}_init'].mean():.2f} → {df[f'{prefix}_end'].mean():.2f}"


def short_run_drift(df: pd.DataFrame) -> Dict[str, str]:
    """Per size of `main`, at the LR nearest 0.1: M without / with z-loss (seed means)."""
    lr = min(df[LR_KEY].unique(), key=lambda x: abs(np.log10(x / FIG4_LR)))
    at = df[df[LR_KEY] == lr]
    out = {}
    for n, g in at.groupby("n_params_nonembed", sort=True):
        off, on = g[g[Z] == 0]["logit_drift"].mean(), g[g[Z] > 0]["logit_drift"].mean()
        out[P.size_label(n)] = f"{off:+.2f} / {on:+.2f}"
    return out


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    late = with_logit_stats(t["late"], late_steps(s))
    grid = with_logit_stats(t["main"], int(s.base["train"]["steps"]))
    late_r, late_why, measured = judge_late(late)
    stats = P.series_stats(grid, [Z])
    effects = P.paired_effects(stats, Z, 0.0, 1e-4)  # no z-loss − z-loss
    fig3_r, fig3_why = V.every_size_verdict(effects, "z-loss 1e-4 without weight decay")
    measured.update({
        "main: LR sensitivity no z-loss − z-loss, per size": effects,
        "main: LR sensitivity no z-loss → z-loss (seed means)":
            P.fmt_pairs(P.compare_sensitivity(stats, Z, 0.0, 1e-4)),
        f"main ({s.base['train']['steps']} steps): M at LR ≈ 0.1, no z-loss / z-loss, "
        "per size": short_run_drift(grid) if len(grid) else {},
        "verdict rule": ("the late runs decide false/inconclusive; true needs Fig. 3's lower "
                         "LR sensitivity at every size")})
    why = (f"late runs ({late_steps(s)} steps, LR {FIG4_LR:g}, "
           f"{P.size_label(late['n_params_nonembed'].max()) if len(late) else '-'}): {late_r}: "
           f"{late_why}; Fig. 3: {fig3_r}: {fig3_why}")
    return overall(late_r, [fig3_r]), why, measured


# --------------------------------------------------------------------------------- figure

def curve_panel(ax: plt.Axes, late: pd.DataFrame, prefix: str, ylabel: str) -> None:
    """One probed quantity over the late runs' training, red without z-loss, blue with; a line
    per seed; dotted: its value at init."""
    colour, style = {0.0: "C3", 1e-4: "C0"}, {0.0: "-", 1e-4: "--"}  # dashed: seen if equal
    for _, r in P.with_seed(late).sort_values([Z, P.SEED]).iterrows():
        c = P.curve(r, CURVES[prefix])
        if not c.empty:
            ax.plot(c.index, c.values, style.get(r[Z], ":"), color=colour.get(r[Z], "gray"),
                    lw=1.2, alpha=0.8)
    if len(late):
        ax.axhline(float(late[f"{prefix}_init"].mean()), color="gray", ls=":", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    for z, col in colour.items():
        ax.plot([], [], style[z], color=col, label=z_label(z))
    ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, lw=0.5)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, (ax_m, ax_z) = P.comparison_figure(t["main"], Z, [0.0, 1e-4],
                                            lambda v: f"{z_label(v)}, no weight decay",
                                            "z-loss without weight decay (paper Fig. 3-4): LR vs "
                                            "loss, LR sensitivity, the output logits late in "
                                            "training", extra=2)
    late = with_logit_stats(t["late"], late_steps(s)) if len(t["late"]) else t["late"]
    curve_panel(ax_m, late, "mean_logit", "mean output logit (held-out batch)")
    curve_panel(ax_z, late, "log_z", "mean log Z (held-out batch)")
    size = P.size_label(late["n_params_nonembed"].max()) if len(late) else "-"
    for ax, what in ((ax_m, "mean logit"), (ax_z, "log Z")):
        ax.set_title(f"{what}, {size} params, LR {FIG4_LR:g}, {late_steps(s)} steps",
                     fontsize=10)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(Z,), part="main"), sensitivity_vs_params(part="main"),
             PanelSpec("mean output logit over a long run at LR 0.1", MEAN_LOGIT, split=(Z,),
                       part="late"),
             PanelSpec("log Z over a long run at LR 0.1", LOG_Z, split=(Z,), part="late")]

RESULT = Result("z_loss", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 3–4")

if __name__ == "__main__":
    main(RESULT)
