"""Stabilisers of large runs since the paper, scored the paper's way (ours: no figure of the paper).

From the scale's baseline without qk-layernorm, each stabiliser alone and each with qk-layernorm,
on one size and an LR grid that reaches 1 and is finer (~1.26× steps) where the baseline stops
training (`ScaleSpec.stabilizer_lrs`):

- soft-caps c·tanh(z/c), attention logits 50, output logits 30 (Gemma 2, arXiv 2408.00118 §2);
- QK-clip: a head whose max logit S exceeds τ has W_q, W_k scaled by sqrt(τ/S) after the update
  (Kimi K2, arXiv 2507.20534 §2.1; τ per scale, `ScaleSpec.qk_clip_tau`);
- σReparam: Ŵ = (γ/σ(W))·W on every block linear layer (Zhai et al., arXiv 2303.06296);
- update clipping: each tensor's step ÷ max(1, RMS(g/sqrt(v̂))) (StableAdamW, arXiv 2304.13013);
- norm placement: each sublayer's output normed (OLMo 2, arXiv 2501.00656), or q, k, v normed
  instead of the attention's input (Rybakov et al., arXiv 2410.16682).

Per setting: LR sensitivity (the paper's statistic, on the half-decade points of the grid, so
the fine steps do not weigh the top of the range twice) with its interval over seeds, and again
over the other results' LRs only (up to the top of `ScaleSpec.lrs`, where the grid stops short of
1: a stabiliser can rank first by failing less badly where every setting has diverged), the
highest LR within 0.1 nats of the best loss, the best loss, and at the grid's top LR the max
attention logit and the lowest head's attention entropy; ranked by LR sensitivity.

Claims judged, each with its source:
(1) qk-layernorm + attention soft-cap trains at >= 1.5× the highest LR qk-layernorm alone trains
    at (Rybakov et al.: "we can increase learning rate by 1.5x ... in comparison to an approach
    based on QK layer normalization only"); "trains" as in qk_layernorm's (a).
(2) QK-clip keeps the max attention logit at or below τ at a small loss cost (Kimi K2:
    "QK-Clip ... keeps max logits under τ"), at every LR, over the log steps after init; the
    probe reads a held-out batch, not the one the clip saw, so "at or below" allows LOGIT_SLACK;
    "small" is SMALL_LOSS_COST nats of best loss.
(3) σReparam prevents attention entropy collapse at high LR (Zhai et al.): at the grid's top LR
    the baseline's lowest-head entropy falls below COLLAPSE of its value at init, and
    σReparam's does not.
(4) update clipping lowers LR sensitivity without qk-layernorm (StableAdamW's purpose; our
    reading of the paper's motivation, arXiv 2304.13013 §3).
The verdict is their conjunction (`panels.all_of`); each claim's own verdict is in the report.
Redundancy with qk-layernorm is reported, not judged: a stabiliser adds to qk-layernorm when its
combination's LR sensitivity lies below qk-layernorm's alone.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.dashboard.panels import PanelSpec, lr_vs_loss
from proxies.config import LR_KEY
from proxies import metric_names as M
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, half_decades, main
from sweeps.panels import top_trained_lr

CLAIM = ("ours, beyond the paper: qk-layernorm + soft-cap trains at >= 1.5x qk-layernorm's highest "
         "LR; QK-clip keeps max logits <= tau at a small loss cost; sigma-reparam prevents "
         "attention entropy collapse at high LR; update clipping lowers LR sensitivity without "
         "qk-layernorm")

ATTN_SOFTCAP, LOGIT_SOFTCAP = 50.0, 30.0  # Gemma 2's caps
LR_FACTOR = 1.5  # claim (1)
LOGIT_SLACK = 1.1  # claim (2): the held-out batch's max logit may pass the clipped batch's τ
SMALL_LOSS_COST = 0.02  # claim (2), nats of best loss: about the laptop seed spread
COLLAPSE = 0.5  # claim (3): entropy below this share of its value at init has collapsed
# The verdict is claims (1)-(4) together: each says "false" at Bonferroni's level for four.
CLAIMS = 4
NEAR_BEST = 0.1  # nats: the highest LR whose loss is within this of the best
ENTROPY = M.ATTN_ENTROPY_MIN_HEAD

QK = "model.qk_layernorm"
# Each stabiliser: its label and the keys it sets (QK-clip's τ comes from the scale).
STABILIZERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "attn_softcap": ("attention soft-cap 50", {"model.attn_softcap": ATTN_SOFTCAP}),
    "logit_softcap": ("output soft-cap 30", {"model.logit_softcap": LOGIT_SOFTCAP}),
    "qk_clip": ("QK-clip", {"optim.qk_clip_tau": None}),
    "sigma_reparam": ("σReparam", {"model.sigma_reparam": True}),
    "update_clip": ("update clipping", {"optim.update_clip": True}),
    "norm_output": ("output norm (OLMo 2)", {"model.norm_placement": "output"}),
    "norm_qkv": ("QKV norm (Rybakov)", {"model.norm_placement": "qkv"}),
}
OFF = {QK: False, "model.attn_softcap": None, "model.logit_softcap": None,
       "optim.qk_clip_tau": None, "model.sigma_reparam": False, "optim.update_clip": False,
       "model.norm_placement": "pre"}
SETTING = "setting"


def stabilizer_keys(name: str, s: ScaleSpec) -> Dict[str, Any]:
    keys = dict(STABILIZERS[name][1])
    return {k: (s.qk_clip_tau if k == "optim.qk_clip_tau" else v) for k, v in keys.items()}


def settings(s: ScaleSpec) -> Dict[str, Dict[str, Any]]:
    """Setting name -> every stabiliser key's value: none, qk-LN, each alone, each with qk-LN."""
    out = {"none": dict(OFF), "qk_layernorm": {**OFF, QK: True}}
    for name in STABILIZERS:
        out[name] = {**OFF, **stabilizer_keys(name, s)}
        out[f"{name}+qk_layernorm"] = {**OFF, **stabilizer_keys(name, s), QK: True}
    return out


