"""Instruction data: loading, chat templates (llmjax's and HF Jinja, against transformers), loss
masks, truncation, packing (packed loss == unpacked loss through the model), the batch source
and the built-in tasks."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest
import tokenizers as hf_tokenizers

from llmjax.data import BPETokenizer, ByteTokenizer, CharTokenizer
from llmjax.data.instruct import (
    TASKS,
    ChatTemplateError,
    ConversationEncoder,
    HFChatTemplate,
    InstructBatches,
    InstructDataError,
    Message,
    SimpleTemplate,
    conversation,
    encode_all,
    exact_match,
    load_jsonl,
    make_rows,
    make_tasks,
    pack_plan,
    render,
    split_cells,
    write_jsonl,
)

# ---------------------------------------------------------------- loading

GOOD = {"prompt": "q", "response": "a"}


def test_load_both_shapes(tmp_path):
    path = tmp_path / "data.jsonl"
    multi = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    }
    lines = [json.dumps(GOOD), "", json.dumps({**GOOD, "system": "s"}), json.dumps(multi)]
    path.write_text("\n".join(lines) + "\n")
    convs = load_jsonl(path)
    assert convs[0] == (Message("user", "q"), Message("assistant", "a"))
    assert convs[1][0] == Message("system", "s")
    assert [m.role for m in convs[2]] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[2][-1].content == "ciao"


def _msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ("{not json", "not valid JSON"),
        ({"prompt": "q"}, "'response'"),
        ({"response": "a"}, "'prompt'"),
        ({"prompt": 5, "response": "a"}, "'prompt'"),
        ({"prompt": "q", "response": ""}, "'response'"),
        ({"foo": 1}, "'messages'"),
        ([1, 2], "JSON object"),
        (_msgs(("robot", "x"), ("assistant", "a")), "'messages[0].role'"),
        ({"messages": [{"content": "x"}, {"role": "assistant", "content": "a"}]}, "role'"),
        (_msgs(("user", 3), ("assistant", "a")), "'messages[0].content'"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, "content'"),
        (_msgs(("user", "q"), ("assistant", "")), "'messages[1].content'"),
        (_msgs(("user", "q"), ("user", "r")), "no assistant turn"),
        ({"messages": []}, "'messages'"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, record, field):
    path = tmp_path / "bad.jsonl"
    bad = record if isinstance(record, str) else json.dumps(record)
    path.write_text(json.dumps(GOOD) + "\n" + bad + "\n")
    with pytest.raises(InstructDataError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert f"{path}, line 2" in message and field in message, message
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- llmjax's template

CHAT = conversation(
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
)


def test_simple_template_round_trip():
    tok = ByteTokenizer()
    text = render(SimpleTemplate(), CHAT)
    assert text == (
        "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello<|user|>\nbye\n<|assistant|>\nciao"
    )
    encoded = ConversationEncoder(tok).encode(CHAT)
    assert tok.decode(encoded.ids) == text  # EOS ids are special: decode skips them
    assert (encoded.ids == tok.eos_id).sum() == 2
    # The trained tokens are exactly the replies, each followed by EOS.
    trained = encoded.ids[encoded.loss_mask == 1]
    assert trained.tolist() == [*b"hello", tok.eos_id, *b"ciao", tok.eos_id]
    assert SimpleTemplate().prompt(CHAT[:4]) == text[: text.rindex("ciao")]


def test_loss_mask_hand_checked():
    encoded = ConversationEncoder(ByteTokenizer()).encode(
        (Message("user", "hi"), Message("assistant", "yo"))
    )
    prompt = b"<|user|>\nhi\n<|assistant|>\n"
    assert encoded.ids.tolist() == [*prompt, *b"yo", 257]
    assert encoded.loss_mask.tolist() == [0] * len(prompt) + [1, 1, 1]
    every = ConversationEncoder(ByteTokenizer(), train_on="all").encode(CHAT)
    assert every.loss_mask.all()


def test_char_tokenizer_ends_replies_with_end_text():
    tok = CharTokenizer.from_text(SimpleTemplate.MARKUP + "hiyo")
    encoded = ConversationEncoder(tok).encode((Message("user", "hi"), Message("assistant", "yo")))
    assert tok.decode(encoded.ids[encoded.loss_mask == 1]) == "yo<|end|>"


# ---------------------------------------------------------------- HF templates

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
QWEN = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role in ['user', 'assistant'] %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- else %}
        {{- raise_exception('unexpected role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# tojson as transformers defines it: no HTML escaping, non-ASCII kept.
JSONISH = "{% for m in messages %}{{ m.role }}: {{ m.content | tojson }}\n{% endfor %}"
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A tiny byte-level BPE, saved by transformers with each template (the hf extra)."""
    PreTrainedTokenizerFast = pytest.importorskip("transformers").PreTrainedTokenizerFast  # noqa: N806

    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(["be brief hello hi bye ciao assistant user system"] * 20, trainer)
    made = {}
    for name, source in [("chatml", CHATML), ("llama3", LLAMA3), ("qwen", QWEN), ("json", JSONISH)]:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=hf,
            bos_token="<|begin_of_text|>",
            eos_token="<|im_end|>",
            chat_template=source,
        )
        directory = tmp_path_factory.mktemp(name)
        tok.save_pretrained(directory)
        made[name] = (tok, directory)
    return made


