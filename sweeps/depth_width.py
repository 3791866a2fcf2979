"""Depth vs width (paper §3.2.3, Fig. 7; Fig. E.2 without qk-layernorm): scale depth at a fixed
width and width at a fixed depth, head dim fixed, from the §2.1 baseline (qk-layernorm on,
z-loss 1e-4, independent decay 1e-4).

The paper (Fig. 7): "Independently scaling depth increases LR sensitivity at a faster rate than
scaling width, though also produces a model with lower loss at the largest scale we consider."
Its paths: depth at d = 512, width at 6 layers (`ScaleSpec.depths`, `ScaleSpec.widths`; at
gpu/paper scale the paper's own, at laptop/tiny smaller ones sharing their first size).

Verdict (the main part only): per seed, the slope of LR sensitivity per decade of non-embedding
params along each path (least squares), and their paired difference depth − width. The claim is
two statements, judged as a conjunction: depth raises LR sensitivity (the depth slope's
t interval over seeds above 0) and faster than width (the paired difference's interval
above 0). True when both intervals lie above 0, false when either lies at or below 0 (width
raises it at least as fast, or depth does not raise it at all), inconclusive otherwise or with
one seed. The width path's own slope is reported with its interval (`panels.trend_effect`).

Also reported, not judged: which path has the lower best loss at its largest size (per seed,
width − depth, with its interval; the two largest sizes are named with their params, since a
grid need not end both paths at the same size), and LR sensitivity where both paths reach the
same size.

Fig. E.2 (no qk-layernorm) is a second part with its own line in `measured` (spec: "logit growth
occurs more at scale whichever is scaled"): per seed and path, the slope of log10(max attention
logit) per decade of params, averaged over the LRs of the grid; true when both paths' intervals
lie above 0, false when either lies at or below 0, inconclusive otherwise.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from analysis.dashboard.panels import PanelSpec, lr_vs_loss, sensitivity_vs_params
from analysis.figures import log_axes
from sweeps import panels as P
from sweeps import verdicts as V
from sweeps.core import Part, Reproduced, Result, ScaleSpec, Tables, main
from proxies.config import LR_KEY

CLAIM = ("with qk-layernorm, scaling depth raises LR sensitivity faster than scaling width "
         "(and which path has the lower loss at the largest size)")
PATHS = ("width", "depth")
LOGIT = "max_attn_logit"  # max over layers, heads and logged steps (proxies/members.py)
# Two paths reach "the same size" within 5%: their sizes rarely match exactly, and 5% is far
# below the factor of 2 or more between neighbouring sizes of a path.
SAME_SIZE = 0.05


def parts(s: ScaleSpec) -> List[Part]:
    """Both paths' sizes, the shared first size once; Fig. E.2 turns qk-layernorm off."""
    sizes = list({(x["d_model"], x["n_layers"]): x for x in s.widths + s.depths}.values())
    sweep = {"lrs": s.lrs, "sizes": sizes}
    return [Part("main", {"sweep": sweep}),
            Part("no_qk_layernorm", {"model": {"qk_layernorm": False}, "sweep": sweep})]


def shapes(sizes: Sequence[Dict[str, int]]) -> set:
    return {(int(x["d_model"]), int(x["n_layers"])) for x in sizes}


def paths(df: pd.DataFrame, s: ScaleSpec) -> Dict[str, pd.DataFrame]:
    """{'width': rows of the width path, 'depth': rows of the depth path}: each the rows whose
    (d, L) is one of the path's sizes (both hold the shared first size)."""
    if df.empty:
        return {k: df for k in PATHS}
    shape = list(zip(df[P.SHAPE[0]].astype(int), df[P.SHAPE[1]].astype(int)))
    return {k: df[[x in shapes(sz) for x in shape]]
            for k, sz in (("width", s.widths), ("depth", s.depths))}


# --------------------------------------------------------------------------- rules





def slopes_per_seed(stats: pd.DataFrame, column: str = "lr_sensitivity") -> pd.Series:
    """Per seed: least-squares slope of `column` per decade of non-embedding params (NaN with
    fewer than two sizes)."""
    out = {}
    for seed, g in P.with_seed(stats).groupby(P.SEED):
        g = g.dropna(subset=[column])
        out[seed] = (float(np.polyfit(np.log10(g["n_params_nonembed"]), g[column], 1)[0])
                     if g["n_params_nonembed"].nunique() >= 2 else float("nan"))
    return pd.Series(out, dtype=float)


def judge_rates(st: Dict[str, pd.DataFrame]) -> Tuple[Reproduced, str, Dict[str, V.Effect]]:
    """Depth raises LR sensitivity (its slope per decade of params), and faster than width
    (depth − width slope, paired by seed)."""
    sl = {k: slopes_per_seed(v) for k, v in st.items()}
    diff = (sl["depth"] - sl["width"]).dropna()
    eff = {"depth − width": V.interval(diff.astype(float)),
           **{k: P.trend_effect(v) for k, v in st.items()}}
    raises, faster = V.above(eff["depth"], parts=2), V.above(eff["depth − width"], parts=2)
    verb = {"true": "raises", "false": "does not raise", "inconclusive": "may raise"}
    than = {"true": "faster than", "false": "not faster than", "inconclusive": "maybe faster than"}
    return V.all_of([raises, faster]), (
        f"depth {verb[raises]} LR sensitivity ({eff['depth']} per decade of params), "
        f"{than[faster]} width ({eff['width']}): paired difference depth − width "
        f"{eff['depth − width']}"), eff


