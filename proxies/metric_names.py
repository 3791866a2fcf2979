"""Every name a run's records use, defined once: metrics.jsonl keys, summary.json keys, events.

A row of metrics.jsonl is `{"step": s, name: value, ...}`, s = updates done. Per-layer and
per-tensor names extend a family name: `attn/max_logit/layer_3`, `grad_rms/block_0/mlp/...`.
"""

from __future__ import annotations

STEP = "step"

# Training (every log step), from the train step's own metrics.
TRAIN_LOSS = "train/loss"  # CE + z-loss, what the optimizer minimises
TRAIN_CE = "train/ce"
TRAIN_Z_LOSS = "train/z_loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"  # global norm before clipping
TRAIN_KEYS = {"loss": TRAIN_LOSS, "ce": TRAIN_CE, "z_loss": TRAIN_Z_LOSS, "lr": TRAIN_LR,
              "grad_norm": TRAIN_GRAD_NORM}  # train-step metric -> row key

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


# summary.json keys the sweep table and analysis read.
SUMMARY_KEYS = ("n_params", "n_params_nonembed", "final_eval_ce", "final_train_ce",
                "loss_at_init", "diverged", "diverged_at_step", "steps_done",
                "max_attn_logit", "final_max_attn_logit", "max_abs_log_z", "spikes", "rollbacks",
                "stop_reason", "tokens_per_s", "wall_s")
