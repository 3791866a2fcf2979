"""Members' train states on device and the compiled functions that move them, single or vmapped.

A group of runs that differ only in scalar hyperparameters trains as one vmapped program: one
shared batch per step, states and hparams stacked on a leading member axis. A single run is the
same thing without the axis. The loop (proxies/train.py) talks to a `Runner` and never needs to
know which it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from proxies import metric_names as M
from proxies.probes import flatten_tensor_stats, make_dynamics_probe, make_probe
from proxies.sharding import Layout
from proxies.step import make_eval_step, make_train_step, watched_keys


def vmapped_step(step: Callable) -> Callable:
    """vmap a train step over (state, hparams) with one shared batch. A member whose applied
    update the step found diverged (proxies/divergence.py) keeps its previous state from then on
    (frozen, `alive` false), so it never disturbs its group-mates; so does one the loop froze."""
    def group_step(states, batch, hps, alive_G):
        new, metrics = jax.vmap(step, in_axes=(0, None, 0))(states, batch, hps)
        ok_G = alive_G & ~metrics["diverged"]
        keep = lambda n, o: jnp.where(ok_G.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)  # noqa
        return jax.tree_util.tree_map(keep, new, states), metrics, ok_G
    return group_step


@dataclass
class Evaluators:
    """What reads one member's variables, whatever its hyperparameters: held-out CE and probes
    (e.g. of the model at init) and the training-dynamics probe (each compiled on its first
    call)."""
    eval_one: Callable  # (variables, batch) -> mean CE
    probe_one: Callable
    dynamics: Callable


@dataclass
class Compiled:
    steps: List[Any]  # [ordinary step, step with per-tensor stats]
    eval_step: Callable  # over the member axis when vmapped
    probe: Callable
    dynamics: Callable  # training-dynamics probe of one member


_EVALUATORS: Dict[str, Evaluators] = {}
_COMPILED: Dict[str, Compiled] = {}


def evaluators(key: str, model: Any, cfg: DictConfig) -> Evaluators:
    """The model's evaluators, once per structure `key` and dynamics settings in this process."""
    key = json.dumps([key, str(cfg.dynamics)])  # dynamics settings shape the probe
    if key not in _EVALUATORS:
        _EVALUATORS[key] = Evaluators(jax.jit(make_eval_step(model, cfg.train.ce_chunk)),
                                      make_probe(model, cfg.model.n_layers),
                                      make_dynamics_probe(model, cfg))
    return _EVALUATORS[key]


def _shardings(layout: Optional[Layout], state: Any, hp: Any, group: int) -> Dict[str, Any]:
    """jit's in/out shardings of a step on `layout` (none on one device: the plain step)."""
    if layout is None:
        return {}
    st, hs, rep = layout.state(state), layout.hparams(hp), layout.replicated()
    if group:
        member = layout.hparams(jnp.zeros(group))
        return {"in_shardings": (st, layout.batch(), hs, member),
                "out_shardings": (st, rep, member)}
    return {"in_shardings": (st, layout.batch(), hs), "out_shardings": (st, rep)}


def compiled(key: str, model: Any, cfg: DictConfig, state: Any, batch: jax.Array, hp: Any,
             group: int, layout: Optional[Layout] = None) -> Compiled:
    """Both step variants compiled up front (so no log step pays for compilation), once per
    structure `key`, group size (0 = not vmapped) and mesh in this process."""
    mesh = layout.key if layout is not None else None
    ev = evaluators(key, model, cfg)
    key = json.dumps([key, group, str(cfg.dynamics), mesh])
    if key not in _COMPILED:
        donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate buffers
        eval_step, probe = ev.eval_one, ev.probe_one
        shard = _shardings(layout, state, hp, group)
        if group:
            alive = jnp.ones(group, bool)
            if layout is not None:
                alive = jax.device_put(alive, shard["in_shardings"][3])
            steps = [jax.jit(vmapped_step(make_train_step(model, cfg, with_stats=s)),
                             donate_argnums=donate, **shard)
                     .lower(state, batch, hp, alive).compile() for s in (False, True)]
            eval_step, probe = jax.vmap(eval_step, (0, None)), jax.vmap(probe, (0, None))
        else:
            steps = [jax.jit(make_train_step(model, cfg, with_stats=s), donate_argnums=donate,
                             **shard).lower(state, batch, hp).compile() for s in (False, True)]
        _COMPILED[key] = Compiled(steps, eval_step, probe, ev.dynamics)
    return _COMPILED[key]


