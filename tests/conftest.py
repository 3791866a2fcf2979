"""Shared fixtures: a small text corpus made on the spot, a tiny run config, one compilation
cache, and the paper-reproduction scripts' tiny runs started in the background."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import jax
import pytest
from omegaconf import DictConfig, OmegaConf

from proxies.config import Config

WORDS = ("the model learns attention logits grow with the learning rate while qk layernorm keeps "
         "them bounded and z loss keeps the softmax normalizer near zero so training stays "
         "stable at small scale").split()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Twenty small text files of pseudo-English (about 60 KB)."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(20):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "."
                 for _ in range(40)]
        (d / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def compile_cache(cache_dir):
    """One persistent JAX compilation cache for the whole session, from its first test on, and
    every program in it (not only those over train()'s 0.5 s): where train() would put it
    (data.cache_dir/jax), so the CLI subprocesses read it too. Tests build the same tiny models
    and probes again and again, each through a new jit, and compiling dominates their time; a
    cached executable is the one XLA compiled, so no result changes."""
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield


def tiny_cfg(out_dir: Path, corpus: Path, cache: Path, *overrides: str) -> DictConfig:
    """A two-layer, width-32 run of 12 steps on the test corpus, silent and W&B-free."""
    cfg = OmegaConf.structured(Config)
    base = [
        "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "train.steps=12", "train.batch_size=4", "train.seq_len=16", "train.log_every=4",
        "train.eval_every=6", "train.eval_batches=2", "train.checkpoint_every=4",
        "train.quiet=true", "optim.warmup_steps=3", "wandb.mode=disabled",
        "data.source=text", f"data.path={corpus}", f"data.cache_dir={cache}",
        f"out_dir={out_dir}",
    ]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


@pytest.fixture
def make_cfg(tmp_path, corpus_dir, cache_dir):
    def make(*overrides: str, out: str = "run") -> DictConfig:
        return tiny_cfg(tmp_path / out, corpus_dir, cache_dir, *overrides)
    return make


def sweeps_tiny_args(root: Path, corpus: Path, cache: Path) -> List[str]:
    """`python -m sweeps.<name>` arguments: the tiny scale, writing under `root`."""
    return ["scale=tiny", "sweep.workers=1", f"sweep.root={root}",
            f"sweep.run_root={root / 'runs'}", "data.source=text", f"data.path={corpus}",
            f"data.cache_dir={cache}", "wandb.mode=disabled"]


class Background:
    """Commands run one after another in a thread, each one's output in files;
    `result(name)` waits for one and gives (its root, what it printed)."""

    def __init__(self, jobs: Dict[str, Tuple[Path, List[str]]]):
        self.jobs, self.done = jobs, {name: threading.Event() for name in jobs}
        self.codes: Dict[str, Optional[int]] = {}
        self.proc: Optional[subprocess.Popen] = None
        self.stopped = False
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["PYTHONIOENCODING"] = "utf-8"
        self.thread = threading.Thread(target=self._run, args=(env,), daemon=True)
        self.thread.start()

    def _run(self, env: Dict[str, str]) -> None:
        for name, (root, argv) in self.jobs.items():
            if not self.stopped:
                with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
                    self.proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err,
                                                 env=env)
                    self.codes[name] = self.proc.wait()
            self.done[name].set()

    def result(self, name: str, timeout: float = 1800) -> Tuple[Path, str]:
        assert self.done[name].wait(timeout), f"{name} still running after {timeout} s"
        root = self.jobs[name][0]
        err = (root / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        assert self.codes.get(name) == 0, f"{self.jobs[name][1][:2]} failed:\n{err[-3000:]}"
        return root, (root / "stdout.txt").read_text(encoding="utf-8")

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(timeout=60)


@pytest.fixture(scope="session", autouse=True)
def _sweeps_in_background(request, tmp_path_factory, corpus_dir, cache_dir, compile_cache):
    """`python -m sweeps.all scale=tiny`, then `python -m sweeps.dynamics scale=tiny`
    (tests/test_sweeps.py reads what they write): the suite's longest work, one process at a
    time. When a selected test asks for `sweeps_runs`, they start with the session's first test,
    in the background, on the second core that the mostly single-threaded in-process tests leave
    idle; the tests wait for them with `sweeps_runs.result(name)`."""
    if not any("sweeps_runs" in getattr(item, "fixturenames", ())
               for item in request.session.items):
        yield None
        return
    from proxies.data import load_dataset
    base = tmp_path_factory.mktemp("repro")
    # The corpus's token cache, written once here, before two processes could both write it.
    load_dataset(tiny_cfg(base / "unused", corpus_dir, cache_dir).data)
    jobs = {}
    for name in ("all", "dynamics"):
        (base / name).mkdir()
        jobs[name] = (base / name, ["-m", f"sweeps.{name}",
                                    *sweeps_tiny_args(base / name, corpus_dir, cache_dir)])
    bg = Background(jobs)
    yield bg
    bg.stop()


@pytest.fixture(scope="session")
def sweeps_runs(_sweeps_in_background) -> Background:
    return _sweeps_in_background


# tests/sharding/ needs 8 devices: the default run collects it only through
# tests/test_sharding.py, which reruns it in a subprocess with 8 forced CPU devices
# (XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts).
def _devices() -> int:
    import jax

    return jax.device_count()


collect_ignore_glob = ["sharding/*"] if _devices() < 8 else []
