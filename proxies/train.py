"""One proxy training run: `python -m proxies.train [key=value ...]`.

The run directory (out_dir, see proxies/rundir.py) holds config.yaml, metrics.jsonl, events.jsonl,
summary.json and checkpoints/. Re-running the same command on it resumes from the newest readable
checkpoint; the resumed metrics match an uninterrupted run's step for step, whatever stopped it
(kill -9, SIGTERM, Ctrl-C, a spike rollback).

The loop: `open_member` (a run's records and lock) -> `restore_member` (resume point, repaired
records) -> `Loop.run` (steps; log, eval and checkpoint steps; spikes and divergence) ->
`finish_member` (summary). `train_group` strings them together for one run or a vmapped group.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

import hydra
import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from proxies import metric_names as M
from proxies.checkpoint import Checkpointer
from proxies.cli import one_line_errors, run_cli
from proxies.config import (DEFAULT_THRESHOLD, EvalSet, InjectKind, SpikeAction, config_hash,
                            register_configs, unhandled, validate)
from proxies.data import (Dataset, cache_dir, eval_batches, eval_set_hash, load_dataset,
                          train_batch)
from proxies.model import Transformer, count_params
from proxies.naming import compile_key, group_key, resolve_out_dir, run_name
from proxies.optim import hparams_from_config
from proxies.results import early_logits, grad_rms_summary, mlp0_tail
from proxies.rundir import (RunBusy, RunDir, lock_holder, quiet_storage_noise, run_dir,
                            writing)
from proxies.runner import Compiled, Runner
from proxies.sharding import group_layout, initialize_distributed, run_layout, sync_processes
from proxies.step import init_state
from proxies.stopping import StopRequest, Stopped, stop_requests
from proxies.tracking import Tracker

register_configs()

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
Say = Callable[[str], None]


def enable_compile_cache(cfg: DictConfig) -> None:
    """Keep compiled steps on disk (JAX's persistent cache, under the data cache dir), so a
    rerun, a resumed run or another sweep of the same structure skips compilation."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir(cfg.data) / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# Runs of a sweep share one loaded dataset within a process.
_DATASETS: Dict[str, Dataset] = {}


def _dataset(cfg: DictConfig) -> Dataset:
    key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True),
                     sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cfg.data)
    return _DATASETS[key]


# ---------------------------------------------------------------------------------- data path

class Batches:
    """The batch of each update: a function of (seed, data position). A rollback skips positions
    from its spike on, so update u reads position u - 1 + (batches skipped by rollbacks at or
    before u). `train.inject_spike_at` (testing aid) replaces listed positions by garbage."""

    def __init__(self, ds: Dataset, cfg: DictConfig, rollbacks: List[Dict[str, Any]]):
        self.ds, self.tc = ds, cfg.train
        self.rollbacks = sorted((e[M.STEP], e["batches_skipped"]) for e in rollbacks)
        match InjectKind(self.tc.inject_spike_kind):
            case InjectKind.batch:
                self.garbage = set(self.tc.inject_spike_at)
            case InjectKind.grad:  # scaled inside the train step (proxies/step.py)
                self.garbage = set()
            case kind:
                unhandled("train.inject_spike_kind", kind)

    def position(self, update: int) -> int:
        return update - 1 + sum(n for step, n in self.rollbacks if step <= update)

    def __call__(self, update: int) -> np.ndarray:
        """The host batch; the runner puts it on the group's devices."""
        tc, pos = self.tc, self.position(update)
        batch = train_batch(self.ds, tc.batch_size, tc.seq_len, tc.seed, pos)
        if pos + 1 in self.garbage:  # one token repeated: a loss the model has never seen
            batch = np.full_like(batch, self.ds.vocab_size - 1)
        return batch


# ---------------------------------------------------------------------------------- members

# What became of a member in this process: still training, diverged, left to roll back, or out of
# rollbacks (stopped and marked diverged).
Outcome = Literal["running", "diverged", "rollback", "max_rollbacks"]


