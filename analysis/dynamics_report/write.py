"""The report itself: `write_report` writes `<run_dir>/dynamics/report.md` and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from analysis.dynamics_report.figures import (fig_energy_vs_correlation, fig_norm_compression,
                                              fig_outliers, fig_swiglu)
from analysis.dynamics_report.hist import (FAMILIES, N_GIF_FRAMES, N_HIST_STEPS,
                                           fig_hist_over_training, hist_family, write_hist_gif)
from analysis.dynamics_report.markdown import (report_header, section_ec, section_hist,
                                               section_massive, section_norm, section_outliers,
                                               section_swiglu)
from analysis.dynamics_report.records import DynamicsReportError, load_records, subsample
from analysis.dynamics_report.summary import ec_projections, emergence_fits, summary_of
from proxies.rundir import DYNAMICS


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, out: Optional[Path] = None, animation: bool = True) -> Path:
    """Write report.md and its figures to `out` (default <run_dir>/dynamics); the report's path.

    Raises DynamicsReportError (one line, nothing written) when the run has no dynamics records.
    """
    rec = load_records(run_dir)
    if not rec.hist_paths or rec.last_step not in rec.hist_paths:
        raise DynamicsReportError(f"{run_dir}: dynamics/hist/step_{rec.last_step:07d}.npz is "
                                  "missing; rerun the training command to rewrite the records")
    out = Path(out) if out is not None else rec.run_dir / DYNAMICS
    out.mkdir(parents=True, exist_ok=True)
    fits = emergence_fits(rec)
    summ = summary_of(rec, fits)
    hist_steps = [s for s in rec.steps if s in rec.hist_paths]
    hfs = [hf for fam in FAMILIES
           if (hf := hist_family(rec, fam, subsample(hist_steps, N_HIST_STEPS))) is not None]
    _save(fig_hist_over_training(hfs, rec), out / "hist_over_training.png")
    gifs = []
    gif_steps = subsample(hist_steps, N_GIF_FRAMES)
    if animation:
        for fam in FAMILIES:
            hf = hist_family(rec, fam, gif_steps)
            if hf is not None:
                write_hist_gif(hf, rec, out / f"hist_{fam.name}.gif")
                gifs.append(out / f"hist_{fam.name}.gif")
    _save(fig_outliers(rec, fits), out / "outliers_over_training.png")
    if ec_projections(rec):
        _save(fig_energy_vs_correlation(rec), out / "energy_vs_correlation.png")
    if rec.names("norm", "compression"):
        _save(fig_norm_compression(rec), out / "norm_compression.png")
    if summ["swiglu"]:
        _save(fig_swiglu(rec), out / "swiglu.png")
    lines = (report_header(rec) + section_hist(rec, hfs, gifs, len(gif_steps))
             + section_outliers(rec, fits) + section_ec(rec) + section_norm(rec, summ)
             + section_swiglu(rec, summ)
             + section_massive(rec, summ))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
