"""Hugging Face checkpoints llmjax must refuse, each with a clear error; and the layouts it
must accept (sharded weights, bare base-model names)."""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llmjax.hf import HFError, load_hf
from llmjax.hf.safetensors_io import INDEX_FILE
from tests.hf_helpers import build_tokenizer_json, make_hf_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    make_hf_model("gpt2").save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    return load_hf(gpt2_dir)


@pytest.fixture
def copy(gpt2_dir, tmp_path):
    """A scratch copy of the GPT-2 checkpoint to damage."""
    return shutil.copytree(gpt2_dir, tmp_path / "copy")


def _edit_weights(directory, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, {"format": "pt"})


def _edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_unsupported_model_type_lists_the_supported_ones(copy):
    _edit_config(copy, model_type="bert")
    supported = (
        "gemma, gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, mixtral, olmo2, phi3, qwen2, "
        "qwen2_moe, qwen3, qwen3_moe"
    )
    with pytest.raises(HFError, match=rf"model_type 'bert'.*{supported}"):
        load_hf(copy)


def test_missing_config(tmp_path):
    with pytest.raises(HFError, match="no config.json"):
        load_hf(tmp_path)


def test_missing_tensor_is_named(copy):
    _edit_weights(copy, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(HFError, match=r"lacks 1 tensor.*'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        load_hf(copy)


def test_shape_mismatch_names_tensor_and_both_shapes(copy):
    def shrink(tensors):
        tensors["transformer.h.0.mlp.c_fc.weight"] = np.zeros((32, 100), np.float32)

    _edit_weights(copy, shrink)
    with pytest.raises(
        HFError,
        match=r"'transformer\.h\.0\.mlp\.c_fc\.weight'.*shape \(32, 100\).*implies \(32, 128\)",
    ):
        load_hf(copy)


def test_config_and_weights_that_disagree(copy):
    """Weights with more layers than config.json says: the extra tensors are named."""
    _edit_config(copy, n_layer=1)
    with pytest.raises(HFError, match=r"does not account for.*transformer\.h\.1\."):
        load_hf(copy)


def test_pickle_only_checkpoint_is_refused(copy):
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(HFError) as info:
        load_hf(copy)
    message = str(info.value)
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert "arbitrary code" in message
    assert "save_pretrained(OUT, safe_serialization=True)" in message


def test_unsupported_rope_scaling(tmp_path):
    make_hf_model("llama-gqa-llama3-untied").save_pretrained(tmp_path)
    scaling = {"rope_type": "longrope", "factor": 4.0}
    _edit_config(tmp_path, rope_scaling=scaling, rope_parameters=None)
    with pytest.raises(HFError, match="RoPE scaling 'longrope'.*default, linear, llama3, yarn"):
        load_hf(tmp_path)


def test_qwen2_with_mixed_window_layers(tmp_path):
    make_hf_model("qwen2-qkv-bias-tied").save_pretrained(tmp_path)
    _edit_config(tmp_path, layer_types=["full_attention", "sliding_attention"], sliding_window=4)
    with pytest.raises(HFError, match="the same window in every layer"):
        load_hf(tmp_path)


def test_qwen3_moe_with_dense_layers(tmp_path):
    make_hf_model("qwen3_moe-qknorm-raw-gates").save_pretrained(tmp_path)
    _edit_config(tmp_path, mlp_only_layers=[0])
    with pytest.raises(HFError, match=r"mlp_only_layers=\[0\].*every layer is MoE"):
        load_hf(tmp_path)


def test_sharded_checkpoint_loads(gpt2_dir, reference, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / INDEX_FILE).is_file() and not (tmp_path / "model.safetensors").exists()
    _assert_same_params(load_hf(tmp_path).params, reference.params)


def test_bare_base_model_names_load(copy, reference):
    """GPT-2 as published names its tensors without the `transformer.` prefix."""

    def strip(tensors):
        for name in list(tensors):
            tensors[name.removeprefix("transformer.")] = tensors.pop(name)

    _edit_weights(copy, strip)
    _assert_same_params(load_hf(copy).params, reference.params)


def test_bfloat16_load(gpt2_dir, reference):
    loaded = load_hf(gpt2_dir, dtype="bfloat16")
    assert loaded.config.model.param_dtype == "bfloat16" == loaded.config.model.dtype
    leaves = jax.tree.leaves(loaded.params)
    assert all(x.dtype == jax.numpy.bfloat16 for x in leaves)
    wte = np.asarray(loaded.params["embed"]["embedding"], np.float32)
    np.testing.assert_allclose(wte, reference.params["embed"]["embedding"], rtol=1e-2)


def test_tokenizer_larger_than_the_vocabulary(copy):
    build_tokenizer_json(copy / "tokenizer.json", "byte-level", vocab_size=300)
    with pytest.raises(HFError, match="does not belong to this model"):
        load_hf(copy)
