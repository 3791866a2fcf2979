"""Where attention-logit growth starts to hurt (paper §3.4, Fig 10, the κ experiment): the
attention logits are planted at a chosen scale κ, and the loss is read against κ.

Each choice and the sentence behind it (paper.md, the spec's digest of arXiv 2309.14322; the
paper's own text was not at hand, so these are its words as the spec gives them):

- The model: "in a ~10M-param model, replace q and k by g(z) = sqrt(κ) · z / sqrt(E_i[z_i²]) so
  max logits ≈ κ". `ScaleSpec.kappa_size`: 9.4M non-embedding params at gpu and paper scale
  (d=512, 3 layers, the paper's smallest size), the laptop's own small size at laptop scale.
  Every other setting is the §2.1 baseline ("every experiment starts from this baseline and
  changes only what its figure varies"); qk-layernorm stays on, and the plant renormalises q and
  k after it, so it changes only their directions.
- The claim: "loss starts to degrade near κ ≈ 1e3 and is worse than a zero-layer bigram model at
  κ ≈ 1e4". The bigram model is the same width with no layers and no position signal (RoPE acts
  only inside attention): next-token logits from the current token alone, its best of three LRs.

The planted logits. proxies/model.py (`plant_kappa`) sets q = √κ·z_q/‖z_q‖ and k = √κ·z_k/‖z_k‖
per head and applies no 1/√d_h after q·kᵀ, so every logit is exactly κ·cos(q, k): at most κ, and
κ where a query and a key align, which is "max logit ≈ κ". The paper's g divides by the RMS
instead of the norm, ‖g(z)‖ = √(κ·d_h), so under the usual 1/√d_h scale its logit would be
κ·√d_h·cos; the harness keeps the paper's stated outcome (max logit ≈ κ) rather than that
literal scale. The measured max logit per κ (probe on a held-out batch, max over layers, heads,
positions and the run) and its ratio to κ, the largest cos reached, are recorded.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec, lr_vs_loss
from analysis.figures import log_axes
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, half_decades, main

K = "model.attn_kappa"
CLAIM = ("planting max attention logits ≈ κ (q, k → √κ·z/‖z‖, logit = κ·cos): loss degrades "
         "near κ ≈ 1e3 and is worse than a bigram model near 1e4")
PAPER_ONSET, PAPER_CROSS = 1e3, 1e4
# "Degraded": the loss at κ exceeds the loss at the best κ by more than DEGRADED nats, with
# the whole interval over seeds above it. 0.05 nats is 2% of a laptop final loss (≈2.5 nats)
# and under half the laptop gap between the best κ and the bigram model (≈0.12 nats at the
# d128 L4 κ model): the onset must be told apart from the bigram crossing, which the paper
# puts a decade later.
DEGRADED = 0.05
# "Near" a landmark: within NEAR× of it, half a decade on the paper's log axis. The bands of
# the two landmarks (1e3 and 1e4) then just touch and never overlap, so one κ is never "near"
# both; on the 1-3 half-decade grid, 1e3 and 3e3 are near 1e3, and 1e4 and 3e4 near 1e4.
NEAR = 10 ** 0.5
# "Far": FAR× or more away, a decade: a κ the paper's own grid would place at the other
# landmark or beyond. Between NEAR and FAR the rule says inconclusive.
FAR = 10.0
# The reference loss: the best κ (mean over seeds) among those a decade or more below the
# paper's onset, which its claim leaves undegraded. Fixed to that set before any data, so
# the κ beyond it are all compared with it (an argmin over the whole grid would leave
# untested every κ below a best κ that noise placed at 3e3).
SAFE = PAPER_ONSET / FAR


def parts(s: ScaleSpec) -> List[Part]:
    m = s.kappa_size
    bigram = {**m, "n_layers": 0}
    return [Part("kappa", {"sweep": {"lrs": [s.kappa_lr], "sizes": [m],
                                     "axes": {"model": {"attn_kappa": s.kappas}}}}),
            # A zero-layer model with no position signal: next-token logits from the current
            # token alone. Its best of three LRs is the bar.
            Part("bigram", {"model": {"pos_emb": "rope"},
                            "sweep": {"lrs": half_decades(s.kappa_lr, 10 * s.kappa_lr),
                                      "sizes": [bigram]}})]


# ---------------------------------------------------------------------------- the statistics

def loss_table(k: pd.DataFrame) -> pd.DataFrame:
    """Counted loss (a diverged run at the loss at init), rows = seed, columns = κ."""
    k = P.with_seed(k)
    loss, _ = P.counted_loss(k)
    return pd.DataFrame({"kappa": k[K].to_numpy(float), "seed": k[P.SEED].to_numpy(),
                         "loss": loss}).pivot_table(index="seed", columns="kappa",
                                                    values="loss")


def bigram_losses(b: pd.DataFrame) -> pd.Series:
    """Per seed, the bigram model's best final loss over its LRs (diverged runs excluded)."""
    if b.empty:
        return pd.Series(dtype=float)
    b = P.with_seed(b)
    ok = b[~b["diverged"].astype(bool)].dropna(subset=["final_eval_ce"])
    return ok.groupby(P.SEED)["final_eval_ce"].min()


