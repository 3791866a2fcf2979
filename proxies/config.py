"""The one typed config schema. YAML files in `proxies/configs/` only choose and override these
defaults.

Every key of a run lives here, with the paper's name; `validate` turns impossible values into a
one-line `ConfigError` at start-up. String options are `Choice` enums: OmegaConf checks them on
the command line and in YAML, and code that branches on them matches every member.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Dict, Iterable, List, NoReturn, Optional, Tuple, get_type_hints

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad config value; its message is one line that names the fix."""


INIT_STD_RULES = ("fan_in", "gpt2", "small_init", "mt_nlg")


class Choice(str, Enum):
    """A string option. Members are named by their values because OmegaConf reads enums by name
    (`model.norm=rmsnorm`); as a `str` a member equals, hashes and json-encodes as its value, so
    `cfg.model.norm == "rmsnorm"` holds and run hashes do not change."""

    def __str__(self) -> str:  # "rmsnorm", not "NormKind.rmsnorm", in messages and f-strings
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> Tuple[str, ...]:
        return tuple(m.value for m in cls)


# A member that reaches yaml.safe_dump unconverted is written as its plain string (as json does).
yaml.SafeDumper.add_multi_representer(Choice, lambda dumper, v: dumper.represent_str(v.value))


def unhandled(name: str, value: Any) -> NoReturn:
    """The last line of an exhaustive branch over a Choice: a member nobody handles yet."""
    raise AssertionError(f"unhandled {name}={value!r}")


# How a field counts in a run's identity (the hash naming its run directory, what resume
# compares), stated once at the field: by default always. `shown(...)`: never, it changes how a
# run is computed or shown, not its results. `added(...)`: only when it differs from its
# default, for a feature added after runs were first hashed, so adding it renamed (and
# retrained) none of them. tests/test_config.py fails when a new field would rename runs.
IDENTITY = "identity"


def shown(default: Any) -> Any:
    return field(default=default, metadata={IDENTITY: "never"})


def added(default: Any = None, *, default_factory: Any = None) -> Any:
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={IDENTITY: "when_set"})
    return field(default=default, metadata={IDENTITY: "when_set"})


class NormKind(Choice):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class NormPlacement(Choice):
    pre = "pre"  # x + f(norm(x)) (GPT-2, the paper)
    output = "output"  # x + norm(f(x)): each sublayer's output normed (OLMo 2, arXiv 2501.00656)
    # Rybakov et al. (arXiv 2410.16682): "layer normalization after the QKV layer (and remove
    # pre normalization)": q, k and v each normed over their full width, the attention's input
    # not; the MLP keeps its pre-norm
    qkv = "qkv"


class MlpKind(Choice):
    gelu = "gelu"  # hidden 4d
    swiglu = "swiglu"  # hidden 8d/3, same param count


class PosEmb(Choice):
    learned = "learned"
    rope = "rope"


class AttnScale(Choice):
    after = "after"  # (q·kᵀ)/sqrt(d_head)
    before = "before"  # q, k each × d_head^-1/4


class Parametrization(Choice):
    """How a model's LRs (and, for `mup`, init, readout and attention scale) follow its width.
    Base = `model.mup_base_width` (the smallest width of a sweep)."""

    sp = "sp"  # standard: every tensor at the peak LR η
    # The paper's "μParam (simple)" (§3.2.4, Fig. 8): only the LR of the hidden linear layers
    # (block matrices) becomes η × base-fan-in / fan-in; init, readout and attention stay SP.
    mup_simple = "mup_simple"
    # Adam μParam (Yang et al. 2022), close to the paper's "μParam (full)" (Fig. E.5): hidden
    # LR η/m (m = d / base), readout logits × 1/m with a base-width init std, attention 1/d_head.
    # It differs from the paper's full variant in scaling the readout by a multiplier (not an
    # init std × √(base-fan-in/fan-in)) and in not zero-initialising the queries.
    mup = "mup"


