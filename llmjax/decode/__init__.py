"""Decoding: KV-cached batched generation, samplers, beam search, chat sessions."""

from llmjax.decode.beam import BeamOutput, beam_search
from llmjax.decode.chat import ChatReply, ChatSession
from llmjax.decode.crop import CropState
from llmjax.decode.generate import Completion, generate
from llmjax.decode.loop import DecodeOutput, decode
from llmjax.decode.samplers import SamplingConfig, process_logits
from llmjax.decode.steps import Buckets
from llmjax.decode.tokens import beam_search_tokens, generate_tokens
from llmjax.layers.kv_cache import KVCache, LayerKV
from llmjax.layers.state_cache import LayerState, StateCache
from llmjax.models import init_cache

__all__ = [
    "BeamOutput",
    "Buckets",
    "ChatReply",
    "ChatSession",
    "Completion",
    "CropState",
    "DecodeOutput",
    "KVCache",
    "LayerKV",
    "LayerState",
    "SamplingConfig",
    "StateCache",
    "beam_search",
    "beam_search_tokens",
    "decode",
    "generate",
    "generate_tokens",
    "init_cache",
    "process_logits",
]
