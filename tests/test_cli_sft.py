"""`llmjax sft` and `llmjax chat`: fine-tuning a tiny run on conversations, resuming it exactly,
chatting from stdin until the end of reply, trimming a full context, recording templates, and
each bad input as one line with exit status 2."""

from __future__ import annotations

import io
import json
import shutil

import jax
import numpy as np
import pytest
import tokenizers as hf_tokenizers

from llmjax.cli import main
from llmjax.cli.chat import interactive, scripted
from llmjax.config import apply_overrides, get_preset, load_config, save_config
from llmjax.data import BPETokenizer, ByteTokenizer, CharTokenizer
from llmjax.data.instruct import (
    ConversationEncoder,
    HFChatTemplate,
    Message,
    SimpleTemplate,
    conversation,
)
from llmjax.decode.chat import ChatSession, reply_end
from llmjax.finetune import SFTConfig, fit_sft, open_sft, read_record, sft_config
from llmjax.runs import load_run
from llmjax.runs.chat_template import choose_template, run_template, save_template

CONTEXT = 96  # the tiny model's max_seq_len: room for a short conversation in bytes
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Steps of the fine-tuning runs: the tiny model learns to answer "ok" and stop in about 20.
SFT_SET = [
    "--set",
    "optim.lr=1e-2",
    "--set",
    "optim.warmup_steps=0",
    "--set",
    "train.mfu=false",
    "--set",
    "train.eval_batches=1",
]


def _records() -> list[dict]:
    """Short conversations whose every reply is "ok" (both record shapes)."""
    records = [{"prompt": f"hi {i}", "response": "ok"} for i in range(14)]
    records.append({"system": "be brief", "prompt": "hello", "response": "ok"})
    turns = [("user", "hi"), ("assistant", "ok"), ("user", "again"), ("assistant", "ok")]
    records.append({"messages": [{"role": r, "content": c} for r, c in turns]})
    return records


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, word_corpus):
    """(a tiny pretrained run, a JSONL of conversations)."""
    from llmjax import fit

    tmp = tmp_path_factory.mktemp("sft")
    cfg = apply_overrides(
        get_preset("test-tiny"),
        [
            f"data.path={word_corpus}",
            f"model.max_seq_len={CONTEXT}",
            "train.steps=2",
            "train.eval_every=2",
            "train.eval_batches=1",
            "train.mfu=false",
        ],
    )
    fit(cfg, tmp / "base", progress=False)
    return tmp / "base", _write_jsonl(tmp / "chat.jsonl", _records())


def _sft(base, data, out, *extra):
    argv = ["sft", "--init-from", base, "--data", data, "--out", out, "--no-progress", *SFT_SET]
    return main([str(a) for a in [*argv, *extra]])


@pytest.fixture(scope="module")
def sft_run(files, tmp_path_factory):
    """A run fine-tuned 24 steps on the conversations, and what the command printed."""
    base, data = files
    out = tmp_path_factory.mktemp("runs") / "chat"
    capture = pytest.MonkeyPatch()
    stdout = io.StringIO()
    capture.setattr("sys.stdout", stdout)
    try:
        assert _sft(base, data, out, "--steps", 24, "--set", "train.eval_every=24") == 0
    finally:
        capture.undo()
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_sft_fine_tunes_and_records_its_template_and_data(sft_run, files):
    out, summary = sft_run
    assert summary["steps"] == 24 and summary["template"] == "SimpleTemplate"
    train, val = summary["data"]["train"], summary["data"]["val"]
    assert train["conversations"] + val["conversations"] == len(_records())
    assert val["conversations"] == 2  # round(16 * 0.1)
    assert train["truncated"] == train["dropped_conversations"] == 0
    assert 0 < train["real_token_share"] <= 1 and train["rows"] < train["conversations"]
    assert summary["loss"] < 2.0 and summary["examples"] == 2  # from 5.5 before fine-tuning
    cfg = load_config(out / "config.json")
    assert cfg.train.objective == "sft" and cfg.train.init_from == str(files[0].absolute())
    assert json.loads((out / "chat_template.json").read_text()) == {"template": "simple"}
    recorded, fingerprints = read_record(out)
    assert recorded == SFTConfig(data=files[1]).absolute() and set(fingerprints) == {"data"}


