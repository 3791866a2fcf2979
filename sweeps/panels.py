"""Statistics and figure panels the paper's figures share (LR curves, LR sensitivity, logits),
and the noise-aware comparisons every verdict uses.

Every loss drawn is the loss LR sensitivity counts: min(final eval loss, loss at init), with
diverged or NaN runs at the loss at init, marked ×.

Seeds (`sweep.seeds`): statistics are computed per seed (`series_stats` keeps a `train.seed`
column), effects are paired by seed and summarised by their mean and a Student-t interval over
seeds (`Effect`, its method and n printed beside it). A verdict says "true" or "false" only
with MIN_SEEDS seeds or more and where the interval excludes no effect; otherwise the
comparison is inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from analysis.figures import (log_axes, lr_colour, lr_colourbar, lr_norm,  # noqa: F401
                              size_label)
from analysis.load import load_metrics
from analysis.sensitivity import counted_loss, series_lr_stats
from proxies.config import DEFAULT_LR_RANGE, LR_KEY
from proxies.config import SEED_KEY as SEED  # a column only when sweep.seeds > 1

SHAPE = ["model.d_model", "model.n_layers"]  # a model size, whatever its toggles add
CONFIDENCE = 0.95  # two-sided, of every interval; fixed before any data
# A verdict ("true"/"false") needs this many seeds; with fewer, every rule says "inconclusive".
MIN_SEEDS = 3
Reproduced = str  # "true" | "false" | "inconclusive" (sweeps.core.Reproduced)


def with_seed(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `train.seed` column (0 where the sweep ran one seed)."""
    return df if SEED in df.columns else df.assign(**{SEED: 0})


def seed_mean_curve(g: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LRs, counted loss averaged over seeds, diverged in any seed) of one series' rows."""
    g = with_seed(g).sort_values(LR_KEY)
    loss, div = counted_loss(g)
    per = pd.DataFrame({"lr": g[LR_KEY].to_numpy(float), "loss": loss, "div": div})
    agg = per.groupby("lr", sort=True).agg(loss=("loss", "mean"), div=("div", "any"))
    return agg.index.to_numpy(float), agg["loss"].to_numpy(float), agg["div"].to_numpy(bool)


def series_stats(df: pd.DataFrame, by: Sequence[str],
                 lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> pd.DataFrame:
    """Per (size, *by, seed): params, LRs, best LR (grid and interpolated), best loss, LR
    sensitivity. Sorted by `by`, size, then seed; `seed_mean` averages over seeds."""
    df = with_seed(df)
    keys = list(dict.fromkeys(list(by) + SHAPE + [SEED]))
    rows = []
    for vals, g in df.groupby(keys, sort=True, dropna=False):
        rows.append({**dict(zip(keys, vals if isinstance(vals, tuple) else (vals,))),
                     "n_params_nonembed": float(g["n_params_nonembed"].max()),
                     "lrs": len(g), **series_lr_stats(g, lr_range)})
    return pd.DataFrame(rows).sort_values(list(dict.fromkeys(list(by) + ["n_params_nonembed",
                                                                          SEED])),
                                          ignore_index=True)


def seed_mean(stats: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`series_stats` averaged over seeds per (size, *by); `seeds` counts them and
    `lr_sensitivity_sd` is their spread (NaN for one seed)."""
    keys = list(dict.fromkeys(list(by) + SHAPE))
    num = [c for c in stats.columns if c not in keys + [SEED] and
           pd.api.types.is_numeric_dtype(stats[c])]
    g = stats.groupby(keys, sort=True, dropna=False)
    out = g[num].mean().reset_index()
    out["seeds"] = g[SEED].nunique().to_numpy()
    out["lr_sensitivity_sd"] = g["lr_sensitivity"].std(ddof=1).to_numpy()
    return out.sort_values(list(dict.fromkeys(list(by) + ["n_params_nonembed"])),
                           ignore_index=True)


# ---------------------------------------------------------------- effects with their noise

@dataclass(frozen=True)
class Effect:
    """A statistic's mean over n seeds and its Student-t interval (mean ± t·sd/√n, n − 1
    degrees of freedom: exact for normal seed-to-seed noise at any n ≥ 2; for a paired
    difference, the paired t-interval). NaN bounds below two seeds."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float = float("nan")  # the seeds' standard deviation (ddof 1)
    confidence: float = CONFIDENCE
    # The per-seed values behind it and their seeds (effects.csv), when built from values.
    values: Tuple[float, ...] = ()
    seeds: Tuple[Any, ...] = ()

    @property
    def decided(self) -> bool:
        """Enough seeds for a verdict (MIN_SEEDS) and a finite interval."""
        return self.n >= MIN_SEEDS and bool(np.isfinite([self.lo, self.hi]).all())

    @property
    def above_zero(self) -> bool:
        """The interval lies above 0 (with MIN_SEEDS seeds or more)."""
        return self.decided and self.lo > 0

    @property
    def below_zero(self) -> bool:
        return self.decided and self.hi < 0

    def at(self, confidence: float) -> "Effect":
        """The same statistic's interval at another confidence (e.g. Bonferroni-Holm's)."""
        return replace(t_interval_from(self.mean, self.sd, self.n, confidence),
                       values=self.values, seeds=self.seeds)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (n={self.n}, no interval)"
        return (f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] "
                f"({self.confidence:.0%} t, n={self.n})")


