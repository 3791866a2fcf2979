"""Gradient RMS vs AdamW ε (paper §3.4, Fig 11-13, E.15): the gradient RMS of the first MLP
layer of block 0 falls with model size and LR toward ε; where it reaches ε the update
m/(√v + ε) shrinks and the layer stops learning. A smaller ε (1e-15) keeps the update up and
the loss no worse; a larger one (1e-6) makes it worse or diverges.

Each choice and the sentence behind it (paper.md, the spec's digest of arXiv 2309.14322; the
paper's own text was not at hand, so these are its words as the spec gives them):

- The statistic (Fig 11): "gradient RMS of the **first MLP layer of block 0**, averaged over
  the final 500 steps, falls with size and LR toward ε". Here `grad_rms_mlp0_tail`: block 0's
  MLP input projection (up; gate for SwiGLU), the mean over the log rows of the last
  `tail_steps` updates (proxies/metric_names.py): the last 500 of 1e5 at paper scale, and at
  least two log intervals elsewhere (laptop: the last 50 of 200 updates, 25% of the run; gpu:
  the last 200 of 1e4). Its update RMS (÷ LR, `update_rms_mlp0_tail`) over the same window.
- The sizes and LRs: the §2.1 baseline ("every experiment starts from this baseline"; Fig 11
  changes nothing else), the scale's sizes × LRs, shared with every other baseline sweep.
- The ε part (Fig 12-13): "ε 1e-15 / 1e-8 / 1e-6 ... the largest model (4.8B) at LR 0.3";
  "1e-15 improves loss and prevents the grad-RMS collapse; 1e-6 diverges". Here the largest
  size of the grid (`ScaleSpec.eps_size` when the spec has one, else `sizes[-1]`) at the
  scale's `eps_lr`, with the paper's three ε and the scale's own (`ScaleSpec.epsilons`).

The verdict judges the measured runs; Adam's formula only decides which ε is "large" at a scale
(`large_eps`): the paper's 1e-6 where the baseline's gradient RMS is within EPS_NEAR× of it,
else (ours) the smallest larger ε of the grid that is, since a laptop model's gradients sit far
above 1e-6 and no mechanism the paper names would let 1e-6 matter there.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec
from analysis.figures import log_axes
from proxies import metric_names as M
from proxies.config import LR_KEY
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main

E = "optim.eps"
G, U = M.GRAD_RMS_MLP0_TAIL, M.UPDATE_RMS_MLP0_TAIL
N = "n_params_nonembed"
CLAIM = ("gradient RMS of block 0's first MLP layer falls with size and LR toward ε; at the "
         "largest size and a high LR, ε 1e-15 is no worse than 1e-8 and keeps the update RMS "
         "up, while a larger ε (the paper's 1e-6) is worse or diverges")
SMALL, BASE, LARGE = 1e-15, 1e-8, 1e-6  # the paper's three ε
# A loss "no worse" / "worse": the interval over seeds of the paired loss difference lies wholly
# below / above LOSS_TOL nats. 0.02 nats is under 1% of a laptop final loss (≈2.5 nats), finer
# than any difference the paper's figures draw, and far above the rounding-level differences
# between two runs that ε does not touch.
LOSS_TOL = 0.02
# "Keeps the update RMS up": the update RMS at 1e-15 is at least KEEP× that at 1e-8 (its
# interval over seeds, as a ratio). The collapse the paper shows is by orders of magnitude; a
# 20% band absorbs the noise of a mean over a couple of probe rows.
KEEP = 0.8
# ε "nears" the gradient RMS g when ε ≥ g / EPS_NEAR: the paper's mechanism ("when it nears ε
# the update shrinks") cannot act on an ε more than a decade below the gradients.
EPS_NEAR = 10.0


def eps_size(s: ScaleSpec) -> Dict[str, int]:
    """The ε part's model: the largest size of the scale's grid (the paper's 4.8B was its
    largest); a spec field `eps_size` overrides it."""
    return getattr(s, "eps_size", None) or s.sizes[-1]


def epsilons(s: ScaleSpec) -> List[float]:
    """The paper's three ε and the scale's own, ascending."""
    return sorted({SMALL, BASE, LARGE, *s.epsilons})


def parts(s: ScaleSpec) -> List[Part]:
    return [Part("scaling", {"sweep": {"lrs": s.lrs, "sizes": s.sizes}}),
            Part("eps", {"sweep": {"lrs": [s.eps_lr], "sizes": [eps_size(s)],
                                   "axes": {"optim": {"eps": epsilons(s)}}}})]


# ---------------------------------------------------------------------------- Fig 11: scaling

def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """d log10(y) / d log10(x) by least squares over the positive finite points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (y > 0) & (x > 0)
    if len(np.unique(x[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log10(x[ok]), np.log10(y[ok]), 1)[0])


def trained(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not diverge and have the statistic (a diverged run's gradients say
    nothing about ε)."""
    if df.empty or G not in df.columns:
        return P.with_seed(df).iloc[0:0]
    return P.with_seed(df[~df["diverged"].astype(bool)]).dropna(subset=[G])


def seed_slopes(sc: pd.DataFrame) -> Tuple[pd.Series, pd.Series]:
    """Per seed: the median over LRs of the slope of log gradient RMS in log params, and the
    median over sizes of its slope in log LR."""
    by_size, by_lr = {}, {}
    for seed, g in trained(sc).groupby(P.SEED):
        a = [slope(h[N], h[G]) for _, h in g.groupby(LR_KEY)]
        b = [slope(h[LR_KEY], h[G]) for _, h in g.groupby(N)]
        by_size[seed] = float(np.nanmedian(a)) if np.isfinite(a).any() else np.nan
        by_lr[seed] = float(np.nanmedian(b)) if np.isfinite(b).any() else np.nan
    return pd.Series(by_size, dtype=float), pd.Series(by_lr, dtype=float)


# The verdict's sub-claims that can say "false": two slopes, three ε claims.
PARTS = 5


def falls(size: V.Effect, lr: V.Effect) -> Tuple[Reproduced, str]:
    """true when both slopes' intervals lie below 0, false when either lies above 0 (at
    Bonferroni's level for the verdict's PARTS sub-claims)."""
    shown = f"slope in log params {size}, in log LR {lr}"
    rs = [V.below(size, 0.0, PARTS), V.below(lr, 0.0, PARTS)]
    if "false" in rs:
        return "false", f"it rises: {shown}"
    if all(r == "true" for r in rs):
        return "true", shown
    why = "one seed gives no interval" if min(size.n, lr.n) < 2 else "an interval includes 0"
    return "inconclusive", f"{why}: {shown}"


# ---------------------------------------------------------------------------- Fig 12-13: ε

def per_seed(ep: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` by seed (rows) and ε (columns); 'loss' is the counted loss (a diverged run at
    the loss at init)."""
    ep = P.with_seed(ep)
    vals = P.counted_loss(ep)[0] if column == "loss" else ep[column].to_numpy(float)
    return pd.DataFrame({"eps": ep[E].to_numpy(float), "seed": ep[P.SEED].to_numpy(),
                         "v": vals}).pivot_table(index="seed", columns="eps", values="v")


def paired(t: pd.DataFrame, a: float, b: float, f=lambda x, y: x - y) -> V.Effect:
    """f(column a, column b) over the seeds with both, with its t interval."""
    if a not in t.columns or b not in t.columns:
        return V.interval([])
    both = t[[a, b]].dropna()
    return V.interval(f(both[a], both[b]).astype(float))


def large_eps(grid: Sequence[float], g: float) -> Optional[float]:
    """The ε that plays the paper's 1e-6: 1e-6 itself where the baseline's gradient RMS `g` is
    within EPS_NEAR× of it, else the smallest grid ε above 1e-8 that is (None: none is)."""
    if not np.isfinite(g):
        return None
    # (1 + 1e-9): the bound is inclusive, whatever the rounding of g / EPS_NEAR
    return next((e for e in sorted(grid) if e > BASE and e * (1 + 1e-9) >= g / EPS_NEAR), None)


def no_worse(e: V.Effect) -> Reproduced:
    """Loss difference (first minus second) no worse than LOSS_TOL."""
    return V.below(e, LOSS_TOL, PARTS)


def keeps(r: V.Effect) -> Reproduced:
    """log10 update-RMS ratio (1e-15 over 1e-8) at least log10(KEEP)."""
    return V.above(r, float(np.log10(KEEP)), PARTS)


def worse(e: V.Effect) -> Reproduced:
    """Loss difference (larger ε minus 1e-8) worse by more than LOSS_TOL."""
    return V.above(e, LOSS_TOL, PARTS)


def combine(subs: Dict[str, Tuple[Reproduced, str]]) -> Tuple[Reproduced, str]:
    """false if any sub-claim is false, true if all are true, else inconclusive."""
    outs = [r for r, _ in subs.values()]
    why = "; ".join(f"{k}: {r} ({w})" for k, (r, w) in subs.items())
    if "false" in outs:
        return "false", why
    if all(r == "true" for r in outs):
        return "true", why
    return "inconclusive", why


def eps_parts(ep: pd.DataFrame) -> Tuple[Dict[str, Tuple[Reproduced, str]], Dict[str, Any]]:
    """The ε part's three sub-claims (each (reproduced, why)) and their statistics."""
    loss, upd, grad = per_seed(ep, "loss"), per_seed(ep, U), per_seed(ep, G)
    g = float(grad[BASE].mean()) if BASE in grad.columns else np.nan
    big = large_eps(list(loss.columns), g)
    d_small = paired(loss, SMALL, BASE)
    ratio = paired(upd, SMALL, BASE, lambda x, y: np.log10(x / y))
    out = {"1e-15 no worse than 1e-8": (no_worse(d_small), f"loss difference {d_small}"),
           "1e-15 keeps the update RMS up": (
               keeps(ratio), f"log10 update-RMS ratio {ratio} (keep ≥ {np.log10(KEEP):+.3f})")}
    if big is None:
        d_big = V.interval([])
        out["a larger ε is worse"] = ("inconclusive", (
            f"no ε of the grid reaches the baseline's gradient RMS {g:.3g} within "
            f"{EPS_NEAR:g}×: the paper's regime is not reached"))
    else:
        d_big = paired(loss, big, BASE)
        role = "the paper's" if big == LARGE else "ours, in the paper's 1e-6 role"
        out[f"ε {big:g} ({role}) worse or diverges"] = (worse(d_big),
                                                        f"loss difference {d_big}")
    stats = {"baseline gradient RMS (first MLP layer, ε 1e-8)": g, "larger ε judged": big,
             "loss(1e-15) − loss(1e-8)": d_small,
             "log10 update RMS(1e-15) / update RMS(1e-8)": ratio,
             "loss(larger ε) − loss(1e-8)": d_big}
    return out, stats


# ---------------------------------------------------------------------------- the verdict

def highest_trained_lr(sc: pd.DataFrame, size: Dict[str, int]) -> Optional[float]:
    """The highest LR at which no seed of the baseline diverged at `size` (scaling part)."""
    if sc.empty:
        return None
    g = sc[(sc["model.d_model"] == size["d_model"]) & (sc["model.n_layers"] == size["n_layers"])]
    ok = g.groupby(LR_KEY)["diverged"].apply(lambda d: not d.astype(bool).any())
    return float(ok[ok].index.max()) if ok.any() else None


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    sc, ep = t["scaling"], t["eps"]
    size_fx, lr_fx = (V.interval(v) for v in seed_slopes(sc))
    subs = {"gradient RMS falls with size and LR": falls(size_fx, lr_fx)}
    measured: Dict[str, Any] = {
        "statistic": "gradient RMS of block 0's first MLP layer, mean over the run's tail",
        "d log grad RMS / d log params (median over LRs; interval over seeds)": size_fx,
        "d log grad RMS / d log LR (median over sizes; interval over seeds)": lr_fx}
    if ep.empty or G not in ep.columns:
        subs["ε part"] = ("inconclusive", "the ε runs have not finished")
    else:
        sub, stats = eps_parts(ep)
        subs.update(sub)
        measured.update(stats)
        loss = per_seed(ep, "loss").mean()
        measured[f"final loss by ε (mean over seeds; LR {s.eps_lr:g})"] = {
            f"{e:g}": round(float(v), 3) for e, v in loss.items()}
        measured["update RMS by ε (first MLP layer)"] = {
            f"{e:g}": float(f"{v:.3g}") for e, v in per_seed(ep, U).mean().items()}
        measured["diverged seeds by ε"] = {
            f"{e:g}": int(g["diverged"].astype(bool).sum()) for e, g in ep.groupby(E)}
        top = highest_trained_lr(sc, eps_size(s))
        measured["ε part LR / highest LR the baseline trains at that size"] = (
            f"{s.eps_lr:g} / {top:g}" if top is not None else f"{s.eps_lr:g} / none")
    reproduced, why = combine(subs)
    measured["rule"] = (f"loss tolerance {LOSS_TOL} nats; update kept ≥ ×{KEEP}; larger ε "
                        f"within ×{EPS_NEAR:g} of the gradient RMS")
    return reproduced, why, measured


# ---------------------------------------------------------------------------- the figure

def scaling_panels(axs: Sequence[plt.Axes], sc: pd.DataFrame) -> None:
    """Gradient RMS (seed means) vs params per LR, and vs LR per size, with ε = 1e-8."""
    ok = trained(sc)
    if ok.empty:
        return
    mean = ok.groupby([LR_KEY, N], as_index=False)[G].mean()
    norm = P.lr_norm(mean[LR_KEY].to_list())
    for lr, g in mean.groupby(LR_KEY, sort=True):
        axs[0].plot(g[N], g[G], "o-", color=P.lr_colour(norm, lr), label=f"LR {lr:g}")
    col = P.colours(mean[N].unique())
    for n, g in mean.groupby(N, sort=True):
        axs[1].plot(g[LR_KEY], g[G], "o-", color=col[n], label=P.size_label(n))
    for ax in axs[:2]:
        ax.axhline(BASE, color="k", ls="--", lw=1)
        ax.annotate(f"AdamW ε = {BASE:g}", (0.02, BASE), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom")
        log_axes(ax, x=True, y=True)
    axs[0].set_xlabel("non-embedding params")
    axs[0].set_ylabel("gradient RMS, block 0 first MLP layer (tail)")
    axs[0].set_title("gradient RMS vs size", fontsize=10)
    axs[0].legend(fontsize=6, ncol=2)
    axs[1].set_xlabel("learning rate")
    axs[1].set_title("gradient RMS vs LR", fontsize=10)
    axs[1].legend(title="non-emb. params", fontsize=7, title_fontsize=7)


def eps_panels(axs: Sequence[plt.Axes], ep: pd.DataFrame, s: ScaleSpec) -> None:
    """Update and gradient RMS vs ε, and final loss vs ε (× where a seed diverged)."""
    if ep.empty or G not in ep.columns:
        return
    upd, grad, loss = (per_seed(ep, c).mean() for c in (U, G, "loss"))
    ax = axs[0]
    ax.plot(upd.index, upd.to_numpy(), "o-", color="C0", label="update RMS (÷ LR)")
    ax.plot(grad.index, grad.to_numpy(), "s--", color="C1", label="gradient RMS")
    ax.plot(upd.index, upd.index, "k:", lw=0.8, label="ε")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("AdamW ε")
    ax.set_title(f"first MLP layer, {P.size_label(float(ep[N].max()))} params, "
                 f"LR {s.eps_lr:g}", fontsize=10)
    ax.legend(fontsize=7)
    ax = axs[1]
    ax.plot(loss.index, loss.to_numpy(), "o-", color="C3")
    div = ep.groupby(E)["diverged"].apply(lambda d: d.astype(bool).any())
    hit = np.array([bool(div.get(e, False)) for e in loss.index])
    ax.plot(loss.index[hit], loss[hit], "x", ms=9, mew=2, color="C3")
    for e in (SMALL, BASE, LARGE):
        ax.axvline(e, color="gray", ls=":", lw=0.8)
    log_axes(ax)
    ax.set_xlabel("AdamW ε (dotted: the paper's 1e-15, 1e-8, 1e-6)")
    ax.set_ylabel("final eval loss (× diverged)")
    ax.set_title("a collapsed update stops learning", fontsize=10)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    fig, axs = plt.subplots(1, 4, figsize=(19, 3.9))
    scaling_panels(axs[:2], t["scaling"])
    eps_panels(axs[2:], t["eps"], s)
    fig.tight_layout()
    return fig


# The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [
    PanelSpec("gradient RMS, block 0 first MLP layer, vs size", f"summary:{G}",
              x="summary:n_params_nonembed", log_x=True, log_y=True, part="scaling"),
    PanelSpec("gradient RMS, block 0 first MLP layer, vs LR", f"summary:{G}",
              x="config:optim.lr", log_x=True, log_y=True, colour="size", part="scaling"),
    PanelSpec("update RMS (÷ LR), block 0 first MLP layer, vs ε", f"summary:{U}",
              x="config:optim.eps", log_x=True, log_y=True, part="eps"),
    PanelSpec("gradient RMS, block 0 first MLP layer, vs ε", f"summary:{G}",
              x="config:optim.eps", log_x=True, log_y=True, part="eps"),
    PanelSpec("final eval loss vs ε", "summary:final_eval_ce", x="config:optim.eps", log_x=True,
              part="eps")]

RESULT = Result("adam_eps", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 11–13")

if __name__ == "__main__":
    main(RESULT)
