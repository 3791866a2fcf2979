"""Two processes (4 CPU devices each, JAX's gloo collectives) train one run on a data=4 × fsdp=2
mesh through jax.distributed, interrupted and resumed, and match one device. gloo's all-reduce
sums in another order than one device, so both run in float64 (tests/conftest.py: F64_RTOL).
Only process 0 writes the records; both write checkpoint shards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import assert_same_records, tiny_cfg

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


PORT_TAKEN = "address already in use"  # the coordinator lost its port to another process


def run_two_processes(out: Path, corpus: Path, cache: Path, *stop_after: str) -> None:
    """The two workers on a free port; a port taken between `free_port` and the coordinator's
    bind (a race with whatever else runs on the machine) is retried on a new one."""
    env = {**os.environ, "JAX_ENABLE_X64": "1"}  # the worker's run is float64
    for _ in range(3):
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(pid), port, str(out),
                                   str(corpus), str(cache), *stop_after], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for pid in (0, 1)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        if not any(p.returncode and PORT_TAKEN in text.lower()
                   for p, text in zip(procs, outputs)):
            break
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


def test_two_processes_train_and_resume_like_one_device(tmp_path, corpus_dir, cache_dir,
                                                        one_device):
    out = tmp_path / "multi-host"
    run_two_processes(out, corpus_dir, cache_dir, "4")  # stop after the checkpoint at step 4
    assert (out / "checkpoints" / "4").is_dir() and not (out / "summary.json").exists()
    run_two_processes(out, corpus_dir, cache_dir)  # resume to the end
    assert (out / "summary.json").exists()
    assert_same_records(tiny_cfg(out, corpus_dir, cache_dir), one_device)
