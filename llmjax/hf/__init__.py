"""Hugging Face interop: load GPT-2, Llama, Mistral, Mixtral, Qwen2/3, Qwen3-MoE, Gemma 1-3, OLMo 2,
GPT-NeoX and Phi-3 checkpoints, export them back.

    hf = llmjax.hf.load_hf("path/to/gpt2")                  # config, params, tokenizer
    logits = hf.model.apply({"params": hf.params}, ids).logits
    llmjax.hf.export_hf(hf.config, hf.params, "out/gpt2")   # transformers loads this
    llmjax.hf.convert_from_hf("path/to/gpt2", "runs/gpt2")  # an llmjax run directory

Families are registered by `model_type` with `@register_hf`; weights move through safetensors
only.
"""

from llmjax.hf import gemma, gpt2, gpt_neox, llama, moe, olmo, phi3, qwen3  # noqa: F401  (registers the families)
from llmjax.hf.export import export_hf
from llmjax.hf.family import HF_FAMILIES, HFError, HFFamily, TensorMap, register_hf
from llmjax.hf.load import HFModel, load_hf
from llmjax.hf.peft import export_peft
from llmjax.hf.run import convert_from_hf, convert_to_hf

__all__ = [
    "HF_FAMILIES",
    "HFError",
    "HFFamily",
    "HFModel",
    "TensorMap",
    "convert_from_hf",
    "convert_to_hf",
    "export_hf",
    "export_peft",
    "load_hf",
    "register_hf",
]
