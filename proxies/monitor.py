"""Early warning (`train.monitor`): forecast, from each signal's recent trend, the step at which
it crosses its limit, before the loss shows anything.

The signals are the mechanisms the paper names (../shared/spec/paper.md), read every update from
the train step (proxies/step.py `MONITORED`):

- `attn_max_logit`: the max attention logit over layers and heads; the paper's runs whose max
  logit passed ~1e4 all diverged (Fig 9) -> limit `attn_logit_limit`, above.
- `log_z_abs`: |mean log Z| of the batch; output-logit divergence is log Z drifting far from 0
  (Fig 3-4; z-loss holds it there) -> `log_z_limit`, above.
- `logit_drift`: |mean output logit - its value at the first update|; the paper's output logits
  "become very negative" while CE, shift-invariant, need not move -> `logit_drift_limit`, above.
- `grad_rms_over_eps`: block 0's first MLP layer's gradient RMS / Adam ε; near ε the update
  Δ = m / (√v + ε) shrinks (Fig 11-13) -> `grad_rms_eps_factor` (10: within 10× of ε), below.
- `update_rms_ratio`: that layer's update RMS (÷ LR) over its median in the first `window`
  updates; update-RMS collapse is the symptom the paper's ε study shows -> `update_rms_floor`,
  below.

A forecast fits a line and a parabola to the last `window` values (by least squares; on a log
scale for the signals that grow or shrink by factors, with an exponential besides on a linear
scale; the form kept is the one with the smallest AICc), and solves for the first step after the
newest at which the fitted trend, heading toward the limit now, crosses it. A warning fires when
that step is at most `horizon` updates ahead (or the value is already past the limit) on
`confirm` checks in a row (a check every `every` updates once the warm-up is over, and at every
update past the limit), once per signal per run. The reactive detectors large trainers use are
here too, for scoring against the same records (`reactive_warnings`): a loss or gradient-norm
z-score above 6 over the last 128 updates (OLMo-core, MaxText), a loss above 10× the largest
seen so far (Megatron-LM).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# Signal names, as a run's signals.jsonl and events.jsonl hold them.
ATTN_MAX_LOGIT = "attn_max_logit"
LOG_Z_ABS = "log_z_abs"
LOGIT_DRIFT = "logit_drift"
GRAD_RMS_OVER_EPS = "grad_rms_over_eps"
UPDATE_RMS_RATIO = "update_rms_ratio"
SIGNALS = (ATTN_MAX_LOGIT, LOG_Z_ABS, LOGIT_DRIFT, GRAD_RMS_OVER_EPS, UPDATE_RMS_RATIO)
# What a run's signals.jsonl holds per update: the step's readings the signals are derived from
# (proxies/step.py MONITORED) and the loss and gradient norm the reactive detectors read.
RECORDED = ("loss", "grad_norm", "attn_max_logit", "log_z_mean", "logit_mean", "mlp0_grad_rms",
            "mlp0_update_rms")
EVENT = "early_warning"  # an events.jsonl row's "event"


@dataclass(frozen=True)
class Limit:
    """A signal's limit, the side of it that is trouble, and whether its trend is forecast on
    a log scale (a signal that grows or shrinks by factors: a straight line there is an
    exponential, and a shrinking positive value never reaches 0)."""
    value: float
    above: bool  # True: trouble is above the limit; False: below it
    log: bool = False

    def past(self, x: float) -> bool:
        return x >= self.value if self.above else x <= self.value


def limits(attn_logit_limit: float, log_z_limit: float, logit_drift_limit: float,
           grad_rms_eps_factor: float, update_rms_floor: float) -> Dict[str, Limit]:
    """Each signal's limit from `train.monitor`'s settings."""
    return {ATTN_MAX_LOGIT: Limit(attn_logit_limit, True, log=True),
            LOG_Z_ABS: Limit(log_z_limit, True),  # already a log (nats)
            LOGIT_DRIFT: Limit(logit_drift_limit, True),  # nats
            GRAD_RMS_OVER_EPS: Limit(grad_rms_eps_factor, False, log=True),
            UPDATE_RMS_RATIO: Limit(update_rms_floor, False, log=True)}


# --- the forecast -------------------------------------------------------------------------


def _aicc(rss: float, n: int, k: int) -> float:
    """Akaike's criterion with the small-sample correction, for a least-squares fit."""
    rss = max(rss, 1e-300)
    if n - k - 1 <= 0:
        return math.inf
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _poly_crossing(coef: np.ndarray, level: float, after: float, until: float) -> Optional[float]:
    """First t in (after, until] where c0 + c1 t (+ c2 t²) equals `level` (coefficients lowest
    power first)."""
    c = [float(coef[0]) - level] + [float(x) for x in coef[1:]]
    if len(c) == 3 and c[2] != 0:
        disc = c[1] ** 2 - 4 * c[2] * c[0]
        if disc < 0:
            return None
        roots = [(-c[1] + sgn * math.sqrt(disc)) / (2 * c[2]) for sgn in (-1, 1)]
    elif c[1] != 0:
        roots = [-c[0] / c[1]]
    else:
        return None
    inside = [r for r in roots if after < r <= until]
    return min(inside) if inside else None


