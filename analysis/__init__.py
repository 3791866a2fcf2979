"""Analysis of sweep results: LR sensitivity, scaling-trend fits, figures and reports.

The numeric core is pure functions on arrays: `lr_sensitivity`, `fit_quadratic_log`,
`eps_crossover`.
"""

from analysis.fits import FitError, QuadraticLogFit, eps_crossover, fit_quadratic_log
from analysis.sensitivity import best_lr, lr_sensitivity

__all__ = ["FitError", "QuadraticLogFit", "best_lr", "eps_crossover", "fit_quadratic_log",
           "lr_sensitivity"]
