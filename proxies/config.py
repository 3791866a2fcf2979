"""The one typed config schema. YAML files in `configs/` only choose and override these defaults.

Every key of a run lives here, with the paper's name; `validate` turns impossible values into a
one-line `ConfigError` at start-up.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad config value; its message is one line that names the fix."""


INIT_STD_RULES = ("fan_in", "gpt2", "small_init", "mt_nlg")


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4  # head dim = d_model // n_heads
    qk_layernorm: bool = False  # norm q and k per head (over d_head) before q·kᵀ
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu (hidden 4d) | swiglu (hidden 8d/3, same param count)
    pos_emb: str = "learned"  # learned | rope
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    use_bias: bool = True
    # A number, or a rule: fan_in (paper: 1/sqrt(fan_in), embeddings 1/sqrt(d)), gpt2 (0.02),
    # small_init (sqrt(2/(5d))), mt_nlg (sqrt(1/(3d))).
    init_std: Any = "fan_in"
    attn_scale: str = "after"  # after: (q·kᵀ)/sqrt(d_head); before: q, k each × d_head^-1/4
    parametrization: str = "sp"  # sp | mup (Adam μParam, see optim.py and the README)
    mup_base_width: int = 128
    dtype: str = "float32"  # compute dtype; params, softmax and loss stay float32
    # κ experiment: q and k each become sqrt(κ)·z/‖z‖ per head, so logit = κ·cos(q, k) and the
    # max attention logit is ≈ κ (no 1/sqrt(d_head)). None = off.
    attn_kappa: Optional[float] = None


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    independent_wd: bool = False  # decay θ by s_t·λ, not s_t·η·λ (see optim.py)
    warmup_steps: int = 30
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr: float = 1e-5  # absolute floor the decay ends at (paper, unconfirmed)
    grad_clip: float = 1.0  # global-norm clip; 0 = off
    z_loss: float = 0.0  # coefficient of (log Z)²; 0 = off, paper 1e-4


@dataclass
class DataConfig:
    # stdlib (embedded default: CPython's own sources) | text | tokens | hf
    source: str = "stdlib"
    path: Optional[str] = None  # text: a file, a directory or a glob; hf: a local dataset dir
    train_bin: Optional[str] = None  # tokens: nanoGPT-style flat uint16/uint32 files
    val_bin: Optional[str] = None
    token_dtype: str = "uint16"
    vocab_size: Optional[int] = None  # tokens: the vocabulary the .bin ids come from
    hf_name: Optional[str] = None  # hf: load_dataset name (e.g. allenai/c4) ...
    hf_config: Optional[str] = None  # ... and its config (e.g. en)
    hf_split: str = "train"
    hf_val_split: Optional[str] = None  # None: hold out val_fraction of the train documents
    text_field: str = "text"
    max_docs: Optional[int] = None
    val_fraction: float = 0.05  # held-out share of files/documents
    tokenizer: str = "byte"  # byte | bpe | a path to tokenizer.json or a SentencePiece .model
    bpe_vocab_size: int = 8192
    cache_dir: Optional[str] = None  # default: $PROXIES_CACHE or ~/.cache/proxies


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    seq_len: int = 128
    seed: int = 0
    log_every: int = 25
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    divergence_loss: Optional[float] = None  # stop when loss exceeds this; None = 2 × loss at init
    probes: bool = True
    quiet: bool = False


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with credentials, else disabled) | online | offline | disabled
    project: str = "proxies"
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    out_dir: Optional[str] = None  # None: runs/<size>-<config hash>, so a rerun finds it again


@dataclass
class SweepConfig:
    """`python -m proxies.sweep` and the `sweeps/` scripts: a grid of runs and its analysis."""

    name: str = "sweep"
    lrs: List[float] = field(default_factory=lambda: [1e-3, 1e-2])
    # Model overrides, one dict per size, e.g. [{d_model: 64, n_layers: 2, n_heads: 2}].
    sizes: List[Dict[str, Any]] = field(default_factory=list)
    # Toggle axes, nested like the config with lists at the leaves:
    # {model: {qk_layernorm: [false, true]}, optim: {z_loss: [0, 1e-4]}}. On the command line
    # `sweep.axes={...}` replaces the experiment's axes, `+sweep.axes.optim.z_loss=[0,1e-4]` adds
    # one and `~sweep.axes.model.qk_layernorm` drops one.
    axes: Dict[str, Any] = field(default_factory=dict)
    # Settings that change several keys at once, one nested override dict per setting, e.g.
    # [{optim: {independent_wd: false, weight_decay: 0.1}}, {optim: {independent_wd: true,
    # weight_decay: 1e-4}}]; crossed with sizes, axes and LRs.
    variants: List[Dict[str, Any]] = field(default_factory=list)
    root: str = "runs"  # sweep directories: <root>/<name>-<grid hash>
    dir: Optional[str] = None  # an explicit sweep directory instead
    # Run directories are shared by every sweep: <run_root>/<size>-<config hash>. A run any sweep
    # already finished is reused, never retrained.
    run_root: str = "runs"
    dry_run: bool = False  # print the grid, run count and cost estimate; train nothing
    # The analysis run at the end (python -m analysis): LR range of LR sensitivity, sizes to
    # extrapolate the attention-logit fit to, the logit above which they are flagged, and sizes
    # (non-embedding params) left out of the fit to check its prediction.
    analysis: bool = True
    lr_range: List[float] = field(default_factory=lambda: [3e-4, 3e-1])
    target_params: List[float] = field(default_factory=lambda: [4.8e9])
    threshold: float = 1e4
    hold_out: List[float] = field(default_factory=list)
    # Train runs that differ only in scalar hyperparameters together under jax.vmap:
    # auto = on accelerators (small models leave them idle), off on CPU (no gain there).
    vmap: str = "auto"  # auto | on | off
    group_size: int = 8  # most runs per vmapped group (memory grows with it)


