"""Configs: validation messages, presets, overrides, serialization."""

import dataclasses
import json

import pytest

from llmjax.config import (
    PRESETS,
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    from_dict,
    get_preset,
    load_config,
    save_config,
    to_dict,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(d_model=130, n_heads=4), r"d_model=130 is not divisible by n_heads=4.*e\.g\. 128"),
        (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads=3 does not divide n_heads=4"),
        (dict(position="rope", d_model=20, n_heads=4), r"RoPE.*head_dim must be even.*head_dim=5"),
        (dict(n_layers=0), r"n_layers must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dtype="float64"), r"dtype='float64' is not known"),
    ],
)
def test_bad_model_configs_say_how_to_fix_them(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(norm="groupnorm"), r"norm='groupnorm' is not known; valid choices: batchnorm, "),
        (dict(attention="nope"), r"attention='nope' is not known; valid choices:.*reference"),
        (dict(remat="some"), r"remat='some' is not known; valid choices:.*full"),
    ],
)
def test_unknown_part_names_are_explained_when_the_model_is_built(fields, message):
    from llmjax.models import build_model

    cfg = ModelConfig(**fields)  # a config imports no registry: names are checked at build
    with pytest.raises(ConfigError, match=message):
        build_model(cfg)


def test_sequence_longer_than_learned_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.seq_len=128 is longer than the learned position"):
        apply_overrides(get_preset("nano"), ["data.seq_len=128"])
    # RoPE has no table: a longer training window is allowed.
    apply_overrides(get_preset("nano"), ["model.position=rope", "data.seq_len=128"])


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: test-tiny, nano"):
        get_preset("gpt5")


def test_overrides_parse_types():
    cfg = apply_overrides(
        get_preset("nano"),
        [
            "model.n_layers=6",
            "optim.lr=3e-4",
            "model.use_bias=true",
            "optim.clip_norm=none",
            "model.norm=rmsnorm",
            "data.path=/tmp/x.txt",
            "model.rope_scaling.factor=2",
        ],
    )
    assert cfg.model.n_layers == 6 and cfg.optim.lr == 3e-4 and cfg.model.use_bias is True
    assert cfg.optim.clip_norm is None and cfg.model.norm == "rmsnorm"
    assert cfg.data.path == "/tmp/x.txt" and cfg.model.rope_scaling.factor == 2.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layers=abc", r"model.n_layers expects an integer, got 'abc'"),
        ("model.use_bias=maybe", r"expects a boolean"),
        ("model.depth=3", r"unknown option 'model.depth'.*valid fields: arch, vocab_size"),
        ("modle.n_layers=3", r"unknown option 'modle.n_layers'.*valid fields: model, data"),
        ("model=3", r"'model' is a section"),
        ("model.n_layers", r"must look like section.field=value"),
        ("optim.lr=-1", r"optim.lr must be > 0"),
        ("optim.muon.ns_steps=0", r"optim.muon.ns_steps must be >= 1"),
        (
            "optim.muon.preconditioning=qr",
            r"optim.muon.preconditioning='qr' is not known; valid choices: frobenius, spectral",
        ),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("nano"), [override])


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = PRESETS[name]
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_from_dict_rejects_unknown_fields():
    data = to_dict(Config())
    data["model"]["colour"] = "blue"
    with pytest.raises(ConfigError, match=r"config.model: unknown field\(s\) \['colour'\]"):
        from_dict(data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=inf", r"optim.lr must be a finite number, got inf.*default is 0.001"),
        ("optim.b2=nan", r"optim.b2 must be a finite number"),
        ("optim.clip_norm=inf", r"optim.clip_norm must be a finite number"),
        ("optim.eps=0", r"optim.eps must be > 0"),
        ("optim.momentum=-0.5", r"optim.momentum must be in \[0, 1\)"),
        ("model.init_std=inf", r"model.init_std must be a finite number"),
        ("model.rope_theta=-1", r"model.rope_theta must be > 0"),
        ("model.rope_scaling.low_freq_factor=0", r"low_freq_factor must be > 0"),
        ("train.loss_scale_init=inf", r"train.loss_scale_init must be a finite number"),
        ("train.seed=-3", r"train.seed must be an integer >= 0"),
        ("data.val_fraction=nan", r"data.val_fraction must be a finite number"),
    ],
)
def test_values_that_cannot_train_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("nano"), [override])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"].update(n_layers="4"), r"config.model.n_layers must be an integer"),
        (lambda d: d["model"].update(n_layers=2.5), r"config.model.n_layers must be an integer"),
        (lambda d: d["model"].update(use_bias=1), r"config.model.use_bias must be true or false"),
        (lambda d: d["optim"].update(clip_norm="x"), r"clip_norm must be a number or null"),
        (lambda d: d.update(data=None), r"config.data must be a JSON object"),
        (lambda d: d["model"].update(rope_scaling=3), r"config.model.rope_scaling must be a JSON"),
    ],
)
def test_a_saved_config_of_wrong_types_names_the_file_and_field(edit, message, tmp_path):
    data = to_dict(get_preset("nano"))
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_a_saved_config_keeps_ints_where_floats_go(tmp_path):
    data = to_dict(get_preset("nano"))
    data["model"]["rope_theta"] = 10000  # an int in JSON, a float field
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert load_config(path).model.rope_theta == 10000.0


def test_derived_sizes():
    llama = PRESETS["llama-1b"].model
    assert (llama.kv_heads, llama.dim_head, llama.ffn_dim) == (8, 64, 8192)
    assert PRESETS["gpt2-small"].model.padded_vocab_size == 50304
    assert dataclasses.replace(PRESETS["nano"].model, mlp="swiglu").ffn_dim == 384


def test_compilation_cache_setting(tmp_path, monkeypatch):
    import jax

    from llmjax.runtime import COMPILE_CACHE_ENV, enable_compilation_cache

    old = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv(COMPILE_CACHE_ENV, "off")
        assert enable_compilation_cache() is None
        monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "xla"))
        assert enable_compilation_cache() == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        monkeypatch.delenv(COMPILE_CACHE_ENV)
        monkeypatch.setenv("LLMJAX_CACHE_DIR", str(tmp_path / "root"))
        assert enable_compilation_cache() == tmp_path / "root" / "xla"
    finally:
        jax.config.update("jax_compilation_cache_dir", old)


def test_a_config_saved_with_old_option_names_still_loads(tmp_path):
    data = to_dict(get_preset("shakespeare-char"))
    muon = data["optim"].pop("muon")
    data["optim"]["muon_ns_steps"], data["optim"]["muon_adam_lr"] = 3, 2e-3
    (tmp_path / "old.json").write_text(json.dumps(data))
    cfg = load_config(tmp_path / "old.json")
    assert (cfg.optim.muon.ns_steps, cfg.optim.muon.adam_lr) == (3, 2e-3)
    assert set(to_dict(cfg)["optim"]["muon"]) == set(muon)


def test_an_override_under_an_old_name_sets_the_new_option():
    cfg = apply_overrides(get_preset("nano"), ["optim.muon_ns_steps=3"])
    assert cfg.optim.muon.ns_steps == 3