class ComputeDtype(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    # Everything in float64, params included: a reference where rounding cannot decide a
    # comparison (the equivalence tests); needs JAX's 64-bit mode (JAX_ENABLE_X64=1), CPU speed.
    float64 = "float64"


class Schedule(Choice):  # after warmup
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class DataSource(Choice):
    stdlib = "stdlib"  # embedded default: CPython's own sources
    text = "text"
    tokens = "tokens"
    hf = "hf"


class TokenDtype(Choice):
    uint16 = "uint16"
    uint32 = "uint32"


class WandbMode(Choice):
    auto = "auto"  # online with credentials, else disabled
    online = "online"
    offline = "offline"
    disabled = "disabled"


class VmapMode(Choice):
    auto = "auto"  # on accelerators, off on CPU
    on = "on"
    off = "off"


class SpikeAction(Choice):
    log = "log"  # record only
    skip = "skip"  # the update is not applied (decided on device)
    rollback = "rollback"  # restore the newest checkpoint, skip batches, go on


class MonitorAction(Choice):
    log = "log"  # a warning is an event, a console line and a W&B alert; training goes on
    stop = "stop"  # the first warning also ends the run, its checkpoint saved (exit code 3)


class AttnImpl(Choice):
    # jax.nn.dot_product_attention (cuDNN in bf16) on ordinary steps off CPU; explicit logits on
    # probe steps and on CPU, where XLA's fused version is slower (+7-8% per laptop step)
    auto = "auto"
    explicit = "explicit"  # softmax(q·kᵀ) written out on every step


class DistributedMode(Choice):
    auto = "auto"  # jax.distributed.initialize() when SLURM or JAX_COORDINATOR_ADDRESS says so
    on = "on"
    off = "off"


class EvalSet(Choice):
    shared = "shared"  # one set per corpus and window shape, whatever the seed (proxies/data.py)
    per_seed = "per_seed"  # drawn with the run's seed: differs between seeds


class InjectKind(Choice):
    batch = "batch"  # the batch is replaced by garbage
    grad = "grad"  # the gradient is scaled up


@dataclass
class ModelConfig:
    d_model: int = 128  # width
    n_layers: int = 4  # transformer blocks (0: a bigram model)
    n_heads: int = 4  # head dim = d_model // n_heads
    qk_layernorm: bool = False  # norm q and k per head (over d_head) before q·kᵀ
    norm: NormKind = NormKind.layernorm  # pre-norm of each block (and the final norm)
    mlp: MlpKind = MlpKind.gelu  # gelu (hidden 4d) | swiglu (hidden 8d/3, same param count)
    pos_emb: PosEmb = PosEmb.learned  # learned positions, or rotary (rope_base)
    rope_base: float = 10000.0  # rotary frequency base
    tie_embeddings: bool = False  # share the input embedding and the readout
    use_bias: bool = True  # biases in dense layers and LayerNorm
    # A number, or a rule: fan_in (paper: 1/sqrt(fan_in), embeddings 1/sqrt(d)), gpt2 (0.02),
    # small_init (sqrt(2/(5d))), mt_nlg (sqrt(1/(3d))).
    init_std: Any = "fan_in"
    attn_scale: AttnScale = AttnScale.after  # after | before (where 1/sqrt(d_head) applies)
    # sp | mup_simple (the paper's μParam (simple): LR of hidden matrices × base fan-in / fan-in)
    # | mup (fuller Adam μParam, close to the paper's "full", Fig E.5); see Parametrization.
    parametrization: Parametrization = Parametrization.sp
    mup_base_width: int = 128  # μParam's base width (width multiplier m = d_model / this)
    # Compute dtype; params, softmax and loss stay float32 (float64: all of it float64).
    dtype: ComputeDtype = ComputeDtype.float32
    # κ experiment: q and k each become sqrt(κ)·z/‖z‖ per head, so logit = κ·cos(q, k) and the
    # max attention logit is ≈ κ (no 1/sqrt(d_head)). None = off.
    attn_kappa: Optional[float] = added(None)
    # How ordinary steps compute attention (probe steps always write the logits out, so the
    # max-logit probe is exact). Outside a run's identity: both give the same results.
    attn_impl: AttnImpl = shown(AttnImpl.auto)
    # Soft-cap c·tanh(z/c) of the attention logits (Gemma 2, arXiv 2408.00118: c = 50); the
    # max-logit probes read the logits before the cap. None = off.
    attn_softcap: Optional[float] = added(None)
    # Soft-cap c·tanh(z/c) of the output logits (Gemma 2: c = 30). None = off.
    logit_softcap: Optional[float] = added(None)
    # σReparam (Zhai et al., arXiv 2303.06296): each block linear layer's kernel W used as
    # (γ/σ(W))·W, σ by one power-iteration step per train step, γ a learned scalar.
    sigma_reparam: bool = added(False)
    # Where the blocks' norms sit: pre (the sublayer's input, the paper) | output (each
    # sublayer's output, OLMo 2) | qkv (q, k, v instead of the attention's input, Rybakov et al.)
    norm_placement: NormPlacement = added(NormPlacement.pre)


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate
    b1: float = 0.9  # AdamW β1
    b2: float = 0.95  # AdamW β2
    eps: float = 1e-8  # AdamW ε
    weight_decay: float = 0.1  # λ (matrices only; norms and biases are not decayed)
    independent_wd: bool = False  # decay θ by s_t·λ, not s_t·η·λ (see optim.py)
    warmup_steps: int = 30  # linear warm-up length in updates
    schedule: Schedule = Schedule.cosine  # cosine | linear | constant (after warmup)
    min_lr: float = 1e-5  # absolute floor the decay ends at (paper, unconfirmed)
    grad_clip: float = 1.0  # global-norm clip; 0 = off
    z_loss: float = 0.0  # coefficient of (log Z)²; 0 = off, paper 1e-4
    # QK-clip (Kimi K2, arXiv 2507.20534): after each update, a head whose max attention logit on
    # the step's batch S exceeds τ has its query and key weights scaled by sqrt(τ/S). None = off.
    qk_clip_tau: Optional[float] = added(None)
    # StableAdamW's update clipping (Wortsman et al., arXiv 2304.13013): each tensor's step
    # (its Adam direction and decay) divided by max(1, RMS(g/sqrt(v̂))).
    update_clip: bool = added(False)


# The optimizer's scalar hyperparameters: arguments of the compiled train step
# (optim.hparams_from_config), so runs that differ only in them share one step (naming.group_key).
HPARAM_KEYS = ("lr", "min_lr", "warmup_steps", "weight_decay", "eps", "b1", "b2", "grad_clip",
               "z_loss")


@dataclass
class DataConfig:
    # stdlib (embedded default: CPython's own sources) | text | tokens | hf
    source: DataSource = DataSource.stdlib
    path: Optional[str] = None  # text: a file, a directory or a glob; hf: a local dataset dir
    train_bin: Optional[str] = None  # tokens: nanoGPT-style flat uint16/uint32 files
    val_bin: Optional[str] = None
    token_dtype: TokenDtype = TokenDtype.uint16  # tokens: the .bin files' integer type
    vocab_size: Optional[int] = None  # tokens: the vocabulary the .bin ids come from
    hf_name: Optional[str] = None  # hf: load_dataset name (e.g. allenai/c4) ...
    hf_config: Optional[str] = None  # ... and its config (e.g. en)
    hf_split: str = "train"  # hf: the split to train on
    hf_val_split: Optional[str] = None  # None: hold out val_fraction of the train documents
    text_field: str = "text"  # hf: the column holding the text
    max_docs: Optional[int] = None  # hf/text: read at most this many documents
    val_fraction: float = 0.05  # held-out share of files/documents
    tokenizer: str = "byte"  # byte | bpe | a path to tokenizer.json or a SentencePiece .model
    bpe_vocab_size: int = 8192  # tokenizer=bpe: its vocabulary (trained on the corpus, cached)
    cache_dir: Optional[str] = None  # default: $PROXIES_CACHE or ~/.cache/proxies


@dataclass
class SpikeConfig:
    """Loss and gradient-norm spikes: z-scores over a rolling window of recent steps."""

    action: SpikeAction = SpikeAction.log  # log | skip | rollback (see SpikeAction)
    window: int = 128  # rolling window of losses and gradient norms the z-scores use
    sigma: float = 6.0  # z-score above which a step is a spike
    min_samples: int = 32  # window entries needed before detection acts
    skip_batches: int = 8  # rollback: batches skipped from the spike on
    max_rollbacks: int = 3  # rollback: more spikes than this stop the run


@dataclass
class MonitorConfig:
    """Early warning (proxies/monitor.py): each signal's trend over the last `window` updates is
    extrapolated; a warning fires when it crosses its limit within `horizon` updates. It reads
    what the step returns anyway plus a few reductions, and never changes training unless
    `action=stop`."""

    enabled: bool = True  # record the signals every update (signals.jsonl) and forecast
    action: MonitorAction = MonitorAction.log  # log: warn; stop: end at the first warning (exit 3)
    window: int = 20  # updates each trend is fitted to
    horizon: int = 100  # warn when the crossing is at most this many updates ahead
    confirm: int = 3  # forecasts in a row that must agree before a warning fires
    every: int = 5  # forecast every N updates (signals are recorded every update)
    attn_logit_limit: float = 1e4  # the paper's runs whose max attention logit passed ~1e4 diverged
    log_z_limit: float = 30.0  # |mean log Z|: output-logit divergence drifts it far from 0
    logit_drift_limit: float = 30.0  # |mean output logit - its value at the first update|
    grad_rms_eps_factor: float = 10.0  # block 0's first MLP grad RMS within this factor of ε
    update_rms_floor: float = 0.1  # that layer's update RMS below this share of its early median


@dataclass
class TrainConfig:
    steps: int = 300  # number of updates
    batch_size: int = 32  # sequences per update
    seq_len: int = 128  # tokens per sequence
    seed: int = 0  # init and data order: batches are a function of (seed, step)
    log_every: int = 25  # train metrics and probes every N updates
    eval_every: int = 100  # held-out CE every N updates
    eval_batches: int = 16  # held-out batches of batch_size x seq_len the eval reads
    # shared: windows spread evenly over the val split, the same for every seed and config of
    # one corpus, batch_size x seq_len and eval_batches (summary.json: eval_set_hash), so seeds
    # differ only in training; per_seed: windows drawn with train.seed.
    eval_set: EvalSet = EvalSet.shared
    checkpoint_every: int = 100  # orbax checkpoint every N updates (and at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept
    divergence_loss: Optional[float] = None  # the loss limit; None = 2 × loss at init
    # A run is diverged when its loss stays above the limit for more than this many updates in a
    # row (a non-finite loss marks it at once): one spiking batch that recovers is no divergence
    # (the paper's LR sensitivity keeps a recovered run's final loss). None = 2% of train.steps.
    divergence_patience: Optional[int] = None
    probes: bool = True  # attention-logit, log Z and activation probes on log steps
    quiet: bool = shown(False)  # no progress bar (sweeps set it)
    spike: SpikeConfig = added(default_factory=SpikeConfig)
    # watches, never changes, a run (action=stop ends it early: the same run, fewer steps)
    monitor: MonitorConfig = field(default_factory=MonitorConfig, metadata={IDENTITY: "never"})
    # Testing aid: update numbers s (1-based, like metrics rows' `step`) whose batch is replaced
    # by garbage (batch) or whose gradient is multiplied by inject_spike_scale before clipping.
    inject_spike_at: List[int] = added(default_factory=list)
    inject_spike_kind: InjectKind = added(InjectKind.batch)  # testing aid: what inject_spike_at does
    inject_spike_scale: float = added(1000.0)  # testing aid: kind=grad's multiplier (per group member)
    # Readout + cross-entropy in chunks of this many tokens (train and eval steps), so B×L×V
    # float32 logits never exist at once. 0 = whole batch at once; -1 = auto: 1024 when the
    # vocabulary is >= 2048 (measured, see proxies/step.py: ce_chunk_for). Outside a run's identity.
    ce_chunk: int = shown(-1)


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.auto  # auto (online with credentials, else disabled) | ...
    project: str = "proxies"  # W&B project
    group: Optional[str] = None  # a sweep sets its directory's name
    job_type: Optional[str] = None  # a sweep sets the run's series (size × toggles)
    name: Optional[str] = None  # readable name; a sweep sets size, toggles and LR
    tags: List[str] = field(default_factory=list)  # W&B tags (a sweep adds its name)
    # Alert (wandb.alert and a console line) when the max attention logit crosses this; a sweep
    # sets its analysis threshold. None = the analysis default (sweep.threshold).
    alert_logit: Optional[float] = None


@dataclass
class DynamicsConfig:
    """Training-dynamics probes (proxies/probes.py: make_dynamics_probe): histograms and outlier
    statistics of weights, gradients and activations at named sites. They observe, never change,
    training, so they stay out of a run's identity: turning them on for a run resumes it."""

    enabled: bool = False  # training-dynamics probes on
    # Probe steps: 0, every N updates, the last. One probe of the laptop preset costs about five
    # train steps (benchmarks/step_speed.py --dynamics-overhead): ~2% of the time at 250.
    every: int = 250
    batch_size: int = 8  # sequences of the fixed held-out batch the probes read
    per_decade: int = 4  # histogram bins per decade of |x| (fixed edges 1e-8 .. 1e4, ± and 0)
    top_frac: float = 1e-3  # share of entries counted as a tensor's top outliers


@dataclass
class MeshConfig:
    """Devices of a run (proxies/sharding.py): batch over `data`, parameters and optimizer state
    over `fsdp`. -1 = all devices the other axes leave. A vmapped sweep group shards its member
    axis over the devices instead. Outside a run's identity: a run resumes on another mesh."""

    data: int = -1  # devices the batch is split over
    fsdp: int = 1  # devices parameters and optimizer state are split over
    # Multi-host: jax.distributed.initialize() (auto: when SLURM_NTASKS > 1 or
    # JAX_COORDINATOR_ADDRESS is set); coordinator/num_processes/process_id None = from the env.
    distributed: DistributedMode = DistributedMode.auto
    coordinator_address: Optional[str] = None  # multi-host: host:port of process 0
    num_processes: Optional[int] = None  # multi-host: processes in all
    process_id: Optional[int] = None  # multi-host: this process's index


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    out_dir: Optional[str] = None  # None: runs/<size>-<config hash>, so a rerun finds it again


@dataclass
class SweepConfig:
    """`python -m proxies.sweep` and the `sweeps/` scripts: a grid of runs and its analysis."""

    name: str = "sweep"  # names the sweep directory, its W&B tag and its report
    lrs: List[float] = field(default_factory=lambda: [1e-3, 1e-2])  # peak LRs of the grid
    # Runs per grid point, at train.seed, train.seed + 1, ... (init and data order differ): the
    # seed is then a swept key (`train.seed`), and verdicts give intervals over seeds.
    seeds: int = 1
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
    lr_range: List[float] = field(default_factory=lambda: [3e-4, 3e-1])  # LR sensitivity's
    target_params: List[float] = field(default_factory=lambda: [4.8e9])  # extrapolate to
    threshold: float = 1e4  # predicted max attention logit flagged above this
    hold_out: List[float] = field(default_factory=list)  # sizes left out of the fit
    # Train runs that differ only in scalar hyperparameters together under jax.vmap:
    # auto = on accelerators (small models leave them idle), off on CPU (no gain there).
    vmap: VmapMode = VmapMode.auto
    group_size: int = 8  # most runs per vmapped group (memory grows with it)
    # Local worker processes that train the groups side by side, each pinned to its share of
    # the cores (one core: single-threaded XLA). 0 = auto: one per core on a CPU backend when
    # there are at least two groups per worker to train; 1 = in this process. CPU only.
    workers: int = 0


# Defaults of `python -m analysis` and the sweeps/ scripts: the sweep's, defined once above.
_SWEEP_DEFAULTS = SweepConfig()
DEFAULT_LR_RANGE: Tuple[float, float] = (_SWEEP_DEFAULTS.lr_range[0], _SWEEP_DEFAULTS.lr_range[1])
DEFAULT_TARGETS: Tuple[float, ...] = tuple(_SWEEP_DEFAULTS.target_params)
DEFAULT_THRESHOLD: float = _SWEEP_DEFAULTS.threshold

def mlp_hidden(cfg: "ModelConfig | DictConfig") -> int:
    """4d for GELU; 8d/3 for SwiGLU so its three matrices hold as many params as GELU's two."""
    match MlpKind(cfg.mlp):
        case MlpKind.gelu:
            return 4 * cfg.d_model
        case MlpKind.swiglu:
            return int(round(8 * cfg.d_model / 3))
        case mlp:
            unhandled("model.mlp", mlp)


def nonembed_params(d_model: int, n_layers: int, mlp: MlpKind | str = MlpKind.gelu) -> int:
    """Non-embedding matrix params of a size, counted from the architecture: per block q, k, v
    and the attention output (4d²) and the MLP's matrices (2·d·4d for GELU: 12·L·d² in all, the
    paper's size convention; 3·d·round(8d/3) for SwiGLU). Biases and norm scales, which
    proxies.model.count_params also counts, are left out."""
    match MlpKind(mlp):
        case MlpKind.gelu:
            matrices = 2  # up, down
        case MlpKind.swiglu:
            matrices = 3  # gate, up, down
        case kind:
            unhandled("model.mlp", kind)
    F = mlp_hidden(ModelConfig(d_model=d_model, mlp=MlpKind(mlp)))
    return n_layers * (4 * d_model * d_model + matrices * d_model * F)


# Dotted config keys the sweeps, their tables and the analysis name columns by.
LR_KEY = "optim.lr"
SEED_KEY = "train.seed"  # swept (a table column) when sweep.seeds > 1
SIZE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads")


def series_of(swept: Dict[str, Any]) -> Dict[str, Any]:
    """A grid point's series: its swept values but the LR (a sweep's runs that differ only in
    LR make one series; its LR sensitivity is over them)."""
    return {k: v for k, v in swept.items() if k != LR_KEY}


@dataclass
class SweepRoot(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="proxies_schema", node=Config)
    cs.store(group="model", name="proxies_model_schema", node=ModelConfig)
    cs.store(name="proxies_sweep_schema", node=SweepRoot)


def choice_message(name: str, value: Any, options: Iterable[str]) -> str:
    """The one line for a value outside a fixed set (also cli.one_line's, for OmegaConf's)."""
    return f"{name}={value!r} is not one of {', '.join(options)}; pick one of those"


def _choice(name: str, value: Any, options: Iterable[str]) -> None:
    options = tuple(options)
    if value not in options:
        raise ConfigError(choice_message(name, value, options))


def _check_choices(node: Any, schema: type, prefix: str) -> None:
    """Every Choice field of `schema` (nested dataclasses too) holds one of its values. OmegaConf
    already refuses others; a plain dataclass instance gets no such check, so do it here."""
    hints = get_type_hints(schema)
    for f in fields(schema):
        kind, value = hints[f.name], getattr(node, f.name)
        if isinstance(kind, type) and issubclass(kind, Choice):
            _choice(f"{prefix}{f.name}", value, kind.values())
        elif isinstance(kind, type) and is_dataclass(kind):
            _check_choices(value, kind, f"{prefix}{f.name}.")


def _check_known_keys(node: Any, schema: type, prefix: str, also: Tuple[str, ...] = ()) -> None:
    """Every key of `node` is a field of `schema` (nested dataclasses too) or in `also`.
    OmegaConf refuses others, but a Hydra `+key=...` override adds them before the schema sees
    them."""
    if not isinstance(node, DictConfig):
        return
    hints = get_type_hints(schema)
    for key in node.keys():
        if key in also:
            continue
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'; check the spelling against "
                              "docs/config.md (a leading + does not add a key to the schema)")
        kind = hints[key]
        if isinstance(kind, type) and is_dataclass(kind):
            _check_known_keys(node[key], kind, f"{prefix}{key}.")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value} must be finite and {bound}; set {name} to such a value")