def t_interval_from(mean: float, sd: float, n: int, confidence: float = CONFIDENCE) -> Effect:
    if n < 2 or not np.isfinite(sd):
        return Effect(mean, float("nan"), float("nan"), n, sd, confidence)
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    return Effect(mean, mean - half, mean + half, n, sd, confidence)


def interval(values: Sequence[float] | pd.Series, confidence: float = CONFIDENCE) -> Effect:
    """The mean of `values` (one per seed; non-finite ones dropped) with its Student-t
    interval. A Series' index names the seeds (else they are numbered 0, 1, ...)."""
    seeds = list(values.index) if isinstance(values, pd.Series) else list(range(len(values)))
    kept = [(k, float(x)) for k, x in zip(seeds, np.asarray(values, float)) if np.isfinite(x)]
    v = np.asarray([x for _, x in kept], float)
    if len(v) == 0:
        return Effect(float("nan"), float("nan"), float("nan"), 0)
    sd = float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")
    return replace(t_interval_from(float(np.mean(v)), sd, len(v), confidence),
                   values=tuple(v.tolist()), seeds=tuple(_plain(k) for k, _ in kept))


def _plain(seed: Any) -> Any:
    return seed.item() if hasattr(seed, "item") else seed


def paired_effects(stats: pd.DataFrame, by: str, a: Any, b: Any,
                   column: str = "lr_sensitivity") -> Dict[str, Effect]:
    """Per model shape (d, L), in size order: `column` under `a` minus under `b`, paired by seed
    (positive: `b` lowers it). Shapes, not param counts, pair the runs: a toggle such as
    qk-layernorm adds a few parameters."""
    stats = with_seed(stats)
    out = {}
    order = stats.groupby(SHAPE)["n_params_nonembed"].min().sort_values()
    for shape in order.index:
        g = stats[(stats[SHAPE[0]] == shape[0]) & (stats[SHAPE[1]] == shape[1])]
        va = g[g[by] == a].set_index(SEED)[column]
        vb = g[g[by] == b].set_index(SEED)[column]
        seeds = va.index.intersection(vb.index)
        if len(seeds):
            out[size_label(order[shape])] = interval((va[seeds] - vb[seeds]).astype(float))
    return out


# ------------------------------------------------------- reading one interval into a verdict
# Every rule reads an `Effect` the same way: with fewer than MIN_SEEDS seeds it says
# "inconclusive"; otherwise "true" when the whole interval is on the claimed side of the bound,
# "false" when none of it is, "inconclusive" when it straddles the bound. Under no effect (the
# statistic at the bound) a 95% interval says "true" or "false" 5% of the time in all
# (tests/test_verdicts_stats.py simulates it).

def _interval(e: Effect) -> bool:
    return e.decided


# A verdict that is a conjunction of k sub-claims (`all_of`) is "true" only when all are, which
# needs no correction, but "false" when any one is: k chances. Each rule therefore takes `parts`
# = k and says "false" only at Bonferroni's level 1 − 5%/k (tests/test_verdicts_null.py measures
# every result's whole verdict on null tables).

def _against(e: Effect, parts: int) -> Effect:
    """The interval that decides "false" for one of `parts` sub-claims."""
    return e if parts <= 1 else e.at(1 - (1 - e.confidence) / parts)


def above(e: Effect, bound: float = 0.0, parts: int = 1) -> Reproduced:
    """The claim "the statistic lies above `bound`" (one of `parts` sub-claims)."""
    if not _interval(e):
        return "inconclusive"
    if e.lo > bound:
        return "true"
    return "false" if _against(e, parts).hi <= bound else "inconclusive"


def below(e: Effect, bound: float = 0.0, parts: int = 1) -> Reproduced:
    """The claim "the statistic lies below `bound`" (one of `parts` sub-claims)."""
    if not _interval(e):
        return "inconclusive"
    if e.hi < bound:
        return "true"
    return "false" if _against(e, parts).lo >= bound else "inconclusive"


