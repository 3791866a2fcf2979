"""Distributions over training: the histogram families, the signed-log axis, the figure
and the GIF animations."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.dynamics_report.records import (Records)  # noqa: E402


N_HIST_STEPS = 5  # probe steps overlaid in the static histogram figure


N_GIF_FRAMES = 30  # at most this many frames per animation (keeps all GIFs near 1 MB)


STEP_CMAP = plt.cm.viridis


@dataclass(frozen=True)
class Family:
    """A site family of the histogram figure: which tensors may represent it."""

    name: str  # file-name part: hist_<name>.gif
    title: str
    kind: str  # act | weight | grad
    member: Callable[[str], bool]


def _act(pattern: str) -> Callable[[str], bool]:
    return lambda s: re.fullmatch(pattern, s) is not None


def _block_matrix(path: str) -> bool:
    # Embedding gradients are mostly exact zeros (rows of tokens not in the batch), so their
    # kurtosis measures sparsity; the block matrices show the tails.
    return path.startswith("block_") and not path.endswith(("/bias", "/scale"))


FAMILIES = (
    Family("resid_out", "residual stream out of a block", "act", _act(r"block_\d+/resid_out")),
    Family("q", "attention queries q", "act", _act(r"block_\d+/attn/q")),
    Family("k", "attention keys k", "act", _act(r"block_\d+/attn/k")),
    Family("probs", "attention probabilities", "act", _act(r"block_\d+/attn/probs")),
    Family("down_in", "MLP down-projection input", "act", _act(r"block_\d+/mlp/down_in")),
    Family("logits", "output logits", "act", _act(r"logits")),
    Family("weights", "weight matrices in the blocks", "weight", _block_matrix),
    Family("grads", "gradients of the block matrices", "grad", _block_matrix),
)


def pick_member(rec: Records, fam: Family) -> Optional[str]:
    """The family's tensor with the largest kurtosis at the last step: where heavy tails show
    first (for weights, the least Gaussian matrix)."""
    cands = [s for s in rec.sites(fam.kind) if fam.member(s)
             and f"hist/{fam.kind}/{s}" in rec.arrays(rec.last_step)]
    if not cands:
        return None
    kurt = [rec.last(f"{fam.kind}/{s}/kurtosis") for s in cands]
    return cands[int(np.argmax(np.nan_to_num(kurt, nan=-np.inf)))]


@dataclass(frozen=True)
class SignedLogAxis:
    """x = sign(v)·(log10|v| − floor) for the log bins of proxies.dynamics.hist_edges, the
    central bin (|v| < 1e-8, zeros included) at x = 0. The empty band of magnitudes between
    the central bin and the smallest occupied bin is cut out, so data fill the axis; a side
    without data (attention probabilities are >= 0) is cut to a margin."""

    x_B: np.ndarray  # x of every bin (nan: bins cut out)
    centre: int  # index of the central bin
    floor: float
    x_max: float
    top_decade: int
    sides: Tuple[bool, bool]  # (negative side has data, positive side has data)

    @staticmethod
    def fit(edges: np.ndarray, per_decade: int, counts: Sequence[np.ndarray]) -> "SignedLogAxis":
        p = edges[len(edges) // 2:]
        P = len(p)
        b = np.arange(2 * P + 1)
        sign = np.sign(b - P)
        j = np.where(b > P, b - P - 1, P - 1 - b)  # magnitude index, 0 at 1e-8, P-1 beyond 1e4
        centre = np.log10(p[0]) + (j + 0.5) / per_decade
        occupied = np.any(np.stack(counts) > 0, axis=0) & (b != P)
        j_min = int(j[occupied].min()) if occupied.any() else P // 2
        j_max = int(j[occupied].max()) if occupied.any() else P // 2
        floor = np.log10(p[0]) + (j_min - 1) / per_decade  # one empty bin between 0 and data
        x = np.where(b == P, 0.0, sign * (centre - floor))
        x = np.where((b != P) & (j >= j_min), x, np.nan)  # the central bin is drawn as a marker
        top = np.log10(p[0]) + (j_max + 1) / per_decade
        return SignedLogAxis(x_B=x, centre=P, floor=float(floor), x_max=float(top - floor),
                             top_decade=int(np.floor(top + 1e-9)),
                             sides=(bool(occupied[:P].any()), bool(occupied[P + 1:].any())))

    def apply(self, ax: plt.Axes) -> None:
        # Decades at least half a decade from 0 (closer ones would print over the 0 label),
        # at most ~4 a side, counted down from the largest.
        decades = [d for d in range(math.ceil(self.floor), self.top_decade + 1)
                   if d - self.floor >= 0.5]
        decades = decades[::-1][::max(1, math.ceil(len(decades) / 4))]
        neg, pos = self.sides if any(self.sides) else (True, True)
        ticks, labels = [0.0], ["0"]
        for on, sgn, fmt in ((pos, 1, "$10^{{{}}}$"), (neg, -1, "$-10^{{{}}}$")):
            if on:
                ticks += [sgn * (d - self.floor) for d in decades]
                labels += [fmt.format(d) for d in decades]
        ax.set_xticks(ticks, labels)
        margin = 0.1 * self.x_max
        ax.set_xlim(-self.x_max if neg else -margin, self.x_max if pos else margin)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)

    def central_share(self, counts: np.ndarray) -> float:
        total = counts.sum()
        return float(counts[self.centre] / total) if total else 0.0


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    s = counts / total if total else np.zeros(len(counts))
    return np.where(s > 0, s, np.nan)  # log y: empty bins are gaps, not −inf


@dataclass
class HistFamily:
    """One family's histograms at the probe steps, ready to draw."""

    family: Family
    site: str
    counts: Dict[int, np.ndarray]  # step -> counts over the fixed bins
    axis: SignedLogAxis

    @property
    def key(self) -> str:
        return f"{self.family.kind}/{self.site}"

    def y_floor(self) -> float:
        # Half the smallest non-zero share possible: one entry of the largest histogram.
        return 0.5 / max(c.sum() for c in self.counts.values())