CONVERSATIONS = [
    CHAT,  # a system message and two turns
    CHAT[1:3],  # one turn, no system message
    conversation(
        [{"role": "user", "content": '<b>é</b> "q"'}, {"role": "assistant", "content": " x "}]
    ),
]


@pytest.mark.parametrize("name", ["chatml", "llama3", "qwen", "json"])
def test_hf_template_renders_as_transformers(hf_tokenizer, name):
    tok, directory = hf_tokenizer[name]
    template = HFChatTemplate.from_pretrained(directory)
    assert template.special_tokens["bos_token"] == "<|begin_of_text|>"
    bpe = BPETokenizer.from_file(directory / "tokenizer.json")
    encoder = ConversationEncoder(bpe, template)
    for conv in CONVERSATIONS:
        dicts = [m.as_dict() for m in conv]
        for prefix in range(1, len(conv) + 1):
            for gen in (False, True):
                want = tok.apply_chat_template(
                    dicts[:prefix], tokenize=False, add_generation_prompt=gen
                )
                assert template.render(conv[:prefix], gen) == want
        assert render(template, conv) == tok.apply_chat_template(dicts, tokenize=False)
        # Piece-wise encoding gives transformers' ids, special tokens included.
        want_ids = tok.apply_chat_template(dicts, tokenize=True, return_dict=False)
        assert encoder.encode(conv).ids.tolist() == list(want_ids)


def test_hf_loss_mask_is_the_replies(hf_tokenizer):
    tok, directory = hf_tokenizer["chatml"]
    bpe = BPETokenizer.from_file(directory / "tokenizer.json")
    encoded = ConversationEncoder(bpe, HFChatTemplate.from_pretrained(directory)).encode(CHAT)
    trained = encoded.ids[encoded.loss_mask == 1].tolist()
    # Reply and the end-of-turn text the template writes after it; headers are prompt.
    assert tok.decode(trained) == "hello<|im_end|>\nciao<|im_end|>\n"
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    first = int(np.flatnonzero(encoded.loss_mask)[0])
    assert encoded.ids[first - len(header) : first].tolist() == header


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",  # renders as '' in the sandbox: refused before use
        "{{ raise_exception.__globals__ }}",
        "{{ messages['__class__'] }}",
        "{{ (messages|attr('__class__')) }}",
    ],
)
def test_template_reaching_python_internals_is_refused(source):
    with pytest.raises(ChatTemplateError, match="underscore attribute"):
        HFChatTemplate(source)


def test_sandbox_refusal_and_render_errors_are_clear():
    with pytest.raises(ChatTemplateError, match="sandbox forbids"):
        HFChatTemplate("{{ messages.append(1) }}").render(CHAT)
    with pytest.raises(ChatTemplateError, match="TemplateError: no system please"):
        HFChatTemplate("{{ raise_exception('no system please') }}").render(CHAT)
    with pytest.raises(ChatTemplateError, match="does not parse"):
        HFChatTemplate("{% for m in messages %}")
    shifting = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m.content }}"
    shifting += "{% endfor %}"
    with pytest.raises(ChatTemplateError, match="differently"):
        HFChatTemplate(shifting).pieces(CHAT)


