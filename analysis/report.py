"""The sweep report: tables, predictions, figures, and a note for everything it could not do."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import figures
from analysis.fits import FitError, QuadraticLogFit, eps_crossover, fit_quadratic_log
from analysis.load import finished, is_size_key, load_sweep, series_keys, toggle_keys
from analysis.sensitivity import series_lr_stats
from proxies.config import LR_KEY, DEFAULT_LR_RANGE, DEFAULT_TARGETS, DEFAULT_THRESHOLD
from proxies import metric_names as M
from proxies.sweep_table import EDITED, TABLE, table_damaged, write_table


@dataclass
class Report:
    series: pd.DataFrame
    predictions: pd.DataFrame
    eps_warnings: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    figures: Dict[str, str] = field(default_factory=dict)


def series_table(df: pd.DataFrame,
                 lr_range: Tuple[float, float] = DEFAULT_LR_RANGE) -> pd.DataFrame:
    """Per series: params, finished runs, best LR and loss, LR sensitivity (spec definition:
    diverged and NaN runs count as the loss at init)."""
    keys = series_keys(df)
    out = []
    groups = df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]
    for vals, g in groups:
        vals = vals if isinstance(vals, tuple) else (vals,)
        done = finished(g)
        s = series_lr_stats(done, lr_range)
        out.append({**dict(zip(keys, vals)), "n_params_nonembed": g["n_params_nonembed"].max(),
                    "runs": f"{len(done)}/{len(g)}", "diverged": int(done["diverged"].sum()),
                    "best_lr": s["best_lr"], "best_loss": s["best_loss"],
                    "lr_sensitivity": s["lr_sensitivity"]})
    tab = pd.DataFrame(out)
    if len(tab) and keys:  # toggles first, then size: rows of one setting stay together
        order = [k for k in keys if not is_size_key(k)] + ["n_params_nonembed"]
        tab = tab.sort_values(order, ignore_index=True)
    return tab


def lr_grid_note(df: pd.DataFrame, lr_range: Tuple[float, float]) -> List[str]:
    """A note when series were swept over different LRs inside the LR-sensitivity range: their
    sensitivities then average over unlike grids and do not compare."""
    keys = series_keys(df)
    if not keys:
        return []
    lo, hi = lr_range
    done = finished(df)
    inside = done[(done[LR_KEY] >= lo * (1 - 1e-9)) & (done[LR_KEY] <= hi * (1 + 1e-9))]
    grids = {vals: tuple(sorted(g[LR_KEY].unique()))
             for vals, g in inside.groupby(keys, sort=True, dropna=False)}
    if len(set(grids.values())) <= 1:
        return []
    sizes = sorted({len(g) for g in grids.values()})
    n_grids = len(set(grids.values()))
    return [f"series were swept over different LR grids inside [{lo:g}, {hi:g}] ({n_grids} "
            f"distinct grids of {', '.join(map(str, sizes))} LRs, unfinished runs included): their "
            "LR sensitivities average over unlike points and do not compare; sweep one grid"]


def held_out_mask(n_params: pd.Series, hold_out: Sequence[float]) -> pd.Series:
    """Rows whose size is within 10% of a held-out size (sizes are given as non-emb params)."""
    mask = pd.Series(False, index=n_params.index)
    for h in hold_out:
        mask |= (n_params - h).abs() <= 0.1 * h
    return mask


def attn_predictions(df: pd.DataFrame, targets: Sequence[float], threshold: float,
                     notes: List[str], hold_out: Sequence[float] = ()
                     ) -> Tuple[pd.DataFrame, Dict[tuple, QuadraticLogFit]]:
    """Per toggle setting and LR: quadratic fit of max attention logit in ln(params) on the
    sizes not held out, its prediction at each held-out size (with the measured value) and at
    each target size, flagged where it passes `threshold`."""
    keys = toggle_keys(df)
    done = finished(df).dropna(subset=["max_attn_logit", "n_params_nonembed"])
    held = held_out_mask(done["n_params_nonembed"], hold_out)
    rows, fits, skipped, exact, negative = [], {}, [], 0, 0
    groups = done.groupby(keys + [LR_KEY], sort=True, dropna=False)
    for vals, g in groups:
        vals = vals if isinstance(vals, tuple) else (vals,)
        fit_pts = g[~held.loc[g.index]]
        try:
            fit = fit_quadratic_log(fit_pts["n_params_nonembed"], fit_pts["max_attn_logit"])
        except FitError as e:
            skipped.append(str(e))
            continue
        fits[vals] = fit
        exact += fit.dof == 0
        checks = [(float(r.n_params_nonembed), float(r.max_attn_logit))
                  for r in g[held.loc[g.index]].itertuples()]
        for t, measured in checks + [(float(t), np.nan) for t in targets]:
            pred = fit.predict(t)
            negative += pred < 0
            rows.append({**dict(zip(keys + [LR_KEY], vals)), "target_params": t,
                         "held_out": np.isfinite(measured), "predicted_max_logit": pred,
                         "measured_max_logit": measured, "diverges": bool(pred > threshold),
                         "points": fit.n_points, "dof": fit.dof,
                         "rms_residual": float(np.sqrt(np.mean(fit.residuals ** 2))),
                         "coef_x2": fit.coef[0], "coef_x": fit.coef[1], "coef_1": fit.coef[2]})
    if skipped:  # one note, not one per LR
        notes.append(f"attention-logit fit skipped for {len(skipped)} of {len(groups)} "
                     f"(setting, LR) pairs: {skipped[0]}")
    if exact:
        check = ("only the held-out rows check them" if len(rows) and any(
            r["held_out"] for r in rows) else "nothing checks their extrapolation; sweep a 4th "
            "size or hold one out (sweep.hold_out / --hold-out) to test them")
        notes.append(f"{exact} attention-logit fits pass through exactly 3 sizes (0 residual "
                     f"degrees of freedom): {check}")
    if negative:
        notes.append(f"{negative} extrapolated max logits are negative: the quadratic turns "
                     "down outside the fitted sizes, so those predictions are meaningless")
    return pd.DataFrame(rows), fits


# A power law of gradient RMS extrapolated further than this past the largest model trained is
# not a prediction.
EPS_EXTRAPOLATION = 1e4


def eps_table(df: pd.DataFrame, notes: List[str]) -> Tuple[pd.DataFrame, Dict[str, float]]:
    """Per toggle setting and LR: the size at which median gradient RMS reaches AdamW ε, when
    that lies within EPS_EXTRAPOLATION × the largest size trained (else NaN, noted once)."""
    keys = toggle_keys(df)
    done = finished(df)
    if "grad_rms_median" not in done.columns:
        notes.append("no gradient RMS recorded (probes off?): ε crossover skipped")
        return pd.DataFrame(), {}
    if "optim.eps" not in done.columns:
        notes.append("no AdamW ε recorded: ε crossover skipped")
        return pd.DataFrame(), {}
    rows, eps_by, skipped, far = [], {}, [], []
    for vals, g in done.groupby(keys + [LR_KEY], sort=True, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        eps = float(g["optim.eps"].iloc[0])
        label = figures.toggle_label(keys + ["lr"], vals)
        eps_by[label] = eps
        try:
            n_star = eps_crossover(g["n_params_nonembed"], g["grad_rms_median"], eps)
        except FitError as e:
            skipped.append(str(e))
            continue
        largest = float(g["n_params_nonembed"].max())
        within = n_star <= EPS_EXTRAPOLATION * largest
        if not within:
            far.append(n_star)
        rows.append({**dict(zip(keys + [LR_KEY], vals)), "eps": eps,
                     "smallest_grad_rms": float(g["grad_rms_median"].min()),
                     "largest_params": largest,
                     "params_where_grad_rms_reaches_eps": n_star if within else np.nan})
    if skipped:
        notes.append(f"ε crossover skipped for {len(skipped)} (setting, LR) pairs: {skipped[0]}")
    if far:
        finite = [f for f in far if np.isfinite(f)]
        notes.append(f"for {len(far)} (setting, LR) pairs gradient RMS would reach ε only beyond "
                     f"{EPS_EXTRAPOLATION:g}× the largest model trained"
                     + (f" (power law says {min(finite):.2g}–{max(finite):.2g} params)"
                        if finite else " (or never: it does not fall with size)")
                     + ": too far to extrapolate, left blank")
    return pd.DataFrame(rows), eps_by


def frame_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(nothing to show)_\n"
    fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)  # noqa
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in r) + " |\n"
                          for r in df.itertuples(index=False))


def select(df: pd.DataFrame, where: Dict[str, Any]) -> pd.DataFrame:
    """Rows whose columns equal the given values (numbers compared with a relative tolerance)."""
    keep = pd.Series(True, index=df.index)
    for k, v in where.items():
        if k not in df.columns:
            raise KeyError(f"no column {k!r} in the sweep table; pick one of "
                           f"{', '.join(c for c in df.columns if '.' in c)}")
        col = df[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            keep &= np.isclose(pd.to_numeric(col, errors="coerce"), float(v), rtol=1e-6)
        else:
            keep &= col.astype(str).str.lower() == str(v).lower()
    return df[keep]


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=120)  # laid out already (constrained layout): one draw, not two
    plt.close(fig)
    return path.name


def analyze(sweep_dir: str | Path, targets: Sequence[float] = DEFAULT_TARGETS,
            threshold: float = DEFAULT_THRESHOLD,
            lr_range: Tuple[float, float] = DEFAULT_LR_RANGE,
            series: Dict[str, object] | None = None, hold_out: Sequence[float] = (),
            where: Dict[str, Any] | None = None, out: str | Path | None = None,
            table: pd.DataFrame | None = None) -> Report:
    """Write `<sweep_dir>/analysis/` (or `out`: report.md and PNG figures) and return the tables.

    `where` keeps only runs whose columns equal the given values (a subset of the sweep);
    `hold_out` leaves sizes (non-embedding params, ±10%) out of the attention-logit fit and
    checks its prediction there; `series` picks the runs of the loss-curve figure; `table` is
    the sweep's `load_sweep` table when the caller has read it already.
    """
    sweep_dir = Path(sweep_dir)
    df = load_sweep(sweep_dir) if table is None else table
    return analyze_table(df, Path(out) if out else sweep_dir / "analysis", sweep_dir.name,
                         targets, threshold, lr_range, series, hold_out, where,
                         notes=repair_table(sweep_dir, df), sweep_dir=sweep_dir)


def repair_table(sweep_dir: Path, df: pd.DataFrame) -> List[str]:
    """Rewrite a damaged `results.csv` (atomically) from the table just rebuilt from the runs."""
    why = table_damaged(sweep_dir / TABLE)
    if why is None or df.empty:
        return []
    write_table(df, sweep_dir / TABLE)
    return [f"{TABLE} was damaged ({why}): rewritten from the run directories"]


def analyze_table(df: pd.DataFrame, out: Path, name: str,
                  targets: Sequence[float] = DEFAULT_TARGETS,
                  threshold: float = DEFAULT_THRESHOLD,
                  lr_range: Tuple[float, float] = DEFAULT_LR_RANGE,
                  series: Dict[str, object] | None = None, hold_out: Sequence[float] = (),
                  where: Dict[str, Any] | None = None, notes: Sequence[str] = (),
                  sweep_dir: Path | None = None) -> Report:
    """The report of a results table (a sweep's, or any table analysis.table maps): written to
    `out`. The training-curve figures read the runs' metrics under `sweep_dir`; without one
    (a table of final values) they are left out, said in a note."""
    out.mkdir(parents=True, exist_ok=True)
    notes = list(notes)
    if len(df) and where:
        df = select(df, where)
        notes.append("subset: " + ", ".join(f"{k}={v}" for k, v in where.items())
                     + f" ({len(df)} runs)")
    if df.empty:
        notes.append(f"no run directories in {sweep_dir} yet" if sweep_dir else "no runs")
        rep = Report(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), notes)
        (out / "report.md").write_text("# Sweep analysis\n\n" + "\n".join(f"- {n}" for n in notes))
        return rep
    changed = df[df["status"] == EDITED] if "status" in df.columns else df.iloc[:0]
    if len(changed):
        notes.append(f"{len(changed)} finished runs' config.yaml no longer matches the config "
                     f"they trained with (edited, or from another version; e.g. "
                     f"{changed['run_dir'].iloc[0]}): left out; restore it or delete the run "
                     "directory to retrain")
    unfinished = df.drop(finished(df).index).drop(changed.index)
    if len(unfinished):
        notes.append(f"{len(unfinished)} of {len(df)} runs unfinished (no summary yet): "
                     "left out of every figure and table below")
    done = finished(df)
    if done[LR_KEY].nunique() < 2:
        notes.append("a single LR: LR sensitivity is 0 by definition and says nothing")
    if done["final_eval_ce"].isna().any():
        notes.append(f"{int(done['final_eval_ce'].isna().sum())} finished runs have no final eval "
                     "loss (NaN): counted as loss at init")
    notes += lr_grid_note(df, lr_range)
    tab = series_table(df, lr_range)
    for _, r in tab.iterrows():
        if r["diverged"] and r["runs"].split("/")[0] == str(r["diverged"]):
            keys = series_keys(df)
            label = figures.toggle_label(keys, tuple(r[k] for k in keys))
            notes.append(f"series {label}: every run diverged")
    if "max_attn_logit" in df.columns:
        preds, fits = attn_predictions(df, targets, threshold, notes, hold_out)
    else:
        notes.append("no max attention logit in the table: attention-logit fits skipped")
        preds, fits = pd.DataFrame(), {}
    eps_tab, eps_by = eps_table(df, notes)

    figs: Dict[str, str] = {}
    if len(done):
        figs["LR vs final loss"] = _save(figures.lr_curves(done), out / "lr_vs_loss.png")
        figs["LR sensitivity vs params"] = _save(figures.sensitivity_vs_params(tab),
                                                 out / "sensitivity_vs_params.png")
        if fits or "max_attn_logit" in done.columns:
            figs["max attention logit vs params, with fits"] = _save(
                figures.attn_logit_fits(done, fits, targets, threshold,
                                        held_out_mask(done["n_params_nonembed"], hold_out)),
                out / "attn_logit_fit.png")
        if sweep_dir is not None:
            figs["log Z mean over training"] = _save(figures.training_curves(
                sweep_dir, done, M.LOG_Z_MEAN, "mean log Z (held-out batch)"),
                out / "log_z.png")
        if "grad_rms_median" in done.columns:
            figs["gradient and update RMS vs params"] = _save(
                figures.grad_rms_vs_params(done, eps_by), out / "grad_rms.png")
        if sweep_dir is not None:
            pick = select(done, series) if series else done[
                done["n_params_nonembed"] == done["n_params_nonembed"].max()]  # the largest
            figs["loss curves"] = _save(figures.training_curves(
                sweep_dir, pick, M.TRAIN_CE, "train CE (line), eval CE (dots)",
                markers=M.EVAL_CE), out / "loss_curves.png")
        else:
            notes.append("training curves (log Z, loss) need the runs' metrics over steps; a "
                         "table of final values has none: those figures are left out")

    lines = [f"# Sweep analysis: {name}\n",
             f"{len(done)} finished runs of {len(df)}; LR sensitivity over LRs in "
             f"[{lr_range[0]:g}, {lr_range[1]:g}].\n"]
    if notes:
        lines += ["## Notes\n"] + [f"- {n}" for n in notes] + [""]
    lines += ["## LR sensitivity per series\n", frame_table(tab),
              f"## Attention-logit growth: predicted max logit (divergence above {threshold:g})\n",
              frame_table(preds),
              "## Gradient RMS vs AdamW ε: size where the median gradient RMS reaches ε\n",
              frame_table(eps_tab), "## Figures\n"]
    lines += [f"### {title}\n\n![{title}]({png})\n" for title, png in figs.items()]
    (out / "report.md").write_text("\n".join(lines))
    tab.to_csv(out / "series.csv", index=False)
    preds.to_csv(out / "attn_predictions.csv", index=False)
    eps_tab.to_csv(out / "eps_crossover.csv", index=False)
    return Report(tab, preds, eps_tab, notes, figs)


def print_report(rep, report_md: Path) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        fmt = lambda x: f"{x:.4g}"  # noqa: E731
        if not rep.series.empty:
            print(rep.series.to_string(index=False, float_format=fmt))
        if not rep.predictions.empty:
            cols = [c for c in rep.predictions.columns if not c.startswith("coef")]
            print("\nattention-logit growth, extrapolated:")
            print(rep.predictions[cols].to_string(index=False, float_format=fmt))
    for n in rep.notes:
        print(f"note: {n}")
    print(f"report: {report_md}")


def run_sensitivity(table: pd.DataFrame, series: pd.DataFrame) -> Dict[str, float]:
    """Each finished run's series LR sensitivity, by the table's run_dir (what the sweep's W&B
    record writes into each run's summary), from `series`: the table's `series_table`, the one
    its report.md shows."""
    done = finished(table)
    if done.empty or done[LR_KEY].nunique() < 2:
        return {}
    keys = series_keys(table)
    sens = series[keys + ["lr_sensitivity"]]
    merged = done.merge(sens, on=keys, how="inner") if keys else done.assign(
        lr_sensitivity=sens["lr_sensitivity"].iloc[0])
    return {str(r): float(s) for r, s in zip(merged["run_dir"], merged["lr_sensitivity"])
            if s is not None and math.isfinite(s)}