def stack(trees: List[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


def place_batch(layout: Optional[Layout], batch: np.ndarray) -> jax.Array:
    """A host batch on the devices of `layout` (split over them for one run)."""
    return jnp.asarray(batch) if layout is None else layout.put_batch(batch)


class Runner:
    """G members' states and train-step hparams; `vmapped` or one plain state; on the devices of
    `layout` (proxies/sharding.py) when there is more than one."""

    def __init__(self, states: List[Any], hps: List[Any], vmapped: bool,
                 layout: Optional[Layout] = None):
        self.vmapped, self.G, self.layout = vmapped, len(states), layout
        assert vmapped or self.G == 1
        assert layout is None or layout.vmapped == vmapped
        self.state = stack(states) if vmapped else states[0]
        self.hp = stack(hps) if vmapped else hps[0]
        if layout is not None:
            self.state = layout.put(self.state, layout.state(self.state))
            self.hp = layout.put(self.hp, layout.hparams(self.hp))
        self._alive_G = self._members(np.ones(self.G, bool))
        self.fns: Compiled
        self.watch_keys: Tuple[str, ...] = ()

    def _members(self, x_G: np.ndarray) -> jax.Array:
        """A per-member array, split over the members' devices like the states."""
        if self.layout is None or not self.vmapped:
            return jnp.asarray(x_G)
        return self.layout.put(x_G, self.layout.hparams(x_G))

    def place_batch(self, batch: np.ndarray) -> jax.Array:
        """A host batch on this group's devices (split over them for one run)."""
        return place_batch(self.layout, batch)

    def compile(self, key: str, model: Any, cfg: DictConfig, batch: jax.Array) -> Compiled:
        self.fns = compiled(key, model, cfg, self.state, batch, self.hp,
                            self.G if self.vmapped else 0, self.layout)
        self.watch_keys = watched_keys(cfg)
        return self.fns

    def step(self, batch: np.ndarray, with_stats: bool) -> Dict[str, Any]:
        fn, batch = self.fns.steps[with_stats], self.place_batch(batch)
        if self.vmapped:
            self.state, metrics, self._alive_G = fn(self.state, batch, self.hp, self._alive_G)
        else:
            self.state, metrics = fn(self.state, batch, self.hp)
        return metrics

    def freeze(self, i: int) -> None:
        """Stop member i's updates (a rollback takes it out of the group)."""
        if self.vmapped:
            alive_G = np.asarray(self._alive_G).copy()
            alive_G[i] = False
            self._alive_G = self._members(alive_G)

    def member_state(self, i: int) -> Any:
        return jax.tree_util.tree_map(lambda x: x[i], self.state) if self.vmapped else self.state

    @staticmethod
    def watched(metrics: Dict[str, Any]) -> jax.Array:
        """What the loop reads of every step (read one step late, so it never stalls dispatch)."""
        return metrics["watch"]

    def read(self, watched: jax.Array) -> List[Dict[str, float]]:
        """Host values of the watched metrics, one dict per member."""
        keys = self.watch_keys
        host_GxK = np.asarray(watched, np.float64).reshape(self.G, len(keys))
        return [dict(zip(keys, row.tolist())) for row in host_GxK]

    @staticmethod
    def ok(w: Dict[str, float]) -> bool:
        """The rule the vmapped step freezes by: the step did not find the member diverged."""
        return not w["diverged"]

    def rows(self, metrics: Dict[str, Any]) -> List[Dict[str, float]]:
        """The train part of each member's log row."""
        host = jax.device_get(metrics)
        rows = []
        for i in range(self.G):
            m = jax.tree_util.tree_map(lambda x: x[i], host) if self.vmapped else host
            row = {name: float(m[k]) for k, name in M.TRAIN_KEYS.items()}
            row.update({name: float(m[k]) for k, name in M.STABILIZER_KEYS.items() if k in m})
            for family in M.TENSOR_FAMILIES:
                if family in m:
                    row.update(flatten_tensor_stats(family, m[family]))
            row[M.SPIKE_LOSS_ZSCORE] = float(m["loss_zscore"])
            row[M.SPIKE_GRAD_ZSCORE] = float(m["grad_zscore"])
            row[M.SPIKE_COUNT] = int(m["spikes"])
            row[M.SPIKE_SKIPPED] = int(m["skips"])
            rows.append(row)
        return rows

    def evaluate(self, batches: List[jax.Array]) -> np.ndarray:
        """Mean held-out CE per member."""
        ces = [np.atleast_1d(np.asarray(self.fns.eval_step(self.state.variables, b)))
               for b in batches]
        return np.mean(ces, axis=0)

    def dynamics(self, batch: jax.Array) -> List[tuple]:
        """(scalars, arrays) of the training-dynamics probe, one pair per member (probed one
        after another: it runs every dynamics.every steps, off the hot path)."""
        out = []
        for i in range(self.G):
            scalars, arrays = jax.device_get(
                self.fns.dynamics(self.member_state(i).variables, batch))
            out.append(({k: np.asarray(v).item() for k, v in scalars.items()},
                        {k: np.asarray(v) for k, v in arrays.items()}))
        return out

    def probe(self, batch: jax.Array) -> List[Dict[str, float]]:
        out = jax.device_get(self.fns.probe(self.state.variables, batch))
        return [{k: float(np.atleast_1d(v)[i]) for k, v in out.items()} for i in range(self.G)]