def nested(flat: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in flat.items():
        section, key = k.split(".")
        out.setdefault(section, {})[key] = v
    return out


def parts(s: ScaleSpec) -> List[Part]:
    return [Part("main", {"sweep": {"lrs": list(s.stabilizer_lrs), "sizes": [s.stabilizer_size],
                                    "variants": [nested(v) for v in settings(s).values()]}})]


# ------------------------------------------------------------------------------ the table

def _on(v: Any) -> bool:
    """A stabiliser key's value in the table: off is False, NaN/None or "pre"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return v not in (False, "pre", 0, "False", "false")


def setting_of(row: pd.Series) -> str:
    """The setting of a table row, from its stabiliser columns."""
    on = [name for name, (_, keys) in STABILIZERS.items()
          if all(k in row.index and _on(row[k]) and (k != "model.norm_placement" or
                                                     row[k] == v) for k, v in keys.items())]
    qk = QK in row.index and _on(row[QK])
    if not on:
        return "qk_layernorm" if qk else "none"
    return f"{on[0]}+qk_layernorm" if qk else on[0]


def label(setting: str) -> str:
    base, _, qk = setting.partition("+")
    if base in ("none", "qk_layernorm"):
        return {"none": "none", "qk_layernorm": "qk-LN"}[base]
    return STABILIZERS[base][0] + (" + qk-LN" if qk else "")


def with_settings(df: pd.DataFrame) -> pd.DataFrame:
    return P.with_seed(df).assign(**{SETTING: [setting_of(r) for _, r in df.iterrows()]})


def coarse(df: pd.DataFrame) -> pd.DataFrame:
    """The rows on the half-decade points (what LR sensitivity averages over)."""
    grid = half_decades(float(df[LR_KEY].min()), 1.0)
    return df[np.isclose(df[LR_KEY].to_numpy(float)[:, None], grid, rtol=1e-6).any(1)]


def final_value(row: pd.Series, metric: str, at: str = "last") -> float:
    c = P.curve(row, metric)
    c = c[np.isfinite(c.to_numpy(float))]
    if c.empty:
        return float("nan")
    return float(c.iloc[0] if at == "first" else c.iloc[-1])


def max_logit_after_init(g: pd.DataFrame) -> float:
    """The max attention logit of a series' runs over their log steps after step 0 (QK-clip
    acts from the first update on; the step-0 probe sees the init)."""
    peaks = []
    for _, row in g.iterrows():
        c = P.curve(row, M.ATTN_MAX_LOGIT)
        c = c[(c.index > 0) & np.isfinite(c.to_numpy(float))]
        if len(c):
            peaks.append(float(c.max()))
    return max(peaks) if peaks else float("nan")


def sensitivity_upto(df: pd.DataFrame, top: float) -> pd.DataFrame:
    """LR sensitivity per (setting, seed) over the half-decade points up to `top` (none when
    fewer than two: it would be 0 by construction)."""
    c = coarse(df)
    c = c[c[LR_KEY] <= top * (1 + 1e-9)]
    if c[LR_KEY].nunique() < 2:
        return pd.DataFrame(columns=[SETTING, P.SEED, "lr_sensitivity"])
    return P.series_stats(c, [SETTING], (float(c[LR_KEY].min()), top))


def per_seed(df: pd.DataFrame, main_top: float = math.inf) -> pd.DataFrame:
    """Per (setting, seed): LR sensitivity (over the grid, and up to `main_top`), best loss,
    highest LR within NEAR_BEST of it, the highest LR that trains, and at the grid's top LR the
    max attention logit and the lowest head's attention entropy at the end and at init."""
    top_lr = float(df[LR_KEY].max())
    sens, sens_main = sensitivity_upto(df, top_lr), sensitivity_upto(df, min(main_top, top_lr))
    rows = []
    for (setting, seed), g in df.groupby([SETTING, P.SEED], sort=True):
        g = g.sort_values(LR_KEY)
        loss, div = P.counted_loss(g)
        best = float(np.nanmin(loss)) if np.isfinite(loss).any() else float("nan")
        near = g[LR_KEY].to_numpy(float)[~div & (loss <= best + NEAR_BEST)]
        top = g[np.isclose(g[LR_KEY], top_lr)]
        r = top.iloc[0] if len(top) else None

        def of(t: pd.DataFrame) -> float:
            v = t[(t[SETTING] == setting) & (t[P.SEED] == seed)]["lr_sensitivity"]
            return float(v.iloc[0]) if len(v) else float("nan")

        rows.append({
            SETTING: setting, P.SEED: seed, "lr_sensitivity": of(sens),
            "lr_sensitivity_main": of(sens_main),
            "best_loss": best, "near_best_lr": float(near.max()) if len(near) else float("nan"),
            "top_trained_lr": top_trained_lr(g),
            # read from each run's metrics; only claim (2) needs it
            "max_logit_any_lr": (max_logit_after_init(g) if setting in ("none", "qk_clip")
                                 else float("nan")),
            "top_lr_max_logit": float(r["max_attn_logit"]) if r is not None else float("nan"),
            "top_lr_entropy": final_value(r, ENTROPY) if r is not None else float("nan"),
            "top_lr_entropy_init": (final_value(r, ENTROPY, "first") if r is not None
                                    else float("nan"))})
    return pd.DataFrame(rows)