def _int_at_least(name: str, value: Any, low: int, example: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value} must be an integer >= {low}; set e.g. {name}={example}")


def _validate_spike(t: Any) -> None:
    s = t.spike
    _int_at_least("train.spike.window", s.window, 2, 128)
    _positive("train.spike.sigma", s.sigma)
    _int_at_least("train.spike.min_samples", s.min_samples, 2, min(32, s.window))
    if s.min_samples > s.window:
        raise ConfigError(f"train.spike.min_samples={s.min_samples} exceeds train.spike.window="
                          f"{s.window}; set min_samples <= window")
    _int_at_least("train.spike.skip_batches", s.skip_batches, 0, 8)
    _int_at_least("train.spike.max_rollbacks", s.max_rollbacks, 0, 3)
    for step in t.inject_spike_at:
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= t.steps:
            raise ConfigError(f"train.inject_spike_at holds {step}, not an update number in "
                              f"1..train.steps={t.steps}; pick steps in that range")
    _positive("train.inject_spike_scale", t.inject_spike_scale)


def validate_sweep(sw: DictConfig | SweepConfig) -> None:
    """The `sweep` section's impossible values (each run's config is validated on its own)."""
    _check_known_keys(sw, SweepConfig, "sweep.")
    _check_choices(sw, SweepConfig, "sweep.")
    _positive("sweep.workers", sw.workers, allow_zero=True)
    if not list(sw.lrs):
        raise ConfigError("sweep.lrs is empty; give at least one LR, e.g. sweep.lrs=[1e-3,1e-2]")
    for lr in sw.lrs:
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr)
                                        and lr > 0):
            raise ConfigError(f"sweep.lrs holds {lr!r}; every LR must be a finite number > 0")
    if isinstance(sw.seeds, bool) or not isinstance(sw.seeds, int) or sw.seeds < 1:
        raise ConfigError(f"sweep.seeds={sw.seeds} must be an integer >= 1; set e.g. "
                          "sweep.seeds=3")


