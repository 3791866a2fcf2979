"""Shared fixtures: a small text corpus made on the spot, a tiny run config, one compilation
cache, and the paper-reproduction scripts' tiny runs started in the background."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from proxies.config import Config
from proxies.launch import SINGLE_THREAD_XLA

# Under pytest-xdist (one test process per core) each process computes on one thread, as sweep
# workers do: XLA's pool threads would otherwise spin for cores the other processes hold. Set
# before JAX starts its backend; the CLI subprocesses of the tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()

WORDS = ("the model learns attention logits grow with the learning rate while qk layernorm keeps "
         "them bounded and z loss keeps the softmax normalizer near zero so training stays "
         "stable at small scale").split()


def xdist_worker(config: pytest.Config) -> str:
    """gw0, gw1, ... under pytest-xdist; "master" in a one-process run."""
    return getattr(config, "workerinput", {}).get("workerid", "master")


def write_corpus(d: Path) -> None:
    """Twenty small text files of pseudo-English (about 60 KB) in `d`."""
    rng = random.Random(0)
    for i in range(20):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "."
                 for _ in range(40)]
        (d / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n")


def shared_dir(request, tmp_path_factory, name: str, fill=lambda d: None) -> Path:
    """A session directory every test process sees. Under pytest-xdist it lies beside the
    processes' own temp dirs, so the runs they train share data paths (and so run identities)
    with the background sweeps; it is filled beside its place and renamed in, so a process
    never reads it half-written (the first to rename wins; the copies are identical)."""
    if xdist_worker(request.config) == "master":
        d = tmp_path_factory.mktemp(name)
        fill(d)
        return d
    d = tmp_path_factory.getbasetemp().parent / name
    if not d.exists():
        tmp = d.with_name(f"{name}.{os.getpid()}.tmp")
        tmp.mkdir()
        fill(tmp)
        try:
            tmp.rename(d)
        except OSError:
            shutil.rmtree(tmp)
    return d


@pytest.fixture(scope="session")
def corpus_dir(request, tmp_path_factory) -> Path:
    return shared_dir(request, tmp_path_factory, "corpus", write_corpus)


@pytest.fixture(scope="session")
def cache_dir(request, tmp_path_factory) -> Path:
    return shared_dir(request, tmp_path_factory, "cache")


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


# Equivalence tests (vmapped = one by one, sharded = one device, fused = explicit attention, ...)
# compare two differently compiled programs. In float32 their rounding differs with the CPU, the
# thread count and XLA's fusion choices, and grows over the steps (3.1e-4 relative after 12 steps
# on one box, under 2e-4 on another): no float32 tolerance both holds everywhere and catches a
# small logic error. In float64 (the `float64` fixture) the same comparisons differ by < 1e-14
# relative (measured: 4.3e-15 worst over every metric of 12 steps of a vmapped group), so F64_RTOL
# sits five orders above the rounding, while one member's LR off by 1e-6 moves its loss by more.
F64_RTOL = 1e-9
F64_ATOL = 1e-12  # for values that are 0 on both sides up to rounding (a z-score at a flat window)
# An attention entropy is a difference of terms as large as the logits (log Σe^s − Σp·s): at a
# collapsed head (H ~ 1e-3 nats) with logits ~1e3, float64 leaves ~eps·|s|·keys ≈ 3e-11 nats of
# cancellation (measured 9.3e-12 between a vmapped member and its solo run), which F64_RTOL of
# 1e-3 cannot hold. 1e-9 nats is 30× above it and below any LR error the tests plant.
F64_ATOL_BY_PREFIX = {"attn/entropy": 1e-9}


def atol_of(key: str, atol: float) -> float:
    return max([atol] + [a for p, a in F64_ATOL_BY_PREFIX.items() if key.startswith(p)])


@pytest.fixture
def float64() -> Iterator[str]:
    """This test in JAX's 64-bit mode, params and compute in float64; gives the run override."""
    with jax.enable_x64(True):
        yield "model.dtype=float64"


def records(cfg: DictConfig) -> List[Dict[str, float]]:
    """A run's metrics rows, less the timings (perf/*)."""
    from proxies.rundir import read_metrics

    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl")]