@dataclass
class SweepRoot(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="proxies_schema", node=Config)
    cs.store(group="model", name="proxies_model_schema", node=ModelConfig)
    cs.store(name="proxies_sweep_schema", node=SweepRoot)


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(options)}; pick one of those")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value} must be finite and {bound}; set {name} to such a value")


def validate(cfg: DictConfig | Config) -> None:
    """Raise ConfigError (one line, naming the fix) for any impossible value."""
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.train
    for k in ("d_model", "n_heads", "mup_base_width"):
        _positive(f"model.{k}", getattr(m, k))
    _positive("model.n_layers", m.n_layers, allow_zero=True)  # 0 layers: a bigram model
    if m.attn_kappa is not None:
        _positive("model.attn_kappa", m.attn_kappa)
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            f"pick n_heads that divides d_model (e.g. model.n_heads={max(1, m.d_model // 64)})")
    d_head = m.d_model // m.n_heads
    if m.pos_emb == "rope" and d_head % 2:
        raise ConfigError(f"rotary positions need an even head dim, got {d_head}; change n_heads")
    _choice("model.norm", m.norm, ("layernorm", "rmsnorm"))
    _choice("model.mlp", m.mlp, ("gelu", "swiglu"))
    _choice("model.pos_emb", m.pos_emb, ("learned", "rope"))
    _choice("model.attn_scale", m.attn_scale, ("after", "before"))
    _choice("model.parametrization", m.parametrization, ("sp", "mup"))
    _choice("model.dtype", m.dtype, ("float32", "bfloat16"))
    if isinstance(m.init_std, str):
        _choice("model.init_std", m.init_std, INIT_STD_RULES)
    else:
        _positive("model.init_std", float(m.init_std))
    _positive("optim.lr", o.lr)
    _positive("optim.eps", o.eps, allow_zero=True)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _positive("optim.min_lr", o.min_lr, allow_zero=True)
    _positive("optim.grad_clip", o.grad_clip, allow_zero=True)
    _positive("optim.z_loss", o.z_loss, allow_zero=True)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    for b in ("b1", "b2"):
        v = getattr(o, b)
        if not (math.isfinite(v) and 0 <= v < 1):
            raise ConfigError(f"optim.{b}={v} must be in [0, 1); set optim.{b}=0.9 or similar")
    _choice("optim.schedule", o.schedule, ("cosine", "linear", "constant"))
    _choice("data.source", d.source, ("stdlib", "text", "tokens", "hf"))
    _choice("data.token_dtype", d.token_dtype, ("uint16", "uint32"))
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    for k in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "eval_batches",
              "checkpoint_every", "keep_checkpoints"):
        _positive(f"train.{k}", getattr(t, k))
    if t.divergence_loss is not None:
        _positive("train.divergence_loss", t.divergence_loss)
    _choice("wandb.mode", cfg.wandb.mode, ("auto", "online", "offline", "disabled"))


# Keys that change how a run is shown, not what it computes: outside its identity.
_NOT_IDENTITY = {"train": ("quiet",)}
# Features added after runs were first hashed: left out of the identity while off, so turning
# a new feature into the schema never renames (and retrains) the runs that do not use it.
_OFF_VALUES = {"model": {"attn_kappa": None}}


def identity(cfg: DictConfig | Config) -> dict:
    """The part of a config that determines a run's results (what resume and hashes compare)."""
    c = OmegaConf.to_container(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg,
                               resolve=True)
    return identity_of(c)


def identity_of(c: Dict[str, Any]) -> Dict[str, Any]:
    """`identity` of a plain config dict (e.g. a run's config.yaml read back)."""
    out = {k: dict(c.get(k) or {}) for k in ("model", "optim", "data", "train")}
    for section, keys in _NOT_IDENTITY.items():
        out[section] = {k: v for k, v in out[section].items() if k not in keys}
    for section, off in _OFF_VALUES.items():
        out[section] = {k: v for k, v in out[section].items() if k not in off or v != off[k]}
    return out


def config_hash(cfg: DictConfig | Config) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:10]


def first_difference(a: dict, b: dict, prefix: str = "") -> Optional[str]:
    """'optim.lr: 0.001 -> 0.01' for the first key where two nested dicts differ, else None."""
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} -> {vb!r}"
    return None