def within(e: Effect, margin: float, parts: int = 1) -> Reproduced:
    """An equivalence claim: the statistic lies inside (−margin, margin); "false" when the
    interval lies wholly outside (one of `parts` sub-claims)."""
    if not _interval(e):
        return "inconclusive"
    if -margin < e.lo and e.hi < margin:
        return "true"
    f = _against(e, parts)
    return "false" if f.lo >= margin or f.hi <= -margin else "inconclusive"


def all_of(verdicts: Sequence[Reproduced]) -> Reproduced:
    """A conjunction: true when every part is, false when any part is, else inconclusive."""
    if any(v == "false" for v in verdicts):
        return "false"
    return "true" if verdicts and all(v == "true" for v in verdicts) else "inconclusive"


def overall(main_claim: Reproduced, required: Sequence[Reproduced]) -> Reproduced:
    """A figure's verdict: its main claim decides "false" and "inconclusive"; "true" needs every
    required part true as well (a main claim shown while a required part is not is
    "inconclusive": the figure is only partly reproduced)."""
    if main_claim != "true":
        return main_claim
    return "true" if all(r == "true" for r in required) else "inconclusive"


def fmt_effects(effects: Dict[str, Effect]) -> str:
    return "; ".join(f"{k}: {e}" for k, e in effects.items())


# LR-sensitivity differences smaller than this (nats) are no effect: below what the final eval
# loss resolves between runs (the laptop seed spread of LR sensitivity is ~1e-2).
RESOLUTION = 1e-3


def every_size_verdict(effects: Dict[str, Effect], subject: str,
                       effect: str = "lowers LR sensitivity",
                       resolution: float = RESOLUTION) -> Tuple[Reproduced, str]:
    """(reproduced, why) for "`subject` `effect` at every size" from per-size effects (positive
    = the claimed direction): true when every size's interval lies above `resolution` (all k
    must hold, so no correction is needed); false when one size's interval lies below
    −`resolution` at Bonferroni-Holm's level for k sizes (confidence 1 − 5%/k: "any size
    contradicts" is k tests); otherwise inconclusive with the intervals."""
    if not effects:
        return "inconclusive", "no size has finished runs of both settings"
    shown = fmt_effects(effects)
    k = len(effects)
    holm = {name: e.at(1 - (1 - CONFIDENCE) / k) for name, e in effects.items()}
    against = [name for name, e in holm.items() if e.decided and e.hi < -resolution]
    if against:
        return "false", (f"{subject} does the opposite at {', '.join(against)} (interval below "
                         f"0 at {1 - (1 - CONFIDENCE) / k:.1%} for {k} sizes, Holm): {shown}")
    if all(e.decided and e.lo > resolution for e in effects.values()):
        return "true", f"{subject} {effect} at every size, every interval above 0: {shown}"
    n = min(e.n for e in effects.values())
    why = (f"{n} seed(s); a verdict needs {MIN_SEEDS}" if n < MIN_SEEDS else
           f"an interval reaches within {resolution:g} of 0")
    return "inconclusive", f"{subject} {effect}? {why}: {shown}"


def trend_effect(stats: pd.DataFrame, column: str = "lr_sensitivity") -> Effect:
    """Slope of `column` per decade of non-embedding params (least squares), per seed, with its
    interval: does the statistic rise with size?"""
    stats = with_seed(stats)
    slopes = {}
    for seed, g in stats.groupby(SEED):
        g = g.dropna(subset=[column])
        if g["n_params_nonembed"].nunique() >= 2:
            slopes[seed] = float(np.polyfit(np.log10(g["n_params_nonembed"]), g[column], 1)[0])
    return interval(pd.Series(slopes, dtype=float))


