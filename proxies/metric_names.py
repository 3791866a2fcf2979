"""Every name a run's records use, defined once: metrics.jsonl keys, summary.json keys, events.

A row of metrics.jsonl is `{"step": s, name: value, ...}`, s = updates done. Per-layer and
per-tensor names extend a family name: `attn/max_logit/layer_3`, `grad_rms/block_0/mlp/...`.
"""

from __future__ import annotations

from typing import Optional, TypedDict

STEP = "step"

# Training (every log step), from the train step's own metrics.
TRAIN_LOSS = "train/loss"  # CE + z-loss, what the optimizer minimises
TRAIN_CE = "train/ce"
TRAIN_Z_LOSS = "train/z_loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"  # global norm before clipping
TRAIN_KEYS = {"loss": TRAIN_LOSS, "ce": TRAIN_CE, "z_loss": TRAIN_Z_LOSS, "lr": TRAIN_LR,
              "grad_norm": TRAIN_GRAD_NORM}  # train-step metric -> row key
# Stabilisers' own counts, on the log steps of runs that use them (train-step metric -> row key):
# heads whose weights QK-clip rescaled this step; the share of tensors whose step update
# clipping shrank.
QK_CLIPPED_HEADS = "train/qk_clipped_heads"
UPDATE_CLIPPED_FRAC = "train/update_clipped_frac"
STABILIZER_KEYS = {"qk_clipped_heads": QK_CLIPPED_HEADS, "update_clipped_frac": UPDATE_CLIPPED_FRAC}

# Per-tensor RMS families (log steps, `train.probes=true`).
GRAD_RMS = "grad_rms"  # of the clipped gradient Adam sees
UPDATE_RMS = "update_rms"  # of the update divided by the LR
PARAM_RMS = "param_rms"
TENSOR_FAMILIES = (GRAD_RMS, UPDATE_RMS, PARAM_RMS)

EVAL_CE = "eval/ce"  # mean held-out CE (eval steps and step 0)
TOKENS_PER_S = "perf/tokens_per_s"

# Probes on a held-out batch (log steps): per layer, and the max over layers.
ATTN_MAX_LOGIT = "attn/max_logit"
ATTN_ENTROPY = "attn/entropy"
# The lowest of a layer's heads' mean attention entropies (entropy collapse shows in one head),
# per layer and the min over layers.
ATTN_ENTROPY_MIN_HEAD = "attn/entropy_min_head"
ACT_MAX_ABS = "act/max_abs"
ACT_MAX_MEDIAN_RATIO = "act/max_median_ratio"
LOG_Z_MEAN = "logits/log_z_mean"
LOGITS_MEAN = "logits/mean"
LOGITS_MAX_ABS = "logits/max_abs"

# Spike detection (every log step; see proxies/spikes.py).
SPIKE_LOSS_ZSCORE = "spike/loss_zscore"
SPIKE_GRAD_ZSCORE = "spike/grad_zscore"
SPIKE_COUNT = "spike/count"  # spikes detected so far on this run's path
SPIKE_SKIPPED = "spike/skipped"  # updates skipped so far (train.spike.action=skip)


def per_layer(family: str, layer: int) -> str:
    return f"{family}/layer_{layer}"


def tensor_key(family: str, path: str) -> str:
    return f"{family}/{path}"


# The paper's Fig 9 reads block 0's max attention logit at step 2e3 of 1e5: 2% of the run.
# The training loop makes that step a log step whatever train.log_every is.
EARLY_SHARE = 0.02


def early_step(steps: int) -> int:
    """The update at 2% of a `steps`-update run (at least 1): the logit-prediction probe."""
    return max(1, round(EARLY_SHARE * steps))


# The paper's Fig 11 averages the first MLP layer's gradient RMS over the final 500 steps of
# 1e5 (0.5% of the run). Probes exist only on log steps, so the window also spans at least
# TAIL_MIN_LOG_ROWS log intervals: one probe row is one batch's gradient, too noisy alone.
# laptop (200 steps, log every 25): the last 50 steps, 25% of the run, rows 175 and 200;
# gpu (1e4, log every 100): the last 200 steps (2%); paper (1e5, log every 100): the last 500.
TAIL_SHARE = 500 / 100_000
TAIL_MIN_LOG_ROWS = 2


def tail_steps(steps: int, log_every: int) -> int:
    """Length in updates of the window at the end of a run that the `*_tail` summaries average."""
    return max(round(TAIL_SHARE * steps), TAIL_MIN_LOG_ROWS * log_every)


# The first MLP layer of block 0 (Fig 11): its input projection (gelu: up; swiglu: gate, the
# first of the two parallel input projections), in the order looked for.
FIRST_MLP_KERNELS = ("block_0/mlp/gate/kernel", "block_0/mlp/up/kernel")


# summary.json keys that the paper's prediction figures read (see early_step, tail_steps).
LOGIT_BLOCK0_EARLY = "attn_max_logit_block0_early"  # block 0's max attention logit (Fig 9)
LOGIT_EARLY = "attn_max_logit_early"  # the max over layers, same step
GRAD_RMS_MLP0_TAIL = "grad_rms_mlp0_tail"  # block 0's first MLP layer, tail mean (Fig 11)
UPDATE_RMS_MLP0_TAIL = "update_rms_mlp0_tail"  # its update RMS (÷ LR), same window (Fig 13)



class RunSummary(TypedDict):
    """summary.json: what a finished run reports, read by the sweep table and analysis."""
    final_eval_ce: Optional[float]
    final_train_ce: Optional[float]
    loss_at_init: Optional[float]  # eval CE at step 0
    max_attn_logit: Optional[float]  # over steps and layers (None without probes)
    final_max_attn_logit: Optional[float]
    max_abs_log_z: Optional[float]
    spikes: int  # spike events (skips and rollbacks)
    rollbacks: int
    early_warnings: int  # the monitor's warnings (proxies/monitor.py), one per signal at most
    first_warning_step: Optional[int]
    diverged: bool
    diverged_at_step: Optional[int]
    stop_reason: str  # completed | diverged | max_rollbacks
    steps_done: int
    n_params: int
    n_params_nonembed: int
    tokens_per_s: Optional[float]
    wall_s: float
    config_hash: str
    corpus_hash: str
    eval_set_hash: Optional[str]  # the held-out tokens every eval read (proxies/data.py)
    group_size: int  # runs trained together in one vmapped step
    attn_max_logit_block0_early: Optional[float]
    attn_max_logit_early: Optional[float]
    grad_rms_mlp0_tail: Optional[float]
    update_rms_mlp0_tail: Optional[float]


# summary.json keys the sweep table and analysis read (the table's column order).
SUMMARY_KEYS = ("n_params", "n_params_nonembed", "final_eval_ce", "final_train_ce",
                "loss_at_init", "diverged", "diverged_at_step", "steps_done",
                "max_attn_logit", "final_max_attn_logit", "max_abs_log_z", "spikes", "rollbacks",
                "early_warnings", "first_warning_step",
                "stop_reason", "tokens_per_s", "wall_s", LOGIT_BLOCK0_EARLY, LOGIT_EARLY,
                GRAD_RMS_MLP0_TAIL, UPDATE_RMS_MLP0_TAIL)