@dataclass
class Member:
    """One run inside a (possibly one-member) group: its directory, checkpoints and fate."""

    cfg: DictConfig
    run: RunDir
    meta: Dict[str, Any]
    ckpt: Optional[Checkpointer] = None
    tracker: Optional[Tracker] = None
    start: int = 0
    state: Any = None
    rng: Any = None
    limit: float = math.inf
    rollbacks: List[Dict[str, Any]] = field(default_factory=list)
    diverged_at: Optional[int] = None
    last_loss: float = math.nan
    outcome: Outcome = "running"
    logit_alerted: bool = False
    started_threads: Optional[str] = None  # xla_cpu_threads of the run's first process
    eval_set_hash: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.outcome == "running"

    def log(self, row: Dict[str, Any], say: Say = print) -> None:
        self.run.log(row)
        if self.tracker is not None:
            self.tracker.log(row)
        logit, limit = row.get(M.ATTN_MAX_LOGIT), self.alert_logit
        if logit is not None and logit > limit and not self.logit_alerted:
            self.logit_alerted = True  # once per process: a rising logit is one event
            self.alert("max attention logit crossed the threshold",
                       f"max attention logit {logit:.4g} > {limit:g} at step {row[M.STEP]}", say)

    @property
    def alert_logit(self) -> float:
        a = self.cfg.wandb.alert_logit
        return DEFAULT_THRESHOLD if a is None else float(a)

    def alert(self, title: str, text: str, say: Say) -> None:
        """A console line, and `wandb.alert` when W&B is on."""
        say(f"{self.run}: {text}")
        if self.tracker is not None:
            self.tracker.alert(title, text)

    def close(self, summary: Optional[Dict[str, Any]] = None, failing: bool = False) -> None:
        """Release the run; `failing`: it stops on an error, which the closing must not hide."""
        if self.ckpt is not None:
            ckpt, self.ckpt = self.ckpt, None
            ckpt.close(failing)
        if self.tracker is not None:
            self.tracker.finish(summary or {})
            self.tracker = None
        self.run.release()


def xla_cpu_threads() -> Optional[str]:
    """'one' in a sweep worker that runs XLA's CPU kernels single-threaded, 'all' otherwise;
    None off the CPU. The two sum in different orders, so a run resumed the other way matches
    an uninterrupted run to float32 rounding only."""
    if jax.default_backend() != "cpu":
        return None
    return "one" if "xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "") else "all"