def paired(ps: pd.DataFrame, a: str, b: str, column: str,
           f: Any = lambda x, y: x - y) -> V.Effect:
    """f(a's value, b's value) per seed, with its interval over seeds."""
    va = ps[ps[SETTING] == a].set_index(P.SEED)[column]
    vb = ps[ps[SETTING] == b].set_index(P.SEED)[column]
    seeds = va.index.intersection(vb.index)
    return V.interval(pd.Series({k: f(va[k], vb[k]) for k in seeds}, dtype=float))


def _sens(v: pd.Series) -> str:
    e = V.interval(v.to_numpy(float))
    return (f"{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}] ({e.confidence:.0%} t, n={e.n})" if e.n >= 2
            else f"{e.mean:.3f} (n={e.n})")


def two_ranges(ps: pd.DataFrame) -> bool:
    """Whether the other results' LRs stop short of the grid (then both ranges are reported)."""
    return bool(ps["lr_sensitivity_main"].notna().any() and
                not np.allclose(ps["lr_sensitivity_main"], ps["lr_sensitivity"], equal_nan=True))


def ranked(ps: pd.DataFrame, main_top: float) -> Dict[str, str]:
    """Settings by mean LR sensitivity, each with its statistics (seed means; intervals)."""
    out = {}
    means = ps.groupby(SETTING)["lr_sensitivity"].mean().sort_values()
    both = two_ranges(ps)
    for i, setting in enumerate(means.index, start=1):
        g = ps[ps[SETTING] == setting]
        main_range = (f" (up to LR {main_top:g}: {_sens(g['lr_sensitivity_main'])})"
                      if both else "")
        out[f"{i}. {label(setting)}"] = (
            f"LR sensitivity {_sens(g['lr_sensitivity'])}{main_range}; LR within {NEAR_BEST} "
            f"of best {_geo(g['near_best_lr']):.3g}; best loss {g['best_loss'].mean():.3f}; "
            f"at the top LR max logit {g['top_lr_max_logit'].median():.3g}, min-head entropy "
            f"{g['top_lr_entropy'].median():.3f}")
    return out