def _heading(coef: np.ndarray, level: float, at: float) -> bool:
    """Whether the polynomial (lowest power first) moves toward `level` at `at`: a trend moving
    away from its limit now is not forecast to turn back (that would extrapolate the window's
    curvature, mostly its noise, beyond it)."""
    value = sum(float(c) * at ** i for i, c in enumerate(coef))
    slope = sum(i * float(c) * at ** (i - 1) for i, c in enumerate(coef) if i)
    return (level - value) * slope > 0


@dataclass(frozen=True)
class Fit:
    form: str  # line | parabola | exponential
    crossing: Optional[float]  # the step at which the fitted trend crosses the limit, if it does


def forecast(steps: Sequence[float], values: Sequence[float], limit: Limit,
             horizon: float) -> Fit:
    """The trend of (steps, values) that fits best, and the first step within `horizon` after
    the newest at which it crosses `limit` (None: not within the horizon).

    Steps are centred and scaled before fitting, so a parabola over steps 1e5..1e5+50 is as well
    conditioned as one over 0..50. On a linear scale an exponential is fitted (in log space)
    too, to values that keep one sign; on a log scale (`limit.log`) the line and the parabola
    are fitted to log values (the line is then an exponential), non-positive values dropped."""
    t = np.asarray(steps, float)
    y = np.asarray(values, float)
    ok = np.isfinite(t) & np.isfinite(y)
    if limit.log:
        ok &= y > 0
    t, y = t[ok], y[ok]
    if limit.log:
        fit = _forecast(t, np.log(y), math.log(limit.value), horizon, exponential=False)
        return Fit({"line": "exponential", "parabola": "log-parabola"}.get(fit.form, fit.form),
                   fit.crossing)
    return _forecast(t, y, limit.value, horizon, exponential=True)


def _forecast(t: np.ndarray, y: np.ndarray, level: float, horizon: float,
              exponential: bool) -> Fit:
    """`forecast` on one scale: the AICc-best of a line, a parabola (and an exponential) through
    (t, y), and its first crossing of `level` within `horizon` after t[-1]."""
    n = len(t)
    if n < 4:
        return Fit("none", None)
    t0, scale = t.mean(), max(float(np.ptp(t)), 1.0)
    u = (t - t0) / scale
    after, until = (t[-1] - t0) / scale, (t[-1] + horizon - t0) / scale
    fits: List[Tuple[float, str, Optional[float]]] = []
    V_nx3 = np.stack([np.ones_like(u), u, u * u], axis=1)
    for k, form in ((2, "line"), (3, "parabola")):
        coef, *_ = np.linalg.lstsq(V_nx3[:, :k], y, rcond=None)
        rss = float(np.sum((V_nx3[:, :k] @ coef - y) ** 2))
        cross = _poly_crossing(coef, level, after, until) if _heading(coef, level, after) else None
        fits.append((_aicc(rss, n, k), form, cross))
    sign = np.sign(y[-1])
    if exponential and sign != 0 and np.all(np.sign(y) == sign) and np.sign(level) == sign:
        (a, b), *_ = np.linalg.lstsq(V_nx3[:, :2], np.log(sign * y), rcond=None)  # log|y| = a + bu
        rss = float(np.sum((sign * np.exp(a + b * u) - y) ** 2))
        cross = None
        if b != 0:
            uc = (math.log(sign * level) - a) / b
            cross = uc if after < uc <= until else None
        fits.append((_aicc(rss, n, 2), "exponential", cross))
    _, form, cross = min(fits, key=lambda f: f[0])
    return Fit(form, None if cross is None else t0 + cross * scale)


