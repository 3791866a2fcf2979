"""A run inside a (possibly one-member) training group: its directory taken and checked
(`open_member`), its resume point and repaired records (`restore_member`), its rows and alerts
(`Member.log`), and its summary once it ends (`finish_member`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

import jax
from omegaconf import DictConfig, OmegaConf

from proxies import metric_names as M
from proxies import monitor as MO
from proxies.checkpoint import Checkpointer
from proxies.config import DEFAULT_THRESHOLD, config_hash
from proxies.data import Dataset
from proxies.naming import resolve_out_dir
from proxies.sweep_table import early_logits, grad_rms_summary, mlp0_tail
from proxies.rundir import RunDir, Say, run_dir
from proxies.sharding import sync_processes
from proxies.tracking import Tracker

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
    rollbacks: List[Dict[str, Any]] = field(default_factory=list)
    diverged_at: Optional[int] = None
    last_loss: float = math.nan
    outcome: Outcome = "running"
    logit_alerted: bool = False
    started_threads: Optional[str] = None  # xla_cpu_threads of the run's first process
    eval_set_hash: Optional[str] = None
    monitor: Optional[MO.Monitor] = None  # train.monitor.enabled: the run's early warning
    signal_rows: List[Dict[str, Any]] = field(default_factory=list)  # not yet in signals.jsonl

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

    def watch(self, update: int, w: Dict[str, float], say: Say) -> List[MO.EarlyWarning]:
        """Record one update's monitored values and feed them to the monitor; each warning
        becomes an event, a console line and an alert."""
        if self.monitor is None:
            return []
        self.signal_rows.append({M.STEP: update, **{k: w[k] for k in MO.RECORDED if k in w}})
        warnings = self.monitor.observe(update, w)
        for warning in warnings:
            self.run.append_event(warning.record())
            self.alert(f"early warning: {warning.signal}", warning.line(), say)
        return warnings

    def flush_signals(self) -> None:
        """Write the recorded signal rows (before a checkpoint: a resume finds them all)."""
        if self.signal_rows:
            rows, self.signal_rows = self.signal_rows, []
            self.run.append_signals(rows)

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
    if tc.monitor.enabled:  # where the live monitor stood: its recorded signals replayed
        m.monitor = MO.from_config(tc.monitor, m.cfg.optim.eps, m.cfg.optim.warmup_steps)
        MO.replay(m.monitor, m.run.signal_rows())


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
    warnings = [e for e in events if e.get("event") == MO.EVENT]
    spikes = [e for e in events if "action" in e]
    return {
        "final_eval_ce": last(M.EVAL_CE),
        "final_train_ce": last(M.TRAIN_CE),
        "loss_at_init": rows[0].get(M.EVAL_CE) if rows else None,
        "max_attn_logit": max(attn) if attn else None,
        "final_max_attn_logit": attn[-1] if attn else None,
        "max_abs_log_z": max(abs(v) for v in log_z) if log_z else None,
        "spikes": sum(e.get("action", "stop") != "stop" for e in spikes),
        "rollbacks": sum(e.get("action") == "rollback" for e in spikes),
        "early_warnings": len(warnings),
        "first_warning_step": min((e[M.STEP] for e in warnings), default=None),
        **extra,
    }



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