def test_chat_from_stdin_replies_and_stops_at_the_end_of_reply(sft_run, monkeypatch, capsys):
    out, _ = sft_run
    monkeypatch.setattr("sys.stdin", io.StringIO("hi 3\n\nhello there\n"))
    assert main(["chat", "--run", str(out), "--temperature", "0", "--json"]) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in replies] == ["hi 3", "hello there"]  # one reply per prompt
    for r in replies:
        # Stopped at the EOS id the template puts after each reply, which is not in the text.
        assert r == {**r, "reply": "ok", "finish_reason": "stop", "tokens": 3}
    monkeypatch.setattr("sys.stdin", io.StringIO("hi 3\n"))
    assert main(["chat", "--run", str(out), "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_chat_keeps_the_history_and_drops_the_oldest_turns_when_full(sft_run):
    out, _ = sft_run
    session = ChatSession(load_run(out), SimpleTemplate(), temperature=0.0, max_new_tokens=40)
    lines = iter(["/help", "hi 1", "hi 2", "/nope", "/reset", "hi 3", "/exit", "never read"])
    shown, err = io.StringIO(), io.StringIO()
    assert interactive(session, read=lambda prompt: next(lines), out=shown, err=err) == 0
    assert shown.getvalue() == "ok\nok\nok\n"
    notes = err.getvalue()
    assert "/reset" in notes and "unknown command /nope" in notes and "new conversation" in notes
    # Two exchanges and a 40-token reply budget overflow the 96-token context: one was dropped.
    assert "dropped the oldest 1 exchange" in notes
    assert session.history == [Message("user", "hi 3"), Message("assistant", "ok")]
    # Multi-turn from stdin keeps the conversation; each prompt starts anew without it.
    shown, err = io.StringIO(), io.StringIO()
    scripted(session, ["hi 1\n", "hi 2\n"], multi_turn=True, out=shown, err=err)
    assert shown.getvalue() == "ok\nok\n" and len(session.history) == 2
    assert "dropped the oldest" in err.getvalue()
    scripted(session, ["hi 1\n", "hi 2\n"], out=io.StringIO(), err=err)
    assert len(session.history) == 2


def test_resume_is_exact(files, tmp_path):
    base, data = files
    argv = ["--steps", 4, "--set", "train.checkpoint_every=2", "--set", "train.eval_every=4"]
    assert _sft(base, data, tmp_path / "whole", *argv) == 0
    # The same run stopped after step 2 (as a preemption would), then resumed from the CLI.
    overrides = [a for a in [*SFT_SET, "--set", "train.checkpoint_every=2"] if a != "--set"]
    overrides += ["train.steps=4", "train.eval_every=4"]
    cfg = sft_config(init_from=base, overrides=overrides)
    data_ = open_sft(cfg, SFTConfig(data=data))
    fit_sft(cfg, tmp_path / "parts", data_, stop_after=2, progress=False)
    assert load_run(tmp_path / "parts").step == 2
    assert main(["sft", "--resume", "--out", str(tmp_path / "parts"), "--no-progress"]) == 0
    whole, parts = load_run(tmp_path / "whole"), load_run(tmp_path / "parts")
    assert whole.step == parts.step == 4
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(parts.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- templates


def test_earlier_replies_end_with_the_end_of_reply_id_in_the_prompt():
    tokenizer = ByteTokenizer()
    encoder = ConversationEncoder(tokenizer, SimpleTemplate())
    history = (Message("user", "hi"), Message("assistant", "ok"), Message("user", "again"))
    ids = encoder.prompt_ids(history)
    trained = encoder.encode(history[:2]).ids
    assert ids[: len(trained)].tolist() == trained.tolist()  # as training saw it
    assert trained[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids[len(trained) :]) == "<|user|>\nagain\n<|assistant|>\n"


def test_reply_end_per_template_and_tokenizer():
    # No EOS id (char): the simple template ends a reply with the text <|end|>.
    char = CharTokenizer.from_bytes(SimpleTemplate.MARKUP.encode() + b"abc")
    stop_ids, texts = reply_end(SimpleTemplate(), ConversationEncoder(char, SimpleTemplate()))
    assert stop_ids == [] and texts[0] == "<|end|>" and "<|user|>" in texts
    stop_ids, texts = reply_end(SimpleTemplate(), ConversationEncoder(ByteTokenizer()))
    assert stop_ids == [] and "<|end|>" not in texts  # EOS stops it (generate adds that id)
    # A Hugging Face template ends a reply with its end-of-turn token: its id stops the reply.
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(["hi ok user assistant"] * 10, trainer)
    bpe = BPETokenizer(hf)
    template = HFChatTemplate(CHATML)
    stop_ids, texts = reply_end(template, ConversationEncoder(bpe, template))
    assert stop_ids == [hf.token_to_id("<|im_end|>")] and texts == ["<|im_end|>"]


def test_templates_round_trip_through_a_run_directory(tmp_path):
    assert run_template(tmp_path) is None
    save_template(tmp_path, SimpleTemplate())
    assert run_template(tmp_path) == SimpleTemplate()
    template = HFChatTemplate(CHATML, {"eos_token": "<|im_end|>"})
    save_template(tmp_path, template)
    assert (tmp_path / "chat_template.jinja").read_text() == CHATML
    assert run_template(tmp_path) == template
    jinja = tmp_path / "mine.jinja"
    jinja.write_text(CHATML)
    assert choose_template(str(jinja), tmp_path).source == CHATML
    assert choose_template("hf", tmp_path).source == CHATML


def test_a_run_with_a_hugging_face_template_fine_tunes_with_it(files, tmp_path):
    """The default template of a run with a tokenizer_config.json chat template (as a
    converted chat model has) is that template; the new run records it for chat."""
    base, data = files
    source = shutil.copytree(base, tmp_path / "hf-like")
    config = {"chat_template": CHATML, "eos_token": "<|im_end|>"}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = sft_config(init_from=source)
    sft = open_sft(cfg, SFTConfig(data=data))
    assert isinstance(sft.template, HFChatTemplate) and sft.template.source == CHATML
    assert sft.run_files()["chat_template.jinja"] == CHATML
    simple = open_sft(cfg, SFTConfig(data=data), template="simple")
    assert isinstance(simple.template, SimpleTemplate)


def test_convert_keeps_a_hugging_face_chat_template(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmjax.hf import convert_from_hf
    from tests.hf_helpers import build_tokenizer_json, make_hf_model, save_hf_model

    tok = build_tokenizer_json(tmp_path / "tokenizer.json", "byte-level")
    model = make_hf_model("gpt2", vocab_size=BPETokenizer.from_file(tok).vocab_size)
    hf_dir = save_hf_model(model, tmp_path / "hf", tokenizer_json=tok)
    config = {"chat_template": CHATML, "eos_token": "<|endoftext|>"}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    run = convert_from_hf(hf_dir, tmp_path / "run")
    assert json.loads((run / "chat_template.json").read_text())["template"] == "hf"
    assert run_template(run) == HFChatTemplate(CHATML, {"eos_token": "<|endoftext|>"})


def test_export_writes_the_runs_chat_template_for_transformers(tmp_path):
    """convert --to-hf puts the run's template into tokenizer_config.json: transformers'
    apply_chat_template then renders the text llmjax trained on (simple template), or the
    HF template the run was converted with."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llmjax.hf import convert_from_hf, convert_to_hf
    from tests.hf_helpers import build_tokenizer_json, make_hf_model, save_hf_model

    tok = build_tokenizer_json(tmp_path / "tokenizer.json", "byte-level")
    model = make_hf_model("gpt2", vocab_size=BPETokenizer.from_file(tok).vocab_size)
    hf_dir = save_hf_model(model, tmp_path / "hf", tokenizer_json=tok)
    config = {"chat_template": CHATML, "eos_token": "<|endoftext|>"}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    run = convert_from_hf(hf_dir, tmp_path / "run")
    convert_to_hf(run, tmp_path / "out-hf")
    written = json.loads((tmp_path / "out-hf" / "tokenizer_config.json").read_text())
    assert written["chat_template"] == CHATML

    save_template(run, SimpleTemplate())
    convert_to_hf(run, tmp_path / "out-simple")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out-simple")
    bpe = BPETokenizer.from_file(run / "tokenizer.json")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    conv = conversation(messages)
    # The same text, EOS token included (llmjax encodes it piece by piece, at reply
    # boundaries, so a BPE may merge differently across them than one pass over the text).
    ours = ConversationEncoder(bpe, SimpleTemplate()).encode(conv[:3]).ids
    theirs = hf_tok.apply_chat_template(messages[:3], tokenize=False)
    assert theirs == bpe.decode(ours) + "<|endoftext|>" or theirs == bpe.hf.decode(
        ours.tolist(), skip_special_tokens=False
    )
    assert theirs.endswith("ok<|endoftext|>")
    prompt = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|system|>\nbe brief\n<|user|>\nhi there\n<|assistant|>\nok<|endoftext|>"
        "<|user|>\nagain\n<|assistant|>\n"
    )


# ----------------------------------------------------------------------------- bad input


def _fails(argv, capsys, *names):
    """Exit status 2, one line naming each of `names`, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"llmjax {argv[0]}: error: "), message
    for name in names:
        assert str(name) in message, message
    return message


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (['{"prompt": "q", "response": "a"}', '{"prompt": "q"}'], ["line 2", "'response'"]),
        (['{"prompt": "q", "response": "a"}', "", "{nope"], ["line 3", "not valid JSON"]),
        (['{"messages": [{"role": "bot", "content": "x"}]}'], ["line 1", "messages[0].role"]),
    ],
)
def test_bad_jsonl_names_file_line_and_field(lines, words, files, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    argv = ["sft", "--init-from", files[0], "--data", data, "--out", tmp_path / "r"]
    _fails(argv, capsys, data, *words)
    assert not (tmp_path / "r").exists()


def test_a_template_that_fails_to_render_shows_its_error(files, tmp_path, capsys):
    base, data = files
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ raise_exception('this template takes no user turns') }}")
    argv = ["sft", "--init-from", base, "--data", data, "--out", tmp_path / "r"]
    _fails(
        [*argv, "--template", broken],
        capsys,
        "this template takes no user turns",
        data,
        "conversation 1 (",  # which record failed
    )
    (tmp_path / "syntax.jinja").write_text("{% for m in messages %}")
    _fails([*argv, "--template", tmp_path / "syntax.jinja"], capsys, "does not parse")
    chat = ["chat", "--run", base, "--template", broken]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    try:
        _fails(chat, capsys, "this template takes no user turns")
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sft", "--init-from", "{base}", "--data", "{tmp}/no.jsonl", "--out", "{tmp}/r"],
         ["--data", "{tmp}/no.jsonl", "does not exist"]),
        (["sft", "--init-from", "{base}", "--data", "{tmp}", "--out", "{tmp}/r"],
         ["is a directory"]),
        (["sft", "--data", "builtin", "--out", "{tmp}/r"], ["--init-from RUN"]),
        (["sft", "--init-from", "{tmp}/none", "--data", "builtin", "--out", "{tmp}/r"],
         ["{tmp}/none", "does not exist"]),
        (["sft", "--init-from", "{base}", "--out", "{tmp}/r"], ["--data FILE", "builtin"]),
        (["sft", "--init-from", "{base}", "--data", "builtin"], ["--out DIR"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--template", "{tmp}/none.jinja"], ["--template", "no such file"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--template", "hf"], ["--template hf", "no Hugging Face chat template"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--lora-rank", "0"], ["--lora-rank must be >= 1"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--lora-alpha", "8"], ["--lora-alpha needs --lora-rank"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--lora-rank", "4", "--lora-targets", "q_proj"],
         ["matches no weight", "blocks/attention/query_kernel", "blocks/mlp/fc_in/kernel"]),
        (["sft", "--init-from", "{base}", "--data", "builtin", "--out", "{tmp}/r",
          "--lora-rank", "512"], ["model.lora.rank=512 is larger", "rank <= 32"]),
        (["chat", "--run", "{base}"], ["records no chat template", "--template", "simple"]),
        (["chat", "--run", "{tmp}/none"], ["does not exist"]),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(argv, words, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    fill = {"{base}": str(files[0]), "{tmp}": str(tmp_path)}

    def filled(text):
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    _fails([filled(a) for a in argv], capsys, *map(filled, words))


def test_resume_refuses_changed_data_and_new_data_options(sft_run, tmp_path, capsys):
    out, _ = sft_run
    copy = shutil.copytree(out, tmp_path / "copy")
    _fails(["sft", "--resume", "--out", copy, "--data", "x.jsonl"], capsys, "drop --data")
    _fails(["sft", "--resume", "--out", copy, "--no-packing"], capsys, "drop --no-packing")
    changed = _write_jsonl(tmp_path / "changed.jsonl", _records()[:-1])
    record = json.loads((copy / "sft.json").read_text())
    record["sft"]["data"] = changed  # the file it names now holds other conversations
    (copy / "sft.json").write_text(json.dumps(record))
    _fails(["sft", "--resume", "--out", copy], capsys, changed, "changed since")
    plain = tmp_path / "plain"  # a run directory `llmjax sft` did not start
    plain.mkdir()
    save_config(get_preset("test-tiny"), plain / "config.json")
    _fails(["sft", "--resume", "--out", plain], capsys, "no sft.json", "llmjax train --resume")


def test_sft_with_lora_trains_adapters_saved_alone_and_chats(files, tmp_path, monkeypatch, capsys):
    from llmjax.models.lora import split_adapters
    from llmjax.runs.shapes import _saved_param_shapes

    base, data = files
    out = tmp_path / "lora"
    assert (
        _sft(base, data, out, "--steps", 4, "--lora-rank", 4, "--lora-targets", "query|value") == 0
    )
    cfg = load_config(out / "config.json")
    assert cfg.model.lora.rank == 4 and cfg.model.lora.targets == "query|value"
    _, saved = _saved_param_shapes(out / "checkpoints")
    assert saved and all("lora_" in name for name in saved)  # the base weights are not copied
    loaded, source = load_run(out), load_run(base)
    tuned_base, adapters = split_adapters(loaded.params)
    for x, y in zip(jax.tree.leaves(source.params), jax.tree.leaves(tuned_base), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(adapters))
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("hi 3\n"))
    assert main(["chat", "--run", str(out), "--temperature", "0", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()  # four tokens of a barely tuned model: a reply, cut
    assert captured.out.endswith("\n") and "reply cut at 4 tokens" in captured.err
