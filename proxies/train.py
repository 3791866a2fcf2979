"""One proxy training run: `python -m proxies.train [key=value ...]`.

The run directory (out_dir) holds config.yaml, metrics.jsonl, summary.json and checkpoints/.
Re-running the same command on it resumes from the last checkpoint; the resumed metrics match an
uninterrupted run's step for step.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from proxies.checkpoint import Checkpointer
from proxies.cli import one_line_errors, run_cli
from proxies.config import (ConfigError, config_hash, first_difference, identity,
                            register_configs, validate)
from proxies.data import Dataset, eval_batches, load_dataset, train_batch
from proxies.model import Transformer, count_params
from proxies.optim import hparams_from_config
from proxies.probes import flatten_tensor_stats, make_probe
from proxies.step import init_state, make_eval_step, make_train_step
from proxies.tracking import Tracker, read_metrics, truncate_metrics, write_json

register_configs()


def run_name(cfg: DictConfig) -> str:
    m = cfg.model
    return f"d{m.d_model}L{m.n_layers}H{m.n_heads}-{config_hash(cfg)}"


def resolve_out_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path("runs") / run_name(cfg)


def _check_out_dir(out: Path, cfg: DictConfig) -> None:
    f = out / "config.yaml"
    if not f.exists():
        return
    old = yaml.safe_load(f.read_text()) or {}
    old_id = {k: old.get(k) for k in ("model", "optim", "data", "train")}
    new_id = identity(cfg)
    old_id["train"] = {k: v for k, v in (old_id["train"] or {}).items() if k in new_id["train"]}
    diff = first_difference(old_id, new_id)
    if diff:
        raise ConfigError(f"out_dir {out} holds a run with a different config ({diff}); "
                          "use another out_dir or delete that directory")


def _summarize(rows: List[Dict[str, Any]], extra: Dict[str, Any]) -> Dict[str, Any]:
    """summary.json from the metrics rows (so a resumed run summarizes its whole history)."""
    def finite(key):
        return [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    def last(key):
        v = finite(key)
        return v[-1] if v else None
    log_z = finite("logits/log_z_mean")
    attn = finite("attn/max_logit")
    return {
        "final_eval_ce": last("eval/ce"),
        "final_train_ce": last("train/ce"),
        "loss_at_init": rows[0].get("eval/ce") if rows else None,
        "max_attn_logit": max(attn) if attn else None,
        "final_max_attn_logit": attn[-1] if attn else None,
        "max_abs_log_z": max(abs(v) for v in log_z) if log_z else None,
        **extra,
    }


# Runs of a sweep that differ only in scalar hyperparameters (hparams are array arguments) share
# one compiled step and one loaded dataset within a process.
_COMPILED: Dict[str, tuple] = {}
_DATASETS: Dict[str, Dataset] = {}


def _dataset(cfg: DictConfig) -> Dataset:
    key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cfg.data)
    return _DATASETS[key]


def _compiled(cfg: DictConfig, model: Transformer, state: Any, example: jax.Array,
              hp: Dict[str, jax.Array]) -> tuple:
    """(train step, train step with per-tensor stats, eval step, probe), compiled once per
    structure. Both step variants are compiled up front, so no log step pays for compilation."""
    tc = cfg.train
    key = json.dumps({"model": OmegaConf.to_container(cfg.model, resolve=True),
                      "vocab": model.vocab_size, "shape": [tc.batch_size, tc.seq_len],
                      "steps": tc.steps, "schedule": cfg.optim.schedule,
                      "independent_wd": cfg.optim.independent_wd}, sort_keys=True)
    if key not in _COMPILED:
        donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate buffers
        step_fn, stats_step_fn = (
            jax.jit(make_train_step(model, cfg, with_stats=s), donate_argnums=donate)
            .lower(state, example, hp).compile() for s in (False, True))
        _COMPILED[key] = (step_fn, stats_step_fn, jax.jit(make_eval_step(model)),
                          make_probe(model, cfg.model.n_layers))
    return _COMPILED[key]


def evaluate(eval_step, params, batches: List[jax.Array]) -> float:
    return float(np.mean([float(eval_step(params, b)) for b in batches]))


def train(cfg: DictConfig, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns its summary.

    `stop_after` ends the process's work after that many total steps with a checkpoint and no
    summary, exactly as an interruption would (used for preemption and resume tests).
    """
    validate(cfg)
    out = resolve_out_dir(cfg)
    _check_out_dir(out, cfg)
    tc, quiet = cfg.train, cfg.train.quiet
    say = (lambda *a: None) if quiet else print

    ds = _dataset(cfg)
    model = Transformer(cfg.model, ds.vocab_size, tc.seq_len)
    rng = jax.random.key(tc.seed)
    state = init_state(model, cfg, rng)
    n_params, n_nonembed = count_params(state.params)

    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["out_dir"] = str(out)
    meta = {"config_hash": config_hash(cfg), "corpus_hash": ds.corpus_hash,
            "vocab_size": ds.vocab_size, "n_params": n_params, "n_params_nonembed": n_nonembed,
            "data": ds.description, "jax": jax.__version__, "backend": jax.default_backend()}
    (out / "config.yaml").write_text(yaml.safe_dump({**resolved, "run": meta}, sort_keys=False))

    summary_path, metrics_path = out / "summary.json", out / "metrics.jsonl"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        say(f"{out}: already complete ({summary['steps_done']} steps); nothing to do")
        return summary

    ckpt = Checkpointer(out / "checkpoints", tc.keep_checkpoints)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, rng = ckpt.restore(latest, state, rng)
        start = int(state.step)
        truncate_metrics(metrics_path, start)
        say(f"resuming {out} from step {start}")
    elif metrics_path.exists():
        metrics_path.unlink()  # a run killed before its first checkpoint starts afresh

    hp = hparams_from_config(cfg)
    example = jnp.asarray(train_batch(ds, tc.batch_size, tc.seq_len, tc.seed, start))
    step_fn, stats_step_fn, eval_step, probe = _compiled(cfg, model, state, example, hp)
    evals = [jnp.asarray(b) for b in eval_batches(ds, tc.eval_batches, tc.batch_size, tc.seq_len,
                                                   tc.seed)]
    probe_batch = evals[0]
    tracker = Tracker(out, cfg.wandb, {**resolved, "run": meta}, out.name, quiet)

    def probe_row(params) -> Dict[str, float]:
        return {k: float(v) for k, v in probe(params, probe_batch).items()} if tc.probes else {}

    if start == 0:
        loss_at_init = evaluate(eval_step, state.params, evals)
        tracker.log({"step": 0, "eval/ce": loss_at_init, **probe_row(state.params)})
    else:
        loss_at_init = read_metrics(metrics_path)[0]["eval/ce"]
    limit = tc.divergence_loss if tc.divergence_loss is not None else 2 * loss_at_init
    tokens_per_step = tc.batch_size * tc.seq_len
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)

    bar = tqdm(total=tc.steps, initial=start, disable=quiet, dynamic_ncols=True, unit="step")
    diverged_at, last_logged = None, start
    pending = None  # previous step's loss, read one step late so dispatch never waits on it
    t0 = t_last = time.time()
    try:
        for step in range(start, end):
            batch = jnp.asarray(train_batch(ds, tc.batch_size, tc.seq_len, tc.seed, step))
            log_now = (step + 1) % tc.log_every == 0 or step + 1 == tc.steps
            fn = stats_step_fn if (log_now and tc.probes) else step_fn
            state, metrics = fn(state, batch, hp)
            if pending is not None:
                lossv = float(pending)
                if not math.isfinite(lossv) or lossv > limit:
                    diverged_at = step  # the update numbered `step` (1-based) produced it
                    break
            pending = metrics["loss"]
            done = step + 1
            if log_now or done % tc.eval_every == 0:
                lossv = float(metrics["loss"])
                pending = None
                if not math.isfinite(lossv) or lossv > limit:
                    diverged_at = done
                    break
                row: Dict[str, Any] = {"step": done}
                if log_now:
                    now = time.time()
                    row.update({f"train/{k}": float(v) for k, v in metrics.items()
                                if k in ("loss", "ce", "z_loss", "lr", "grad_norm")})
                    row.update(probe_row(state.params))
                    for k in ("grad_rms", "update_rms", "param_rms"):
                        if k in metrics:
                            row.update(flatten_tensor_stats(k, metrics[k]))
                    if done > last_logged + 1 and now > t_last:
                        row["perf/tokens_per_s"] = (done - last_logged) * tokens_per_step / (
                            now - t_last)
                    t_last, last_logged = now, done
                    bar.set_postfix(loss=f"{lossv:.3f}",
                                    tok_s=f"{row.get('perf/tokens_per_s', 0):,.0f}")
                if done % tc.eval_every == 0 or done == tc.steps:
                    row["eval/ce"] = evaluate(eval_step, state.params, evals)
                tracker.log(row)
                t_last = time.time()  # probe and eval time is not training throughput
            if done % tc.checkpoint_every == 0 or done == end:
                ckpt.save(done, state, rng)
            bar.update(1)
        else:
            if pending is not None:
                lossv = float(pending)
                if not math.isfinite(lossv) or lossv > limit:
                    diverged_at = end
    except KeyboardInterrupt:
        bar.close()
        if int(state.step) > (ckpt.latest_step() or 0):
            ckpt.save(int(state.step), state, rng)  # keep every finished step
        ckpt.close()
        tracker.finish({})
        say(f"\ninterrupted at step {int(state.step)}; rerun the same command to resume")
        raise
    bar.close()
    wall = time.time() - t0  # the training loop, probes and evals included, compilation not
    steps_run = (diverged_at or end) - start
    tps = steps_run * tokens_per_step / wall if steps_run > 0 else None

    if diverged_at is not None:
        say(f"diverged at step {diverged_at} (loss {lossv:.4g} > {limit:.4g} or non-finite)")
        tracker.log({"step": diverged_at, "train/loss": lossv})
    elif end < tc.steps:  # stopped early on purpose: checkpoint saved, no summary
        ckpt.close()
        tracker.finish({})
        return {"steps_done": end, "complete": False}
    ckpt.close()
    rows = read_metrics(metrics_path)
    summary = _summarize(rows, {
        "diverged": diverged_at is not None, "diverged_at_step": diverged_at,
        "steps_done": diverged_at if diverged_at is not None else tc.steps,
        "n_params": n_params, "n_params_nonembed": n_nonembed,
        "tokens_per_s": tps, "wall_s": wall, "config_hash": meta["config_hash"],
        "corpus_hash": ds.corpus_hash})
    write_json(summary_path, summary)
    tracker.finish(summary)
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    say(f"{out}: eval CE {fmt(summary['final_eval_ce'], '.4f')}, max attention logit "
        f"{fmt(summary['max_attn_logit'], '.3g')}, {fmt(tps, ',.0f')} tokens/s, {wall:.1f} s")
    return summary


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with one_line_errors():
        train(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