def _geo(v: pd.Series) -> float:
    v = v.to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(10 ** np.mean(np.log10(v))) if len(v) else float("nan")


# ------------------------------------------------------------------------------ the claims

def judge_softcap_lr(ps: pd.DataFrame, grid: Any) -> Tuple[Reproduced, str]:
    """(1): log10 of the highest-LR-that-trains ratio, qk-LN + soft-cap over qk-LN, per seed,
    against log10(1.5), its seeds' sd at least the LR `grid`'s rounding (`P.rounding_sd`:
    without it, three seeds on the same grid LRs give an interval of zero width)."""
    grid = np.unique(np.asarray(grid, float))
    grid_top = float(grid.max())
    alone = ps[ps[SETTING] == "qk_layernorm"]["top_trained_lr"]
    if len(alone) and (alone >= grid_top).any():
        return "inconclusive", (f"qk-LN alone trains at the grid's top LR {grid_top:g}: the grid "
                                "cannot show 1.5× above it")
    # a difference of two grid-rounded values: the rounding's variance twice
    arms = ps[ps[SETTING].isin(["attn_softcap+qk_layernorm", "qk_layernorm"])]["top_trained_lr"]
    e = V.with_sd_floor(paired(ps, "attn_softcap+qk_layernorm", "qk_layernorm", "top_trained_lr",
                               lambda x, y: math.log10(x / y)),
                        math.sqrt(2) * P.rounding_sd(arms, grid))
    r = V.above(e, math.log10(LR_FACTOR) - 1e-9, parts=CLAIMS)
    ratio = 10 ** e.mean if np.isfinite(e.mean) else float("nan")
    return r, (f"qk-LN + soft-cap's highest LR that trains is {ratio:.2g}× qk-LN's "
               f"(log10 ratio {e}, its sd at least the LR grid's rounding; claimed >= "
               f"log10 1.5 = {math.log10(LR_FACTOR):.3f})")


