"""Depth vs width (paper §3.3): scaling depth raises LR sensitivity faster than scaling width."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from analysis.dashboard import PanelSpec, lr_vs_loss, sensitivity_vs_params
from analysis.figures import log_axes
from sweeps import panels as P
from sweeps.core import Part, Result, ScaleSpec, Tables, main

CLAIM = "scaling depth raises LR sensitivity faster than scaling width"


def parts(s: ScaleSpec):
    sizes = list({(x["d_model"], x["n_layers"]): x for x in s.widths + s.depths}.values())
    return [Part("main", {"sweep": {"lrs": s.lrs, "sizes": sizes}})]


def paths(df, s: ScaleSpec):
    """{'width': rows of the width path, 'depth': rows of the depth path} (both hold the base)."""
    base = s.widths[0]
    return {"width": df[df["model.n_layers"] == base["n_layers"]],
            "depth": df[df["model.d_model"] == base["d_model"]]}


def slope(stats) -> float:
    """d(LR sensitivity) / d(log10 params) by least squares."""
    g = stats.dropna(subset=["lr_sensitivity"])
    if g["n_params_nonembed"].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log10(g["n_params_nonembed"]), g["lr_sensitivity"], 1)[0])


def matched_sizes(st) -> dict:
    """{params: (width-path, depth-path) LR sensitivity} where both paths reach the same size
    (within 5%), the base excluded."""
    out = {}
    w, d = st["width"], st["depth"]
    base = min(w["n_params_nonembed"].min(), d["n_params_nonembed"].min())
    for r in w.itertuples():
        close = d[(d["n_params_nonembed"] - r.n_params_nonembed).abs()
                  <= 0.05 * r.n_params_nonembed]
        if r.n_params_nonembed > 1.05 * base and len(close):
            out[P.size_label(r.n_params_nonembed)] = [round(r.lr_sensitivity, 3),
                                                      round(close["lr_sensitivity"].iloc[0], 3)]
    return out


def judge(t: Tables, s: ScaleSpec):
    st = {k: P.series_stats(v, []) for k, v in paths(t["main"], s).items()}
    sl = {k: slope(v) for k, v in st.items()}
    measured = {f"LR sensitivity along {k} (small → large)": [round(x, 3) for x in
                                                             v.sort_values("n_params_nonembed")
                                                             ["lr_sensitivity"]]
                for k, v in st.items()}
    measured["slope per decade of params (width / depth)"] = [round(sl["width"], 3),
                                                               round(sl["depth"], 3)]
    matched = matched_sizes(st)
    if matched:
        measured["LR sensitivity at equal params (width / depth)"] = matched
    if not all(np.isfinite(list(sl.values()))):
        return "inconclusive", "too few finished sizes along a path to fit a slope", measured
    if sl["depth"] > sl["width"]:
        return "true", (f"LR sensitivity changes by {sl['depth']:+.3f} per decade of params "
                        f"when scaling depth vs {sl['width']:+.3f} when scaling width"), measured
    return "false", (f"LR sensitivity changes by {sl['depth']:+.3f} per decade of params when "
                     f"scaling depth, not more than when scaling width "
                     f"({sl['width']:+.3f})"), measured


def figure(t: Tables, s: ScaleSpec) -> plt.Figure:
    p = paths(t["main"], s)
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 3.8))
    b = s.widths[0]
    P.lr_loss_panel(axs[0], p["width"], f"width path (depth {b['n_layers']})",
                    by="model.d_model", label=lambda d: f"d={int(d)}", legend_title="width")
    P.lr_loss_panel(axs[1], p["depth"], f"depth path (width {b['d_model']})",
                    by="model.n_layers", label=lambda n: f"L={int(n)}", legend_title="depth",
                    cmap="magma")
    axs[0].set_ylabel("final eval loss (× diverged)")
    P.same_y(axs[:2])
    for k, c in (("width", "C0"), ("depth", "C3")):
        st = P.series_stats(p[k], []).sort_values("n_params_nonembed")
        axs[2].plot(st["n_params_nonembed"], st["lr_sensitivity"], "o-", color=c,
                    label=f"scaling {k}")
    log_axes(axs[2])
    axs[2].set_xlabel("non-embedding params")
    axs[2].set_ylabel("LR sensitivity")
    axs[2].set_title("LR sensitivity vs params", fontsize=10)
    axs[2].legend(fontsize=8)
    fig.suptitle("Scaling depth vs scaling width", fontsize=11)
    fig.tight_layout()
    return fig


def DASHBOARD(s: ScaleSpec) -> list[PanelSpec]:
    """The paper figure's panels in a W&B report (python -m analysis.dashboard <result dir>):
    the width path keeps the base depth, the depth path the base width."""
    b = s.widths[0]
    return [lr_vs_loss(f"width path (depth {b['n_layers']})",
                       where={"model.n_layers": b["n_layers"]}),
            lr_vs_loss(f"depth path (width {b['d_model']})",
                       where={"model.d_model": b["d_model"]}),
            sensitivity_vs_params()]


RESULT = Result("depth_width", CLAIM, parts, judge, figure)

if __name__ == "__main__":
    main(RESULT)
