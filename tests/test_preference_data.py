"""Preference pairs: reading JSONL (text and chat prompts), each bad input as one clear error,
encoding with the chat template and a mask on each reply, truncation counted, the batch source
as a pure function of (seed, step), held-out batches, and the built-in pairs' gold reward."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from llmjax.data import ByteTokenizer
from llmjax.data.instruct import ConversationEncoder, Message, SimpleTemplate
from llmjax.data.preference import (
    GoldReward,
    PreferenceBatches,
    PreferenceData,
    PreferenceDataConfig,
    PreferencePair,
    builtin_pairs,
    encode_pairs,
    label_pairs,
    load_pairs,
    pair_rows,
    reward_ids,
)
from llmjax.errors import ConfigError, InstructDataError

TOK = ByteTokenizer()


def _write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "chosen": "good yes", "rejected": "bad"} for i in range(n)]


def test_text_and_chat_records_become_two_conversations(tmp_path):
    chat = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ]
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "hi", "chosen": "yes", "rejected": "no"},
            "",
            {"prompt": chat, "chosen": [{"role": "assistant", "content": "more"}], "rejected": "x"},
        ],
    )
    pairs, identical = load_pairs(path)
    assert identical == 0 and len(pairs) == 2
    chosen, rejected = pairs[0].conversations()
    assert chosen == (Message("user", "hi"), Message("assistant", "yes"))
    assert rejected == (Message("user", "hi"), Message("assistant", "no"))
    chosen, rejected = pairs[1].conversations()
    assert [m.role for m in chosen] == ["system", "user", "assistant", "user", "assistant"]
    assert chosen[-1].content == "more" and rejected[-1].content == "x"
    assert pairs[1].prompt_text == "and?"


@pytest.mark.parametrize(
    "record, words",
    [
        ({"prompt": "a", "chosen": "b"}, ["line 2", "'rejected'", "missing"]),
        ({"prompt": "a", "chosen": 3, "rejected": "c"}, ["line 2", "'chosen'", "int"]),
        ({"prompt": None, "chosen": "b", "rejected": "c"}, ["line 2", "'prompt'", "NoneType"]),
        ({"prompt": "a", "chosen": "", "rejected": "c"}, ["line 2", "'chosen'", "empty"]),
        (
            {"prompt": [{"role": "user", "content": 1}], "chosen": "b", "rejected": "c"},
            ["line 2", "prompt[0].content", "not a string"],
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": "b", "rejected": "c"},
            ["line 2", "prompt[0].role", "unknown role"],
        ),
        (
            {"prompt": "a", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"},
            ["line 2", "'chosen'", "not the assistant"],
        ),
        ("{not json", ["line 2", "not valid JSON"]),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, record, words):
    path = _write(tmp_path / "bad.jsonl", [_pairs(1)[0], record])
    with pytest.raises(InstructDataError) as e:
        load_pairs(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_identical_pairs_are_skipped_with_one_warning_and_an_empty_file_fails(tmp_path, caplog):
    same = {"prompt": "a", "chosen": "same", "rejected": "same"}
    path = _write(tmp_path / "p.jsonl", [same, *_pairs(3), same])
    with caplog.at_level(logging.WARNING):
        pairs, identical = load_pairs(path)
    assert (len(pairs), identical) == (3, 2)
    warnings = [r for r in caplog.records if "identical" in r.getMessage()]
    assert len(warnings) == 1 and "2 pair" in warnings[0].getMessage()
    with pytest.raises(InstructDataError, match="holds no records"):
        load_pairs(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(InstructDataError, match=r"only identical pairs \(1\)"):
        load_pairs(_write(tmp_path / "same.jsonl", [same]))


def test_rows_hold_each_side_with_the_reply_masked_and_eos_after_it():
    pair = PreferencePair(
        (Message("user", "hi"),), (Message("assistant", "yes"),), (Message("assistant", "no!"),)
    )
    encoded, stats = encode_pairs([pair], TOK, 64)
    assert stats.pairs == 1 and stats.truncated == stats.dropped_pairs == 0
    rows = pair_rows(encoded, [0], 40, pad_id=0)
    assert set(rows) == {
        f"{s}_{f}" for s in ("chosen", "rejected") for f in ("inputs", "targets", "mask")
    }
    encoder = ConversationEncoder(TOK, SimpleTemplate())
    for side, reply in (("chosen", "yes"), ("rejected", "no!")):
        want = encoder.encode((Message("user", "hi"), Message("assistant", reply)))
        n = len(want) - 1
        np.testing.assert_array_equal(rows[f"{side}_inputs"][0, :n], want.ids[:-1])
        np.testing.assert_array_equal(rows[f"{side}_targets"][0, :n], want.ids[1:])
        mask = rows[f"{side}_mask"][0]
        assert mask.dtype == np.float32 and rows[f"{side}_inputs"].dtype == np.int32
        trained = rows[f"{side}_targets"][0][mask > 0]
        assert TOK.decode(trained[:-1]) == reply and trained[-1] == TOK.eos_id  # reply, then EOS
        assert (mask[n:] == 0).all() and (rows[f"{side}_inputs"][0, n:] == 0).all()  # padding
        # The reward model reads the value where the input is the last reply token.
        ids = reward_ids(want)
        assert TOK.decode(ids).endswith(reply) and len(ids) == int(np.flatnonzero(mask)[-1]) + 1


def test_truncation_is_counted_and_pairs_cut_to_nothing_are_dropped():
    short = PreferencePair(
        (Message("user", "q"),), (Message("assistant", "a" * 20),), (Message("assistant", "b"),)
    )
    long_prompt = PreferencePair(
        (Message("user", "q" * 80),), (Message("assistant", "a"),), (Message("assistant", "b"),)
    )
    encoded, stats = encode_pairs([short, long_prompt], TOK, 40)
    assert (stats.pairs, stats.truncated, stats.dropped_pairs) == (1, 2, 1)
    assert len(encoded[0].chosen) == 41 and encoded[0].chosen.loss_mask[1:].any()
    with pytest.raises(InstructDataError, match="raise model.max_seq_len"):
        encode_pairs([long_prompt], TOK, 40)


def test_batches_are_a_pure_function_of_seed_and_step():
    encoded, _ = encode_pairs(builtin_pairs(0, 10), TOK, 96)
    a = PreferenceBatches(encoded, 4, 96, seed=3)
    b = PreferenceBatches(encoded, 4, 96, seed=3)
    for step in (0, 2, 7):  # epoch boundaries (10 pairs, 4 a step) included
        np.testing.assert_array_equal(
            a.batch(step)["chosen_inputs"], b.batch(step)["chosen_inputs"]
        )
    # The stream is the epochs' permutations laid end to end: each epoch has every pair once.
    seen = np.concatenate([a.indices(s) for s in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    rows = a.batch(1, slice(2, 4))
    np.testing.assert_array_equal(rows["rejected_mask"], a.batch(1)["rejected_mask"][2:4])
    it = a.batches(5)
    np.testing.assert_array_equal(next(it)["chosen_targets"], a.batch(5)["chosen_targets"])
    assert not np.array_equal(
        a.batch(0)["chosen_inputs"], PreferenceBatches(encoded, 4, 96, 4).batch(0)["chosen_inputs"]
    )
    cached = PreferenceBatches(encoded, 4, 96, 3, ref_logps=np.arange(20.0).reshape(10, 2))
    batch = cached.batch(1)
    np.testing.assert_array_equal(batch["chosen_ref_logp"], 2.0 * a.indices(1))
    np.testing.assert_array_equal(batch["rejected_ref_logp"], 2.0 * a.indices(1) + 1)


def test_data_splits_held_out_pairs_and_pads_the_last_evaluation_batch(tmp_path):
    path = _write(tmp_path / "p.jsonl", _pairs(20))
    data = PreferenceData.build(PreferenceDataConfig(data=path), TOK, SimpleTemplate(), 48)
    assert len(data.train) == 18 and len(data.val) == 2
    batches = data.val_batches(3)
    assert len(batches) == 1 and batches[0]["chosen_mask"][2].sum() == 0  # a padding row
    assert data.summary()["val"]["pairs"] == 2
    val = PreferenceData.build(
        PreferenceDataConfig(data=path, val_data=_write(tmp_path / "v.jsonl", _pairs(5))),
        TOK,
        SimpleTemplate(),
        48,
    )
    assert len(val.train) == 20 and len(val.val) == 5
    with pytest.raises(InstructDataError, match="does not exist"):
        PreferenceData.build(
            PreferenceDataConfig(data=str(tmp_path / "no.jsonl")), TOK, SimpleTemplate(), 48
        )
    with pytest.raises(InstructDataError, match="at least 2"):
        PreferenceData.build(
            PreferenceDataConfig(data=_write(tmp_path / "one.jsonl", _pairs(1))),
            TOK,
            SimpleTemplate(),
            48,
        )
    with pytest.raises(ConfigError, match="val-fraction"):
        PreferenceDataConfig(data=path, val_fraction=1.5)


def test_gold_reward_scores_the_marker_and_length_band():
    gold = GoldReward()
    scores = gold(["p"] * 4, ["a b yes", "a b c d e f yes", "a b c", "yes no"])
    np.testing.assert_array_equal(scores, np.float32([1.5, 1.0, 0.5, 0.0]))
    assert scores.dtype == np.float32
    with pytest.raises(ValueError, match="one each"):
        gold(["p"], [])


def test_builtin_pairs_are_seeded_and_labelled_by_noisy_raters():
    gold = GoldReward()
    pairs = builtin_pairs(0, 400)
    assert pairs == builtin_pairs(0, 400) and pairs != builtin_pairs(1, 400)
    gaps = np.asarray(
        [
            gold.score(p.prompt_text, p.chosen_text) - gold.score(p.prompt_text, p.rejected_text)
            for p in pairs
        ]
    )
    assert (gaps != 0).all()  # ties carry no preference and are not drawn
    # Mostly the better reply is chosen, but not always (rater noise): for a gap of 0.5 at
    # temperature 0.25 the rater agrees with gold with probability sigmoid(2) = 0.88.
    agree = (gaps > 0).mean()
    assert 0.8 < agree < 0.99
    noisy = builtin_pairs(0, 400, temperature=5.0)
    gaps = [
        gold.score(p.prompt_text, p.chosen_text) - gold.score(p.prompt_text, p.rejected_text)
        for p in noisy
    ]
    assert 0.4 < np.mean(np.asarray(gaps) > 0) < 0.7
    # On-policy samples: any (prompt, a, b), labelled the same way; identical replies dropped.
    labelled = label_pairs(
        [("p", "a b yes", "zzz"), ("p", "same", "same")], seed=0, temperature=1e-3
    )
    assert len(labelled) == 1 and labelled[0].chosen_text == "a b yes"


def test_reference_log_probs_of_the_wrong_shape_are_refused(tmp_path):
    data = PreferenceData.build(
        PreferenceDataConfig(data=_write(tmp_path / "p.jsonl", _pairs(10))),
        TOK,
        SimpleTemplate(),
        48,
    )
    with pytest.raises(
        ValueError, match=r"train reference log-probs have shape \(9,\), not \(9, 2\)"
    ):
        data.with_reference(np.zeros(9), np.zeros((1, 2)))
    cached = data.with_reference(np.zeros((9, 2)), -np.ones((1, 2)))
    assert cached.val_batches(2)[0]["rejected_ref_logp"].tolist() == [-1.0, 0.0]  # padding: 0
    with pytest.raises(ValueError, match="one .chosen, rejected. log-prob per pair"):
        PreferenceBatches(data.train, 2, 48, 0, ref_logps=np.zeros((3, 2)))
