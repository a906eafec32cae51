"""The evaluation harness: batched continuation scoring equals plain forward passes, rolling
windows score every token once with the stated context, multiple choice equals a hand
computation, few-shot contexts are seeded, and bad task files name the file, line and field."""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS
from llmjax.data import ByteTokenizer
from llmjax.errors import ConfigError
from llmjax.eval.lm import EvalLM
from llmjax.eval.loglik import TokenScorer, rolling_log_probs, rolling_windows
from llmjax.eval.tasks import fewshot_contexts, load_task, run_task
from llmjax.models import build_model
from llmjax.objectives.losses import token_log_probs
from tests.decode_utils import random_params

TOK = ByteTokenizer()
CONTEXT = 48


@pytest.fixture(scope="module")
def lm():
    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=TOK.vocab_size,
                              max_seq_len=CONTEXT)  # fmt: skip
    model = build_model(cfg)
    return EvalLM(model, random_params(cfg, seed=3), TOK, batch_size=4)


@functools.cache
def _forward(model):
    return jax.jit(lambda variables, ids: model.apply(variables, ids).logits)


def _one_pass(lm, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 from one forward pass (right-padded to the context:
    one compiled program; causal attention keeps padding from changing the real positions)."""
    ids = np.asarray(ids, np.int32)
    n = len(ids) - 1
    inputs = np.zeros((1, CONTEXT), np.int32)
    inputs[0, :n] = ids[:-1]
    logits = _forward(lm.model)(lm.variables, inputs)[:, :n]
    return np.asarray(token_log_probs(logits, ids[None, 1:]))[0].astype(np.float64)


def test_windows_score_every_target_once():
    for n, window, stride in [(1, 4, 4), (2, 4, 4), (10, 4, 4), (10, 4, 1), (23, 8, 3), (5, 9, 2)]:
        spans = rolling_windows(n, window, stride)
        targets = [t for _, first, end in spans for t in range(first, end)]
        assert targets == list(range(1, n)), (n, window, stride)
        for start, first, end in spans:
            assert end - 1 - start <= window  # the input fits the window
            if first > window:  # after the first window: at least window - stride of context
                assert first - start >= window - stride
    assert rolling_windows(30, 40, 40) == [(0, 1, 30)]
    with pytest.raises(ConfigError, match="stride"):
        rolling_windows(10, 4, 5)


def test_scores_equal_plain_forward_passes(lm):
    rng = np.random.default_rng(0)
    requests = [(rng.integers(0, 256, int(rng.integers(1, 30))),
                 rng.integers(0, 256, int(rng.integers(1, 12)))) for _ in range(9)]  # fmt: skip
    scored = lm.scorer.score(requests)
    for (c, t), s in zip(requests, scored, strict=True):
        expect = _one_pass(lm, np.concatenate([c, t]))[-len(t) :]
        np.testing.assert_allclose(s.logprobs, expect, atol=2e-5)
        assert s.tokens == len(t)


def test_packed_requests_score_as_unpacked(lm):
    rng = np.random.default_rng(7)
    requests = [(rng.integers(0, 256, int(rng.integers(1, 20))),
                 rng.integers(0, 256, int(rng.integers(1, 8)))) for _ in range(11)]  # fmt: skip
    alone = TokenScorer(lm.model, lm.variables, batch_size=4, pack=False).score(requests)
    packed = TokenScorer(lm.model, lm.variables, batch_size=4, pack=True).score(requests)
    for a, b in zip(alone, packed, strict=True):
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=2e-5)
        assert (a.greedy_tokens == b.greedy_tokens).all()


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_requests_sharing_a_context_score_as_separate_requests(lm, position):
    """Choices packed after one copy of their context (a tree mask) score as each alone; a
    context too long for the row is cut per request, and a group too large for one row is
    split."""
    cfg = dataclasses.replace(lm.model.cfg, position=position)
    model, variables = build_model(cfg), random_params(cfg, seed=4)
    rng = np.random.default_rng(3)
    requests = []
    # 40: its 4 choices of 4 tokens fit a row two at a time; 60: cut to the context, per request
    for n, m in [(5, None), (17, None), (30, None), (40, 4), (60, 3)]:
        context = rng.integers(0, 256, n)
        requests += [(context, rng.integers(0, 256, m or int(rng.integers(1, 9))))
                     for _ in range(4)]  # fmt: skip
    requests.append((rng.integers(0, 256, 3), rng.integers(0, 256, 2)))  # a context of its own
    alone = TokenScorer(model, variables, batch_size=4, pack=False).score(requests)
    tree = TokenScorer(model, variables, batch_size=4)
    for a, b in zip(alone, tree.score(requests), strict=True):
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=2e-5)
        assert (a.greedy_tokens == b.greedy_tokens).all()
    items = tree._items(requests, "request")
    plain = TokenScorer(model, variables, share_contexts=False)._items(requests, "request")
    assert len(plain) == len(requests) and all(i.size <= CONTEXT for i in items)
    by_context = [len(i.targets) for i in items if len(i.context) in (5, 17, 30)]
    assert sorted(by_context) == [4, 4, 4]
    assert [len(i.targets) for i in items if len(i.context) == 40] == [2, 2]
    assert len([i for i in items if len(i.targets) == 1 and len(i.context) > 40]) == 4
    assert sum(item.size for item in items) < 0.7 * sum(item.size for item in plain)


def test_rolling_stride_window_equals_chunks_and_long_window_one_pass(lm):
    ids = np.random.default_rng(1).integers(0, 256, 130).astype(np.int32)
    W = 32
    chunked = np.concatenate([_one_pass(lm, ids[a : a + W + 1]) for a in range(0, 129, W)])
    np.testing.assert_allclose(rolling_log_probs(lm.scorer, ids, window=W, stride=W), chunked,
                               atol=2e-5)  # fmt: skip
    short = ids[:40]
    np.testing.assert_allclose(rolling_log_probs(lm.scorer, short, window=CONTEXT),
                               _one_pass(lm, short), atol=2e-5)  # fmt: skip
    # stride < window: each target predicted from its window's input
    got = rolling_log_probs(lm.scorer, ids, window=W, stride=8)
    for start, first, end in rolling_windows(len(ids), W, 8):
        expect = _one_pass(lm, ids[start:end])[first - start - 1 :]
        np.testing.assert_allclose(got[first - 1 : end - 1], expect, atol=2e-5)


def test_text_scores_count_every_byte(lm):
    texts = ["to be or not to be, that is the question", "x"]
    scores = lm.rolling_loglikelihood(texts, window=16, stride=8)
    assert scores.tokens == sum(len(t) for t in texts)  # the prefix token scores the first byte
    assert scores.bytes == scores.tokens
    report = scores.report
    np.testing.assert_allclose(report["bits_per_byte"], report["loss"] / np.log(2), rtol=1e-12)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multiple_choice_equals_hand_computation(lm, tmp_path):
    rows = [
        {"context": "the sky is", "choices": [" blue", " green and wide", " red"], "gold": 0},
        {"context": "one two", "choices": [" three", " four"], "gold": 1},
        {"context": "a b c", "choices": [" d", " dd", " e f g h"], "gold": 2},
    ]
    task = load_task(_write(tmp_path / "mc.jsonl", rows))
    assert task.kind == "multiple_choice"
    got = run_task(lm, task)
    right = right_norm = 0
    for r in rows:
        ll = []
        for choice in r["choices"]:
            ids = TOK.encode(r["context"] + choice)
            ll.append(_one_pass(lm, ids)[-len(TOK.encode(choice)) :].sum())
        ll = np.asarray(ll)
        right += int(np.argmax(ll)) == r["gold"]
        norm = ll / np.asarray([len(c.encode()) for c in r["choices"]])
        right_norm += int(np.argmax(norm)) == r["gold"]
    assert got["acc"] == pytest.approx(right / 3)
    assert got["acc_norm"] == pytest.approx(right_norm / 3)
    assert got["items"] == 3


def test_continuation_and_generate_tasks(lm, tmp_path):
    ctx = "abc"
    reply = lm.generate_until([ctx], until=["\n"], max_new_tokens=6)[0]
    # greedy reply recomputed token by token from full forward passes
    ids = list(TOK.encode(ctx))
    for _ in range(6):
        inputs = np.zeros((1, CONTEXT), np.int32)
        inputs[0, : len(ids)] = ids
        nxt = int(np.argmax(np.asarray(_forward(lm.model)(lm.variables, inputs))[0, len(ids) - 1]))
        if nxt == TOK.eos_id:
            break
        ids.append(nxt)
    expect = TOK.decode(ids[len(ctx) :]).split("\n")[0]
    assert reply == expect
    rows = [{"context": ctx, "target": reply.strip() or "z"}, {"context": ctx, "target": "no!"}]
    gen = load_task(_write(tmp_path / "gen.jsonl", rows))
    result = run_task(lm, gen, max_new_tokens=6)
    assert result["exact_match"] == (0.5 if reply.strip() else 0.0)
    greedy_ids = ids[len(ctx) :]
    if greedy_ids:  # the greedy tokens are greedy; one changed token is not
        assert lm.scorer.score([(TOK.encode(ctx), greedy_ids)])[0].greedy
        other = [*greedy_ids[:-1], (greedy_ids[-1] + 1) % 256]
        assert not lm.scorer.score([(TOK.encode(ctx), other)])[0].greedy
    cont = load_task(_write(tmp_path / "cont.jsonl", [{"context": ctx, "continuation": " d"}]))
    result = run_task(lm, cont)
    s = lm.scorer.score([(TOK.encode(ctx), TOK.encode(" d"))])[0]
    assert result["acc"] == float(s.greedy) and result["tokens"] == 2
    assert result["loss"] == pytest.approx(-s.logprob / 2)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        lm.loglikelihood([("a", "b" * (CONTEXT + 1))])


def test_fewshot_is_seeded_and_checked(tmp_path):
    rows = [{"context": f"q{i}:", "continuation": f" a{i}"} for i in range(5)]
    task = load_task(_write(tmp_path / "t.jsonl", rows))
    a, b = fewshot_contexts(task, 2, seed=4), fewshot_contexts(task, 2, seed=4)
    assert a == b and a != fewshot_contexts(task, 2, seed=5)
    for i, c in enumerate(a):
        parts = c.split("\n\n")
        assert len(parts) == 3 and parts[-1] == f"q{i}:"
        assert all(p != f"q{i}: a{i}" for p in parts[:-1])  # never its own answer
        assert all(p in {f"q{j}: a{j}" for j in range(5)} for p in parts[:-1])
    with pytest.raises(ConfigError, match="5 items .4 others.; lower the shots"):
        fewshot_contexts(task, 5)


@pytest.mark.parametrize(
    "line, match",
    [
        ({"context": "x", "choices": [" a", " b"]}, r"t.jsonl:2: missing field 'gold'"),
        ({"context": "x", "choices": [" a", " b"], "gold": 2}, r"t.jsonl:2: field 'gold' is 2"),
        ({"prompt": "x"}, r"t.jsonl:1: the item has none of the fields"),
    ],
)
def test_bad_task_files(tmp_path, line, match):
    first = {"context": "y", "choices": [" a", " b"], "gold": 0}
    rows = [line] if "prompt" in line else [first, line]
    with pytest.raises(ConfigError, match=match):
        load_task(_write(tmp_path / "t.jsonl", rows))
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run written by a short training run."""
    from llmjax import fit
    from llmjax.config import apply_overrides, get_preset

    tmp = tmp_path_factory.mktemp("run")
    corpus = tmp / "c.txt"
    corpus.write_text("hello world, " * 400)
    cfg = apply_overrides(get_preset("test-tiny"), [
        f"data.path={corpus}", "train.steps=4", "train.eval_every=4", "train.eval_batches=1",
        "train.checkpoint_every=4", "train.mfu=false"])  # fmt: skip
    fit(cfg, tmp / "run", progress=False)
    return tmp / "run"


def test_from_run_reads_the_checkpoint(trained_run):
    lm = EvalLM.from_run(trained_run)
    assert lm.step == 4
    s = lm.loglikelihood([("hello", " world")])[0]
    assert s.tokens == 6 and np.isfinite(s.logprob) and s.logprob < 0


def test_cli_scores_texts_and_tasks(trained_run, tmp_path, capsys):
    from llmjax.cli import main

    text = tmp_path / "doc.txt"
    text.write_text("hello world, hello there, world of hellos. " * 3)
    mc = _write(tmp_path / "mc.jsonl", [
        {"context": "hello", "choices": [" world", " xyzzy"], "gold": 0},
        {"context": "world", "choices": [" hello", ",,,,"], "gold": 1},
        {"context": "hel", "choices": ["lo", "p"], "gold": 0}])  # fmt: skip
    results = tmp_path / "res"
    argv = [
        "eval",
        "--run",
        str(trained_run),
        "--text",
        str(text),
        "--window",
        "16",
        "--stride",
        "8",
        "--task",
        str(mc),
        "--shots",
        "1",
        "--results",
        str(results),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    assert [r.get("task") for r in rows] == [None, "mc"]
    lm = EvalLM.from_run(trained_run)
    expect = lm.rolling_loglikelihood([text.read_text()], window=16, stride=8).report
    assert rows[0]["bits_per_byte"] == pytest.approx(expect["bits_per_byte"], rel=1e-6)
    assert rows[1] == {**rows[1], **run_task(lm, load_task(mc), shots=1), "step": 4}
    saved = json.loads((results / "metrics.json").read_text())
    assert len(saved["rows"]) == 2 and saved["metrics"]["step"] == 4
    assert main(argv) == 2  # --results is never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--task", "{bad}"], "bad.jsonl:2: missing field 'continuation'"),
        (["--task", "{mc}", "--shots", "3"], "lower the shots to <= 1"),
        (["--task", "{tmp}/nope.jsonl"], "does not exist"),
        (["--step", "3", "--task", "{mc}"], "3"),
        (["--window", "8"], "add --text"),
        (["--task", "{mc}", "--batches", "2"], "have no meaning"),
        (["--text", "{mc}", "--window", "999"], "longer than the model's context"),
    ],
)
def test_cli_bad_input(trained_run, tmp_path, capsys, extra, match):
    from llmjax.cli import main

    mc = _write(tmp_path / "mc.jsonl", [{"context": "a", "choices": ["b", "c"], "gold": 0}] * 2)
    bad = _write(tmp_path / "bad.jsonl", [{"context": "a", "continuation": "b"}, {"context": "b"}])
    names = {"tmp": str(tmp_path), "mc": str(mc), "bad": str(bad)}
    argv = ["eval", "--run", str(trained_run), *[a.format(**names) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_ngram_model_through_the_same_harness(tmp_path):
    """A Kneser-Ney model scores tasks and texts like a transformer does: its log-likelihoods
    are its own log_probs, and its greedy flags its argmax."""
    from llmjax.eval.ngram import KneserNey, NgramScorer

    text = "the cat sat on the mat. the dog sat on the log. " * 30
    kn = KneserNey.fit(TOK.encode(text), order=3, vocab_size=TOK.vocab_size)
    lm = EvalLM.from_scorer(NgramScorer(kn), TOK)
    doc = "the cat sat on the log."
    ids = np.concatenate([[TOK.bos_id], TOK.encode(doc)])
    scores = lm.rolling_loglikelihood([doc])
    assert scores.logprobs[0] == pytest.approx(kn.log_probs(ids)[1:].sum(), rel=1e-12)
    task = load_task(_write(tmp_path / "mc.jsonl", [
        {"context": "the cat sat on the", "choices": [" mat", " dog"], "gold": 0},
        {"context": "the dog sat on the", "choices": [" qzx", " log"], "gold": 1}]))  # fmt: skip
    assert run_task(lm, task)["acc"] == 1.0
    s = lm.loglikelihood([("the cat sat on th", "e")])[0]
    assert s.greedy
    with pytest.raises(ConfigError, match="cannot generate"):
        lm.generate_until(["the"])


def test_lm_eval_adapter_without_lm_eval_names_the_extra():
    import subprocess
    import sys

    code = "import sys; sys.modules['lm_eval'] = None; import llmjax.lm_eval"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "pip install 'llmjax[lm-eval]'" in proc.stderr