def largest(stats: pd.DataFrame) -> pd.DataFrame:
    """The rows (one per seed) of a path's largest size."""
    return stats[stats["n_params_nonembed"] == stats["n_params_nonembed"].max()]


def lower_loss_at_largest(st: Dict[str, pd.DataFrame]) -> str:
    """Which path has the lower best loss at its largest size: width − depth per seed."""
    w, d = (largest(st[k]).set_index(P.SEED) for k in PATHS)
    if w.empty or d.empty:
        return "no finished largest size on one path"
    seeds = w.index.intersection(d.index)
    e = V.interval((w.loc[seeds, "best_loss"] - d.loc[seeds, "best_loss"]).astype(float))
    # Lower only where the interval excludes 0 (equal losses are no difference).
    r = "true" if e.above_zero else "false" if e.below_zero else "inconclusive"
    who = {"true": "depth", "false": "width"}
    nw, nd = float(w["n_params_nonembed"].iloc[0]), float(d["n_params_nonembed"].iloc[0])
    sizes = (f"width path {P.size_label(nw)} vs depth path {P.size_label(nd)}"
             + ("" if abs(nw - nd) <= SAME_SIZE * max(nw, nd) else " (unequal sizes)"))
    if r == "inconclusive":
        return f"no clear difference: best loss width − depth {e} ({sizes})"
    return f"{who[r]} path lower: best loss width − depth {e} ({sizes})"


def matched_sizes(st: Dict[str, pd.DataFrame]) -> Dict[str, List[float]]:
    """{params: [width-path, depth-path] LR sensitivity (seed means)} where both paths reach the
    same size (within 5%), the shared first size excluded."""
    w, d = (P.seed_mean(st[k], []) for k in PATHS)
    if w.empty or d.empty:
        return {}
    base = min(w["n_params_nonembed"].min(), d["n_params_nonembed"].min())
    out = {}
    for r in w.itertuples():
        close = d[(d["n_params_nonembed"] - r.n_params_nonembed).abs()
                  <= SAME_SIZE * r.n_params_nonembed]
        if r.n_params_nonembed > (1 + SAME_SIZE) * base and len(close):
            out[P.size_label(r.n_params_nonembed)] = [
                round(float(r.lr_sensitivity), 3), round(float(close["lr_sensitivity"].iloc[0]), 3)]
    return out


def logit_slopes(df: pd.DataFrame) -> pd.Series:
    """Per seed: the slope of log10(max attention logit) per decade of non-embedding params at
    each LR (sizes with a finite, positive logit; LRs with fewer than two such sizes skipped),
    averaged over the LRs."""
    out = {}
    for seed, g in P.with_seed(df).groupby(P.SEED):
        per_lr = []
        for _, h in g.groupby(LR_KEY):
            h = h[np.isfinite(h[LOGIT].astype(float)) & (h[LOGIT].astype(float) > 0)]
            if h["n_params_nonembed"].nunique() >= 2:
                per_lr.append(float(np.polyfit(np.log10(h["n_params_nonembed"].astype(float)),
                                               np.log10(h[LOGIT].astype(float)), 1)[0]))
        if per_lr:
            out[seed] = float(np.mean(per_lr))
    return pd.Series(out, dtype=float)


def judge_e2(off: Dict[str, pd.DataFrame]) -> Tuple[Reproduced, str, Dict[str, V.Effect]]:
    """Fig. E.2: does the max attention logit grow with size along both paths without qk-LN?"""
    if all(v.empty for v in off.values()):
        return "inconclusive", "no finished runs without qk-layernorm", {}
    eff = {k: V.interval(logit_slopes(v)) for k, v in off.items()}
    rs = {k: V.above(e, parts=len(eff)) for k, e in eff.items()}
    words = {"true": "grows", "false": "does not grow", "inconclusive": "grows?"}
    return V.all_of(list(rs.values())), "; ".join(
        f"{k} path: max attention logit {words[rs[k]]} with size, {e} decades per decade of "
        "params (mean over LRs)" for k, e in eff.items()), eff


