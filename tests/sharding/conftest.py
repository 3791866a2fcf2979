"""The one-device reference every sharded run in tests/sharding/ is held against."""

import pytest

from proxies.train import train
from tests.conftest import tiny_cfg
from tests.sharding.test_multi_device import SMALL, series


@pytest.fixture(scope="session")
def one_device(tmp_path_factory, corpus_dir, cache_dir) -> dict:
    """The SMALL run on one device."""
    out = tmp_path_factory.mktemp("one")
    train(tiny_cfg(out, corpus_dir, cache_dir, *SMALL, "mesh.data=1"))
    return series(out)