# --- the monitor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlyWarning:
    """One early warning: the signal, its value and limit now, and where its trend crosses."""
    signal: str
    step: int  # the update at which the warning fired
    value: float
    limit: float
    forecast_step: Optional[float]  # None when the value is already past the limit
    form: str

    @property
    def steps_ahead(self) -> Optional[float]:
        return None if self.forecast_step is None else self.forecast_step - self.step

    def record(self) -> Dict[str, object]:
        """Its events.jsonl fields."""
        return {"event": EVENT, "signal": self.signal, "step": self.step,
                "value": self.value, "limit": self.limit,
                "forecast_step": (None if self.forecast_step is None
                                  else round(self.forecast_step, 1)),
                "steps_ahead": (None if self.steps_ahead is None
                                else round(self.steps_ahead, 1)),
                "trend": self.form}

    def line(self) -> str:
        """Its one console line."""
        where = ("is past its limit" if self.forecast_step is None else
                 f"crosses it at step ~{self.forecast_step:.0f} ({self.steps_ahead:.0f} ahead, "
                 f"{self.form} trend)")
        return (f"early warning at step {self.step}: {self.signal} = {self.value:.4g}, limit "
                f"{self.limit:.4g}, {where}")


@dataclass
class Monitor:
    """One run's monitor: feed it each update's raw readings (`observe`), get warnings back.

    Raw readings are the step's: the max attention logit, the mean log Z, the mean output logit,
    block 0's first MLP layer's grad and update RMS; `derive` turns them into the signals."""
    limits: Dict[str, Limit]
    window: int = 50
    horizon: int = 100
    confirm: int = 3
    eps: float = 1e-8
    every: int = 1  # forecast every N updates (the readings are kept every update)
    start: int = 0  # the first update forecast (the warm-up's end: before it the LR ramp, not
    # an instability, drives every trend); a value past its limit warns at any update
    history: Dict[str, Deque[Tuple[int, float]]] = field(default_factory=dict)
    warned: Dict[str, EarlyWarning] = field(default_factory=dict)
    streak: Dict[str, int] = field(default_factory=dict)
    logit_at_start: Optional[float] = None
    update_rms_ref: Optional[float] = None
    _update_rms_early: List[float] = field(default_factory=list)

    def derive(self, step: int, raw: Dict[str, float]) -> Dict[str, float]:
        """The signals of update `step`'s raw readings (NaN where a reading is missing)."""
        out = {s: math.nan for s in SIGNALS}
        if (x := raw.get("attn_max_logit")) is not None:
            out[ATTN_MAX_LOGIT] = float(x)
        if (x := raw.get("log_z_mean")) is not None:
            out[LOG_Z_ABS] = abs(float(x))
        if (x := raw.get("logit_mean")) is not None and math.isfinite(x):
            if self.logit_at_start is None:
                self.logit_at_start = float(x)
            out[LOGIT_DRIFT] = abs(float(x) - self.logit_at_start)
        if (x := raw.get("mlp0_grad_rms")) is not None:
            out[GRAD_RMS_OVER_EPS] = float(x) / self.eps
        if (x := raw.get("mlp0_update_rms")) is not None and math.isfinite(x):
            if self.update_rms_ref is None and step >= self.start:
                self._update_rms_early.append(float(x))
                if len(self._update_rms_early) >= self.window:
                    self.update_rms_ref = float(np.median(self._update_rms_early))
            if self.update_rms_ref:
                out[UPDATE_RMS_RATIO] = float(x) / self.update_rms_ref
        return out

    def observe(self, step: int, raw: Dict[str, float]) -> List[EarlyWarning]:
        """Take one update's readings; the warnings that fire at it."""
        return self.judge(step, self.derive(step, raw))

    def judge(self, step: int, signals: Dict[str, float]) -> List[EarlyWarning]:
        """Take one update's signals (`derive`'s); the warnings that fire at it."""
        fired = []
        for name, value in signals.items():
            if not math.isfinite(value) or name not in self.limits:
                continue
            hist = self.history.setdefault(name, deque(maxlen=self.window))
            hist.append((step, value))
            if name in self.warned or not self._checks(name, step, value):
                continue
            w = self._check(name, step, value, hist)
            self.streak[name] = self.streak.get(name, 0) + 1 if w else 0
            if w and self.streak[name] >= self.confirm:
                self.warned[name] = w
                fired.append(w)
        return fired

    def _checks(self, name: str, step: int, value: float) -> bool:
        """Whether this update is one of the signal's checks: every `every`th update, and any
        update whose value is past the limit."""
        return step % self.every == 0 or self.limits[name].past(value)

    def _check(self, name: str, step: int, value: float,
               hist: Deque[Tuple[int, float]]) -> Optional[EarlyWarning]:
        lim = self.limits[name]
        if lim.past(value):
            return EarlyWarning(name, step, value, lim.value, None, "past")
        if len(hist) < self.window or step < self.start:
            return None
        ts, ys = zip(*hist)
        fit = forecast(ts, ys, lim, self.horizon)
        if fit.crossing is None:
            return None
        return EarlyWarning(name, step, value, lim.value, fit.crossing, fit.form)