def _x64_enabled() -> bool:
    import jax  # here: the schema itself needs no JAX

    return bool(jax.config.jax_enable_x64)


def _validate_monitor(t: Any) -> None:
    mo = t.monitor
    _int_at_least("train.monitor.window", mo.window, 4, 20)
    for k, low, example in (("horizon", 1, 100), ("confirm", 1, 3), ("every", 1, 5)):
        _int_at_least(f"train.monitor.{k}", getattr(mo, k), low, example)
    for k in ("attn_logit_limit", "log_z_limit", "logit_drift_limit", "grad_rms_eps_factor",
              "update_rms_floor"):
        _positive(f"train.monitor.{k}", getattr(mo, k))


def validate(cfg: DictConfig | Config) -> None:
    """Raise ConfigError (one line, naming the fix) for any impossible value."""
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.train
    _check_known_keys(cfg, Config, "", also=("sweep",))  # validate_sweep checks the sweep's
    _check_choices(cfg, Config, "")
    if getattr(cfg, "sweep", None) is not None:
        validate_sweep(cfg.sweep)
    for k in ("d_model", "n_heads", "mup_base_width"):
        _positive(f"model.{k}", getattr(m, k))
    _positive("model.n_layers", m.n_layers, allow_zero=True)  # 0 layers: a bigram model
    for k in ("attn_kappa", "attn_softcap", "logit_softcap"):
        if getattr(m, k) is not None:
            _positive(f"model.{k}", getattr(m, k))
    if o.qk_clip_tau is not None:
        _positive("optim.qk_clip_tau", o.qk_clip_tau)
        if m.attn_kappa is not None:
            raise ConfigError("model.attn_kappa sets the attention logits itself, so "
                              "optim.qk_clip_tau has nothing to clip; drop one of them")
        if m.sigma_reparam:
            raise ConfigError("model.sigma_reparam normalises the kernels optim.qk_clip_tau would "
                              "scale, undoing the clip; use one of them")
    if m.dtype == ComputeDtype.float64 and not _x64_enabled():
        raise ConfigError("model.dtype=float64 needs JAX's 64-bit mode; set JAX_ENABLE_X64=1 in "
                          "the environment (or use model.dtype=float32)")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            f"pick n_heads that divides d_model (e.g. model.n_heads={max(1, m.d_model // 64)})")
    d_head = m.d_model // m.n_heads
    if m.pos_emb == PosEmb.rope and d_head % 2:
        raise ConfigError(f"rotary positions need an even head dim, got {d_head}; change n_heads")
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
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    for k in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "eval_batches",
              "checkpoint_every", "keep_checkpoints"):
        _positive(f"train.{k}", getattr(t, k))
    if t.divergence_loss is not None:
        _positive("train.divergence_loss", t.divergence_loss)
    if t.divergence_patience is not None:
        _int_at_least("train.divergence_patience", t.divergence_patience, 0, 20)
    _validate_spike(t)
    _validate_monitor(t)
    _int_at_least("train.ce_chunk", t.ce_chunk, -1, 1024)
    mesh = getattr(cfg, "mesh", None)
    if mesh is not None:
        for k in ("data", "fsdp"):
            v = getattr(mesh, k)
            if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 1):
                raise ConfigError(f"mesh.{k}={v} must be -1 (all remaining devices) or a device "
                                  f"count >= 1; set e.g. mesh.{k}=-1")
        if mesh.data == -1 and mesh.fsdp == -1:
            raise ConfigError("mesh.data and mesh.fsdp are both -1; give one of them a count")
    dyn = getattr(cfg, "dynamics", None)
    if dyn is not None:
        _int_at_least("dynamics.every", dyn.every, 1, 100)
        _int_at_least("dynamics.batch_size", dyn.batch_size, 1, 8)
        _int_at_least("dynamics.per_decade", dyn.per_decade, 1, 4)
        if dyn.enabled and dyn.batch_size > t.batch_size:
            raise ConfigError(f"dynamics.batch_size={dyn.batch_size} exceeds train.batch_size="
                              f"{t.batch_size}; set dynamics.batch_size<={t.batch_size}")
        if not 0 < dyn.top_frac < 1:
            raise ConfigError(f"dynamics.top_frac={dyn.top_frac} must be in (0, 1); e.g. 1e-3")


