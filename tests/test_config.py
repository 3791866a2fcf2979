"""The config schema: run hashes, Choice enums, spike settings and their one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from proxies.cli import one_line
from proxies.config import (_OFF_VALUES, IDENTITY, Choice, Config, ConfigError, ModelConfig,
                            NormKind,
                            SpikeAction, SpikeConfig, SweepConfig, TrainConfig, config_hash,
                            identity, identity_of, to_plain, validate)

# Regression spec: the hash of the default config (and of one variant that sets Choice fields)
# as it was before the enums and the spike keys came in. It names the run directories of
# existing runs (runs/<size>-<hash>); if it changes, every finished run would be retrained.
# Changed on purpose once: train.divergence_patience (divergence became a sustained excursion)
# changes what a run computes, so runs from before it are retrained. And once more: the held-out
# set became one shared set per corpus (train.eval_set) of 16 batches, not 4 drawn per seed.
DEFAULT_HASH = "9885334956"
RMSNORM_SWIGLU_ROPE_HASH = "4ee499be7f"


def cfg_with(*dotlist: str):
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(list(dotlist)))


def test_default_hash_is_unchanged():
    assert config_hash(Config()) == DEFAULT_HASH
    assert config_hash(OmegaConf.structured(Config)) == DEFAULT_HASH
    assert config_hash(cfg_with("model.norm=rmsnorm", "model.mlp=swiglu",
                                "model.pos_emb=rope")) == RMSNORM_SWIGLU_ROPE_HASH


def test_spike_keys_stay_out_of_the_identity_while_default():
    ident = identity(Config())
    assert not {"spike", "inject_spike_at", "inject_spike_kind",
                "inject_spike_scale"} & set(ident["train"])
    # The off values are the schema's defaults, as config.yaml holds them.
    defaults = to_plain(Config())["train"]
    assert {k: defaults[k] for k in _OFF_VALUES["train"]} == _OFF_VALUES["train"]


# Every key of a default run's identity. A field missing from here is one a change added to
# every run's identity: it renames (and retrains) every existing run.
IDENTITY_KEYS = {
    "data": "bpe_vocab_size cache_dir hf_config hf_name hf_split hf_val_split max_docs path source "
            "text_field token_dtype tokenizer train_bin val_bin val_fraction vocab_size",
    "model": "attn_scale d_model dtype init_std mlp mup_base_width n_heads n_layers norm "
             "parametrization pos_emb qk_layernorm rope_base tie_embeddings use_bias",
    "optim": "b1 b2 eps grad_clip independent_wd lr min_lr schedule warmup_steps weight_decay "
             "z_loss",
    "train": "batch_size checkpoint_every divergence_loss divergence_patience eval_batches "
             "eval_every eval_set keep_checkpoints log_every probes seed seq_len steps",
}


def test_no_new_field_renames_the_existing_runs():
    keys = {f"{s}.{k}" for s, sec in identity(Config()).items() for k in sec}
    known = {f"{s}.{k}" for s, names in IDENTITY_KEYS.items() for k in names.split()}
    assert not keys - known, (
        f"{sorted(keys - known)} would enter every run's identity and rename every existing run: "
        "declare the field with config.added(default) (docs/runs.md: Adding a toggle)")
    assert not known - keys, f"{sorted(known - keys)} left every run's identity: runs renamed"


def test_an_added_field_enters_the_identity_only_when_set():
    """σReparam, a toggle added after runs were first hashed: off, the default run keeps its
    hash; on, it is part of the identity."""
    from dataclasses import fields as dc_fields
    meta = {f.name: f.metadata.get(IDENTITY) for f in dc_fields(ModelConfig)}
    assert meta["sigma_reparam"] == "when_set" and meta["attn_impl"] == "never"
    assert meta["d_model"] is None  # an ordinary field: always in the identity
    assert config_hash(cfg_with("model.sigma_reparam=false")) == DEFAULT_HASH
    assert identity(cfg_with("model.sigma_reparam=true"))["model"]["sigma_reparam"] is True
    assert config_hash(cfg_with("model.attn_impl=explicit")) == DEFAULT_HASH


@pytest.mark.parametrize("override", [
    "train.spike.action=skip", "train.spike.window=64", "train.spike.sigma=4.0",
    "train.inject_spike_at=[3]", "train.inject_spike_kind=grad", "train.inject_spike_scale=10.0"])
def test_a_non_default_spike_setting_changes_the_hash(override):
    assert config_hash(cfg_with(override)) != DEFAULT_HASH


def test_identity_of_a_config_read_back_drops_the_default_spike_dict():
    plain = yaml.safe_load(yaml.safe_dump(to_plain(Config())))
    assert "spike" not in identity_of(plain)["train"]
    plain["train"]["spike"]["sigma"] = 6  # an int from YAML still equals the default 6.0
    assert "spike" not in identity_of(plain)["train"]
    plain["train"]["spike"]["window"] = 64
    assert identity_of(plain)["train"]["spike"]["window"] == 64


@pytest.mark.parametrize("overrides, message", [
    (["train.spike.window=1"], "train.spike.window=1 must be an integer >= 2"),
    (["train.spike.sigma=0"], "train.spike.sigma=0.0 must be finite and > 0"),
    (["train.spike.sigma=inf"], "train.spike.sigma=inf must be finite and > 0"),
    (["train.spike.min_samples=1"], "train.spike.min_samples=1 must be an integer >= 2"),
    (["train.spike.window=16", "train.spike.min_samples=17"],
     "train.spike.min_samples=17 exceeds train.spike.window=16"),
    (["train.spike.skip_batches=-1"], "train.spike.skip_batches=-1 must be an integer >= 0"),
    (["train.spike.max_rollbacks=-1"], "train.spike.max_rollbacks=-1 must be an integer >= 0"),
    (["train.steps=10", "train.inject_spike_at=[0]"], "train.inject_spike_at holds 0"),
    (["train.steps=10", "train.inject_spike_at=[5,11]"], "train.inject_spike_at holds 11"),
    (["train.inject_spike_scale=0"], "train.inject_spike_scale=0.0 must be finite and > 0"),
])
def test_bad_spike_values_give_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(*overrides))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_good_spike_values_pass():
    validate(cfg_with("train.steps=10", "train.inject_spike_at=[1,10]", "train.spike.window=2",
                      "train.spike.min_samples=2", "train.spike.skip_batches=0",
                      "train.spike.max_rollbacks=0", "train.spike.action=rollback"))


def test_a_bad_choice_gives_one_line_naming_the_options():
    with pytest.raises(ValidationError) as e:
        cfg_with("model.norm=foo")
    assert one_line(e.value) == ("model.norm='foo' is not one of layernorm, rmsnorm; "
                                 "pick one of those")
    with pytest.raises(ValidationError) as e:
        cfg_with("train.spike.action=undo")
    assert one_line(e.value).startswith("train.spike.action='undo' is not one of log, skip,")


def test_validate_checks_choices_of_a_plain_dataclass():
    # Built without OmegaConf nothing else checks the strings.
    validate(Config(model=ModelConfig(norm="rmsnorm")))
    with pytest.raises(ConfigError, match="model.norm='foo' is not one of layernorm, rmsnorm"):
        validate(Config(model=ModelConfig(norm="foo")))
    bad_spike = TrainConfig(spike=SpikeConfig(action="undo"))
    with pytest.raises(ConfigError, match="train.spike.action='undo' is not one of"):
        validate(Config(train=bad_spike))


def _choice_types():
    seen, todo = [], [Config, SweepConfig]
    while todo:
        for f in dataclasses.fields(todo.pop()):
            t = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(t, Choice):
                seen.append(type(t))
            elif dataclasses.is_dataclass(t):
                todo.append(type(t))
    return seen


def test_choice_members_are_named_by_their_values():
    kinds = _choice_types()
    # 12 options, spike.action, monitor.action, inject_spike_kind, attn_impl, distributed,
    # eval_set
    assert len(kinds) == 18
    for kind in kinds:
        assert all(m.name == m.value for m in kind), kind  # OmegaConf reads enums by name


def test_choices_round_trip_through_yaml():
    cfg = cfg_with("model.norm=rmsnorm", "optim.schedule=linear", "data.token_dtype=uint32",
                   "train.spike.action=rollback")
    text = yaml.safe_dump(to_plain(cfg))
    assert "norm: rmsnorm" in text and "action: rollback" in text
    back = OmegaConf.merge(OmegaConf.structured(Config), yaml.safe_load(text))
    assert back.model.norm is NormKind.rmsnorm and back.train.spike.action is SpikeAction.rollback
    assert back == cfg and config_hash(back) == config_hash(cfg)
    # A member that reaches yaml.safe_dump unconverted is still written as its string.
    assert yaml.safe_dump({"norm": NormKind.rmsnorm}) == "norm: rmsnorm\n"
    assert cfg.model.norm == "rmsnorm" and f"{cfg.model.norm}" == "rmsnorm"


def test_analysis_defaults_are_the_sweep_defaults():
    from analysis import report
    from analysis.sensitivity import lr_sensitivity

    sweep = SweepConfig()
    assert report.DEFAULT_TARGETS == tuple(sweep.target_params)
    assert lr_sensitivity.__defaults__[-1] == tuple(sweep.lr_range)
    assert report.analyze.__defaults__[1:3] == (sweep.threshold, tuple(sweep.lr_range))


def test_the_config_reference_is_the_one_the_schema_generates():
    from proxies.config_doc import render
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == render(), ("docs/config.md is stale: run "
                                         "python -m proxies.config_doc > docs/config.md")


def test_the_config_reference_lists_every_key_with_its_comment():
    from proxies.config_doc import render
    text = render()
    for key in ("model.qk_layernorm", "optim.z_loss", "train.spike.sigma", "sweep.seeds",
                "mesh.fsdp", "out_dir"):
        assert f"| `{key}` |" in text, key
    assert "| `optim.z_loss` | float | `0.0` | coefficient of (log Z)²" in text
    assert "`layernorm` \\| `rmsnorm`" in text  # a Choice lists its values


def composed(config: str, *overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from proxies.train import CONFIG_DIR
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config, overrides=list(overrides))


def test_the_paper_recipe_is_one_file_every_entry_composes():
    """`+recipe=paper` on a run, `+exp=lr_sens` (the paper's first result) and the sweeps/
    scripts' baseline all hold recipe/paper.yaml's values; the size presets hold sizes only."""
    from sweeps.core import baseline, config_file
    recipe = config_file("recipe/paper.yaml")
    run = composed("config", "model=paper_9m", "+recipe=paper")
    exp = composed("sweep", "+exp=lr_sens")
    for section, values in recipe.items():
        for k, v in values.items():
            assert run[section][k] == v and exp[section][k] == v, (section, k)
            assert baseline(200)[section][k] == v
    assert list(exp.sweep.axes.model.qk_layernorm) == [False, True]
    assert exp.optim.warmup_steps == baseline(200)["optim"]["warmup_steps"] == 10
    preset = config_file("model/paper_9m.yaml")
    assert set(preset) - {"defaults"} == {"d_model", "n_layers", "n_heads"}
