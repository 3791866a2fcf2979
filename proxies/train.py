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
from typing import Any, Callable, Dict, List, Optional, Tuple

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from proxies.checkpoint import Checkpointer
from proxies.cli import one_line_errors, run_cli
from proxies.config import (ConfigError, config_hash, first_difference, identity, identity_of,
                            register_configs, validate)
from proxies.data import Dataset, cache_dir, eval_batches, load_dataset, train_batch
from proxies.model import Transformer, count_params
from proxies.optim import HPARAM_KEYS, hparams_from_config
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
    old_id = identity_of(yaml.safe_load(f.read_text()) or {})
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


def group_key(cfg: DictConfig) -> str:
    """Runs with equal group keys differ only in scalar hyperparameters: they can share one
    compiled step, one data order and one init, and so train together under jax.vmap."""
    ident = identity(cfg)
    ident["optim"] = {k: v for k, v in ident["optim"].items() if k not in HPARAM_KEYS}
    return json.dumps(ident, sort_keys=True)


def _vmapped_step(step: Callable) -> Callable:
    """vmap a train step over (state, hparams) with one shared batch. A member whose loss is
    non-finite or above its limit keeps its previous state from then on (frozen, `alive` false),
    so it never disturbs its group-mates."""
    def group_step(states, batch, hps, alive_G, limit_G):
        new, metrics = jax.vmap(step, in_axes=(0, None, 0))(states, batch, hps)
        loss_G = metrics["loss"]
        ok_G = alive_G & jnp.isfinite(loss_G) & (loss_G <= limit_G)
        keep = lambda n, o: jnp.where(ok_G.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)  # noqa
        return jax.tree_util.tree_map(keep, new, states), metrics, ok_G
    return group_step


def _compiled(cfg: DictConfig, model: Transformer, state: Any, example: jax.Array,
              hp: Dict[str, jax.Array], group: int) -> tuple:
    """(train step, train step with per-tensor stats, eval step, probe), compiled once per
    structure and group size (0 = not vmapped). Both step variants are compiled up front, so no
    log step pays for compilation."""
    key = json.dumps([group_key(cfg), model.vocab_size, group])
    if key not in _COMPILED:
        donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate buffers
        eval_step = jax.jit(make_eval_step(model))
        probe = make_probe(model, cfg.model.n_layers)
        if group:
            alive, limit = jnp.ones(group, bool), jnp.zeros(group, jnp.float32)
            steps = [jax.jit(_vmapped_step(make_train_step(model, cfg, with_stats=s)),
                             donate_argnums=donate).lower(state, example, hp, alive, limit)
                     .compile() for s in (False, True)]
            eval_step, probe = jax.vmap(eval_step, (0, None)), jax.vmap(probe, (0, None))
        else:
            steps = [jax.jit(make_train_step(model, cfg, with_stats=s), donate_argnums=donate)
                     .lower(state, example, hp).compile() for s in (False, True)]
        _COMPILED[key] = (*steps, eval_step, probe)
    return _COMPILED[key]


def evaluate(eval_step, params, batches: List[jax.Array]) -> np.ndarray:
    """Mean held-out CE; one value per member when eval_step is vmapped."""
    return np.mean([np.asarray(eval_step(params, b)) for b in batches], axis=0)


class _Member:
    """One run's records inside a (possibly one-member) group."""

    def __init__(self, cfg: DictConfig, out: Path, tracker: Tracker, ckpt: Checkpointer,
                 meta: Dict[str, Any]):
        self.cfg, self.out, self.tracker, self.ckpt, self.meta = cfg, out, tracker, ckpt, meta
        self.metrics_path = out / "metrics.jsonl"
        self.diverged_at: Optional[int] = None
        self.last_loss = float("nan")
        self.limit = float("inf")


def _member_tree(tree: Any, i: Optional[int]) -> Any:
    return tree if i is None else jax.tree_util.tree_map(lambda x: x[i], tree)