def judge_qk_clip(ps: pd.DataFrame, tau: float) -> Tuple[Reproduced, str]:
    """(2): every QK-clip run's max logit <= LOGIT_SLACK·τ, and best loss QK-clip − none below
    SMALL_LOSS_COST; inconclusive when the baseline's logits never pass τ."""
    none = ps[ps[SETTING] == "none"]["max_logit_any_lr"]
    if len(none) == 0 or not (none > tau).any():
        return "inconclusive", (f"without QK-clip the max logit never passes τ = {tau:g} "
                                f"({none.max():.3g}): nothing to clip")
    clipped = ps[ps[SETTING] == "qk_clip"]["max_logit_any_lr"]
    held = ("inconclusive" if len(clipped) < V.MIN_SEEDS else
            "true" if (clipped <= LOGIT_SLACK * tau).all() else "false")
    cost = paired(ps, "qk_clip", "none", "best_loss")
    small = V.below(cost, SMALL_LOSS_COST, parts=CLAIMS)
    return V.all_of([held, small]), (
        f"max logit with QK-clip {clipped.max():.3g} vs τ = {tau:g} ({held}; without it "
        f"{none.max():.3g}); best loss cost {cost} nats ({small}; small = below "
        f"{SMALL_LOSS_COST})")


def collapsed(ps: pd.DataFrame, setting: str) -> pd.Series:
    g = ps[ps[SETTING] == setting]
    return g["top_lr_entropy"] < COLLAPSE * g["top_lr_entropy_init"]


def judge_sigma_reparam(ps: pd.DataFrame) -> Tuple[Reproduced, str]:
    """(3): per seed at the top LR; the baseline must collapse for the claim to be testable."""
    base, sigma = collapsed(ps, "none"), collapsed(ps, "sigma_reparam")
    words = (f"at the top LR the lowest head's entropy falls below {COLLAPSE} of its init "
             f"value in {int(base.sum())}/{len(base)} seeds without σReparam, "
             f"{int(sigma.sum())}/{len(sigma)} with it")
    if min(len(base), len(sigma)) < V.MIN_SEEDS:
        return "inconclusive", words + f" (a verdict needs {V.MIN_SEEDS} seeds)"
    if not base.all():
        return "inconclusive", words + " (the baseline must collapse in every seed to test it)"
    if not sigma.any():
        return "true", words
    return ("false" if sigma.all() else "inconclusive"), words


def judge_update_clip(ps: pd.DataFrame, n_lrs: int) -> Tuple[Reproduced, str, V.Effect]:
    """(4): LR sensitivity none − update clipping, paired by seed, above 0 (`n_lrs`: half-decade
    points on the grid; with one, LR sensitivity is 0 by construction)."""
    e = paired(ps, "none", "update_clip", "lr_sensitivity")
    if n_lrs < 2:
        return ("inconclusive", "one half-decade LR on the grid: LR sensitivity is 0 by "
                "construction", e)
    r = V.above(e, V.RESOLUTION, parts=CLAIMS)
    word = {"true": "lowers", "false": "does not lower"}.get(r, "may or may not lower")
    return r, f"update clipping {word} LR sensitivity without qk-LN (none − clipped {e})", e


def redundancy(ps: pd.DataFrame, main_top: float) -> Dict[str, str]:
    """Per stabiliser: LR sensitivity (it + qk-LN) − (qk-LN), and what that says; also up to
    `main_top` when that range differs."""
    def says(name: str, column: str) -> str:
        e = paired(ps, f"{name}+qk_layernorm", "qk_layernorm", column)
        r = V.below(e, -V.RESOLUTION)
        return f"{e}: " + {"true": "adds to qk-LN", "false": "redundant with qk-LN (no lower)"}.get(
            r, "not resolved")

    out, both = {}, two_ranges(ps)
    for name in STABILIZERS:
        main_range = (f"; up to LR {main_top:g}: {says(name, 'lr_sensitivity_main')}"
                      if both else "")
        out[f"{STABILIZERS[name][0]} + qk-LN − qk-LN, LR sensitivity"] = (
            says(name, "lr_sensitivity") + main_range)
    return out


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    df = with_settings(t["main"])
    main_top = max(s.lrs)
    ps = per_seed(df, main_top)
    c1, w1 = judge_softcap_lr(ps, df[LR_KEY].unique())
    c2, w2 = judge_qk_clip(ps, s.qk_clip_tau)
    c3, w3 = judge_sigma_reparam(ps)
    c4, w4, _ = judge_update_clip(ps, coarse(df)[LR_KEY].nunique())
    why = f"(1) {c1}: {w1}; (2) {c2}: {w2}; (3) {c3}: {w3}; (4) {c4}: {w4}"
    measured = {**ranked(ps, main_top), **redundancy(ps, main_top),
                "claims (1)-(4)": f"{c1}, {c2}, {c3}, {c4}",
                "verdict rule": "all four true: true; any false: false; else inconclusive"}
    return V.all_of([c1, c2, c3, c4]), why, measured