def judge(t: Tables, s: ScaleSpec) -> Tuple[Reproduced, str, Dict[str, Any]]:
    st = {k: P.series_stats(v, []) for k, v in paths(t["main"], s).items()}
    r, why, rates = judge_rates(st)
    off = paths(t.get("no_qk_layernorm", pd.DataFrame()), s)
    e2, e2_why, e2_effects = judge_e2(off)
    measured: Dict[str, Any] = {
        f"LR sensitivity along {k}, small → large (seed means)":
            [round(x, 3) for x in P.seed_mean(v, [])["lr_sensitivity"]] if len(v) else []
        for k, v in st.items()}
    measured["slopes per decade of params, and depth − width paired by seed"] = why
    measured["LR sensitivity slope per decade of params (interval over seeds)"] = rates
    measured["lower best loss at the largest size (reported)"] = lower_loss_at_largest(st)
    matched = matched_sizes(st)
    if matched:
        measured["LR sensitivity at equal params (width / depth)"] = matched
    spread = pd.concat([P.seed_mean(v, [])["lr_sensitivity_sd"] for v in st.values()])
    measured["seed spread of LR sensitivity (sd, median over sizes)"] = (
        round(float(np.nanmedian(spread)), 4) if spread.notna().any() else "1 seed")
    measured["Fig. E.2, no qk-layernorm (second part, not the verdict)"] = f"{e2}: {e2_why}"
    measured["Fig. E.2: max-logit slope, decades per decade of params, per path"] = e2_effects
    return r, why, measured


# -------------------------------------------------------------------------------- the figure

def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    rows = [("main", "qk-layernorm (Fig. 7)")]
    if not t.get("no_qk_layernorm", pd.DataFrame()).empty:
        rows.append(("no_qk_layernorm", "no qk-layernorm (Fig. E.2)"))
    fig, axs = plt.subplots(len(rows), 3, figsize=(13.5, 3.9 * len(rows)), squeeze=False)
    for ax_row, (part, title) in zip(axs, rows):
        p = paths(t[part], s)
        draw_paths(ax_row[:2], p, s, title)
        if part == "main":
            sensitivity_panel(ax_row[2], p)
        else:
            logit_panel(ax_row[2], p)
    fig.suptitle(f"Scaling depth (width {s.depths[0]['d_model']}) vs width (depth "
                 f"{s.widths[0]['n_layers']}), head dim fixed; seed means", fontsize=11)
    fig.tight_layout()
    return fig


def draw_paths(axs: Sequence[plt.Axes], p: Dict[str, pd.DataFrame], s: ScaleSpec,
               title: str) -> None:
    P.lr_loss_panel(axs[0], p["width"], f"width path (depth {s.widths[0]['n_layers']}), {title}",
                    by="model.d_model", label=lambda d: f"d={int(d)}", legend_title="width")
    P.lr_loss_panel(axs[1], p["depth"], f"depth path (width {s.depths[0]['d_model']}), {title}",
                    by="model.n_layers", label=lambda n: f"L={int(n)}", legend_title="depth",
                    cmap="magma")
    axs[0].set_ylabel("final eval loss (× diverged)")
    P.same_y(axs)


def sensitivity_panel(ax: plt.Axes, p: Dict[str, pd.DataFrame]) -> None:
    for k, c in (("width", "C0"), ("depth", "C3")):
        if p[k].empty:
            continue
        m = P.seed_mean(P.series_stats(p[k], []), [])
        ax.errorbar(m["n_params_nonembed"], m["lr_sensitivity"], yerr=m["lr_sensitivity_sd"],
                    fmt="o-", capsize=3, color=c, label=f"scaling {k}")
    log_axes(ax)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("LR sensitivity (± 1 sd over seeds)")
    ax.set_title("LR sensitivity vs params", fontsize=10)
    ax.legend(fontsize=8)


def logit_panel(ax: plt.Axes, p: Dict[str, pd.DataFrame]) -> None:
    """Max attention logit vs params per path: the geometric mean over LRs of the seed median,
    the quantity whose slope the E.2 rule averages."""
    for k, c in (("width", "C0"), ("depth", "C3")):
        g = p[k][np.isfinite(p[k][LOGIT].astype(float)) & (p[k][LOGIT].astype(float) > 0)]
        if g.empty:
            continue
        med = g.groupby(["n_params_nonembed", LR_KEY])[LOGIT].median().reset_index()
        geo = med.groupby("n_params_nonembed")[LOGIT].apply(lambda v: 10 ** np.log10(v).mean())
        ax.plot(geo.index, geo.to_numpy(), "o-", color=c, label=f"scaling {k}")
    log_axes(ax, x=True, y=True)
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # logits often span under a decade
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("max attention logit (geo. mean over LRs)")
    ax.set_title("attention logit growth without qk-LN", fontsize=10)
    ax.legend(fontsize=8)


def DASHBOARD(s: ScaleSpec) -> list[PanelSpec]:
    """The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>):
    the width path keeps the base depth, the depth path the base width."""
    return [lr_vs_loss(f"width path (depth {s.widths[0]['n_layers']})",
                       where={"model.n_layers": s.widths[0]["n_layers"]}),
            lr_vs_loss(f"depth path (width {s.depths[0]['d_model']})",
                       where={"model.d_model": s.depths[0]["d_model"]}),
            sensitivity_vs_params()]


RESULT = Result("depth_width", CLAIM, parts, judge, figure, DASHBOARD, paper="Fig 7")

if __name__ == "__main__":
    main(RESULT)
