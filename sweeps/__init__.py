"""Reproductions of the small-scale-proxies paper, one module per result.

`python -m sweeps.<name> scale=tiny|laptop|gpu|paper [--dry-run] [Hydra overrides]`, and
`python -m sweeps.all scale=laptop` for the whole set. See sweeps/core.py. `python -m
sweeps.onset` (not in the set) measures how long a scale's runs must be for the first result.
"""

# In the order `sweeps.all` runs them: later ones reuse earlier ones' runs where they can;
# stabilizers (beyond the paper) last.
RESULTS = ("qk_layernorm", "warmup", "weight_decay", "default_vs_none", "adam_eps", "kappa",
           "logit_prediction", "mup", "depth_width", "z_loss", "stabilizers")
