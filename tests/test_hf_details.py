"""Hugging Face details: YaRN and dynamic-NTK RoPE against transformers (both ways), the
eos_token_id lists of chat models against transformers' generate, byte and char tokenizers
through tokenizer.json and back, and the messages for a missing checkpoint directory."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from llmjax.cli import main
from llmjax.config import Config, DataConfig, ModelConfig, RopeScaling, save_config
from llmjax.data import BPETokenizer, ByteTokenizer, CharTokenizer
from llmjax.decode import SamplingConfig, generate, generate_tokens
from llmjax.hf import HFError, convert_from_hf, convert_to_hf, export_hf, load_hf
from llmjax.models import build_model
from llmjax.runs import RunDir, load_run, save_weights
from tests.hf_helpers import (
    HF_VARIANTS,
    build_tokenizer_json,
    make_hf_model,
    random_params,
    random_tokens,
    save_hf_model,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA = dict(HF_VARIANTS["llama-gqa-llama3-untied"][1], max_position_embeddings=16)


def _hf_llama(rope_scaling, vocab_size=101, **kwargs):
    """A tiny random transformers Llama with this rope_scaling (make_hf_model's weights)."""
    HF_VARIANTS["_rope"] = ("llama", {**LLAMA, "rope_scaling": rope_scaling, **kwargs})
    try:
        return make_hf_model("_rope", vocab_size=vocab_size)
    finally:
        del HF_VARIANTS["_rope"]


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.numpy()


def _logits(cfg: ModelConfig, params, tokens) -> np.ndarray:
    model = build_model(cfg)
    return np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens))


def _hf_greedy(model, prompt, max_new_tokens) -> list[int]:
    with torch.no_grad():
        ids = model.generate(
            torch.as_tensor(np.asarray(prompt, np.int64)[None]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )[0].numpy()
    return ids[len(prompt) :].tolist()


# ----------------------------------------------------------------------------- RoPE scaling

ROPES = {
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
}


@pytest.mark.parametrize("kind", list(ROPES))
def test_rope_scaling_from_hf_matches_transformers_logits(kind, tmp_path):
    hf = _hf_llama(ROPES[kind])
    ours = load_hf(save_hf_model(hf, tmp_path / "hf"))
    assert ours.config.model.rope_scaling.kind == kind
    plain_cfg = dataclasses.replace(ours.config.model, rope_scaling=RopeScaling())
    for length in (10, 40):  # inside and past max_position_embeddings=16
        tokens = random_tokens(2, length)
        got = _logits(ours.config.model, ours.params, tokens)
        np.testing.assert_allclose(got, _hf_logits(hf, tokens), atol=1e-4)
        if kind == "dynamic":  # the plain frequencies up to 16 tokens, scaled ones past them
            same = np.allclose(got, _logits(plain_cfg, ours.params, tokens), atol=1e-5)
            assert same == (length <= 16)


def test_dynamic_ntk_decoding_matches_transformers_generate(tmp_path):
    """A cached step uses the frequencies of the sequence so far; the cached keys keep theirs."""
    hf = _hf_llama(ROPES["dynamic"])
    ours = load_hf(save_hf_model(hf, tmp_path / "hf"))
    prompt = random_tokens(1, 10, seed=1)[0]
    out = generate_tokens(
        ours.model, {"params": ours.params}, [prompt], max_new_tokens=20, key=jax.random.key(0),
        sampling=SamplingConfig(temperature=0),
    )  # fmt: skip
    assert out.tokens[0].tolist() == _hf_greedy(hf, prompt, 20)


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScaling("yarn", 4.0, original_max_seq_len=8, beta_fast=16.0, beta_slow=2.0),
        RopeScaling("dynamic", 2.0),
    ],
)
def test_rope_scaling_exports_to_transformers(scaling, tmp_path):
    cfg = ModelConfig(
        vocab_size=61, max_seq_len=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
        d_ff=64, mlp="swiglu", norm="rmsnorm", position="rope", use_bias=False,
        rope_scaling=scaling,
    )  # fmt: skip
    params = random_params(cfg, 0)
    out = export_hf(cfg, params, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())["rope_scaling"]
    assert written["rope_type"] == scaling.kind and written["factor"] == scaling.factor
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens = random_tokens(2, 40, vocab_size=61)
    np.testing.assert_allclose(
        _logits(cfg, params, tokens), _hf_logits(hf.eval(), tokens), atol=1e-4
    )
    assert load_hf(out).config.model.rope_scaling == scaling


def test_unsupported_yarn_variants_are_refused(tmp_path):
    hf = _hf_llama({**ROPES["yarn"], "attention_factor": 2.0})
    with pytest.raises(HFError, match="YaRN attention factor of 2.0"):
        load_hf(save_hf_model(hf, tmp_path / "hf"))
    cfg = ModelConfig(position="rope", mlp="swiglu", norm="rmsnorm", use_bias=False,
                      rope_scaling=RopeScaling("dynamic", 2.0, original_max_seq_len=8))  # fmt: skip
    with pytest.raises(HFError, match="dynamic NTK scales from max_position_embeddings"):
        export_hf(cfg, random_params(cfg, 0), tmp_path / "out", model_type="llama")


# ----------------------------------------------------------------------------- EOS lists


@pytest.fixture(scope="module")
def chat_like(tmp_path_factory):
    """A tiny Llama whose greedy continuation of `prompt`, and two ids that end it early."""
    tmp = tmp_path_factory.mktemp("eos")
    tokenizer_json = build_tokenizer_json(tmp / "tokenizer.json", "byte-level")
    vocab = BPETokenizer.from_file(tokenizer_json).vocab_size
    hf = make_hf_model("llama-gqa-llama3-untied", vocab_size=vocab, seed=4)
    prompt = random_tokens(1, 6, vocab_size=vocab, seed=2)[0]
    free = _hf_greedy(hf, prompt, 16)
    first = next(i for i in range(3, 16) if free[i] not in free[:i])  # ends the reply at i
    late = next(t for t in range(vocab) if t not in free)  # never produced
    return hf, tokenizer_json, prompt, free, [late, free[first]], first


