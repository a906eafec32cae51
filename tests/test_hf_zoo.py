"""The HF parity suite (tests/test_hf_models.py) over the model zoo's families: logits with and
without padding, greedy decoding with the cache, export back to transformers.

Each variant is a tiny random model built and saved locally by transformers (no network).
"""

import dataclasses

import numpy as np
import pytest

from llmjax.config.moe import MoEConfig
from llmjax.hf import load_hf
from tests.hf_helpers import ZOO_VARIANTS, make_hf_model, random_tokens
from tests.test_hf_models import (  # noqa: F401  (the parity tests, run here over ZOO_VARIANTS)
    ATOL,
    Case,
    _jit_apply,
    test_config_matches_transformers,
    test_export_round_trip,
    test_greedy_generation_matches,
    test_left_padding_with_explicit_positions,
    test_logits_match,
    test_right_padding_logits_and_loss,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Switching a variant's distinctive features off must break parity: the suite exercises them.
FEATURE_OFF = {
    "qwen3-qknorm-gqa": {"qk_norm": False},
    "gemma-mqa-bias": {"embed_scale": False, "mlp": "swiglu", "norm": "rmsnorm"},
    "gemma2-softcaps-local-global": {
        "attn_logit_softcap": None,
        "final_logit_softcap": None,
        "attn_scale_dim": None,
        "global_every": None,  # every layer local
        "norm_position": "pre",
    },
    "olmo2-postnorm-qknorm-all": {"qk_norm_scope": "head", "norm_position": "sandwich"},
    "gpt_neox-parallel-partial-rope": {
        "parallel_block": False,
        "rotary_fraction": 1.0,
        "mlp": "gelu",  # the tanh GELU
    },
    "gpt_neox-sequential-tanh-tied": {"rotary_fraction": 1.0},
    "phi3-fused-partial-window": {"rotary_fraction": 1.0, "attention_window": None},
    "gemma3-qknorm-local-rope": {
        "rope_local_theta": None,
        "qk_norm": False,
        "global_every": {"global_every": None, "rope_local_theta": None},  # every layer local
        "norm": "rmsnorm",  # the QK-norm's offset scale too
    },
    "mixtral-top2-window": {
        "attention_window": None,
        "moe": MoEConfig(n_experts=4, top_k=1, aux_loss_coef=0.02, z_loss_coef=0.0),
    },
    "qwen3_moe-qknorm-raw-gates": {
        "qk_norm": False,
        "moe": MoEConfig(n_experts=6, top_k=3, renormalize=True, d_expert=24, z_loss_coef=0.0),
    },
    "qwen2_moe-shared-gate": {
        "qkv_bias": False,
        "moe": MoEConfig(
            n_experts=4,
            top_k=2,
            d_expert=24,
            n_shared_experts=1,
            d_shared=40,
            shared_gate=False,
            z_loss_coef=0.0,
        ),
    },
}


@pytest.fixture(scope="module", params=list(ZOO_VARIANTS))
def case(request, tmp_path_factory) -> Case:
    variant = request.param
    hf = make_hf_model(variant)
    directory = tmp_path_factory.mktemp(variant)
    hf.save_pretrained(directory, safe_serialization=True)
    loaded = load_hf(directory)
    apply = _jit_apply(loaded.config.model)
    return Case(variant, hf.config.model_type, hf, directory, loaded, apply)


def _params_without(params, cfg):
    """The params of a config with the feature off: the loaded ones where the shapes agree
    (extra norm scales dropped), unit norm scales where they do not (a QK-norm's scope)."""
    from llmjax.hf.params import abstract_params, flatten, unflatten

    loaded = flatten(params)
    out = {}
    for path, want in abstract_params(cfg).items():
        have = loaded.get(path)
        if have is not None and have.shape == want.shape:
            out[path] = have
        else:
            assert path.endswith("scale"), path
            out[path] = np.ones(want.shape, np.float32)
    return unflatten(out)


@pytest.mark.slow  # one compile per feature: 3-15 s per variant on a loaded 2-core machine
def test_feature_off_breaks_parity(case):
    """Each distinctive feature, switched off alone, moves the logits away from transformers':
    the parity tests exercise it."""
    tokens = random_tokens(2, 16)
    want = case.hf_logits(tokens)
    for field, value in FEATURE_OFF[case.variant].items():
        # A dict value: the fields that go off together.
        changes = value if isinstance(value, dict) else {field: value}
        cfg = dataclasses.replace(case.loaded.config.model, **changes)
        params = _params_without(case.loaded.params, cfg)
        got = np.asarray(_jit_apply(cfg)(params, tokens, None, None))
        diff = np.abs(got - want).max()
        # Well outside the parity tolerance (the tanh and erf GELUs differ by ~1e-3 here).
        assert diff > 5 * ATOL, f"{case.variant}: {field}={value!r} changes the logits by {diff}"