def from_config(mo: Any, eps: float, warmup_steps: int) -> Monitor:
    """A fresh monitor with `train.monitor`'s settings (a config node or its plain dict) for a
    run whose Adam ε is `eps` and whose warm-up lasts `warmup_steps` updates."""
    get = (lambda k: mo[k]) if isinstance(mo, dict) else (lambda k: getattr(mo, k))  # noqa: E731
    lim = limits(*(float(get(k)) for k in ("attn_logit_limit", "log_z_limit",
                                             "logit_drift_limit", "grad_rms_eps_factor",
                                             "update_rms_floor")))
    return Monitor(limits=lim, window=int(get("window")), horizon=int(get("horizon")),
                   confirm=int(get("confirm")), every=int(get("every")), eps=float(eps),
                   start=int(warmup_steps))


class Replayed(NamedTuple):
    warnings: List[EarlyWarning]
    signals: List[Dict[str, float]]  # per row, the signals the monitor derived from it


def replay(monitor: Monitor, rows: Iterable[Dict[str, float]]) -> Replayed:
    """Feed recorded signal rows ({"step": s, raw reading: value, ...}) through a monitor."""
    out = Replayed([], [])
    for row in rows:
        signals = monitor.derive(int(row["step"]), row)
        out.signals.append(signals)
        out.warnings.extend(monitor.judge(int(row["step"]), signals))
    return out


# --- the reactive detectors ------------------------------------------------------------------

ZSCORE_SIGMA, ZSCORE_WINDOW, ZSCORE_MIN = 6.0, 128, 32
LOSS_RATIO = 10.0


def zscore_first(steps: Sequence[int], values: Sequence[float], sigma: float = ZSCORE_SIGMA,
                 window: int = ZSCORE_WINDOW, min_samples: int = ZSCORE_MIN) -> Optional[int]:
    """The first step whose value lies more than `sigma` standard deviations above the mean of
    the previous `window` values (with at least `min_samples` of them), or is not finite."""
    past: Deque[float] = deque(maxlen=window)
    for s, v in zip(steps, values):
        if not math.isfinite(v):
            return int(s)
        if len(past) >= min_samples:
            mean, std = float(np.mean(past)), float(np.std(past))
            if v > mean + sigma * max(std, 1e-3 * abs(mean) + 1e-8):
                return int(s)
        past.append(v)
    return None


def ratio_first(steps: Sequence[int], values: Sequence[float],
                ratio: float = LOSS_RATIO) -> Optional[int]:
    """The first step whose loss exceeds `ratio` × the largest loss seen before it, or is not
    finite."""
    top = -math.inf
    for s, v in zip(steps, values):
        if not math.isfinite(v) or (top > 0 and v > ratio * top):
            return int(s)
        top = max(top, v)
    return None


def reactive_warnings(rows: Sequence[Dict[str, float]]) -> Dict[str, Optional[int]]:
    """Each reactive detector's first warning step on a run's signal rows."""
    steps = [int(r["step"]) for r in rows]
    loss = [float(r.get("loss", math.nan)) for r in rows]
    grad = [float(r.get("grad_norm", math.nan)) for r in rows]
    return {"loss z-score > 6 (128 steps)": zscore_first(steps, loss),
            "grad-norm z-score > 6 (128 steps)": zscore_first(steps, grad),
            "loss > 10x largest seen": ratio_first(steps, loss)}