# ------------------------------------------------------------------------------ the figure

def colour(setting: str) -> Any:
    base = setting.split("+")[0]
    order = ["none", "qk_layernorm", *STABILIZERS]
    return plt.get_cmap("tab10")(order.index(base) % 10)


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    df = with_settings(t["main"])
    main_top = max(s.lrs)
    ps = per_seed(df, main_top)
    fig, axs = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for ax, qk in zip(axs[:2], (False, True)):
        for setting, g in df.groupby(SETTING, sort=False):
            if ("qk_layernorm" in setting) != qk:
                continue
            lrs, loss, div = P.seed_mean_curve(g)
            ax.plot(lrs, loss, "o-", ms=3, color=colour(setting), label=label(setting),
                    lw=2.2 if setting in ("none", "qk_layernorm") else 1.2)
            if div.any():
                ax.plot(lrs[div], loss[div], "x", ms=8, mew=2, color=colour(setting))
        P.log_axes(ax)
        ax.set_xlabel("learning rate")
        ax.set_title("with qk-layernorm" if qk else "without qk-layernorm", fontsize=10)
        ax.legend(fontsize=7)
    axs[0].set_ylabel("final eval loss (seed mean; × diverged)")
    P.same_y(axs[:2])
    order = ps.groupby(SETTING)["lr_sensitivity"].mean().sort_values(ascending=False).index
    ax = axs[2]
    for i, setting in enumerate(order):
        e = V.interval(ps[ps[SETTING] == setting]["lr_sensitivity"].to_numpy(float))
        err = [[e.mean - e.lo], [e.hi - e.mean]] if e.n >= 2 else None
        ax.barh(i, e.mean, xerr=err, color=colour(setting), capsize=2,
                hatch="//" if "qk_layernorm" in setting else None, edgecolor="white")
    if two_ranges(ps):
        short = ps.groupby(SETTING)["lr_sensitivity_main"].mean()[order]
        ax.plot(short.to_numpy(), range(len(order)), "D", color="black", ms=4)
    ax.set_yticks(range(len(order)), [label(x) for x in order], fontsize=7)
    ax.set_xlabel("LR sensitivity (lower is better; 95% interval over seeds)")
    ax.set_title("ranked, best on top (hatched: with qk-LN)" + (
        f"\n◆: over LRs up to {main_top:g} only (the other results' range)" if two_ranges(ps)
        else ""), fontsize=9)
    size = s.stabilizer_size or {}
    fig.suptitle(f"Stabilisers from the baseline without qk-layernorm, d={size.get('d_model')} "
                 f"L={size.get('n_layers')}: LR vs loss and LR sensitivity", fontsize=11)
    fig.tight_layout()
    return fig


# The figure's panels in a W&B report (python -m analysis.dashboard <result dir>).
DASHBOARD = [lr_vs_loss(split=(QK,)),
             PanelSpec("max attention logit vs LR", "summary:max_attn_logit", x="config:optim.lr",
                       log_x=True, log_y=True, colour="setting"),
             PanelSpec("lowest head's attention entropy", ENTROPY, layers=True, colour="lr")]

RESULT = Result("stabilizers", CLAIM, parts, judge, figure, DASHBOARD, paper="ours")

if __name__ == "__main__":
    main(RESULT)