def test_template_from_tokenizer_config_json(tmp_path):
    config = {
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "x", "template": ""}],
        "eos_token": {"content": "<|im_end|>", "special": True},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = HFChatTemplate.from_pretrained(tmp_path / "tokenizer_config.json")
    assert template.source == CHATML and template.special_tokens == {"eos_token": "<|im_end|>"}
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        HFChatTemplate.from_pretrained(tmp_path)


# ---------------------------------------------------------------- truncation and packing

SEQ_LEN = 64


def _short_conversations(n, seed=0):
    rng = np.random.default_rng(seed)

    def word(lo, hi):
        return "".join(rng.choice(list("abcdefgh"), size=int(rng.integers(lo, hi))))

    return [
        (Message("user", word(1, 12)), Message("assistant", word(1, 8)))
        + ((Message("user", word(1, 4)), Message("assistant", word(1, 4))) if i % 3 == 0 else ())
        for i in range(n)
    ]


def test_truncation_is_counted():
    tok = ByteTokenizer()
    long_reply = (Message("user", "q"), Message("assistant", "r" * 200))
    long_prompt = (Message("user", "q" * 200), Message("assistant", "r"))
    convs = [CHAT[1:3]] * 3 + [long_reply, long_prompt]
    full = [len(ConversationEncoder(tok).encode(c)) for c in convs]
    encoded, stats = encode_all(convs, tok, SEQ_LEN)
    assert stats.truncated == 2 and stats.dropped_conversations == 1
    assert stats.dropped_tokens == full[3] - (SEQ_LEN + 1) + full[4]
    assert stats.conversations == len(encoded) == 4 and len(encoded[3]) == SEQ_LEN + 1
    assert stats.trained_tokens == sum(int(e.loss_mask[1:].sum()) for e in encoded)
    with pytest.raises(InstructDataError, match="no conversation"):
        encode_all([long_prompt], tok, SEQ_LEN)


def test_packing_rows():
    encoded, _ = encode_all(_short_conversations(20), ByteTokenizer(), SEQ_LEN)
    plan = pack_plan(encoded, SEQ_LEN)
    assert sorted(i for row in plan for i in row) == list(range(len(encoded)))
    assert max(len(row) for row in plan) > 1
    rows, stats = make_rows(encoded, SEQ_LEN, pad_id=258)
    _, unpacked_stats = make_rows(encoded, SEQ_LEN, packed=False)
    real = rows["segments"] > 0
    assert stats["real_token_share"] == pytest.approx(real.mean())
    assert stats["real_token_share"] > unpacked_stats["real_token_share"]
    assert stats["rows"] == len(plan) < unpacked_stats["rows"] == len(encoded)
    for r, members in enumerate(plan):
        segments = rows["segments"][r]
        assert (rows["inputs"][r][~real[r]] == 258).all() and not rows["mask"][r][~real[r]].any()
        start = 0
        for s, i in enumerate(members, start=1):
            e, end = encoded[i], start + len(encoded[i]) - 1
            assert (segments[start:end] == s).all()  # one conversation, one run of its id
            assert rows["positions"][r, start:end].tolist() == list(range(end - start))
            assert rows["inputs"][r, start:end].tolist() == e.ids[:-1].tolist()
            assert rows["targets"][r, start:end].tolist() == e.ids[1:].tolist()
            assert rows["mask"][r, start:end].tolist() == e.loss_mask[1:].tolist()
            start = end
        assert not segments[start:].any()