def hist_family(rec: Records, fam: Family, steps: Sequence[int]) -> Optional[HistFamily]:
    from proxies.dynamics import hist_edges  # jax import: only when histograms are drawn

    site = pick_member(rec, fam)
    if site is None:
        return None
    counts = {s: rec.arrays(s)[f"hist/{fam.kind}/{site}"] for s in steps
              if f"hist/{fam.kind}/{site}" in rec.arrays(s)}
    if not counts:
        return None
    edges = hist_edges(per_decade=rec.per_decade)
    return HistFamily(fam, site, counts, SignedLogAxis.fit(edges, rec.per_decade,
                                                           list(counts.values())))


def _step_norm(rec: Records) -> Normalize:
    return Normalize(vmin=float(rec.steps[0]), vmax=float(max(rec.steps[-1], rec.steps[0] + 1)))


def _draw_hist(ax: plt.Axes, hf: HistFamily, counts: np.ndarray, colour: Any,
               lw: float = 1.2) -> Tuple[Any, Any]:
    """The log bins as a step line and the central bin (|x| < 1e-8) as a diamond at 0."""
    (line,) = ax.plot(hf.axis.x_B, _shares(counts), drawstyle="steps-mid", lw=lw, color=colour)
    c = hf.axis.central_share(counts)
    (dot,) = ax.plot([0.0] if c > 0 else [], [c] if c > 0 else [], "D", ms=5, color=colour)
    return line, dot


def _hist_axes(ax: plt.Axes, hf: HistFamily, rec: Records) -> None:
    hf.axis.apply(ax)
    ax.set_yscale("log")
    ax.set_ylim(hf.y_floor(), 1.5)
    k = rec.last(f"{hf.key}/kurtosis")
    ax.set_title(f"{hf.family.title}: {hf.site}\n(largest kurtosis in the family: {k:.3g} at "
                 f"step {rec.last_step})", fontsize=9)
    ax.set_xlabel("value x (signed log scale; ◆ at 0: |x| < 1e-8, zeros)", fontsize=8)
    ax.set_ylabel("share of entries per bin", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, lw=0.5)


def _step_colourbar(fig: Figure, axes: Any, rec: Records) -> None:
    sm = ScalarMappable(norm=_step_norm(rec), cmap=STEP_CMAP)
    fig.colorbar(sm, ax=axes, label="training step", fraction=0.03, pad=0.02)


def fig_hist_over_training(hfs: List[HistFamily], rec: Records) -> Figure:
    ncols = 2
    nrows = math.ceil(len(hfs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    norm = _step_norm(rec)
    for ax, hf in zip(axes.flat, hfs):
        for s, c in hf.counts.items():
            _draw_hist(ax, hf, c, STEP_CMAP(norm(s)))
        _hist_axes(ax, hf, rec)
    for ax in axes.flat[len(hfs):]:
        ax.set_visible(False)
    _step_colourbar(fig, axes, rec)
    steps = sorted({s for hf in hfs for s in hf.counts})
    fig.suptitle(f"Distributions over training (fixed bins, {rec.per_decade} per decade of |x|); "
                 f"steps {', '.join(map(str, steps))}", fontsize=11)
    return fig


def write_hist_gif(hf: HistFamily, rec: Records, path: Path, fps: float = 3.0) -> None:
    """Frames = probe steps: the histogram at that step over the first one (grey).

    The axes are drawn once and each frame blits only the moving artists (a full redraw per
    frame costs ~0.1 s); frames are written by Pillow, as matplotlib's PillowWriter does.
    """
    from PIL import Image

    norm = _step_norm(rec)
    steps = sorted(hf.counts)
    fig, ax = plt.subplots(figsize=(6.2, 3.5), dpi=72, layout="constrained")
    _draw_hist(ax, hf, hf.counts[steps[0]], "0.7", lw=1)
    line, dot = _draw_hist(ax, hf, hf.counts[steps[0]], "k", lw=1.6)
    _hist_axes(ax, hf, rec)
    ax.set_title("")  # the two-line centre title of the static figure
    ax.set_title(f"{hf.family.title}: {hf.site}", fontsize=9, loc="left")
    ax.set_title(f"grey: step {steps[0]}", fontsize=8, loc="right", color="0.4")
    label = ax.text(0.98, 0.95, "", transform=ax.transAxes, ha="right", va="top", fontsize=10,
                    weight="bold")
    moving = (line, dot, label)
    for a in moving:
        a.set_animated(True)  # left out of the background
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    frames = []
    for s in steps:
        counts = hf.counts[s]
        line.set_data(hf.axis.x_B, _shares(counts))
        c = hf.axis.central_share(counts)
        dot.set_data([0.0] if c > 0 else [], [c] if c > 0 else [])
        for a in (line, dot):
            a.set_color(STEP_CMAP(norm(s)))
        label.set_text(f"step {s}")
        fig.canvas.restore_region(background)
        for a in moving:
            ax.draw_artist(a)
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
    plt.close(fig)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                   loop=0)
