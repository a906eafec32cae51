"""Run directories from and to Hugging Face checkpoints, the CLI, exporting llmjax-born models,
and tokenizer ids against transformers."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import llmjax
from llmjax.cli import main
from llmjax.config import Config, ModelConfig, save_config
from llmjax.config.moe import MoEConfig
from llmjax.data import BPETokenizer, ByteTokenizer, load_tokenizer, prepare_data, val_batches
from llmjax.hf import HFError, convert_from_hf, convert_to_hf, export_hf
from llmjax.models import build_model
from llmjax.runs import Checkpointer, load_run
from llmjax.train.setup import create_state
from tests.hf_helpers import (
    TOKENIZER_TEXT,
    build_tokenizer_json,
    make_hf_model,
    random_params,
    random_tokens,
    save_hf_model,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.numpy()


def _llmjax_logits(cfg: ModelConfig, params, tokens) -> np.ndarray:
    model = build_model(cfg)
    return np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens))


def _load_hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def byte_level_json(tmp_path_factory):
    return build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json", "byte-level")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, byte_level_json):
    """(HF dir with tokenizer.json, transformers model) of a tiny GPT-2 over the tokenizer."""
    vocab = BPETokenizer.from_file(byte_level_json).vocab_size
    model = make_hf_model("gpt2", vocab_size=vocab)
    directory = tmp_path_factory.mktemp("gpt2")
    return save_hf_model(model, directory, tokenizer_json=byte_level_json), model


@pytest.fixture(scope="module")
def gpt2_run(gpt2, tmp_path_factory):
    return convert_from_hf(gpt2[0], tmp_path_factory.mktemp("runs") / "gpt2")


# ----------------------------------------------------------------------------- CLI


def test_cli_from_hf_writes_a_run_that_load_run_reads(gpt2, tmp_path, capsys):
    directory, hf = gpt2
    run = tmp_path / "runs" / "gpt2"
    assert main(["convert", "--from-hf", str(directory), "--out", str(run)]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(run)}
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.json",
        "llmjax-manifest.json",
        "tokenizer.json",
    ]
    loaded = load_run(run)
    assert loaded.step == 0 and loaded.config.model.max_seq_len == hf.config.n_positions
    wte = hf.transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(loaded.params["embed"]["embedding"]), wte)
    assert loaded.tokenizer == BPETokenizer.from_file(directory / "tokenizer.json")


def test_cli_sample_on_converted_run_matches_transformers_greedy(gpt2, gpt2_run, capsys):
    _, hf = gpt2
    tokenizer = load_tokenizer(gpt2_run)
    prompt = tokenizer.encode("The quick brown")
    with torch.no_grad():
        ids = hf.generate(
            torch.as_tensor(prompt[None].astype(np.int64)),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        )[0].numpy()
    argv = ["sample", "--run", str(gpt2_run), "--prompt", "The quick brown"]
    assert main([*argv, "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(ids) + "\n"


def test_cli_eval_on_converted_run_matches_transformers_loss(
    gpt2, gpt2_run, tiny_text_file, capsys
):
    _, hf = gpt2
    argv = ["eval", "--run", str(gpt2_run), "--data", str(tiny_text_file), "--batches", "1"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    cfg = load_run(gpt2_run).config
    data = prepare_data(tiny_text_file, load_tokenizer(gpt2_run), val_fraction=0.1)
    batch = next(val_batches(data.val, batch_size=cfg.data.batch_size, seq_len=cfg.seq_len))
    log_probs = torch.log_softmax(torch.as_tensor(_hf_logits(hf, batch["inputs"])), -1).numpy()
    nll = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
    want = (nll * batch["mask"]).sum() / batch["mask"].sum()
    assert abs(result["loss"] - want) < 1e-4


def test_cli_fine_tunes_a_converted_run(gpt2_run, tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TOKENIZER_TEXT * 20)
    out = tmp_path / "ft"
    argv = ["train", "--init-from", str(gpt2_run), "--data", str(corpus), "--steps", "2"]
    argv += [
        "--set",
        "optim.lr=1e-9",
        "--set",
        "optim.warmup_steps=0",
        "--set",
        "data.batch_size=2",
    ]
    argv += ["--set", "train.eval_every=2", "--set", "train.eval_batches=1"]
    argv += ["--set", "train.mfu=false", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 2
    tuned, base = load_run(out), load_run(gpt2_run)
    assert tuned.step == 2 and tuned.tokenizer == base.tokenizer
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), tuned.params, base.params
    )


def test_cli_to_hf_round_trip_with_tokenizer(gpt2, gpt2_run, tmp_path, capsys):
    _, hf = gpt2
    out = tmp_path / "gpt2-hf"
    assert main(["convert", "--to-hf", str(gpt2_run), "--out", str(out)]) == 0
    back = _load_hf(out)
    tokens = random_tokens(2, 16, vocab_size=hf.config.vocab_size)
    np.testing.assert_allclose(_hf_logits(back, tokens), _hf_logits(hf, tokens), atol=1e-6)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(gpt2_run)
    text = TOKENIZER_TEXT[:300]
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ours.encode(text).tolist()


@pytest.mark.parametrize("direction", ["--from-hf", "--to-hf"])
@pytest.mark.parametrize("empty", [True, False])
def test_cli_refuses_existing_out(gpt2, gpt2_run, tmp_path, capsys, direction, empty):
    out = tmp_path / "exists"
    out.mkdir()
    if not empty:
        (out / "keep.txt").write_text("mine")
    source = gpt2[0] if direction == "--from-hf" else gpt2_run
    assert main(["convert", direction, str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "llmjax convert: error:" in err and "already exists" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ([] if empty else ["keep.txt"])
    assert empty or (out / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- run dirs


@pytest.fixture(scope="module")
def metaspace_json(tmp_path_factory):
    return build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json", "metaspace")


def test_llama_run_round_trip(metaspace_json, tmp_path):
    vocab = BPETokenizer.from_file(metaspace_json).vocab_size
    hf = make_hf_model("llama-gqa-llama3-untied", vocab_size=vocab)
    directory = save_hf_model(hf, tmp_path / "llama", tokenizer_json=metaspace_json)
    run = convert_from_hf(directory, tmp_path / "run")
    loaded = load_run(run)
    tokens = random_tokens(2, 16, vocab_size=vocab)
    want = _hf_logits(hf, tokens)
    ours = _llmjax_logits(loaded.config.model, loaded.params, tokens)
    assert np.abs(ours - want).max() < 1e-4
    back = _load_hf(convert_to_hf(run, tmp_path / "back"))
    np.testing.assert_allclose(_hf_logits(back, tokens), want, atol=1e-6)
    # A text prompt starts with the BOS that the tokenizer's post-processor adds, as in HF.
    import tokenizers

    prompt = tokenizers.Tokenizer.from_file(str(metaspace_json)).encode("The quick brown").ids
    assert prompt[0] == loaded.tokenizer.bos_id
    assert loaded.tokenizer.prompt_prefix.tolist() == [loaded.tokenizer.bos_id]
    with torch.no_grad():
        logits = hf(torch.as_tensor([prompt])).logits[0, -1].double()
    want_log_probs = torch.log_softmax(logits, -1).numpy()
    out = llmjax.generate(loaded, "The quick brown", max_new_tokens=1, temperature=0.0)
    assert out.tokens[0] == want_log_probs.argmax()
    np.testing.assert_allclose(out.log_probs[0], want_log_probs.max(), atol=1e-4)


def test_byte_level_tokenizers_add_nothing_before_a_prompt(byte_level_json):
    assert BPETokenizer.from_file(byte_level_json).prompt_prefix.tolist() == []
    assert BPETokenizer.train("some text to learn from", 300).prompt_prefix.tolist() == []
    assert ByteTokenizer().prompt_prefix.tolist() == []


def test_missing_tokenizer_needs_tokenizer_option(gpt2, byte_level_json, tmp_path):
    directory = save_hf_model(gpt2[1], tmp_path / "no-tokenizer")
    with pytest.raises(HFError, match="--tokenizer"):
        convert_from_hf(directory, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run = convert_from_hf(directory, tmp_path / "run", tokenizer=byte_level_json)
    assert load_tokenizer(run) == BPETokenizer.from_file(byte_level_json)


def test_load_run_still_reads_a_trained_run(tmp_path, tiny_model):
    """load_run restores only step, params and model state, also from a full TrainState."""
    cfg = Config(model=dataclasses.replace(tiny_model, vocab_size=ByteTokenizer().vocab_size))
    _, _, state = create_state(cfg)
    save_config(cfg, tmp_path / "config.json")
    ByteTokenizer().save(tmp_path)
    with Checkpointer(tmp_path / "checkpoints", async_save=False) as ckpt:
        ckpt.save(7, state.replace(step=state.step + 7))
    loaded = load_run(tmp_path)
    assert loaded.step == 7
    jax.tree.map(np.testing.assert_array_equal, loaded.params, state.params)


# ----------------------------------------------------------------------------- export


def test_export_llmjax_gpt2_shape_adds_zero_biases_and_drops_vocab_padding(tmp_path):
    cfg = ModelConfig(
        vocab_size=61,
        vocab_multiple=16,
        max_seq_len=32,
        d_model=32,
        n_layers=2,
        n_heads=4,
        use_bias=False,
    )
    params = random_params(cfg, 0)
    out = export_hf(cfg, params, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    tokens = random_tokens(2, 16, vocab_size=61)
    ours = _llmjax_logits(cfg, params, tokens)
    assert ours.shape[-1] == 64 and np.all(ours[..., 61:] < -1e8)
    assert np.abs(_hf_logits(_load_hf(out), tokens) - ours[..., :61]).max() < 1e-4


@pytest.fixture(scope="module")
def llama_like():
    """An llmjax-born Llama-shaped model in the loop layout, and its logits on a batch."""
    cfg = ModelConfig(
        vocab_size=64,
        max_seq_len=32,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        mlp="swiglu",
        norm="rmsnorm",
        position="rope",
        use_bias=False,
        tie_embeddings=False,
        scan_layers=False,
    )
    params = random_params(cfg, 1)
    tokens = random_tokens(2, 16, vocab_size=64)
    return cfg, params, tokens, _llmjax_logits(cfg, params, tokens)


@pytest.mark.parametrize("model_type", [None, "mistral", "qwen2"])
def test_export_llmjax_llama_shape(llama_like, tmp_path, model_type):
    """As llama (chosen), mistral (same weights) or qwen2 (zero q/k/v biases)."""
    cfg, params, tokens, ours = llama_like
    out = export_hf(cfg, params, tmp_path / "out", model_type=model_type)
    assert json.loads((out / "config.json").read_text())["model_type"] == (model_type or "llama")
    assert np.abs(_hf_logits(_load_hf(out), tokens) - ours).max() < 1e-4


def test_export_refuses_a_model_no_family_holds(tmp_path, tiny_model):
    cfg = dataclasses.replace(tiny_model, position="alibi")
    with pytest.raises(HFError, match="gpt2: GPT-2 needs model.position='learned'"):
        export_hf(cfg, {}, tmp_path / "out")
    with pytest.raises(HFError, match="cannot export this model as 'llama'"):
        export_hf(cfg, {}, tmp_path / "out", model_type="llama")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def moe_like(llama_like):
    """An llmjax-born mixture of experts, Llama-shaped otherwise, experts narrower than d_ff."""
    base = dataclasses.replace(llama_like[0], scan_layers=True)
    cfg = dataclasses.replace(base, moe=MoEConfig(n_experts=4, top_k=2, d_expert=32))
    params = random_params(cfg, 2)
    tokens = random_tokens(2, 16, vocab_size=64)
    return cfg, params, tokens, _llmjax_logits(cfg, params, tokens)


@pytest.mark.parametrize("model_type", [None, "qwen3_moe"])
def test_export_llmjax_moe(moe_like, tmp_path, model_type):
    """As mixtral (chosen: its experts' width becomes intermediate_size) or qwen3_moe (the
    expert width is moe_intermediate_size; QK-norm needs the model to have it, so it is on)."""
    cfg, params, tokens, ours = moe_like
    if model_type == "qwen3_moe":
        cfg = dataclasses.replace(cfg, qk_norm=True)
        params = random_params(cfg, 2)
        ours = _llmjax_logits(cfg, params, tokens)
    out = export_hf(cfg, params, tmp_path / "out", model_type=model_type)
    assert json.loads((out / "config.json").read_text())["model_type"] == (model_type or "mixtral")
    assert np.abs(_hf_logits(_load_hf(out), tokens) - ours).max() < 1e-4


def test_export_llmjax_moe_with_a_gated_shared_expert(moe_like, tmp_path):
    """Shared experts with a sigmoid gate: only Qwen2-MoE holds them, so it is chosen; the
    Llama-shaped model has no q/k/v biases, and the export says qkv_bias false."""
    cfg, _, tokens, _ = moe_like
    moe = dataclasses.replace(cfg.moe, n_shared_experts=1, d_shared=48, shared_gate=True)
    cfg = dataclasses.replace(cfg, moe=moe)
    params = random_params(cfg, 2)
    out = export_hf(cfg, params, tmp_path / "out")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "qwen2_moe" and hf_config["qkv_bias"] is False
    assert hf_config["shared_expert_intermediate_size"] == 48
    ours = _llmjax_logits(cfg, params, tokens)
    assert np.abs(_hf_logits(_load_hf(out), tokens) - ours).max() < 1e-4
    ungated = dataclasses.replace(cfg, moe=dataclasses.replace(moe, shared_gate=False))
    with pytest.raises(HFError, match="Qwen2Moe has one sigmoid-gated shared expert"):
        export_hf(ungated, {}, tmp_path / "out2", model_type="qwen2_moe")


def test_moe_export_refusals(moe_like, llama_like, tmp_path):
    cfg = moe_like[0]
    with pytest.raises(HFError, match="Mixtral is a mixture of experts, this model has dense"):
        export_hf(llama_like[0], {}, tmp_path / "out", model_type="mixtral")
    with pytest.raises(HFError, match="Llama has dense MLPs only"):
        export_hf(cfg, {}, tmp_path / "out", model_type="llama")
    shared = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, n_shared_experts=1))
    with pytest.raises(HFError, match="Mixtral has no shared experts"):
        export_hf(shared, {}, tmp_path / "out", model_type="mixtral")
    sigmoid = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, router="sigmoid"))
    with pytest.raises(HFError, match="routes with a softmax.*'sigmoid'"):
        export_hf(sigmoid, {}, tmp_path / "out")
    mixed = dataclasses.replace(cfg, scan_layers=False, moe=dataclasses.replace(cfg.moe, every=2))
    with pytest.raises(HFError, match="every layer MoE"):
        export_hf(mixed, {}, tmp_path / "out", model_type="mixtral")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- tokenizers

TEXTS = [
    TOKENIZER_TEXT,
    "  leading spaces, trailing spaces  ",
    "new\nlines\n\n\tand tabs",
    "unseen: Ωμέγα ß 漢字 🚀🚀 ￼",
    "",
]


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_tokenizer_ids_match_transformers(kind, tmp_path):
    path = build_tokenizer_json(tmp_path / "tokenizer.json", kind)
    config = '{"tokenizer_class": "PreTrainedTokenizerFast"}'
    (tmp_path / "tokenizer_config.json").write_text(config)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer(path)
    assert isinstance(ours, BPETokenizer)
    for text in TEXTS:
        ids = ours.encode(text).tolist()
        assert ids == hf(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
