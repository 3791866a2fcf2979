"""Loss-spike handling (`train.spike.*`): detection against a brute-force window, skip on device,
rollback with skipped batches, exact resume, vmapped groups, and the bound on rollbacks."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxies import rundir as R
from proxies.batches import Batches
from proxies.model import Transformer
from proxies.naming import group_key
from proxies.optim import hparams_from_config
from proxies.sweep_table import run_row
from proxies.rundir import read_metrics
from proxies.spikes import SpikeWindow, detect, init_window, push
from proxies.step import init_state, make_train_step
from proxies.train import train, train_group
from tests.conftest import F64_RTOL, assert_same_records

SPIKY = ("train.steps=24", "train.log_every=2", "train.eval_every=12", "train.checkpoint_every=6",
         "train.spike.window=8", "train.spike.min_samples=4", "train.inject_spike_at=[15,16]",
         "train.spike.skip_batches=3")


def events(cfg):
    return R.read_jsonl(Path(cfg.out_dir) / R.EVENTS)[0]


def losses(cfg):
    return {r["step"]: r["train/loss"] for r in read_metrics(Path(cfg.out_dir) / R.METRICS)
            if "train/loss" in r}


def comparable(cfg):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in read_metrics(Path(cfg.out_dir) / R.METRICS)]


def test_detection_matches_a_brute_force_window():
    rng = np.random.default_rng(0)
    xs = 3.0 + 0.1 * rng.standard_normal(60)
    xs[[20, 21, 45]] = [9.0, 8.0, 6.3]  # two spikes in a row, one later
    gs = 1.0 + 0.05 * rng.standard_normal(60)
    gs[33] = 50.0  # a gradient-norm spike alone
    W, sigma, min_samples = 16, 6.0, 8
    win = init_window(W)
    kept_l, kept_g, n_spikes = [], [], 0
    step = jax.jit(lambda w, x, g: (detect(w, x, g, sigma, min_samples), w))
    for t, (x, g) in enumerate(zip(xs, gs)):
        (spike, zl, zg), _ = step(win, jnp.float32(x), jnp.float32(g))
        ref_l, ref_g = np.array(kept_l[-W:], np.float32), np.array(kept_g[-W:], np.float32)
        if len(ref_l) >= min_samples:
            want_zl = (x - ref_l.mean()) / max(ref_l.std(), 1e-3 * abs(ref_l.mean()))
            want_zg = (g - ref_g.mean()) / max(ref_g.std(), 1e-3 * abs(ref_g.mean()))
            np.testing.assert_allclose([float(zl), float(zg)], [want_zl, want_zg], rtol=1e-3)
            want = want_zl > sigma or want_zg > sigma
        else:
            want = False
        assert bool(spike) == want, t
        n_spikes += want
        if not want:
            kept_l.append(x)
            kept_g.append(g)
        win = push(win, jnp.float32(x), jnp.float32(g), spike, jnp.bool_(False))
    assert int(win.spikes) == n_spikes == 4
    nan, _, _ = detect(win, jnp.float32(np.nan), jnp.float32(1.0), sigma, min_samples)
    assert bool(nan)  # a non-finite loss is always a spike


@pytest.mark.parametrize("action", ["log", "skip"])
def test_skip_leaves_params_and_optimizer_state_as_they_were(action, make_cfg):
    cfg = make_cfg(f"train.spike.action={action}", "train.spike.min_samples=2",
                   "train.spike.window=4")
    model = Transformer(cfg.model, 256, cfg.train.seq_len)
    state = init_state(model, cfg, jax.random.key(0))
    calm = SpikeWindow(loss_W=jnp.full(4, 0.5), grad_norm_W=jnp.full(4, 0.1),
                       filled=jnp.int32(4), spikes=jnp.int32(0), skipped=jnp.int32(0))
    state = state.replace(spike=calm)  # a loss at init (~5.5) is far above a window at 0.5
    batch = jnp.ones((4, cfg.train.seq_len + 1), jnp.int32)
    hp = hparams_from_config(cfg, loss_limit=math.inf)
    new, metrics = jax.jit(make_train_step(model, cfg))(state, batch, hp)
    assert bool(metrics["spike"]) and int(new.step) == 1 and int(new.spike.spikes) == 1
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)),
                                  (new.params, new.opt_state), (state.params, state.opt_state))
    assert all(jax.tree_util.tree_leaves(same)) == (action == "skip")
    assert bool(metrics["skipped"]) == (action == "skip")


def test_log_skip_and_rollback_on_injected_spikes(make_cfg):
    runs = {a: make_cfg(*SPIKY, f"train.spike.action={a}", out=a)
            for a in ("log", "skip", "rollback")}
    clean = make_cfg(*SPIKY[:-2], out="clean")
    summaries = {a: train(c) for a, c in runs.items()}
    train(clean)
    base = losses(clean)

    ev = events(runs["log"])
    assert [(e["step"], e["action"]) for e in ev] == [(15, "log"), (16, "log")]
    assert all(max(e["loss_zscore"], e["grad_zscore"]) > 6 for e in ev)
    assert summaries["log"]["spikes"] == 2 and summaries["log"]["rollbacks"] == 0
    garbage = losses(runs["log"])[16]
    assert garbage > base[16] + 1.0  # the garbage batch's loss is in the records

    assert [e["action"] for e in events(runs["skip"])] == ["skip", "skip"]
    assert summaries["skip"]["spikes"] == 2

    ev = events(runs["rollback"])
    assert [(e["step"], e["action"], e["batches_skipped"], e["resume_from"]) for e in ev] == [
        (15, "rollback", 3, 12)]
    s = summaries["rollback"]
    assert s["rollbacks"] == 1 and s["spikes"] == 1 and s["steps_done"] == 24
    rb = losses(runs["rollback"])
    assert sorted(rb) == sorted(base) and all(rb[k] == base[k] for k in rb if k <= 14)
    assert max(v for k, v in rb.items() if k >= 10) < garbage - 1.0  # no spike left on its path
    # Updates from the spike on read the batches 3 positions later.
    b = Batches(None, runs["rollback"], ev)
    assert [b.position(u) for u in (14, 15, 16)] == [13, 17, 18]
    row = run_row(Path(runs["rollback"].out_dir))
    assert row["spikes"] == 1 and row["rollbacks"] == 1


def test_a_kill_during_a_rollback_resumes_on_the_same_path(make_cfg, monkeypatch):
    full = make_cfg(*SPIKY, "train.spike.action=rollback", out="full")
    train(full)
    cut = make_cfg(*SPIKY, "train.spike.action=rollback", out="cut")
    orig = R.RunDir.append_event

    def append_then_die(self, event):
        orig(self, event)
        raise KeyboardInterrupt  # killed right after the rollback was decided

    monkeypatch.setattr(R.RunDir, "append_event", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.undo()
    train(cut)
    assert comparable(cut) == comparable(full)
    assert events(cut) == events(full)


def test_resume_after_a_skip_is_exact(make_cfg):
    full = make_cfg(*SPIKY, "train.spike.action=skip", out="full")
    cut = make_cfg(*SPIKY, "train.spike.action=skip", out="cut")
    train(full)
    train(cut, stop_after=19)
    train(cut)
    assert comparable(cut) == comparable(full)
    assert events(cut) == events(full)


# One spike, by a scaled gradient (kind=grad), so it can hit one member of a group alone: the
# scale is a step argument per member, and 1 leaves a member's updates as they were.
ONE_SPIKE = ("train.steps=24", "train.log_every=2", "train.eval_every=12",
             "train.checkpoint_every=6", "train.spike.window=8", "train.spike.min_samples=4",
             "train.inject_spike_at=[15]", "train.inject_spike_kind=grad",
             "train.spike.max_rollbacks=1")


def same_events(a, b) -> None:
    ea, eb = events(a), events(b)
    assert [(e["step"], e["action"]) for e in ea] == [(e["step"], e["action"]) for e in eb]
    for x, y in zip(ea, eb):
        assert x.keys() == y.keys()
        np.testing.assert_allclose([x[k] for k in sorted(x) if k != "action"],
                                   [y[k] for k in sorted(x) if k != "action"], rtol=F64_RTOL)


@pytest.mark.parametrize("action", ["skip", "rollback"])
def test_a_spike_in_one_member_of_a_vmapped_group_acts_on_that_member_alone(action, make_cfg,
                                                                            float64):
    """Member 1 of 3 alone gets a 1000× gradient at update 15 (it skips it, or rolls back and
    then stops at the same spike: max_rollbacks=1). Every member, its neighbours on both sides
    included, logs what it logs trained alone (float64: F64_RTOL), and only member 1 has events."""
    members = [("3e-3", 1.0), ("1e-2", 1000.0), ("1e-2", 1.0)]

    def cfg(lr: str, scale: float, out: str):
        return make_cfg(float64, *ONE_SPIKE, f"train.spike.action={action}", f"optim.lr={lr}",
                        f"train.inject_spike_scale={scale}", out=out)

    group = [cfg(lr, scale, f"g{i}") for i, (lr, scale) in enumerate(members)]
    assert len({group_key(c) for c in group}) == 1  # one group, one compiled step
    summaries = train_group(group, vmap=True)
    assert summaries[0]["group_size"] == 3
    for i, (lr, scale) in enumerate(members):
        alone = cfg(lr, scale, f"s{i}")
        train(alone)
        assert_same_records(group[i], alone)
        same_events(group[i], alone)
    want = ["skip"] if action == "skip" else ["rollback", "stop"]
    assert [[e["action"] for e in events(g)] for g in group] == [[], want, []]


def test_more_spikes_than_max_rollbacks_stop_and_mark_the_run(make_cfg):
    # A scaled gradient is tied to the update number: every rollback meets it again.
    cfg = make_cfg(*SPIKY[:-2], "train.inject_spike_at=[15]", "train.inject_spike_kind=grad",
                   "train.spike.action=rollback", "train.spike.max_rollbacks=2")
    s = train(cfg)
    assert [e["action"] for e in events(cfg)] == ["rollback", "rollback", "stop"]
    assert s["diverged"] is True and s["stop_reason"] == "max_rollbacks"
    assert s["rollbacks"] == 2 and s["diverged_at_step"] == 15
    assert json.loads((Path(cfg.out_dir) / R.SUMMARY).read_text())["rollbacks"] == 2


def test_a_fresh_train_state_holds_no_buffer_twice(make_cfg):
    """Accelerators donate the state to the step; XLA refuses to donate one buffer twice, so
    every leaf of a new state (the spike window's zeros included) must own its buffer."""
    cfg = make_cfg()
    state = init_state(Transformer(cfg.model, 256, cfg.train.seq_len), cfg, jax.random.key(0))
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(state)]
    assert len(set(pointers)) == len(pointers)


