"""One proxy training run: `python -m proxies.train [key=value ...]`.

The run directory (out_dir, see proxies/rundir.py) holds config.yaml, metrics.jsonl, events.jsonl,
summary.json and checkpoints/. Re-running the same command on it resumes from the newest readable
checkpoint; the resumed metrics match an uninterrupted run's step for step, whatever stopped it
(kill -9, SIGTERM, Ctrl-C, a spike rollback).

The loop: `open_member` (a run's records and lock) -> `restore_member` (resume point, repaired
records) -> `Loop.run` (steps; log, eval and checkpoint steps; spikes and divergence) ->
`finish_member` (summary). `train_group` strings them together for one run or a vmapped group.
A member's side of it is proxies/members.py, what it reads proxies/batches.py, and which runs
may share a group proxies/naming.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from proxies import divergence
from proxies import metric_names as M
from proxies import monitor as MO
from proxies.batches import Batches, shared_dataset, the_eval_set
from proxies.cli import one_line_errors, run_cli
from proxies.config import MonitorAction, SpikeAction, register_configs, unhandled, validate
from proxies.data import Dataset, cache_dir, eval_set_hash
from proxies.members import (Member, finish_member, loss_at_init, open_member,
                             restore_member)
from proxies.model import Transformer, count_params
from proxies.naming import compile_key, group_key, run_name
from proxies.optim import hparams_from_config
from proxies.rundir import Say, quiet_storage_noise, writing
from proxies.runner import Evaluators, Runner, evaluators, place_batch
from proxies.sharding import group_layout, initialize_distributed, run_layout, sync_processes
from proxies.step import init_state
from proxies.stopping import StopRequest, Stopped, WarnedStop, stop_requests
from proxies.tracking import Tracker

register_configs()

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")


def enable_compile_cache(cfg: DictConfig) -> None:
    """Keep compiled steps on disk (JAX's persistent cache, under the data cache dir), so a
    rerun, a resumed run or another sweep of the same structure skips compilation."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir(cfg.data) / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
    warned: Optional[MO.EarlyWarning] = None  # with train.monitor.action=stop: ends the loop

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
                    if self.stop.requested or self.warned or not self.any_active():
                        break
                    self.step(update, end)
                    done = update
                self.resolve()
                if self.stop.requested or self.warned:
                    self.checkpoint(done)
                self.flush_signals()
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
        self.flush_signals()
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
        """Act on the pending update's watched values: spikes, divergence, early warnings."""
        if self._pending is None:
            return
        update, watched = self._pending
        self._pending = None
        for i, (m, w) in enumerate(zip(self.members, self.runner.read(watched))):
            if not m.active:
                continue
            m.last_loss = w["loss"]
            self.on_warnings(m.watch(update, w, self.write_line), m)
            if w["spike"]:
                self.on_spike(i, m, update, w)
            if m.active and not self.runner.ok(w):
                m.diverged_at, m.outcome = update, "diverged"

    def write_line(self, text: str) -> None:
        """A console line through the progress bar (it redraws below the line)."""
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text)
        else:
            self.say(text)

    def on_warnings(self, warnings: List[MO.EarlyWarning], m: Member) -> None:
        if not warnings:
            return
        self._bar.set_postfix_str(f"early warning: {warnings[0].signal}")
        match MonitorAction(m.cfg.train.monitor.action):
            case MonitorAction.log:
                pass
            case MonitorAction.stop:
                self.warned = self.warned or warnings[0]
            case action:
                unhandled("train.monitor.action", action)

    def flush_signals(self) -> None:
        for m in self.members:
            m.flush_signals()

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
        self.flush_signals()
        for i, m in enumerate(self.members):
            if m.active:
                m.ckpt.save(update, self.runner.member_state(i), m.rng)
        self.last_saved = update


# ---------------------------------------------------------------------------------- a group

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


def _train_group(cfgs: List[DictConfig], stop_after: Optional[int],
                 swept: List[Optional[Dict[str, Any]]], vmap: bool,
                 stop: StopRequest) -> List[Dict[str, Any]]:
    c0, tc = cfgs[0], cfgs[0].train
    say: Say = (lambda *a: None) if tc.quiet or jax.process_index() else print
    enable_compile_cache(c0)
    ds = shared_dataset(c0)
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
    held_out = the_eval_set(ds, tc)
    evals = [place_batch(layout, b) for b in held_out]
    for m in ms:
        m.eval_set_hash = eval_set_hash(held_out)
    for m in ms:
        if jax.process_index() == 0:  # W&B mirrors process 0's records
            m.tracker = Tracker(m.run.path, m.cfg.wandb, m.meta, m.run.path.name, tc.quiet)
    key = compile_key(c0)
    init_records(ms, evaluators(key, model, c0), state0, evals, say)
    sync_processes("step-0 rows written")
    # The step's hparams hold each run's divergence limit: built once its loss at init is recorded.
    limits = [divergence.loss_limit(m.cfg.train, loss_at_init(m)) for m in ms]
    hps = [hparams_from_config(m.cfg, loss_limit=limit) for m, limit in zip(ms, limits)]
    runner = Runner([m.state for m in ms], hps, vmapped, layout)
    runner.compile(key, model, c0, runner.place_batch(batches(start + 1)))
    loop = Loop(ms, runner, batches, evals, c0, stop, say)
    if start == 0 and loop.dynamics_due(0):
        loop.record_dynamics(0)  # the model at init: where every distribution starts
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    t0 = time.time()
    done = loop.run(start, end)
    wall = time.time() - t0  # the training loop, probes and evals included, compilation not
    if stop.requested and done < end and loop.any_active():  # work left: resume it later
        raise Stopped(stop.requested, done)
    if loop.warned is not None and done < end and loop.any_active():
        raise WarnedStop(loop.warned.line(), done)
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


def init_records(ms: List[Member], fns: Evaluators, state0: Any, evals: List[jax.Array],
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
    from proxies.sweep_table import update_table

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
