"""Few-shot prompts and the answer evaluator: task instances in every phrasing, plain and chat
few-shot prompts (as fine-tuning encodes them), demonstration pages, and batched greedy answers
equal to a recomputing greedy loop, cut at stop ids and texts, scored by exact match."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.data import ByteTokenizer, CharTokenizer
from llmjax.data.instruct import (
    LAYOUTS,
    TASKS,
    ChatFormat,
    ConversationEncoder,
    Message,
    SimpleTemplate,
    TextFormat,
    TextLayout,
    demonstration_pages,
    few_shot_ids,
    make_instances,
)
from llmjax.decode.naive import sample_naive
from llmjax.decode.steps import plan_cache
from llmjax.eval import answer_prompts, score_answers
from llmjax.models import build_model
from tests.decode_utils import random_params

TOK = ByteTokenizer()


def _qa(q, a=None):
    return (Message("user", q),) + (() if a is None else (Message("assistant", a),))


# ---------------------------------------------------------------- task instances


def test_instances_are_distinct_excluded_and_phrased_alike():
    tasks = ["add", "reverse", "lookup"]
    first = make_instances(3, 20, tasks)
    assert first == make_instances(3, 20, tasks) and first != make_instances(4, 20, tasks)
    assert [x.task for x in first] == [t for t in tasks for _ in range(20)]
    assert len({x.key for x in first}) == 60
    keys = {x.key for x in first}
    assert not keys & {x.key for x in make_instances(3, 20, tasks, exclude=keys)}
    x = first[0]
    worded = [x.phrased(p) for p in range(len(TASKS["add"].phrasings))]
    assert len({e.prompt for e in worded}) == len(worded) and {e.answer for e in worded} == {
        x.answer
    }
    a, b = dict(x.fields)["a"], dict(x.fields)["b"]
    assert worded[0].prompt == f"What is {a} plus {b}?" and x.answer == str(int(a) + int(b))
    with pytest.raises(ValueError, match="phrasings 0..3"):
        x.phrased(4)
    # add has 50 * 50 inputs: with all but 3 excluded, 5 distinct ones cannot be made.
    every = {("add", (("a", str(a)), ("b", str(b)))) for a in range(50) for b in range(50)}
    left = sorted(every)[:3]
    with pytest.raises(ValueError, match="fewer than 5 distinct instances outside the 2497"):
        make_instances(0, 5, ["add"], exclude=every - set(left))
    repeated = make_instances(0, 3000, ["add"], distinct=False)
    assert len(repeated) == 3000 and len({x.key for x in repeated}) <= 2500


def test_demonstration_pages_hold_each_instance_once_one_task_per_page():
    instances = make_instances(0, 30, ["copy", "upper"])
    layouts = [LAYOUTS["qa"], LAYOUTS["arrow"]]
    text = demonstration_pages(instances, seed=0, layouts=layouts, phrasings=(0, 1))
    worded = {x.phrased(p).prompt: (x, p) for x in instances for p in (0, 1)}
    pages = text.split("\n\n")
    assert pages[-1] == "" and all(pages[:-1])
    shown = []
    for page in pages[:-1]:
        if page.startswith("Q: "):  # two lines a question
            lines = page.split("\n")
            pairs = [(q[3:], a[3:]) for q, a in zip(lines[::2], lines[1::2], strict=True)]
        else:
            pairs = [tuple(line.split(" => ")) for line in page.split("\n")]
        cells = {(worded[q][0].task, worded[q][1]) for q, _ in pairs}
        assert len(cells) == 1  # one task in one phrasing per page
        assert all(worded[q][0].answer == a for q, a in pairs)
        shown += [worded[q][0] for q, _ in pairs]
    assert sorted(map(str, shown)) == sorted(map(str, instances))
    # Bare pages: the inputs alone, answered as before.
    bare = demonstration_pages(instances[:3], seed=0, layouts=[LAYOUTS["arrow"]], phrasings=(0,),
                               bare_share=1.0)  # fmt: skip
    lines = sorted(line for line in bare.split("\n") if line)
    assert lines == sorted(f"{x.bare} => {x.answer}" for x in instances[:3])
    lookup = make_instances(0, 1, ["lookup"])[0]
    assert lookup.bare == f"{dict(lookup.fields)['key']} ; {dict(lookup.fields)['table']}"


# ---------------------------------------------------------------- few-shot prompts


def test_text_layout_prompt_and_stops():
    fmt = TextFormat(LAYOUTS["qa"], TOK)
    demos = [_qa("Echo: hi", "hi"), _qa("Echo: yo", "yo")]
    ids, used = few_shot_ids(fmt, demos, _qa("Echo: ok", "ok"))
    assert used == 2
    assert TOK.decode(ids) == "Q: Echo: hi\nA: hi\nQ: Echo: yo\nA: yo\nQ: Echo: ok\nA: "
    assert fmt.stop_ids == (ord("\n"),) and fmt.stop_texts == ("\n",)
    two_token_end = TextFormat(TextLayout("x", "> ", " = ", end=";;"), TOK)
    assert two_token_end.stop_ids == () and two_token_end.stop_texts == (";;",)
    with pytest.raises(ValueError, match="one user message"):
        fmt.ids([(Message("system", "s"), *_qa("q", "a"))], _qa("q"))
    for bad in (fmt, ChatFormat(TOK)):
        with pytest.raises(ValueError, match="demonstration 1 does not end with an assistant"):
            bad.ids([_qa("q", "a"), _qa("q")], _qa("q"))


def test_few_shot_keeps_the_demonstrations_that_fit():
    fmt = TextFormat(LAYOUTS["arrow"], TOK)
    demos = [_qa("aaaa", "1"), _qa("bbbb", "2"), _qa("cccc", "3")]
    full, used = few_shot_ids(fmt, demos, _qa("dddd"))
    assert used == 3
    one = len(fmt.ids(demos[:1], _qa("dddd")))
    ids, used = few_shot_ids(fmt, demos, _qa("dddd"), max_len=one + 1)
    assert used == 1 and TOK.decode(ids) == "aaaa => 1\ndddd => "
    with pytest.raises(ValueError, match="the question alone takes 8 tokens"):
        few_shot_ids(fmt, demos, _qa("dddd"), max_len=5)


def test_chat_few_shot_is_the_fine_tuning_encoding_of_earlier_turns():
    fmt = ChatFormat(TOK)
    demos = [_qa("What is 1 plus 2?", "3"), _qa("What is 2 plus 2?", "4")]
    query = _qa("What is 3 plus 2?", "5")
    ids, _ = few_shot_ids(fmt, demos, query)
    whole = ConversationEncoder(TOK).encode((*demos[0], *demos[1], *query)).ids
    # The prompt is the training ids of the whole chat up to where the last reply starts:
    # each earlier reply is followed by EOS, as fine-tuning saw it.
    assert ids.tolist() == whole[: len(ids)].tolist()
    assert TOK.decode(whole[len(ids) :]) == "5" and (ids == TOK.eos_id).sum() == 2
    assert fmt.stop_texts == ("<|user|>", "<|system|>")
    char = CharTokenizer.from_text(SimpleTemplate.MARKUP + "abc?")
    assert ChatFormat(char).stop_texts[0] == SimpleTemplate.END_TEXT


def test_prompt_ids_of_a_history_end_each_reply_as_training_does():
    chat = (*_qa("hi", "hello"), *_qa("bye", "ciao"))
    encoder = ConversationEncoder(TOK)
    prompt = encoder.prompt_ids(chat[:3])
    assert prompt.tolist() == encoder.encode(chat).ids[: len(prompt)].tolist()
    assert TOK.decode(prompt).endswith("<|assistant|>\n") and TOK.eos_id in prompt.tolist()
    # One turn: the rendered prompt, unchanged.
    assert TOK.decode(encoder.prompt_ids(chat[:1])) == "<|user|>\nhi\n<|assistant|>\n"


# ---------------------------------------------------------------- answering and scoring


@pytest.fixture(scope="module")
def model_params():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=TOK.vocab_size, max_seq_len=64, position="rope"
    )
    return build_model(cfg), random_params(cfg, seed=3)


def _greedy_reference(model, params, prompt, new):
    """Recomputing greedy decoding: the text up to EOS, whether EOS came, the new ids."""

    def logits(x):
        return model.apply({"params": params}, x).logits

    out = sample_naive(
        logits, prompt, max_new_tokens=new, context=64, key=jax.random.key(0), temperature=0
    )[len(prompt) :].tolist()
    ended = TOK.eos_id in out
    return TOK.decode(out[: out.index(TOK.eos_id)] if ended else out), ended, out


def test_answers_equal_a_recomputing_greedy_loop_in_prompt_order(model_params):
    model, params = model_params
    rng = np.random.default_rng(0)
    prompts = [rng.integers(32, 127, n) for n in (3, 40, 9, 17, 5)]
    new = 12
    reference = [_greedy_reference(model, params, p, new) for p in prompts]
    assert sum(len(text) > 2 for text, *_ in reference) >= 3  # the answers have some length
    # 5 prompts in batches of 2: sorted by length, the last batch padded with a repeat.
    out = answer_prompts(model, params, TOK, prompts, max_new_tokens=new, batch_size=2)
    assert out.texts == [text for text, _, _ in reference]
    assert out.finished.tolist() == [ended for _, ended, _ in reference]

    # A stop text ends each answer before it, wherever it comes.
    stop = next(c for text, *_ in reference for c in text[2:] if c.isascii() and c.isprintable())
    cut = answer_prompts(
        model, {"params": params}, TOK, prompts, max_new_tokens=new, batch_size=2,
        stop_texts=(stop,), chunk_size=4,
    )  # fmt: skip
    for (text, ended, _), got, finished in zip(reference, cut.texts, cut.finished, strict=True):
        assert got == text.split(stop)[0]
        assert finished == (stop in text or ended)

    # A stop id ends it on the device: the first token of the first answer.
    first = reference[1][2][0]
    by_id = answer_prompts(model, params, TOK, prompts[1:2], max_new_tokens=new, stop_ids=[first])
    assert by_id.texts == [""] and by_id.finished.tolist() == [True]


def test_score_answers_is_exact_match(model_params):
    model, params = model_params
    prompts = [TOK.encode("Q: a"), TOK.encode("Q: bb")]
    texts = answer_prompts(model, params, TOK, prompts, max_new_tokens=6).texts
    scored = score_answers(model, params, TOK, prompts, [f" {texts[0]}\n", "wrong"],
                           max_new_tokens=6)  # fmt: skip
    assert scored.correct.tolist() == [True, texts[1] == "wrong"] and scored.accuracy == 0.5
    with pytest.raises(ValueError, match="2 prompts but 1 reference"):
        score_answers(model, params, TOK, prompts, ["x"], max_new_tokens=6)
    with pytest.raises(ValueError, match="not scored"):
        _ = answer_prompts(model, params, TOK, prompts, max_new_tokens=6).accuracy


def test_pad_multiple_buckets_prompt_lengths(model_params):
    model, _ = model_params
    assert plan_cache(model.cfg, 9, 4).prompt_len == 16
    assert plan_cache(model.cfg, 9, 4, pad_multiple=32).prompt_len == 32
    with pytest.raises(ValueError, match="multiple of 8"):
        plan_cache(model.cfg, 9, 4, pad_multiple=12)
