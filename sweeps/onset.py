"""Where the instability starts: qk-layernorm off vs on at the smallest size of a scale, trained
for 1×, 3× and 10× the scale's steps (laptop: 200, 600, 2,000), every LR and seed.

The paper trains ~1,400 tokens per non-embedding parameter at its smallest size (1e5 steps of
256 × 512 tokens, 9.4M params); a laptop run of 200 steps of 16 × 128 tokens gives ~4 at 0.1M.
This result measures, against tokens per parameter, what the paper's first result needs:
the qk-LN effect on LR sensitivity (off − on, paired by seed, with its interval), the max
attention logit at the grid's top LR without qk-LN, and the share of diverged runs in each arm.

Verdict: the shortest length at which qk-layernorm lowers LR sensitivity at every size studied,
each size's interval above V.RESOLUTION at Bonferroni's level for the number of lengths (the
search over lengths is that many tests): "true" naming that length; "false" when at the longest
length some size's interval lies below −V.RESOLUTION (no onset within the study); otherwise
"inconclusive". Every length's numbers are reported whatever the verdict.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
import numpy as np
import pandas as pd

from analysis.dashboard.panels import lr_vs_loss, sensitivity_vs_params
from proxies.config import LR_KEY, nonembed_params
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main, warmup

QK = "model.qk_layernorm"
CLAIM = ("qk-layernorm's lower LR sensitivity appears once the proxies train long enough: "
         "the shortest length (tokens per parameter) at which it shows at every size studied")
# Run lengths, × the scale's steps. 30× (laptop: 6,000 steps) would add ~2.2 h at the smallest
# laptop size alone, and a laptop result over its three sizes at that length would cost more than
# the ~3 h a laptop result is given: a length no laptop result can afford is not worth finding.
FACTORS = (1, 3, 10)
# The scale's smallest size only (laptop: ~1 h for the three lengths, dry-run estimate); more with
# `sweep.sizes=[...]` on the command line.
SIZES = 1


def lengths(s: ScaleSpec) -> List[int]:
    return [f * int(s.base["train"]["steps"]) for f in FACTORS]


def part_name(steps: int) -> str:
    return f"steps{steps}"


def parts(s: ScaleSpec) -> List[Part]:
    """One sweep per length: the paper's warm-up share and logging, evals and checkpoints at
    fixed shares of the run, so every length is the same recipe stretched."""
    out = []
    for steps in lengths(s):
        every = max(1, steps // 8)
        train = {"steps": steps, "log_every": every, "eval_every": steps // 2,
                 "checkpoint_every": max(every, steps // 4)}
        out.append(Part(part_name(steps), {
            "sweep": {"lrs": s.lrs, "sizes": s.sizes[:SIZES],
                      "axes": {"model": {"qk_layernorm": [False, True]}}},
            "train": train, "optim": {"warmup_steps": warmup(steps)}}))
    return out


def tokens_per_param(s: ScaleSpec, steps: int, n_params: float) -> float:
    t = s.base["train"]
    return steps * t["batch_size"] * t["seq_len"] / n_params


def length_rows(df: pd.DataFrame, s: ScaleSpec, steps: int, k: int) -> List[Dict[str, Any]]:
    """Per size at one length: tokens/param, the effect (off − on LR sensitivity) at 95% and at
    Bonferroni's level for k lengths, the top-LR max logit without qk-LN, diverged shares."""
    stats = P.series_stats(df, [QK])
    effects = P.paired_effects(stats, QK, False, True)
    level = 1 - (1 - V.CONFIDENCE) / k
    rows = []
    # By shape: qk-layernorm's scales make the two arms' parameter counts differ slightly.
    for (d, n_layers), g in df.groupby(P.SHAPE, sort=True):
        n = float(nonembed_params(int(d), int(n_layers)))  # 12·L·d², as the plan counts it
        e = effects.get(P.size_label(g["n_params_nonembed"].min()), V.interval([]))
        off = g[~g[QK].astype(bool)]
        top = off[off[LR_KEY] == off[LR_KEY].max()]
        rows.append({"steps": steps, "size": P.size_label(n), "n_params_nonembed": n,
                     "tokens_per_param": tokens_per_param(s, steps, float(n)), "effect": e,
                     "effect_corrected": e.at(level),
                     "max_logit_top_lr_off": float(top["max_attn_logit"].median()),
                     "diverged_off": float(off["diverged"].astype(bool).mean()),
                     "diverged_on": float(g[g[QK].astype(bool)]["diverged"].astype(bool).mean())})
    return rows


def onset_table(t: Tables, s: ScaleSpec) -> pd.DataFrame:
    """`length_rows` of every length whose part has finished runs, sorted by length and size."""
    done = [steps for steps in lengths(s) if not t.get(part_name(steps), pd.DataFrame()).empty]
    rows = [r for steps in done for r in length_rows(t[part_name(steps)], s, steps, len(FACTORS))]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["steps", "n_params_nonembed"], ignore_index=True)


