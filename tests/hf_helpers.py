"""Tiny random Hugging Face models and tokenizers, built locally (no network) for the HF tests.

torch and transformers are test-only dependencies, imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 101
CONTEXT = 64

# model_type + config kwargs per variant: each exercises a different switch of the families.
HF_VARIANTS = {
    "gpt2": (
        "gpt2",
        dict(n_embd=32, n_head=4, n_layer=2, n_positions=CONTEXT, layer_norm_epsilon=1e-5),
    ),
    "llama-gqa-llama3-untied": (
        "llama",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            rms_norm_eps=1e-5,
            rope_theta=500_000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            tie_word_embeddings=False,
        ),
    ),
    "llama-tied-biases-headdim": (
        "llama",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            head_dim=16,  # N * H = 64 != hidden_size
            intermediate_size=48,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            tie_word_embeddings=True,
        ),
    ),
    "qwen2-qkv-bias-tied": (
        "qwen2",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            tie_word_embeddings=True,
        ),
    ),
    "mistral-window-mqa": (
        "mistral",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            sliding_window=6,
        ),
    ),
}


# The model zoo's families (tests/test_hf_zoo.py runs the parity suite over these).
ZOO_VARIANTS = {
    "qwen3-qknorm-gqa": (
        "qwen3",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            tie_word_embeddings=False,
        ),
    ),
    "gemma-mqa-bias": (
        "gemma",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            attention_bias=True,
        ),
    ),
    "gemma2-softcaps-local-global": (
        "gemma2",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            num_hidden_layers=3,  # local, global, local
            max_position_embeddings=CONTEXT,
            sliding_window=6,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "olmo2-postnorm-qknorm-all": (
        "olmo2",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            rms_norm_eps=1e-5,
        ),
    ),
    "gpt_neox-parallel-partial-rope": (
        "gpt_neox",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            rotary_pct=0.5,
            rotary_emb_base=1000.0,
            tie_word_embeddings=False,
        ),
    ),
    "gpt_neox-sequential-tanh-tied": (
        "gpt_neox",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            use_parallel_residual=False,
            hidden_act="gelu_new",
            attention_bias=False,
            tie_word_embeddings=True,
        ),
    ),
    "phi3-fused-partial-window": (
        "phi3",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=CONTEXT,
            original_max_position_embeddings=CONTEXT,
            partial_rotary_factor=0.75,
            sliding_window=10,
            tie_word_embeddings=False,
        ),
    ),
    "gemma3-qknorm-local-rope": (
        "gemma3_text",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            num_hidden_layers=3,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            max_position_embeddings=CONTEXT,
            sliding_window=5,
            query_pre_attn_scalar=16,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
            },
        ),
    ),
    "mixtral-top2-window": (
        "mixtral",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            router_aux_loss_coef=0.02,
            max_position_embeddings=CONTEXT,
            sliding_window=10,
            tie_word_embeddings=False,
        ),
    ),
    "qwen3_moe-qknorm-raw-gates": (
        "qwen3_moe",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            moe_intermediate_size=24,
            num_hidden_layers=2,
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            max_position_embeddings=CONTEXT,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2_moe-shared-gate": (
        "qwen2_moe",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_hidden_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            max_position_embeddings=CONTEXT,
            tie_word_embeddings=False,
        ),
    ),
}


def make_hf_model(variant: str, vocab_size: int = VOCAB, seed: int = 0):
    """A randomly initialized transformers causal LM in eval mode (eager attention, float32).

    Weights are drawn wider than transformers' init so logits are peaked: greedy decoding then
    has clear winners instead of near-ties decided by rounding.
    """
    import torch
    import transformers

    torch.set_num_threads(1)  # tiny matmuls: threads only add contention
    model_type, kwargs = {**HF_VARIANTS, **ZOO_VARIANTS}[variant]
    config = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                shift = 1.0 if name.endswith("weight") else 0.0
                p.copy_(shift + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.25)
    return model.eval()


def save_hf_model(model, directory: Path, *, tokenizer_json: Path | None = None, **kwargs) -> Path:
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    if tokenizer_json is not None:
        (directory / "tokenizer.json").write_text(tokenizer_json.read_text())
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "def main():\n    return 42  # tabs\tand  double  spaces\n"
    "Ünïcödé wörds, naïve café, 東京, émoji 🙂 and numbers 1234567890.\n"
) * 20


def build_tokenizer_json(path: Path, kind: str = "byte-level", vocab_size: int = 300) -> Path:
    """Trains a small BPE tokenizer with HF `tokenizers` and writes its tokenizer.json.

    "byte-level" is GPT-2 style (ByteLevel pre-tokenizer and decoder, <|endoftext|>);
    "metaspace" is Llama-2 style (Metaspace, byte fallback, <s> added by a post-processor).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind == "byte-level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size + 256,
            special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
            show_progress=False,
        )
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    if kind != "byte-level":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    tok.save(str(path))
    return path


def random_tokens(batch: int, length: int, vocab_size: int = VOCAB, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length)).astype(np.int32)


def random_params(cfg, seed: int) -> dict:
    """llmjax params of cfg's shapes drawn wide (no init compile); norm scales near 1."""
    import jax.numpy as jnp

    from llmjax.hf.params import abstract_params, unflatten

    rng = np.random.default_rng(seed)
    flat = {
        path: (1.0 if path.endswith("scale") else 0.0) + 0.2 * rng.standard_normal(x.shape)
        for path, x in abstract_params(cfg).items()
    }
    return unflatten({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})