def paired(a: pd.Series, b: pd.Series) -> V.Effect:
    """a − b over the seeds both have, with its t interval."""
    seeds = a.dropna().index.intersection(b.dropna().index)
    return V.interval((a[seeds] - b[seeds]).astype(float))


def state(e: V.Effect, tol: float, tested: int) -> str:
    """'above' when the interval lies wholly above `tol` at Bonferroni's level for the `tested`
    κ searched for the first one above (any one of them would do: `tested` chances), 'below'
    when the 95% interval lies wholly below it (read as "every κ before"), else 'unsure'
    (always with fewer than MIN_SEEDS seeds)."""
    if not e.decided:
        return "unsure"
    if e.at(1 - (1 - e.confidence) / max(tested, 1)).lo > tol:
        return "above"
    return "below" if e.hi < tol else "unsure"


def bracket(kappas: List[float], states: List[str]) -> Tuple[float, float]:
    """(lo, hi) of where a statistic first turns 'above' along ascending κ: lo = the first κ
    not confidently 'below', hi = the first κ confidently 'above' (NaN where none)."""
    lo = next((k for k, st in zip(kappas, states) if st != "below"), np.nan)
    hi = next((k for k, st in zip(kappas, states) if st == "above"), np.nan)
    return float(lo), float(hi)


def near(b: Tuple[float, float], ref: float) -> bool:
    """Both ends of the bracket within NEAR× of `ref` (so the event is located near it)."""
    return all(np.isfinite(x) and ref / NEAR <= x <= ref * NEAR for x in b)


def far(b: Tuple[float, float], ref: float, kmax: float) -> bool:
    """The event is FAR× or more away from `ref`: it happened by ref/FAR, or not before
    ref·FAR (including never, when the grid reaches ref·FAR)."""
    lo, hi = b
    early = np.isfinite(hi) and hi <= ref / FAR
    late = (np.isfinite(lo) and lo >= ref * FAR) or (not np.isfinite(lo) and kmax >= ref * FAR)
    return bool(early or late)


def statistics(t: Tables) -> Dict[str, Any]:
    """Per κ the degradation and bigram effects (paired by seed), their states and brackets."""
    lt = loss_table(t["kappa"])
    kappas = [float(k) for k in lt.columns]
    safe = [k for k in kappas if k <= SAFE]
    ref = float(lt[safe].mean().idxmin()) if safe else np.nan
    above = [k for k in kappas if k > ref]
    degr = {k: paired(lt[k], lt[ref]) for k in above}
    big = bigram_losses(t["bigram"])
    worse = {k: paired(lt[k], big) for k in kappas} if len(big) else {}
    return {"losses": lt, "kappas": kappas, "ref": ref, "bigram": big, "degradation": degr,
            "worse": worse,
            "onset": bracket(above, [state(degr[k], DEGRADED, len(degr)) for k in above]),
            "cross": bracket(kappas, [state(e, 0.0, len(worse)) for e in worse.values()])
            if worse else (np.nan, np.nan),
            "seeds": int(lt.shape[0])}


# ---------------------------------------------------------------------------- the verdict

def fmt_bracket(b: Tuple[float, float]) -> str:
    lo, hi = b
    if not np.isfinite(lo):
        return "none in the grid"
    return f"[{lo:g}, {hi:g}]" if np.isfinite(hi) else f"≥ {lo:g} (not confirmed in the grid)"