def brute_force_divergence(losses, limit, skipped, patience):
    """The first update (1-based) whose loss is non-finite, or above `limit` for the
    (patience+1)-th update in a row, skipped updates neither counting nor breaking a stretch."""
    run = 0
    for i, (loss, skip) in enumerate(zip(losses, skipped), 1):
        if skip:
            continue
        if not np.isfinite(loss):
            return i
        run = run + 1 if loss > limit else 0
        if run > patience:
            return i
    return None


@pytest.mark.parametrize("patience", [0, 1, 3])
def test_divergence_is_a_sustained_excursion_or_a_non_finite_loss(patience):
    from proxies.divergence import diverged
    rng = np.random.default_rng(patience)
    for _ in range(30):
        losses = rng.choice([1.0, 5.0, np.nan], size=12, p=[0.55, 0.4, 0.05])
        skipped = rng.random(12) < 0.15
        over, first = jnp.zeros((), jnp.int32), None
        for i, (loss, skip) in enumerate(zip(losses, skipped), 1):
            gone, over = diverged(jnp.float32(loss), jnp.float32(2.0), over, jnp.bool_(skip),
                                  patience)
            if bool(gone):
                first = i
                break
        assert first == brute_force_divergence(losses, 2.0, skipped, patience)


def test_one_garbage_batch_under_log_does_not_end_the_run(make_cfg):
    """The garbage batch's loss passes the limit once, the run recovers and keeps its final
    loss; the same garbage for more than train.divergence_patience updates in a row marks the run
    diverged (garbage losses here ≈ 10, ordinary ones < 6.3)."""
    run = ("train.steps=48", "train.log_every=1", "optim.lr=1e-2", "train.divergence_loss=8.0")
    once = make_cfg(*run, "train.inject_spike_at=[40]", out="once")
    s = train(once)
    assert losses(once)[40] > 8.0 > max(v for k, v in losses(once).items() if k != 40)
    assert not s["diverged"] and s["steps_done"] == 48 and s["stop_reason"] == "completed"
    sustained = make_cfg(*run, "train.inject_spike_at=[40,41,42]", "train.divergence_patience=2",
                         out="sustained")
    s = train(sustained)
    assert s["diverged"] and s["diverged_at_step"] == 42