def train(cfg: DictConfig, stop_after: Optional[int] = None,
          swept: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns its summary.

    `stop_after` ends the process's work after that many total steps with a checkpoint and no
    summary, exactly as an interruption would (used for preemption and resume tests).
    `swept` (the values a sweep set, by dotted key) is recorded in config.yaml for the table.
    """
    return train_group([cfg], stop_after, [swept], vmap=False)[0]


def enable_compile_cache(cfg: DictConfig) -> None:
    """Keep compiled steps on disk (JAX's persistent cache, under the data cache dir), so a
    rerun, a resumed run or another sweep of the same structure skips compilation."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir(cfg.data) / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def train_group(cfgs: List[DictConfig], stop_after: Optional[int] = None,
                swept: Optional[List[Optional[Dict[str, Any]]]] = None,
                vmap: bool = True) -> List[Dict[str, Any]]:
    """Train runs that differ only in scalar hyperparameters together: one compiled step vmapped
    over their states and hparams, one shared batch per step (same seed, same data order, same
    init). Each run keeps its own directory, records and checkpoints; a diverging run is frozen
    and recorded without disturbing the others. Returns the runs' summaries in order.
    """
    swept = list(swept or [None] * len(cfgs))
    for cfg in cfgs:
        validate(cfg)
        _check_out_dir(resolve_out_dir(cfg), cfg)
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("train_group needs runs that differ only in scalar hyperparameters")
    c0 = cfgs[0]
    enable_compile_cache(c0)
    tc, quiet = c0.train, c0.train.quiet
    say = (lambda *a: None) if quiet else print

    ds = _dataset(c0)
    model = Transformer(c0.model, ds.vocab_size, tc.seq_len)
    rng = jax.random.key(tc.seed)
    state0 = init_state(model, c0, rng)
    n_params, n_nonembed = count_params(state0.params)

    summaries: List[Optional[Dict[str, Any]]] = [None] * len(cfgs)
    todo: List[Tuple[int, DictConfig, Path, Dict[str, Any]]] = []
    for i, cfg in enumerate(cfgs):
        out = resolve_out_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved["out_dir"] = str(out)
        meta = {"config_hash": config_hash(cfg), "corpus_hash": ds.corpus_hash,
                "vocab_size": ds.vocab_size, "n_params": n_params,
                "n_params_nonembed": n_nonembed, "data": ds.description, "jax": jax.__version__,
                "backend": jax.default_backend(), "swept": dict(swept[i] or {})}
        (out / "config.yaml").write_text(yaml.safe_dump({**resolved, "run": meta},
                                                        sort_keys=False))
        if (out / "summary.json").exists():
            summaries[i] = json.loads((out / "summary.json").read_text())
            say(f"{out}: already complete ({summaries[i]['steps_done']} steps); nothing to do")
        else:
            todo.append((i, cfg, out, {**resolved, "run": meta}))
    if not todo:
        return summaries  # type: ignore[return-value]

    # Members must start from the same step; any that cannot, train on their own.
    ckpts = [Checkpointer(out / "checkpoints", tc.keep_checkpoints) for _, _, out, _ in todo]
    latest = [c.latest_step() or 0 for c in ckpts]
    if len(set(latest)) > 1:
        for c in ckpts:
            c.close()
        for i, cfg, _, _ in todo:
            summaries[i] = train_group([cfg], stop_after, [swept[i]], vmap=False)[0]
        return summaries  # type: ignore[return-value]
    start = latest[0]

    members, states = [], []
    for (i, cfg, out, full), ckpt in zip(todo, ckpts):
        st = state0
        if start:
            st, _ = ckpt.restore(start, state0, rng)
            truncate_metrics(out / "metrics.jsonl", start)
        elif (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()  # killed before its first checkpoint: start afresh
        tracker = Tracker(out, cfg.wandb, full, out.name, quiet)  # opens metrics.jsonl to append
        members.append(_Member(cfg, out, tracker, ckpt, full["run"]))
        states.append(st)
    if start:
        say(f"resuming {', '.join(str(m.out) for m in members)} from step {start}")
    G = len(members)
    group = G if (vmap and G > 1) else 0
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa
    idx: List[Optional[int]] = list(range(G)) if group else [None]
    state = stack(states) if group else states[0]
    hp = (stack([hparams_from_config(m.cfg) for m in members]) if group
          else hparams_from_config(members[0].cfg))
    example = jnp.asarray(train_batch(ds, tc.batch_size, tc.seq_len, tc.seed, start))
    step_fn, stats_step_fn, eval_step, probe = _compiled(c0, model, state, example, hp, group)
    evals = [jnp.asarray(b) for b in eval_batches(ds, tc.eval_batches, tc.batch_size,
                                                   tc.seq_len, tc.seed)]

    def probe_rows(params) -> List[Dict[str, float]]:
        if not tc.probes:
            return [{} for _ in members]
        out = probe(params, evals[0])
        return [{k: float(np.asarray(v) if i is None else np.asarray(v)[i])
                 for k, v in out.items()} for i in idx]

    if start == 0:
        init_ce = np.atleast_1d(evaluate(eval_step, state.params, evals))
        for m, row, ce in zip(members, probe_rows(state.params), init_ce):
            m.tracker.log({"step": 0, "eval/ce": float(ce), **row})
    for m in members:
        loss_at_init = read_metrics(m.metrics_path)[0]["eval/ce"]
        m.limit = (m.cfg.train.divergence_loss if m.cfg.train.divergence_loss is not None
                   else 2 * loss_at_init)
    limit_G = jnp.asarray([m.limit for m in members], jnp.float32)
    alive_G = jnp.ones(G, bool)
    tokens_per_step = tc.batch_size * tc.seq_len
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)

    def check(loss_or_ok: Any, update: int) -> None:
        """Mark members whose update number `update` (1-based) diverged."""
        if group:
            for m, ok in zip(members, np.asarray(loss_or_ok)):
                if not ok and m.diverged_at is None:
                    m.diverged_at = update
        else:
            m = members[0]
            m.last_loss = float(loss_or_ok)
            if not math.isfinite(m.last_loss) or m.last_loss > m.limit:
                m.diverged_at = update

    def all_dead() -> bool:
        return all(m.diverged_at is not None for m in members)

    bar = tqdm(total=tc.steps, initial=start, disable=quiet, dynamic_ncols=True, unit="step")
    last_logged = start
    pending = None  # previous step's loss (or alive flags), read one step late: no dispatch stall
    t0 = t_last = time.time()
    try:
        for step in range(start, end):
            batch = jnp.asarray(train_batch(ds, tc.batch_size, tc.seq_len, tc.seed, step))
            done = step + 1
            log_now = done % tc.log_every == 0 or done == tc.steps
            fn = stats_step_fn if (log_now and tc.probes) else step_fn
            if group:
                state, metrics, alive_G = fn(state, batch, hp, alive_G, limit_G)
            else:
                state, metrics = fn(state, batch, hp)
            if pending is not None:
                check(pending, step)
                if all_dead():
                    break
            pending = alive_G if group else metrics["loss"]
            if log_now or done % tc.eval_every == 0:
                check(pending, done)
                pending = None
                if all_dead():
                    break
                now = time.time()
                rows: List[Dict[str, Any]] = [{"step": done} for _ in members]
                if log_now:
                    host = jax.device_get(metrics)
                    for row, i in zip(rows, idx):
                        mm = _member_tree(host, i)
                        row.update({f"train/{k}": float(mm[k]) for k in
                                    ("loss", "ce", "z_loss", "lr", "grad_norm")})
                        for k in ("grad_rms", "update_rms", "param_rms"):
                            if k in mm:
                                row.update(flatten_tensor_stats(k, mm[k]))
                        if done > last_logged + 1 and now > t_last:
                            row["perf/tokens_per_s"] = (done - last_logged) * tokens_per_step / (
                                now - t_last)
                    for row, prow in zip(rows, probe_rows(state.params)):
                        row.update(prow)
                    last_logged = done
                    bar.set_postfix(loss=f"{np.nanmin([r['train/loss'] for r in rows]):.3f}",
                                    tok_s=f"{rows[0].get('perf/tokens_per_s', 0):,.0f}")
                if done % tc.eval_every == 0 or done == tc.steps:
                    ces = np.atleast_1d(evaluate(eval_step, state.params, evals))
                    for row, ce in zip(rows, ces):
                        row["eval/ce"] = float(ce)
                for m, row in zip(members, rows):
                    if m.diverged_at is None:
                        m.tracker.log(row)
                t_last = time.time()  # probe and eval time is not training throughput
            if done % tc.checkpoint_every == 0 or done == end:
                for m, i in zip(members, idx):
                    if m.diverged_at is None:
                        m.ckpt.save(done, _member_tree(state, i), rng)
            bar.update(1)
        else:
            if pending is not None:
                check(pending, end)
    except KeyboardInterrupt:
        bar.close()
        s = int(np.asarray(state.step).max())
        for m, i in zip(members, idx):
            if m.diverged_at is None and s > (m.ckpt.latest_step() or 0):
                m.ckpt.save(s, _member_tree(state, i), rng)  # keep every finished step
            m.ckpt.close()
            m.tracker.finish({})
        say(f"\ninterrupted at step {s}; rerun the same command to resume")
        raise
    bar.close()
    wall = time.time() - t0  # the training loop, probes and evals included, compilation not

    for (i, _, out, _), m in zip(todo, members):
        m.ckpt.close()
        if m.diverged_at is None and end < tc.steps:  # stopped early on purpose: no summary
            m.tracker.finish({})
            summaries[i] = {"steps_done": end, "complete": False}
            continue
        if m.diverged_at is not None:
            say(f"{out}: diverged at step {m.diverged_at}")
            if not group:
                m.tracker.log({"step": m.diverged_at, "train/loss": m.last_loss})
        steps_run = (m.diverged_at or end) - start
        summary = _summarize(read_metrics(m.metrics_path), {
            "diverged": m.diverged_at is not None, "diverged_at_step": m.diverged_at,
            "steps_done": m.diverged_at if m.diverged_at is not None else tc.steps,
            "n_params": n_params, "n_params_nonembed": n_nonembed,
            "tokens_per_s": steps_run * tokens_per_step / wall if steps_run > 0 else None,
            "wall_s": wall, "config_hash": m.meta["config_hash"], "corpus_hash": ds.corpus_hash,
            "group_size": max(group, 1)})
        write_json(out / "summary.json", summary)
        m.tracker.finish(summary)
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        say(f"{out}: eval CE {fmt(summary['final_eval_ce'], '.4f')}, max attention logit "
            f"{fmt(summary['max_attn_logit'], '.3g')}, "
            f"{fmt(summary['tokens_per_s'], ',.0f')} tokens/s, {wall:.1f} s")
        summaries[i] = summary
    return summaries  # type: ignore[return-value]


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def multirun_job(cfg: DictConfig, sweep_dir: Path, overrides: List[str]) -> Dict[str, Any]:
    """One job of `python -m proxies.train -m ...`: a run directory inside Hydra's sweep dir, then
    the sweep dir's results.csv rebuilt from every run directory in it."""
    from proxies.results import table_from_dirs, write_table

    if cfg.out_dir is None:
        cfg.out_dir = str(sweep_dir / run_name(cfg))
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    swept = {k: OmegaConf.select(cfg, k) for k in keys if k != "out_dir"}
    summary = train(cfg, swept=swept)
    write_table(table_from_dirs(sweep_dir), sweep_dir / "results.csv")
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with one_line_errors():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            multirun_job(cfg, Path(hc.sweep.dir), list(hc.overrides.task))
        else:
            train(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
