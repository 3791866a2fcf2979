"""The one-device reference every sharded run in tests/sharding/ is held against."""

import jax
import pytest
from omegaconf import DictConfig

from proxies.train import train
from tests.conftest import tiny_cfg
from tests.sharding.test_multi_device import SMALL


@pytest.fixture(scope="session")
def one_device(tmp_path_factory, corpus_dir, cache_dir) -> DictConfig:
    """The SMALL run on one device, in float64 (tests/conftest.py: the `float64` fixture)."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("one"), corpus_dir, cache_dir, *SMALL, "mesh.data=1",
                   "model.dtype=float64")
    with jax.enable_x64(True):
        train(cfg)
    return cfg
