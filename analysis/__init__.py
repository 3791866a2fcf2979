"""Analysis of sweep results: LR sensitivity, scaling-trend fits, figures and reports."""

from analysis.sensitivity import best_lr, lr_sensitivity

__all__ = ["best_lr", "lr_sensitivity"]