def test_packed_loss_equals_unpacked_loss():
    from llmjax.config import PRESETS
    from llmjax.models import build_model, init_model
    from llmjax.objectives import Forward, NextToken, batch_tokens

    tok = ByteTokenizer()
    encoded, _ = encode_all(_short_conversations(12, seed=1), tok, SEQ_LEN)
    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=tok.vocab_size, max_seq_len=SEQ_LEN
    )
    params, _ = init_model(cfg, jax.random.key(0))
    forward = Forward(build_model(cfg), params)
    objective = NextToken()

    def loss(rows):
        batch = {k: jax.numpy.asarray(v) for k, v in rows.items()}
        value, metrics = objective.loss(forward, batch, batch_tokens(batch))
        return float(value), float(metrics["nll_sum"]), float(metrics["tokens"])

    packed, _ = make_rows(encoded, SEQ_LEN, pad_id=tok.pad_id)
    unpacked, _ = make_rows(encoded, SEQ_LEN, packed=False, pad_id=tok.pad_id)
    assert packed["inputs"].shape[0] < unpacked["inputs"].shape[0]
    packed_loss, packed_sum, packed_tokens = loss(packed)
    # Each conversation alone in a row of its own (rows of a batch never interact); the mean
    # over all of them weights each conversation by its trained tokens.
    _, alone_sum, alone_tokens = loss(unpacked)
    assert packed_tokens == alone_tokens
    assert packed_loss == pytest.approx(alone_sum / alone_tokens, abs=1e-5)
    assert packed_sum == pytest.approx(alone_sum, rel=1e-5)
    # Without segments the packed conversations would see each other: the loss changes.
    leaky = {k: v for k, v in packed.items() if k not in ("segments", "positions")}
    assert abs(loss(leaky)[0] - packed_loss) > 1e-4


def test_batch_source_is_deterministic_for_seed_and_start():
    encoded, _ = encode_all(_short_conversations(15), ByteTokenizer(), SEQ_LEN)
    source = InstructBatches(encoded, batch_size=4, seq_len=SEQ_LEN, seed=3)
    it = source.batches(0)
    run = [next(it) for _ in range(8)]
    resumed = InstructBatches(encoded, batch_size=4, seq_len=SEQ_LEN, seed=3).batches(5)
    for want in run[5:]:
        got = next(resumed)
        assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    other = InstructBatches(encoded, batch_size=4, seq_len=SEQ_LEN, seed=4).batch(0)
    assert not (other["inputs"] == run[0]["inputs"]).all()
    # Each epoch holds every conversation once; a region's rows are the whole batch's rows.
    assert sorted(i for row in source.epoch_plan(1) for i in row) == list(range(len(encoded)))
    part = next(source.batches(6, (slice(1, 3), slice(0, SEQ_LEN))))
    assert all((part[k] == run[6][k][1:3]).all() for k in part)
    assert 0 < source.stats()["real_token_share"] <= 1


# ---------------------------------------------------------------- built-in tasks


def test_tasks_splits_and_answers(tmp_path):
    assert len(TASKS) >= 7 and all(len(t.phrasings) >= 3 for t in TASKS.values())
    train, phrasing, task = (set(split_cells(s)) for s in SPLITS_)
    assert not (train & phrasing) and not (train & task) and not (phrasing & task)
    assert {n for n, _ in task}.isdisjoint(n for n, _ in train)
    assert {n for n, _ in phrasing} == {n for n, _ in train}
    examples = make_tasks(7, 300)
    assert examples == make_tasks(7, 300) and examples != make_tasks(8, 300)
    assert {e.task for e in examples} == {n for n, _ in train}
    assert all((e.task, e.phrasing) in train for e in examples)
    assert all((e.task, e.phrasing) in task for e in make_tasks(0, 50, "heldout_task"))
    for e in examples:
        numbers = [int(x) for x in re.findall(r"\d+", e.prompt)]
        if e.task == "add":
            assert int(e.answer) == sum(numbers)
        elif e.task == "reverse":
            assert e.answer[::-1] in e.prompt
        elif e.task == "sort_numbers":
            assert e.answer == " ".join(map(str, sorted(numbers)))
    assert exact_match(" 12\n", "12") and not exact_match("13", "12")
    path = write_jsonl(examples[:5], tmp_path / "tasks.jsonl")
    assert load_jsonl(path) == [e.conversation() for e in examples[:5]]


SPLITS_ = ("train", "heldout_phrasing", "heldout_task")