def assert_same_records(a: DictConfig, b: DictConfig, rtol: float = F64_RTOL,
                        atol: float = F64_ATOL) -> None:
    """Runs `a` and `b` logged the same rows, keys and values (to rtol: see F64_RTOL)."""
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys(), x["step"]
        bad = [k for k in sorted(x) if not (x[k] == y[k] or np.isclose(
            x[k], y[k], rtol=rtol, atol=atol_of(k, atol)))]
        assert not bad, f"step {x['step']}: " + ", ".join(
            f"{k} {x[k]!r} vs {y[k]!r} (relative {abs(x[k] / y[k] - 1):.2g})" if y[k] else
            f"{k} {x[k]!r} vs {y[k]!r}" for k in bad[:4])


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
    """Commands run one after another in a thread, each one's output and exit code in files
    under its root. One test process runs them (`run=True`); `result(name)`, in any test
    process, waits for the code file and gives (its root, what it printed)."""

    CODE = "exit_code"

    def __init__(self, jobs: Dict[str, Tuple[Path, List[str]]], run: bool):
        self.jobs = jobs
        self.proc: Optional[subprocess.Popen] = None
        self.stopped = False
        self.thread: Optional[threading.Thread] = None
        if run:
            env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
            env["PYTHONIOENCODING"] = "utf-8"
            self.thread = threading.Thread(target=self._run, args=(env,), daemon=True)
            self.thread.start()

    def _run(self, env: Dict[str, str]) -> None:
        for name, (root, argv) in self.jobs.items():
            code = "not run"
            if not self.stopped:
                with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
                    self.proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err,
                                                 env=env)
                    code = str(self.proc.wait())
            tmp = root / f"{self.CODE}.tmp"
            tmp.write_text(code)
            tmp.rename(root / self.CODE)  # whole, for a reader in another process

    def result(self, name: str, timeout: float = 1800) -> Tuple[Path, str]:
        root = self.jobs[name][0]
        deadline = time.monotonic() + timeout
        while not (root / self.CODE).exists():
            assert time.monotonic() < deadline, f"{name} still running after {timeout} s"
            time.sleep(1)
        err = (root / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        code = (root / self.CODE).read_text()
        assert code == "0", f"{self.jobs[name][1][:2]} failed ({code}):\n{err[-3000:]}"
        return root, (root / "stdout.txt").read_text(encoding="utf-8")

    def finish(self, wait_s: float) -> None:
        """Let the commands end within `wait_s` (another test process may read them), then
        stop what is left."""
        if self.thread is None:
            return
        self.thread.join(timeout=wait_s)
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(timeout=60)


@pytest.fixture(scope="session", autouse=True)
def _sweeps_in_background(request, tmp_path_factory, corpus_dir, cache_dir, compile_cache):
    """`python -m sweeps.all scale=tiny`, then `python -m sweeps.dynamics scale=tiny`
    (tests/test_sweeps.py reads what they write): the suite's longest work, one process at a
    time. When a selected test asks for `sweeps_runs`, they start with the session's first test,
    in the background of one test process (gw0 under pytest-xdist) and in a directory every
    test process sees; the tests wait for them with `sweeps_runs.result(name)`."""
    if not any("sweeps_runs" in getattr(item, "fixturenames", ())
               for item in request.session.items):
        yield None
        return
    from proxies.data import load_dataset
    me = xdist_worker(request.config)
    temp = tmp_path_factory.getbasetemp()
    base = (temp if me == "master" else temp.parent) / "repro-background"
    runs_here = me in ("master", "gw0")
    if runs_here:
        # The corpus's token cache, written once here, before two processes could both write it.
        load_dataset(tiny_cfg(base / "unused", corpus_dir, cache_dir).data)
    jobs = {}
    for name in ("all", "dynamics"):
        if runs_here:
            (base / name).mkdir(parents=True)
        jobs[name] = (base / name, ["-m", f"sweeps.{name}",
                                    *sweeps_tiny_args(base / name, corpus_dir, cache_dir)])
    bg = Background(jobs, run=runs_here)
    yield bg
    # Under xdist the reader may be another process, still waiting: finish for it, unless
    # the session is being stopped (Ctrl-C, -x after a failure).
    stopping = request.session.shouldstop or request.session.shouldfail
    bg.finish(wait_s=0 if me == "master" or stopping else 1800)


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
