"""The verdict vocabulary every result uses: an effect with its small-sample interval (`Effect`,
`interval`) and the rules that read intervals into "true" | "false" | "inconclusive" (`above`,
`below`, `within`, `all_of`, `overall`, `every_size_verdict`, `outcome`).

Seeds: statistics are computed per seed, effects are paired by seed and summarised by their
mean and a Student-t interval over seeds (its method and n printed beside it). A verdict says
"true" or "false" only with MIN_SEEDS seeds or more and where the interval excludes no effect;
otherwise the comparison is inconclusive. tests/test_verdicts_stats.py and
tests/test_verdicts_null.py simulate every rule and every result's whole judge.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Literal, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

CONFIDENCE = 0.95  # two-sided, of every interval; fixed before any data
# A verdict ("true"/"false") needs this many seeds; with fewer, every rule says "inconclusive".
MIN_SEEDS = 3
Reproduced = Literal["true", "false", "inconclusive"]
# Bounds within this of 0 are 0 (`outcome`): a least-squares slope through equal values comes
# out ±1e-17.
FLOAT_NOISE = 1e-12


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


def with_sd_floor(e: Effect, floor: float) -> Effect:
    """`e` with its seeds' sd raised to `floor` where it is smaller: for statistics of values
    read off a grid (an LR grid), which carry at least the grid's rounding error even when
    every seed lands on the same grid point (their sd then 0, an interval of zero width)."""
    if not np.isfinite(e.sd) or e.sd >= floor:
        return e
    return replace(t_interval_from(e.mean, floor, e.n, e.confidence), values=e.values,
                   seeds=e.seeds)


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


def outcome(e: Effect, claimed: int = +1) -> Reproduced:
    """A one-statistic verdict: "true" when the interval lies on the claimed side of 0
    (`claimed` = +1: above, -1: below), "false" when no part of it does (at 0 included: no
    resample shows the claimed direction), "inconclusive" otherwise and with fewer than two
    seeds; bounds within FLOAT_NOISE of 0 count as 0."""
    return above(e, FLOAT_NOISE) if claimed > 0 else below(e, -FLOAT_NOISE)


def trend_words(e: Effect, what: str = "LR sensitivity") -> str:
    """How `what` moves with size (a `panels.trend_effect`), or why the grid cannot tell."""
    if e.n == 0 or not np.isfinite(e.mean):
        return f"the grid cannot show how {what} moves with size (fewer than two sizes)"
    r = outcome(e)
    word = ("falls" if e.below_zero else
            {"true": "rises", "false": "does not rise"}.get(r, "may or may not rise"))
    return f"{what} {word} with size ({e} per decade of params)"


