"""Sharded runs on 8 CPU devices give what one device gives (proxies/sharding.py).

Sharding changes only the order of reductions (a batch mean summed per device, then across
devices), which in float32 moves values by ~1e-5 over these steps, by CPU and thread count; so
the comparisons run in float64 (tests/conftest.py: F64_RTOL), where every logged value agrees
to 1e-9 and a logic error shows. Bit-exactness is not promised.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from proxies.config import MeshConfig
from proxies.model import Transformer
from proxies.optim import hparams_from_config
from proxies.runner import Runner
from proxies.sharding import FSDP, MEMBERS, group_layout, run_layout
from proxies.step import init_state
from proxies.train import train, train_group
from tests.conftest import assert_same_records

SMALL = ("train.batch_size=8", "train.steps=8", "train.checkpoint_every=4", "train.eval_every=4")


# data=8 alone and fsdp=8 alone: test_a_run_resumes_on_another_mesh trains on each of them.
@pytest.mark.parametrize("data,fsdp", [(2, 4)], ids=["data2-fsdp4"])
def test_a_sharded_run_trains_like_one_device(make_cfg, one_device, data, fsdp, float64):
    cfg = make_cfg(float64, *SMALL, f"mesh.data={data}", f"mesh.fsdp={fsdp}")
    train(cfg)
    assert_same_records(cfg, one_device)


def test_fsdp_splits_params_and_optimizer_state_and_the_step_keeps_them_split(make_cfg):
    cfg = make_cfg(*SMALL, "mesh.data=2", "mesh.fsdp=4")
    layout = run_layout(cfg.mesh, cfg.train.batch_size)
    model = Transformer(cfg.model, 256, cfg.train.seq_len)
    state = init_state(model, cfg, jax.random.key(0))
    runner = Runner([state], [hparams_from_config(cfg, loss_limit=math.inf)], vmapped=False,
                    layout=layout)
    runner.compile("k", model, cfg, np.zeros((8, 17), np.int32))
    runner.step(np.ones((8, 17), np.int32), with_stats=False)
    kernel = runner.state.params["block_0"]["mlp"]["up"]["kernel"]  # 32 x 128
    assert kernel.sharding.spec == P(None, FSDP)
    assert {s.data.shape for s in kernel.addressable_shards} == {(32, 32)}
    mu = runner.state.opt_state  # Adam's moments are split like their params
    mu_kernels = [x for x in jax.tree_util.tree_leaves(mu) if getattr(x, "shape", ()) == (32, 128)]
    assert mu_kernels and all(x.sharding.spec == P(None, FSDP) for x in mu_kernels)
    assert runner.state.step.sharding.is_fully_replicated


def test_a_batch_that_does_not_split_over_the_devices_is_refused_in_one_line(make_cfg):
    from proxies.config import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size=4 does not split"):
        run_layout(make_cfg("train.batch_size=4").mesh, 4)


@pytest.mark.parametrize("group,devices", [(8, 8), (6, 6), (5, 5), (16, 8), (12, 6)])
def test_a_vmapped_group_takes_the_most_devices_that_divide_it(group, devices):
    layout = group_layout(MeshConfig(), group)
    assert layout.mesh.shape[MEMBERS] == devices


def test_a_vmapped_group_split_over_8_devices_trains_like_one_device(make_cfg, float64):
    lrs = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
    runs = {}
    for mesh in ("mesh.data=1", "mesh.data=8"):
        cfgs = [make_cfg(float64, *SMALL, "train.steps=4", mesh, f"optim.lr={lr}",
                         out=f"{mesh}-{lr}") for lr in lrs]
        train_group(cfgs, vmap=True)
        runs[mesh] = cfgs
    for a, b in zip(runs["mesh.data=8"], runs["mesh.data=1"]):
        assert_same_records(a, b)


def test_the_member_axis_is_split_one_member_per_device(make_cfg):
    cfgs = [make_cfg(*SMALL, f"optim.lr={lr}") for lr in (1e-3, 1e-2, 3e-2, 1e-1)]
    layout = group_layout(cfgs[0].mesh, 4)
    model = Transformer(cfgs[0].model, 256, 16)
    state = init_state(model, cfgs[0], jax.random.key(0))
    hps = [hparams_from_config(c, loss_limit=math.inf) for c in cfgs]
    runner = Runner([state] * 4, hps, True, layout)
    kernel = runner.state.params["block_0"]["mlp"]["up"]["kernel"]  # 4 x 32 x 128
    assert kernel.sharding.spec == P(MEMBERS)
    assert len({s.device for s in kernel.addressable_shards}) == 4
    assert {s.data.shape for s in kernel.addressable_shards} == {(1, 32, 128)}


def test_a_run_resumes_on_another_mesh(make_cfg, one_device, float64):
    train(make_cfg(float64, *SMALL, "mesh.data=8"), stop_after=4)  # checkpoint at 4, over data
    cfg = make_cfg(float64, *SMALL, "mesh.data=1", "mesh.fsdp=8")  # same run, split 8 ways
    train(cfg)
    assert_same_records(cfg, one_device)
