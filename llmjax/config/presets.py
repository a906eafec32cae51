"""Named configs: a preset is a Config instance under a name (`llmjax presets` lists them)."""

from __future__ import annotations

from llmjax.config.model import ModelConfig, MoEConfig
from llmjax.config.run import Config, DataConfig, MuonConfig, OptimConfig, TrainConfig
from llmjax.errors import ConfigError

PRESETS: dict[str, Config] = {
    "test-tiny": Config(
        model=ModelConfig(max_seq_len=32, d_model=32, n_layers=2, n_heads=4, d_ff=64),
        data=DataConfig(batch_size=4),
        optim=OptimConfig(warmup_steps=2),
        train=TrainConfig(
            steps=20, eval_every=10, eval_batches=2, log_every=5, checkpoint_every=10
        ),
    ),
    # nanoGPT's CPU shape (4 layers, 4 heads, d=128, ctx 64, batch 12, no biases).
    "nano": Config(
        model=ModelConfig(
            max_seq_len=64, d_model=128, n_layers=4, n_heads=4, use_bias=False, scan_unroll=4
        ),
        data=DataConfig(batch_size=12),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99),
        train=TrainConfig(steps=2000),
    ),
    # The nano shape and batch with RoPE, Muon and a short schedule, characters as tokens: on
    # tiny Shakespeare (--data tinyshakespeare.txt) it reaches val loss ~1.85 in 320 steps, where
    # nanoGPT's AdamW recipe needs 2000 for 1.89. Three Newton-Schulz iterations after AOL's
    # rescaling do what five do after the Frobenius norm's. Evaluates once, on the whole val split.
    "shakespeare-char": Config(
        model=ModelConfig(
            max_seq_len=64,
            d_model=128,
            n_layers=4,
            n_heads=4,
            use_bias=False,
            position="rope",
            scan_unroll=4,
        ),
        data=DataConfig(tokenizer="char", batch_size=12),
        optim=OptimConfig(
            name="muon",
            lr=2e-2,
            momentum=0.9,
            warmup_steps=10,
            b2=0.99,
            muon=MuonConfig(ns_steps=3, preconditioning="aol"),
        ),
        train=TrainConfig(steps=320, eval_every=320, eval_batches=10_000, checkpoint_every=320),
    ),
    # nanoGPT's shakespeare GPU shape (6 layers, 6 heads, d=384, ctx 256, batch 64).
    "medium": Config(
        model=ModelConfig(max_seq_len=256, d_model=384, n_layers=6, n_heads=6, use_bias=False),
        data=DataConfig(batch_size=64),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, b2=0.99),
        train=TrainConfig(steps=5000),
    ),
    # GPT-2 124M shape; the vocabulary is padded to a multiple of 64 as nanoGPT does.
    "gpt2-small": Config(
        model=ModelConfig(
            vocab_size=50257,
            vocab_multiple=64,
            max_seq_len=1024,
            d_model=768,
            n_layers=12,
            n_heads=12,
            dropout=0.0,
        ),
        data=DataConfig(batch_size=8, tokenizer="bpe", bpe_vocab_size=50257),
        optim=OptimConfig(lr=6e-4, warmup_steps=700, b2=0.95),
        train=TrainConfig(steps=10000),
    ),
    "llama-tiny": Config(
        model=ModelConfig(
            max_seq_len=128,
            d_model=128,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            mlp="swiglu",
            norm="rmsnorm",
            position="rope",
            use_bias=False,
            tie_embeddings=False,
        ),
        data=DataConfig(batch_size=12),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, b2=0.95),
        train=TrainConfig(steps=2000),
    ),
    # Llama-3.2-1B shape.
    "llama-1b": Config(
        model=ModelConfig(
            vocab_size=128256,
            vocab_multiple=128,
            max_seq_len=2048,
            d_model=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            d_ff=8192,
            mlp="swiglu",
            norm="rmsnorm",
            position="rope",
            rope_theta=500_000.0,
            use_bias=False,
            tie_embeddings=True,
            remat="full",
        ),
        data=DataConfig(batch_size=4, tokenizer="bpe", bpe_vocab_size=32768),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, b2=0.95),
        train=TrainConfig(steps=100000),
    ),
    # test-tiny with a mixture-of-experts MLP in every layer: 4 experts of width 32, top-2 (the
    # dense MLP's 64 active), one shared expert.
    "test-moe-tiny": Config(
        model=ModelConfig(
            max_seq_len=32,
            d_model=32,
            n_layers=2,
            n_heads=4,
            d_ff=64,
            moe=MoEConfig(n_experts=4, top_k=2, d_expert=32, n_shared_experts=1, block_size=16),
        ),
        data=DataConfig(batch_size=4),
        optim=OptimConfig(warmup_steps=2),
        train=TrainConfig(
            steps=20, eval_every=10, eval_batches=2, log_every=5, checkpoint_every=10
        ),
    ),
    # nano with 8 experts of half nano's MLP width, top-2: the active parameters of nano (plus
    # the router's 8 x 128 per layer) and 4x its MLP parameters in total.
    "nano-moe": Config(
        model=ModelConfig(
            max_seq_len=64,
            d_model=128,
            n_layers=4,
            n_heads=4,
            use_bias=False,
            scan_unroll=4,
            moe=MoEConfig(n_experts=8, top_k=2, d_expert=256),
        ),
        data=DataConfig(batch_size=12),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99),
        train=TrainConfig(steps=2000),
    ),
}

# One line per preset for `llmjax presets`.
PRESET_DESCRIPTIONS: dict[str, str] = {
    "test-tiny": "the tests' tiny model: 2 layers, d=32, ctx 32, 20 steps",
    "nano": "nanoGPT's CPU shape: 4 layers, 4 heads, d=128, ctx 64, batch 12",
    "shakespeare-char": "nano with RoPE, Muon and characters as tokens, for tiny Shakespeare",
    "medium": "nanoGPT's Shakespeare GPU shape: 6 layers, 6 heads, d=384, ctx 256, batch 64",
    "gpt2-small": "GPT-2 124M: 12 layers, d=768, ctx 1024, BPE vocabulary of 50257",
    "llama-tiny": "a small Llama: RMSNorm, SwiGLU, RoPE, 2 KV heads of 4, untied embeddings",
    "llama-1b": "Llama-3.2-1B shape: 16 layers, d=2048, 8 KV heads of 32, ctx 2048, remat",
    "test-moe-tiny": "the tests' tiny mixture of experts: 4 experts of width 32, top-2, one shared",
    "nano-moe": "nano with 8 experts of width 256, top-2: nano's active parameters, 3x its total",
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
