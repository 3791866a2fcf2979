"""Tests that need 8 devices. The default test run collects them only through
tests/test_sharding.py, which reruns this folder in a subprocess with 8 forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts)."""

import jax

N_DEVICES = 8

if jax.device_count() < N_DEVICES:
    collect_ignore_glob = ["test_*.py"]