def decide(st: Dict[str, Any]) -> Tuple[Reproduced, str]:
    """The rule, fixed before any data: with MIN_SEEDS seeds or more, a bigram bar and a κ
    ≤ SAFE to measure degradation from,
    true: the degradation onset's bracket lies within NEAR× of 1e3 and the bigram crossing's
      within NEAR× of 1e4;
    false: either lies FAR× or more away (degraded by 1e2 or only from 1e4 on, never degraded
      with κ up to 1e4; worse than bigram by 1e3 or not before 1e5);
    inconclusive otherwise (a bracket that spans the bands, a grid too short, too few seeds).
    A bracket's 'above' end is Bonferroni-corrected for the κ searched (`state`)."""
    if len(st["kappas"]) < 2:
        return "inconclusive", "fewer than two κ values finished"
    if not np.isfinite(st["ref"]):
        return "inconclusive", f"no κ ≤ {SAFE:g} finished to measure degradation from"
    kmax = max(st["kappas"])
    shown = (f"onset (loss > best + {DEGRADED} nats) at κ {fmt_bracket(st['onset'])}, worse "
             f"than bigram at κ {fmt_bracket(st['cross'])}")
    if st["seeds"] < V.MIN_SEEDS:
        return "inconclusive", f"{st['seeds']} seed(s); a verdict needs {V.MIN_SEEDS}: {shown}"
    if not len(st["bigram"]):
        return "inconclusive", f"the bigram runs have not finished: {shown}"
    onset_far = far(st["onset"], PAPER_ONSET, kmax)
    cross_far = far(st["cross"], PAPER_CROSS, kmax)
    if onset_far or cross_far:
        which = " and ".join(w for w, f in (("the onset", onset_far),
                                            ("the bigram crossing", cross_far)) if f)
        return "false", (f"{which} lies {FAR:g}× or more from the paper's 1e3 / 1e4: {shown}")
    if near(st["onset"], PAPER_ONSET) and near(st["cross"], PAPER_CROSS):
        return "true", (f"{shown}: both within {NEAR:.3g}× of the paper's 1e3 and 1e4")
    return "inconclusive", (f"{shown}: not located within {NEAR:.3g}× of the paper's 1e3 / 1e4, "
                            f"nor {FAR:g}× away (grid up to κ {kmax:g})")


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    if t["kappa"].empty:
        return "inconclusive", "no κ run finished", {}
    st = statistics(t)
    reproduced, why = decide(st)
    lt, k = st["losses"], P.with_seed(t["kappa"])
    logits = k.groupby(K)["max_attn_logit"].mean()
    measured = {
        "model (non-emb params)": P.size_label(float(k["n_params_nonembed"].max())),
        "seeds": st["seeds"],
        "eval loss by κ (mean over seeds)": {f"{c:g}": round(float(v), 3)
                                             for c, v in lt.mean().items()},
        "planted: measured max logit by κ (÷ κ)": {
            f"{c:g}": f"{v:.4g} ({v / c:.2f})" for c, v in logits.items()},
        "bigram eval loss (best LR, mean over seeds)": round(float(st["bigram"].mean()), 3)
        if len(st["bigram"]) else None,
        "best κ (reference)": st["ref"],
        "loss − loss at best κ (interval), κ above it": {
            f"{c:g}": e for c, e in st["degradation"].items()},
        "loss − bigram (interval) by κ": {f"{c:g}": e for c, e in st["worse"].items()},
        "degradation onset bracket": fmt_bracket(st["onset"]),
        "worse-than-bigram bracket": fmt_bracket(st["cross"]),
        "rule": f"degraded > {DEGRADED} nats; near = within {NEAR:.3g}×, far = {FAR:g}× or more"}
    return reproduced, why, measured


# ---------------------------------------------------------------------------- the figure

def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, axs = plt.subplots(1, 2, figsize=(10.5, 3.8))
    if t["kappa"].empty:
        return fig
    st = statistics(t)
    lt = st["losses"]
    ax = axs[0]
    sd = lt.std(ddof=1) if lt.shape[0] > 1 else None
    ax.errorbar(lt.columns, lt.mean(), yerr=sd, fmt="o-", capsize=3, color="C3",
                label="planted κ (mean ± sd over seeds)")
    if len(st["bigram"]):
        b = float(st["bigram"].mean())
        ax.axhline(b, color="k", ls="--", lw=1, label=f"bigram (0 layers): {b:.3f}")
    for ref, text in ((PAPER_ONSET, "paper: degrades"), (PAPER_CROSS, "paper: worse than bigram")):
        ax.axvspan(ref / NEAR, ref * NEAR, color="gray", alpha=0.12)
        ax.axvline(ref, color="gray", ls=":", lw=1)
        ax.annotate(text, (ref, 0.5), xycoords=("data", "axes fraction"), fontsize=7,
                    rotation=90, ha="right", va="center")
    for (lo, hi), c, ls, name in ((st["onset"], "C1", "-", "measured onset"),
                                  (st["cross"], "C0", "--", "measured bigram crossing")):
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            ax.axvspan(lo, hi, color=c, alpha=0.25, label=f"{name} (bracket)")
        elif np.isfinite(lo):  # a bracket of one grid point: a line, which a zero-width span is not
            ax.axvline(lo, color=c, ls=ls, lw=2, alpha=0.8, label=name)
    log_axes(ax)
    ax.set_xlabel("κ (planted max attention logit)")
    ax.set_ylabel("final eval loss")
    ax.set_title(f"κ experiment, {P.size_label(float(t['kappa']['n_params_nonembed'].max()))} "
                 f"params, LR {s.kappa_lr:g} (grey: ×{NEAR:.3g} bands around the paper's "
                 "values)", fontsize=8)
    ax.legend(fontsize=7)
    ax = axs[1]
    logits = P.with_seed(t["kappa"]).groupby(K)["max_attn_logit"].mean()
    ax.plot(logits.index, logits.to_numpy(), "o-", color="C0", label="measured (max over run)")
    ax.plot(logits.index, logits.index, "k-", lw=0.8, label="y = κ (the bound)")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("κ")
    ax.set_ylabel("max attention logit over training")
    ax.set_title("the planted logits: κ·cos(q, k) ≤ κ", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [
    PanelSpec("final eval loss vs κ", "summary:final_eval_ce", x=f"config:{K}", log_x=True,
              part="kappa"),
    PanelSpec("max attention logit vs κ", "summary:max_attn_logit", x=f"config:{K}", log_x=True,
              log_y=True, part="kappa"),
    lr_vs_loss("bigram model (0 layers): LR vs final eval loss", part="bigram")]

RESULT = Result("kappa", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 10")

if __name__ == "__main__":
    main(RESULT)
