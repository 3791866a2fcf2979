"""Device meshes (proxies/sharding.py): resolution and refusals here, and the 8-device tests in
tests/sharding/ run in a subprocess with 8 forced CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from proxies.config import ConfigError, MeshConfig, validate
from proxies.sharding import FSDP, distributed_wanted, fsdp_spec, mesh_shape

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data,fsdp,n,want", [
    (-1, 1, 8, (8, 1)), (-1, 4, 8, (2, 4)), (2, -1, 8, (2, 4)), (1, 1, 8, (1, 1)),
    (2, 2, 8, (2, 2)), (-1, 1, 1, (1, 1))])
def test_mesh_axes_resolve_minus_one_to_the_remaining_devices(data, fsdp, n, want):
    assert mesh_shape(MeshConfig(data=data, fsdp=fsdp), n) == want


@pytest.mark.parametrize("data,fsdp,n", [(-1, 3, 8), (4, 4, 8), (3, -1, 8), (2, 1, 1)])
def test_a_mesh_that_does_not_fit_the_devices_is_refused_in_one_line(data, fsdp, n):
    with pytest.raises(ConfigError, match=f"does not fit the {n} devices") as e:
        mesh_shape(MeshConfig(data=data, fsdp=fsdp), n)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key,value", [("data", 0), ("fsdp", -2), ("fsdp", -5)])
def test_impossible_mesh_values_fail_at_start_up(make_cfg, key, value):
    cfg = make_cfg()
    cfg.mesh[key] = value
    with pytest.raises(ConfigError, match=f"mesh.{key}="):
        validate(cfg)


def test_fsdp_splits_the_largest_axis_it_divides():
    assert fsdp_spec((32, 128), 4) == P(None, FSDP)
    assert fsdp_spec((6, 4, 3), 2) == P(FSDP, None, None)  # 6 is the largest divisible axis
    assert fsdp_spec((3, 5), 4) == P()  # nothing divides: replicated
    assert fsdp_spec((), 4) == P()
    assert fsdp_spec((32, 128), 1) == P()


def test_multi_host_start_up_follows_slurm_and_explicit_settings(monkeypatch):
    for var in ("SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed_wanted(MeshConfig())
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed_wanted(MeshConfig())
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed_wanted(MeshConfig())
    assert not distributed_wanted(MeshConfig(distributed="off"))
    monkeypatch.delenv("SLURM_NTASKS")
    assert distributed_wanted(MeshConfig(coordinator_address="node1:1234"))
    assert distributed_wanted(MeshConfig(distributed="on"))


def test_on_8_forced_cpu_devices_sharded_runs_match_one_device():
    """tests/sharding/: data-parallel, FSDP, a sharded vmapped group, resume across a mesh
    change, all against one device."""
    # First: XLA ignores flags after a bare `intra_op_parallelism_threads=1` (proxies/launch.py).
    # Eight devices share two busy cores: one device's thread can reach a collective more than
    # XLA's termination timeout (40 s) after the others, and XLA then aborts the process
    # ("Fatal Python error: Aborted", seen under a loaded machine), so the timeout is raised.
    flags = ("--xla_force_host_platform_device_count=8 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
             "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 "
             f"{os.environ.get('XLA_FLAGS', '')}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["XLA_FLAGS"] = flags.strip()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-n", "0", "tests/sharding"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout
