"""Analysis of sweep results: LR sensitivity, scaling-trend fits, figures and reports."""