def open_member(cfg: DictConfig, swept: Optional[Dict[str, Any]], ds: Dataset,
                n_params: tuple, say: Say) -> tuple[Member, Optional[Dict[str, Any]]]:
    """Take the run directory (checked, locked, config written); its summary if complete."""
    run = run_dir(resolve_out_dir(cfg))
    run.prepare()
    run.lock()
    try:
        run.check_identity(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        resolved["out_dir"] = str(run.path)
        meta = {"config_hash": config_hash(cfg), "corpus_hash": ds.corpus_hash,
                "vocab_size": ds.vocab_size, "n_params": n_params[0],
                "n_params_nonembed": n_params[1], "data": ds.description,
                "jax": jax.__version__, "backend": jax.default_backend(),
                "xla_cpu_threads": xla_cpu_threads(), "swept": dict(swept or {})}
        started = _previous_meta(run).get("xla_cpu_threads", meta["xla_cpu_threads"])
        run.write_config({**resolved, "run": meta})
        summary = run.read_summary(say)
    except BaseException:
        run.release()
        raise
    member = Member(cfg, run, {**resolved, "run": meta}, started_threads=started)
    if summary is not None:
        say(f"{run}: already complete ({summary.get('steps_done')} steps); nothing to do")
        run.release()
    return member, summary


def _previous_meta(run: RunDir) -> Dict[str, Any]:
    """The run block of an earlier process's config.yaml (empty for a new run)."""
    try:
        return run.read_config().get("run") or {}
    except (FileNotFoundError, OSError, ValueError):
        return {}


def restore_member(m: Member, state0: Any, rng: jax.Array, say: Say) -> None:
    """The resume point: the newest readable checkpoint, records cut back to it."""
    tc = m.cfg.train
    m.ckpt = Checkpointer(m.run.checkpoints, tc.keep_checkpoints, m.run.damaged)
    m.start, m.state, m.rng = m.ckpt.restore_newest(state0, rng, say)
    now = m.meta["run"]["xla_cpu_threads"]
    if m.start and m.started_threads != now:
        say(f"{m.run}: started with XLA on {m.started_threads} core(s) per run, resumes on "
            f"{now}: from step {m.start} it matches an uninterrupted run to float32 rounding, not "
            "bit for bit (resume it the way it started: the same sweep command)")
    if m.start:
        m.run.repair_records(m.start, say)
    else:
        m.run.start_afresh()
    sync_processes(f"restored {m.run.path.name}")  # followers read what process 0 repaired
    m.rollbacks = [e for e in m.run.read_events() if e.get("action") == "rollback"]


def loss_at_init(m: Member) -> Optional[float]:
    rows = [r for r in m.run.metrics_rows() if r[M.STEP] == 0 and r.get(M.EVAL_CE) is not None]
    return rows[0][M.EVAL_CE] if rows else None


def run_summary(rows: List[Dict[str, Any]], events: List[Dict[str, Any]],
              extra: Dict[str, Any]) -> M.RunSummary:
    """summary.json from the records (so a resumed run summarizes its whole history)."""
    def finite(key):
        return [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]

    def last(key):
        v = finite(key)
        return v[-1] if v else None
    log_z, attn = finite(M.LOG_Z_MEAN), finite(M.ATTN_MAX_LOGIT)
    return {
        "final_eval_ce": last(M.EVAL_CE),
        "final_train_ce": last(M.TRAIN_CE),
        "loss_at_init": rows[0].get(M.EVAL_CE) if rows else None,
        "max_attn_logit": max(attn) if attn else None,
        "final_max_attn_logit": attn[-1] if attn else None,
        "max_abs_log_z": max(abs(v) for v in log_z) if log_z else None,
        "spikes": sum(e.get("action") != "stop" for e in events),
        "rollbacks": sum(e.get("action") == "rollback" for e in events),
        **extra,
    }


# ---------------------------------------------------------------------------------- the loop

@dataclass
class Loop:
    """The steps of one group from its members' common resume point to `end`."""

    members: List[Member]
    runner: Runner
    batches: Batches
    evals: List[jax.Array]
    cfg: DictConfig  # the group's shared (non-hparam) config
    stop: StopRequest
    say: Say
    last_saved: int = 0
    _pending: Optional[tuple] = None  # (update, watched device values), read one step late
    _logged_at: int = 0  # last log step, and when it was written: throughput between them
    _t_last: float = 0.0
    _bar: Any = None

    @property
    def tc(self) -> Any:
        return self.cfg.train

    def run(self, start: int, end: int) -> int:
        """Train updates start+1..end (fewer if every member stops); returns the last done."""
        done = self.last_saved = self._logged_at = start
        self._t_last = time.time()
        self._bar = tqdm(total=self.tc.steps, initial=start, disable=self.tc.quiet,
                         dynamic_ncols=True, unit="step")
        try:  # closed whatever stops the loop, so an error's line starts a line of its own
            with self.stop.armed_loop():
                for update in range(start + 1, end + 1):
                    if self.stop.requested or not self.any_active():
                        break
                    self.step(update, end)
                    done = update
                self.resolve()
                if self.stop.requested:
                    self.checkpoint(done)
        finally:
            self._bar.close()
        return done

    def step(self, update: int, end: int) -> None:
        """One update; its rows on log/eval steps, then its checkpoint on checkpoint steps."""
        tc = self.tc
        # 2% of the run is a log step too: the paper's logit prediction reads block 0 there
        log_now = (update % tc.log_every == 0 or update == tc.steps
                   or update == M.early_step(tc.steps))
        eval_now = update % tc.eval_every == 0 or update == tc.steps
        metrics = self.runner.step(self.batches(update), log_now and tc.probes)
        self.resolve()  # the previous update, while this one runs
        self._pending = (update, Runner.watched(metrics))
        if log_now or eval_now:
            self.record(update, metrics if log_now else None, eval_now)
        if self.dynamics_due(update):
            self.record_dynamics(update)
        if update % tc.checkpoint_every == 0 or update == end:
            self.checkpoint(update)
        self._bar.update(1)

    def record(self, update: int, metrics: Optional[Dict[str, Any]], eval_now: bool) -> None:
        """Write the rows of a log and/or eval step (after checking the update)."""
        self.resolve()
        rows = self.observe(update, metrics, eval_now)
        if metrics is not None:
            tok_s = self.throughput(update - self._logged_at, self._t_last)
            for row in rows:
                if tok_s is not None:
                    row[M.TOKENS_PER_S] = tok_s
            self._logged_at = update
            self._bar.set_postfix(loss=f"{np.nanmin([r[M.TRAIN_LOSS] for r in rows]):.3f}")
        self.write(rows)
        self._t_last = time.time()  # probe and eval time is not training throughput

    def dynamics_due(self, update: int) -> bool:
        dc = self.cfg.dynamics
        return dc.enabled and (update % dc.every == 0 or update == self.tc.steps)

    def record_dynamics(self, update: int) -> None:
        """Training-dynamics probe (dynamics.*) on the first sequences of the fixed held-out batch;
        its records are written before the step's checkpoint, like the rows."""
        self.resolve()
        batch = self.evals[0][: self.cfg.dynamics.batch_size]
        for m, (scalars, arrays) in zip(self.members, self.runner.dynamics(batch)):
            if m.active:
                m.run.write_dynamics(update, scalars, arrays)

    def any_active(self) -> bool:
        return any(m.active for m in self.members)

    def throughput(self, steps: int, since: float) -> Optional[float]:
        now = time.time()
        if steps <= 1 or now <= since:  # one step's time is mostly the log step's own work
            return None
        return steps * self.tc.batch_size * self.tc.seq_len / (now - since)

    def resolve(self) -> None:
        """Act on the pending update's watched values: spikes, divergence."""
        if self._pending is None:
            return
        update, watched = self._pending
        self._pending = None
        for i, (m, w) in enumerate(zip(self.members, self.runner.read(watched))):
            if not m.active:
                continue
            m.last_loss = w["loss"]
            if w["spike"]:
                self.on_spike(i, m, update, w)
            if m.active and not self.runner.ok(w):
                m.diverged_at, m.outcome = update, "diverged"

    def on_spike(self, i: int, m: Member, update: int, w: Dict[str, float]) -> None:
        sc = m.cfg.train.spike
        action = SpikeAction(sc.action)
        event = {M.STEP: update, "loss": w["loss"], "grad_norm": w["grad_norm"],
                 "loss_zscore": w["loss_zscore"], "grad_zscore": w["grad_zscore"],
                 "action": action.value}
        match action:
            case SpikeAction.log | SpikeAction.skip:  # recorded; skip acted on device already
                pass
            case SpikeAction.rollback if len(m.rollbacks) >= sc.max_rollbacks:
                event["action"] = "stop"
                m.outcome, m.diverged_at = "max_rollbacks", update
                self.runner.freeze(i)
            case SpikeAction.rollback:
                event.update(batches_skipped=sc.skip_batches,
                             resume_from=m.ckpt.latest_step() or 0)
                m.outcome = "rollback"
                self.runner.freeze(i)
            case _:
                unhandled("train.spike.action", action)
        m.run.append_event(event)  # durable before the rollback acts on it
        m.alert(f"spike: {event['action']}", f"spike at step {update} (loss z "
                f"{w['loss_zscore']:.1f}, grad-norm z {w['grad_zscore']:.1f}): {event['action']}",
                self.say)

    def observe(self, update: int, metrics: Optional[Dict[str, Any]],
                eval_now: bool) -> List[Dict[str, Any]]:
        """Rows of a log and/or eval step: train metrics, probes, held-out CE."""
        rows: List[Dict[str, Any]] = [{M.STEP: update} for _ in self.members]
        if metrics is not None:
            for row, train_row in zip(rows, self.runner.rows(metrics)):
                row.update(train_row)
            if self.tc.probes:
                for row, probe_row in zip(rows, self.runner.probe(self.evals[0])):
                    row.update(probe_row)
        if eval_now:
            for row, ce in zip(rows, self.runner.evaluate(self.evals)):
                row[M.EVAL_CE] = float(ce)
        return rows

    def write(self, rows: List[Dict[str, Any]]) -> None:
        for m, row in zip(self.members, rows):
            if m.active:
                m.log(row, self.say)

    def checkpoint(self, update: int) -> None:
        """Save the active members at `update` (its rows are already written). Pending checks
        first: a checkpoint never holds an update that spiked or diverged."""
        self.resolve()
        if update <= self.last_saved:
            return
        for i, m in enumerate(self.members):
            if m.active:
                m.ckpt.save(update, self.runner.member_state(i), m.rng)
        self.last_saved = update


# ---------------------------------------------------------------------------------- a group

def finish_member(m: Member, end: int, steps_run: int, wall: float, group_size: int,
                  say: Say) -> Optional[Dict[str, Any]]:
    """Write the summary of a run that ended (completed, diverged, out of rollbacks). None for a
    run that goes on later (stop_after, a signal) or now (a rollback)."""
    tc = m.cfg.train
    if m.outcome == "rollback" or (m.active and end < tc.steps):
        m.close()
        return None
    if m.outcome == "diverged":
        m.alert("diverged", f"diverged at step {m.diverged_at} (loss {m.last_loss:.4g})", say)
        if m.diverged_at is not None:
            m.log({M.STEP: m.diverged_at, M.TRAIN_LOSS: m.last_loss})
    elif m.outcome == "max_rollbacks":
        m.alert("diverged (out of rollbacks)", f"spike at step {m.diverged_at} after "
                f"{len(m.rollbacks)} rollbacks (train.spike.max_rollbacks="
                f"{tc.spike.max_rollbacks}); stopped and marked diverged", say)
    elif m.outcome != "running":
        raise AssertionError(f"unhandled outcome {m.outcome!r}")
    m.run.close_metrics()
    diverged = m.outcome in ("diverged", "max_rollbacks")
    tokens = tc.batch_size * tc.seq_len
    rows = m.run.metrics_rows()
    summary = run_summary(rows, m.run.read_events(), {
        "diverged": diverged, "diverged_at_step": m.diverged_at,
        "stop_reason": m.outcome if diverged else "completed",
        "steps_done": m.diverged_at if diverged else tc.steps,
        "n_params": m.meta["run"]["n_params"],
        "n_params_nonembed": m.meta["run"]["n_params_nonembed"],
        "tokens_per_s": steps_run * tokens / wall if steps_run > 0 and wall > 0 else None,
        "wall_s": wall, "config_hash": m.meta["run"]["config_hash"],
        "corpus_hash": m.meta["run"]["corpus_hash"], "eval_set_hash": m.eval_set_hash,
        "group_size": group_size,
        **early_logits(rows, tc.steps), **mlp0_tail(rows, tc.steps, tc.log_every)})
    m.run.write_summary(summary)
    m.close({**summary, **grad_rms_summary(rows)})  # W&B panels read these medians too
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    say(f"{m.run}: eval CE {fmt(summary['final_eval_ce'], '.4f')}, max attention logit "
        f"{fmt(summary['max_attn_logit'], '.3g')}, {fmt(summary['tokens_per_s'], ',.0f')} "
        f"tokens/s, {wall:.1f} s")
    return summary


def train(cfg: DictConfig, stop_after: Optional[int] = None,
          swept: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns its summary.

    `stop_after` ends the process's work after that many total steps with a checkpoint and no
    summary, exactly as an interruption would (used for preemption and resume tests).
    `swept` (the values a sweep set, by dotted key) is recorded in config.yaml for the table.
    """
    return train_group([cfg], stop_after, [swept], vmap=False)[0]


def train_group(cfgs: List[DictConfig], stop_after: Optional[int] = None,
                swept: Optional[List[Optional[Dict[str, Any]]]] = None,
                vmap: bool = True) -> List[Dict[str, Any]]:
    """Train runs that differ only in scalar hyperparameters together: one compiled step vmapped
    over their states and hparams, one shared batch per step (same seed, same data order, same
    init). Each run keeps its own directory, records and checkpoints; a diverging run is frozen
    and recorded without disturbing the others. Returns the runs' summaries in order.
    Raises `Stopped` after SIGTERM/SIGUSR1/SIGINT, with every member's records and checkpoint saved;
    `StorageError` (one line) when the disk refuses a write, every record before it kept.
    """
    swept = list(swept or [None] * len(cfgs))
    for cfg in cfgs:
        validate(cfg)
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("train_group needs runs that differ only in scalar hyperparameters")
    quiet_storage_noise()
    with stop_requests() as stop, writing():
        return _train_group(cfgs, stop_after, swept, vmap, stop)


def held_elsewhere(out_dir: str | Path) -> Optional[str]:
    """The pid of another process training in `out_dir` (see rundir.lock_holder). Never in a
    multi-host run: its processes train every group together, so none may decide alone to skip
    one (only process 0 locks, and a run store is not shared with other sweeps there)."""
    return None if jax.process_count() > 1 else lock_holder(out_dir)


def train_free(cfgs: List[DictConfig], swept: List[Optional[Dict[str, Any]]],
               vmap: bool) -> List[str]:
    """A sweep's group in a run store other sweeps share: train the runs no other process is
    training and leave those it is to it (their sweep waits for them, proxies/sweep.py). Returns
    the run directories left."""
    busy = [i for i, c in enumerate(cfgs) if held_elsewhere(resolve_out_dir(c)) is not None]
    free = [i for i in range(len(cfgs)) if i not in busy]
    if free:
        try:
            train_group([cfgs[i] for i in free], swept=[swept[i] for i in free],
                        vmap=vmap and len(free) > 1)
        except RunBusy:  # taken between the look and the lock: the sweep's next round sees it
            busy = list(range(len(cfgs)))
    return [str(resolve_out_dir(cfgs[i])) for i in busy]


def _train_group(cfgs: List[DictConfig], stop_after: Optional[int],
                 swept: List[Optional[Dict[str, Any]]], vmap: bool,
                 stop: StopRequest) -> List[Dict[str, Any]]:
    c0, tc = cfgs[0], cfgs[0].train
    say: Say = (lambda *a: None) if tc.quiet or jax.process_index() else print
    enable_compile_cache(c0)
    ds = _dataset(c0)
    model = Transformer(c0.model, ds.vocab_size, tc.seq_len)
    rng = jax.random.key(tc.seed)
    state0 = init_state(model, c0, rng)
    n_params = count_params(state0.params)
    if not vmap or len(cfgs) == 1:  # one run: its checkpoints restore straight onto its mesh
        layout = run_layout(c0.mesh, tc.batch_size)
        state0 = state0 if layout is None else layout.put(state0, layout.state(state0))

    summaries: List[Optional[Dict[str, Any]]] = [None] * len(cfgs)
    members: List[tuple[int, Member]] = []
    try:
        for i, cfg in enumerate(cfgs):
            m, summaries[i] = open_member(cfg, swept[i], ds, n_params, say)
            if summaries[i] is None:
                members.append((i, m))
                restore_member(m, state0, rng, say)
    except BaseException:
        for _, m in members:
            m.close(failing=True)
        raise
    if not members:
        return summaries  # type: ignore[return-value]

    # One group needs one resume point and one data path; otherwise each run trains alone.
    paths = {(m.start, json.dumps(m.rollbacks)) for _, m in members}
    if len(paths) > 1 or (len(members) > 1 and any(m.rollbacks for _, m in members)):
        for _, m in members:
            m.close()
        for i, m in members:
            summaries[i] = train_group([m.cfg], stop_after, [swept[i]], vmap=False)[0]
        return summaries  # type: ignore[return-value]
    try:
        return _train_members(members, summaries, stop_after, swept, vmap, stop, ds, model,
                              state0, say)
    except BaseException:  # Stopped, Ctrl-C twice, any error: records are append-only or atomic
        for _, m in members:
            m.close(failing=True)
        raise


def _train_members(members: List[tuple[int, Member]], summaries: List[Optional[Dict[str, Any]]],
                   stop_after: Optional[int], swept: List[Optional[Dict[str, Any]]], vmap: bool,
                   stop: StopRequest, ds: Dataset, model: Transformer, state0: Any,
                   say: Say) -> List[Dict[str, Any]]:
    c0, tc = members[0][1].cfg, members[0][1].cfg.train
    start = members[0][1].start
    if start:
        say(f"resuming {', '.join(str(m.run) for _, m in members)} from step {start}")
    vmapped = vmap and len(members) > 1
    ms = [m for _, m in members]
    batches = Batches(ds, c0, ms[0].rollbacks)
    layout = group_layout(c0.mesh, len(ms)) if vmapped else run_layout(c0.mesh, tc.batch_size)
    runner = Runner([m.state for m in ms], [hparams_from_config(m.cfg) for m in ms], vmapped,
                    layout)
    fns = runner.compile(compile_key(c0), model, c0, runner.place_batch(batches(start + 1)))
    held_out = the_eval_set(ds, tc)
    evals = [runner.place_batch(b) for b in held_out]
    for m in ms:
        m.eval_set_hash = eval_set_hash(held_out)
    for m in ms:
        if jax.process_index() == 0:  # W&B mirrors process 0's records
            m.tracker = Tracker(m.run.path, m.cfg.wandb, m.meta, m.run.path.name, tc.quiet)
    init_records(ms, fns, state0, evals, say)
    sync_processes("step-0 rows written")
    for m in ms:
        dl = m.cfg.train.divergence_loss
        m.limit = dl if dl is not None else 2 * loss_at_init(m)
    runner.set_limits([m.limit for m in ms])
    loop = Loop(ms, runner, batches, evals, c0, stop, say)
    if start == 0 and loop.dynamics_due(0):
        loop.record_dynamics(0)  # the model at init: where every distribution starts
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    t0 = time.time()
    done = loop.run(start, end)
    wall = time.time() - t0  # the training loop, probes and evals included, compilation not
    if stop.requested and done < end and loop.any_active():  # work left: resume it later
        raise Stopped(stop.requested, done)
    for (i, m) in members:
        steps_run = (m.diverged_at or done) - start
        summaries[i] = finish_member(m, end, steps_run, wall, len(ms) if vmapped else 1, say)
        if m.outcome == "rollback":
            ev = m.run.read_events()[-1]
            say(f"{m.run}: rolling back to step {ev['resume_from']}, skipping "
                f"{ev['batches_skipped']} batches from step {ev[M.STEP]} on")
            summaries[i] = train_group([m.cfg], stop_after, [swept[i]], vmap=False)[0]
        elif summaries[i] is None:
            summaries[i] = {"steps_done": end, "complete": False}
    return summaries  # type: ignore[return-value]


def the_eval_set(ds: Dataset, tc: DictConfig) -> List[np.ndarray]:
    """The held-out batches every eval of the run reads (`train.eval_set`)."""
    match EvalSet(tc.eval_set):
        case EvalSet.shared:
            seed = None
        case EvalSet.per_seed:
            seed = tc.seed
        case kind:
            unhandled("train.eval_set", kind)
    return eval_batches(ds, tc.eval_batches, tc.batch_size, tc.seq_len, seed)


def init_records(ms: List[Member], fns: Compiled, state0: Any, evals: List[jax.Array],
                 say: Say) -> None:
    """The step-0 row (held-out CE and probes at init) of members that lack it: a fresh run, or a
    resumed one whose metrics.jsonl went missing (init is seeded, so the row is the same)."""
    missing = [m for m in ms if loss_at_init(m) is None]
    sync_processes("step-0 rows read")  # every process decides alike before process 0 writes
    if not missing:
        return
    ce = float(np.mean([np.asarray(fns.eval_one(state0.variables, b)) for b in evals]))
    row: Dict[str, Any] = {M.STEP: 0, M.EVAL_CE: ce}
    if ms[0].cfg.train.probes:
        out = jax.device_get(fns.probe_one(state0.variables, evals[0]))
        row.update({k: float(v) for k, v in out.items()})
    for m in missing:
        if m.start:
            say(f"{m.run.metrics} has no step-0 row (the file went missing?); recomputed it, "
                f"rows of steps 1..{m.start} are lost")
            m.run.rewrite_metrics([row] + m.run.metrics_rows())
        else:
            m.log(row, say)


# ---------------------------------------------------------------------------------- CLI

def multirun_job(cfg: DictConfig, sweep_dir: Path, overrides: List[str]) -> Dict[str, Any]:
    """One job of `python -m proxies.train -m ...`: a run directory inside Hydra's sweep dir, then
    the sweep dir's results.csv rebuilt from every run directory in it."""
    from proxies.results import update_table

    if cfg.out_dir is None:
        cfg.out_dir = str(sweep_dir / run_name(cfg))
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    swept = {k: OmegaConf.select(cfg, k) for k in keys if k != "out_dir"}
    summary = train(cfg, swept=swept)
    update_table(sweep_dir)
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with one_line_errors():
        initialize_distributed(cfg.mesh)
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            multirun_job(cfg, Path(hc.sweep.dir), list(hc.overrides.task))
        else:
            train(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