IDENTITY_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "data": DataConfig,
                     "train": TrainConfig}


def marked(how: str) -> Dict[str, Dict[str, Any]]:
    """Per identity section, its fields marked `how` ("never" | "when_set", see IDENTITY) and
    their defaults as config.yaml holds them (a nested section as its dict)."""
    out = {}
    for section, cls in IDENTITY_SECTIONS.items():
        plain = OmegaConf.to_container(OmegaConf.structured(cls), resolve=True, enum_to_str=True)
        out[section] = {f.name: plain[f.name] for f in fields(cls)
                        if f.metadata.get(IDENTITY) == how}
    return out


_NOT_IDENTITY = marked("never")
# A field `added` is left out while at its default; a nested section while all of it is.
_OFF_VALUES = marked("when_set")


def to_plain(cfg: DictConfig | Config) -> Dict[str, Any]:
    """A config as plain dicts, lists, strings and numbers (Choices as their values): what
    config.yaml, json keys and hashes need."""
    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def identity(cfg: DictConfig | Config) -> dict:
    """The part of a config that determines a run's results (what resume and hashes compare)."""
    return identity_of(to_plain(cfg))


def identity_of(c: Dict[str, Any]) -> Dict[str, Any]:
    """`identity` of a plain config dict (e.g. a run's config.yaml read back)."""
    out = {k: dict(c.get(k) or {}) for k in ("model", "optim", "data", "train")}
    for section, keys in _NOT_IDENTITY.items():
        out[section] = {k: v for k, v in out[section].items() if k not in keys}
    for section, off in _OFF_VALUES.items():
        # == compares nested dicts key by key, and a Choice equals its string
        out[section] = {k: v for k, v in out[section].items() if k not in off or v != off[k]}
    return out


def config_hash(cfg: DictConfig | Config) -> str:
    return identity_hash(identity(cfg))


def identity_hash(ident: Dict[str, Any]) -> str:
    """The hash naming a run directory, of an `identity` (or `identity_of` a config.yaml)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


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
