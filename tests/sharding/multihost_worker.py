"""One process of a 2-process run on CPU (4 devices each, gloo collectives), started by
test_multi_host.py: python multihost_worker.py PROCESS_ID PORT OUT_DIR CORPUS CACHE [STOP_AFTER]."""

import os
import re
import sys
from pathlib import Path

# First: XLA ignores flags after a bare `intra_op_parallelism_threads=1` (proxies/launch.py).
_others = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {_others}".strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from proxies.config import MeshConfig  # noqa: E402
from proxies.sharding import initialize_distributed  # noqa: E402

pid, port, out, corpus, cache = int(sys.argv[1]), sys.argv[2], *map(Path, sys.argv[3:6])
stop_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
initialize_distributed(MeshConfig(coordinator_address=f"localhost:{port}", num_processes=2,
                                  process_id=pid))
assert jax.process_count() == 2 and jax.device_count() == 8

from proxies.train import train  # noqa: E402
from tests.conftest import tiny_cfg  # noqa: E402
from tests.sharding.test_multi_device import SMALL  # noqa: E402

train(tiny_cfg(out, corpus, cache, *SMALL, "mesh.data=4", "mesh.fsdp=2", "model.dtype=float64"),
      stop_after=stop_after)
