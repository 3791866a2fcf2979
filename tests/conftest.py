"""Shared fixtures: a small text corpus made on the spot and a tiny run config."""

from __future__ import annotations

import random
from pathlib import Path

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