def colours(values: Sequence[Any], cmap: str = "viridis") -> Dict[Any, Any]:
    """Ordered values -> colours along a sequential map (small to large)."""
    values = sorted(set(values))
    cm = plt.get_cmap(cmap)
    return {v: cm(0.1 + 0.8 * i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def lr_loss_panel(ax: plt.Axes, df: pd.DataFrame, title: str, by: str = "n_params_nonembed",
                  label: Callable[[Any], str] = size_label, cmap: str = "viridis",
                  legend_title: str = "non-emb. params") -> None:
    """Final loss vs LR (log x), a line per value of `by` coloured small to large."""
    col = colours(df[by].dropna().unique(), cmap)
    for v, g in df.groupby(by, sort=True):
        lrs, loss, div = seed_mean_curve(g)
        ax.plot(lrs, loss, "o-", ms=3.5, color=col[v], label=label(v))
        if div.any():
            ax.plot(lrs[div], loss[div], "x", ms=9, mew=2, color=col[v])
    log_axes(ax)
    ax.set_xlabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title, fontsize=7, title_fontsize=7)


def sensitivity_panel(ax: plt.Axes, stats: pd.DataFrame, by: str,
                      label: Callable[[Any], str], styles: Optional[Dict[Any, dict]] = None,
                      x: str = "n_params_nonembed") -> None:
    """LR sensitivity vs non-embedding params (log x), a line per value of `by`: the mean over
    seeds, with ± one seed standard deviation as error bars when there are several."""
    if SEED in stats.columns and stats[SEED].nunique() > 1:
        stats = seed_mean(stats, [by])
    for v, g in stats.groupby(by, sort=True):
        g = g.sort_values(x)
        sd = g["lr_sensitivity_sd"] if "lr_sensitivity_sd" in g.columns else None
        ax.errorbar(g[x], g["lr_sensitivity"], yerr=sd, fmt="o-", capsize=3, label=label(v),
                    **(styles or {}).get(v, {}))
    log_axes(ax)
    ax.set_xlabel("non-embedding params")
    ax.set_ylabel("LR sensitivity")
    ax.legend(fontsize=7)


def logit_vs_lr_panel(ax: plt.Axes, df: pd.DataFrame, by: str, label: Callable[[Any], str],
                      column: str = "max_attn_logit") -> None:
    """Max attention logit vs LR (log-log), a colour per size, a line style per `by` value."""
    col = colours(df["n_params_nonembed"].dropna().unique())
    styles = ["-", "--", ":", "-."]
    for j, (v, gv) in enumerate(df.groupby(by, sort=True)):
        for n, g in gv.groupby("n_params_nonembed", sort=True):
            per_lr = g.groupby(LR_KEY, sort=True)[column].median()  # over seeds
            ax.plot(per_lr.index, per_lr.to_numpy(), styles[j % 4], marker="o", ms=3,
                    color=col[n], label=f"{size_label(n)}, {label(v)}")
    log_axes(ax, x=True, y=True)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("max attention logit")
    ax.legend(fontsize=6, ncol=2)


def compare_sensitivity(stats: pd.DataFrame, by: str, a: Any, b: Any) -> Dict[str, Any]:
    """Per model shape (d, L), in size order: (LR sensitivity under `a`, under `b`), means over
    seeds (`paired_effects` gives their difference with its interval)."""
    stats = seed_mean(stats, [by])
    rows = {}
    order = stats.groupby(SHAPE)["n_params_nonembed"].min().sort_values()
    for shape in order.index:
        g = stats[(stats[SHAPE[0]] == shape[0]) & (stats[SHAPE[1]] == shape[1])]
        sa = g.loc[g[by] == a, "lr_sensitivity"]
        sb = g.loc[g[by] == b, "lr_sensitivity"]
        if len(sa) and len(sb):
            rows[size_label(order[shape])] = (float(sa.iloc[0]), float(sb.iloc[0]))
    return rows


def fmt_pairs(pairs: Dict[str, Tuple[float, float]]) -> str:
    return "; ".join(f"{k}: {a:.3f} → {b:.3f}" for k, (a, b) in pairs.items())




def curve(row: pd.Series, metric: str) -> pd.Series:
    """One run's `metric` over steps (empty if never logged)."""
    m = load_metrics(Path(row["sweep_dir"]), row["run_dir"])
    return m[metric].dropna() if metric in m.columns else pd.Series(dtype=float)




def comparison_figure(df: pd.DataFrame, key: str, values: Sequence[Any],
                      label: Callable[[Any], str], title: str, extra: int = 0
                      ) -> Tuple[plt.Figure, List[plt.Axes]]:
    """The paper's two-setting layout: LR vs loss under each setting (shared y), then LR
    sensitivity vs params (red: first setting, blue: second); `extra` more axes returned."""
    fig, axs = plt.subplots(1, 3 + extra, figsize=(4.5 * (3 + extra), 3.8))
    for ax, v in zip(axs[:2], values):
        lr_loss_panel(ax, df[df[key] == v], label(v))
    axs[0].set_ylabel("final eval loss (× diverged)")
    same_y(axs[:2])
    sensitivity_panel(axs[2], series_stats(df, [key]), key, label,
                      {values[0]: {"color": "C3"}, values[1]: {"color": "C0"}})
    axs[2].set_title("LR sensitivity", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig, list(axs[3:])


def same_y(axs: Sequence[plt.Axes]) -> None:
    """One y range over panels already drawn (sharing after plotting would clip the later
    panels to the first one's range)."""
    lo = min(ax.get_ylim()[0] for ax in axs)
    hi = max(ax.get_ylim()[1] for ax in axs)
    for ax in axs:
        ax.set_ylim(lo, hi)