def shows(g: pd.DataFrame) -> Reproduced:
    """One length: "true" when every size's corrected interval lies above RESOLUTION, "false"
    when one lies below −RESOLUTION, else "inconclusive"."""
    cs = list(g["effect_corrected"])
    if any(e.decided and e.hi < -V.RESOLUTION for e in cs):
        return "false"
    return "true" if cs and all(e.decided and e.lo > V.RESOLUTION for e in cs) else "inconclusive"


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    table = onset_table(t, s)
    if table.empty:
        return "inconclusive", "no length has finished runs", {}
    by_length = {steps: shows(g) for steps, g in table.groupby("steps", sort=True)}
    measured: Dict[str, Any] = {
        f"{steps} steps": "; ".join(
            f"{r.size} ({r.tokens_per_param:.3g} tokens/param): off − on {r.effect}, max logit "
            f"at the top LR without qk-LN {r.max_logit_top_lr_off:.3g}, diverged "
            f"{r.diverged_off:.0%} off / {r.diverged_on:.0%} on"
            for r in g.itertuples()) + f" -> {by_length[steps]}"
        for steps, g in table.groupby("steps", sort=True)}
    measured["LR sensitivity no qk-LN − qk-LN, per length and size"] = {
        f"{r.steps} steps, {r.size}": r.effect for r in table.itertuples()}
    measured["verdict rule"] = (f"shortest length whose every size's interval (Bonferroni over "
                                f"{len(FACTORS)} lengths) lies above {V.RESOLUTION:g}")
    onset = [steps for steps, v in by_length.items() if v == "true"]
    studied = ", ".join(f"{steps}: {v}" for steps, v in by_length.items())
    if onset:
        first = min(onset)
        tpp = table[table["steps"] == first]["tokens_per_param"]
        span = (f"{tpp.min():.3g}" if tpp.min() == tpp.max() else
                f"{tpp.min():.3g}-{tpp.max():.3g}")
        measured["onset"] = f"{first} steps ({span} tokens/param)"
        return "true", (f"qk-LN lowers LR sensitivity at every size from {first} steps on "
                        f"({span} tokens/param); by length: {studied}"), measured
    longest = max(by_length)
    if by_length[longest] == "false" and longest == max(lengths(s)):
        return "false", f"no onset up to {longest} steps: {studied}", measured
    return "inconclusive", f"no length shows it beyond its interval: {studied}", measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    table = onset_table(t, s)
    fig, (ax_e, ax_l, ax_d) = plt.subplots(1, 3, figsize=(15, 4.2))
    if table.empty:
        ax_e.text(0.5, 0.5, "no length has finished runs", ha="center", transform=ax_e.transAxes)
        return fig
    colours = P.colours(sorted(table["n_params_nonembed"].unique()))
    for n, g in table.groupby("n_params_nonembed", sort=True):
        x, c, label = g["tokens_per_param"].to_numpy(), colours[n], P.size_label(n)
        eff = list(g["effect"])
        mean = np.array([e.mean for e in eff])
        err = np.array([[e.mean - e.lo, e.hi - e.mean] if e.n >= 2 else [0, 0] for e in eff]).T
        ax_e.errorbar(x, mean, yerr=err, color=c, marker="o", capsize=3, label=label)
        for xi, yi, steps in zip(x, mean, g["steps"]):
            ax_e.annotate(f"{steps} steps", (xi, yi), textcoords="offset points", xytext=(4, -10),
                          fontsize=7, color=c)
        ax_l.plot(x, g["max_logit_top_lr_off"], color=c, marker="o", label=label)
        ax_d.plot(x, g["diverged_off"], color=c, marker="o", label=f"{label}, no qk-LN")
        ax_d.plot(x, g["diverged_on"], color=c, marker="s", ls="--", label=f"{label}, qk-LN")
    ax_e.axhline(0, color="grey", lw=0.8)
    ax_e.set(xscale="log", xlabel="tokens per non-embedding parameter",
             ylabel="LR sensitivity, no qk-LN − qk-LN",
             title="qk-LN effect (95% t interval over seeds)")
    ax_l.set(xscale="log", yscale="log", xlabel="tokens per non-embedding parameter",
             ylabel="max attention logit", title="at the top LR, no qk-LN")
    ax_l.axhline(1e4, color="grey", lw=0.8, ls=":", label="1e4, the paper's divergence")
    ax_d.set(xscale="log", xlabel="tokens per non-embedding parameter", ylim=(-0.05, 1.05),
             ylabel="share of runs diverged", title="diverged runs over the LR grid")
    if not (table["diverged_off"].any() or table["diverged_on"].any()):
        ax_d.text(0.5, 0.5, "no run diverged", ha="center", transform=ax_d.transAxes)
    for ax in (ax_e, ax_l, ax_d):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.legend(fontsize=8)
    fig.suptitle("Where the instability starts: qk-layernorm off vs on against run length")
    fig.tight_layout()
    return fig


DASHBOARD = [lr_vs_loss(split=(QK,)), sensitivity_vs_params()]

RESULT = Result("onset", CLAIM, parts, judge, figure, DASHBOARD, paper="ours")

if __name__ == "__main__":
    main(RESULT)