@pytest.mark.parametrize("source", ["generation_config.json", "config.json"])
def test_generation_stops_on_the_eos_list_as_transformers_does(chat_like, source, tmp_path):
    hf, tokenizer_json, prompt, free, eos, first = chat_like
    if source == "generation_config.json":  # Llama-3-Instruct: one id in config.json
        hf.config.eos_token_id, hf.generation_config.eos_token_id = eos[0], eos
    else:
        hf.config.eos_token_id, hf.generation_config.eos_token_id = eos, eos
    directory = save_hf_model(hf, tmp_path / "hf", tokenizer_json=tokenizer_json)
    if source == "config.json":
        (directory / "generation_config.json").unlink()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    want = _hf_greedy(reloaded, prompt, 16)
    assert want == free[: first + 1]  # transformers stops at the second id of the list

    run = load_run(convert_from_hf(directory, tmp_path / "run"))
    assert run.eos_ids == tuple(eos)
    reply = generate(run, [prompt], temperature=0, max_new_tokens=16)[0]
    assert reply.tokens.tolist() == want and reply.finish_reason == "stop"
    ignoring = generate(run, [prompt], temperature=0, max_new_tokens=16, stop_at_eos=False)[0]
    assert ignoring.tokens.tolist() == free

    # Back to Hugging Face: the list goes with the model.
    out = convert_to_hf(tmp_path / "run", tmp_path / "back")
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == eos
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert _hf_greedy(back, prompt, 16) == want


def test_a_bad_eos_id_is_named(chat_like, tmp_path):
    hf, tokenizer_json, *_ = chat_like
    hf.generation_config.eos_token_id = [5, 10_000]
    directory = save_hf_model(hf, tmp_path / "hf", tokenizer_json=tokenizer_json)
    with pytest.raises(HFError, match=r"generation_config.json: eos_token_id=\[5, 10000\]"):
        load_hf(directory)


# ----------------------------------------------------------------------------- tokenizers


def _run_with(tokenizer, tiny_model, directory):
    cfg = Config(
        model=dataclasses.replace(tiny_model, vocab_size=tokenizer.vocab_size),
        data=DataConfig(tokenizer=tokenizer.kind),
    )
    directory.mkdir()
    save_config(cfg, directory / "config.json")
    tokenizer.save(directory)
    save_weights(RunDir(directory), 0, random_params(cfg.model, 0))
    return directory


def _random_text(rng, alphabet, n):
    return "".join(rng.choice(list(alphabet), n))


TEXT = "Hello world!\n  tabs\t<|eos|> naïve café, 東京 🙂 $1,234.5"


@pytest.mark.parametrize("kind", ["byte", "char"])
def test_byte_and_char_runs_round_trip_through_tokenizer_json(kind, tiny_model, tmp_path):
    tokenizer = ByteTokenizer() if kind == "byte" else CharTokenizer.from_text(TEXT)
    run = _run_with(tokenizer, tiny_model, tmp_path / "run")
    out = convert_to_hf(run, tmp_path / "hf")
    back = load_run(convert_from_hf(out, tmp_path / "back")).tokenizer
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = _random_text(rng, TEXT, int(rng.integers(0, 80)))
        # (transformers reads "<|eos|>" in text as the special token, as HF tokenizers do)
        assert not any(name in text for name in ("<|bos|>", "<|eos|>", "<|pad|>"))
        ids = tokenizer.encode(text)
        np.testing.assert_array_equal(back.encode(text), ids)
        assert fast(text, add_special_tokens=False)["input_ids"] == ids.tolist()
        assert fast.decode(ids.tolist(), clean_up_tokenization_spaces=False) == text
        assert back.decode(ids) == text
    if kind == "byte":  # any bytes, invalid UTF-8 included
        for _ in range(30):
            data = rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
            ids = tokenizer.encode_bytes(data)
            np.testing.assert_array_equal(back.encode_bytes(data), ids)
            assert back.decode_bytes(ids) == data
        assert (back.bos_id, back.eos_id, back.pad_id) == (256, 257, 258)


def test_a_char_alphabet_with_escaped_bytes_has_no_tokenizer_json(tiny_model, tmp_path, caplog):
    tokenizer = CharTokenizer.from_bytes(b"ab\xff")
    assert tokenizer.to_hf() is None
    out = convert_to_hf(_run_with(tokenizer, tiny_model, tmp_path / "run"), tmp_path / "hf")
    assert not (out / "tokenizer.json").exists() and "no Hugging Face form" in caplog.text


# ----------------------------------------------------------------------------- messages


def test_a_missing_directory_says_how_to_download_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["convert", "--from-hf", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Qwen/Qwen2.5-0.5B is not a directory here" in err
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir Qwen2.5-0.5B" in err
    assert not (tmp_path / "run").exists()


def test_streaming_token_id_prompts(tiny_model):
    cfg = dataclasses.replace(tiny_model, vocab_size=ByteTokenizer().vocab_size)
    model, params = build_model(cfg), random_params(cfg, 1)
    with pytest.raises(ValueError, match="stream=... receives text.*generate_tokens"):
        generate(model, [[1, 2, 3]], params=params, stream=lambda row, text: None)
    pieces = []
    out = generate(model, [[104, 105]], params=params, tokenizer=ByteTokenizer(),
                   max_new_tokens=6, stream=lambda row, text: pieces.append(text))  # fmt: skip
    assert "".join(pieces) == out[0].text
