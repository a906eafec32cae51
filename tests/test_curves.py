"""Learning curves: evaluation at chosen steps on several splits, and tokens to reach a loss."""

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import val_batches
from llmjax.data.sources import TextWindows
from llmjax.train.curves import curve, learning_curve, log_steps, tokens_to_match, tokens_to_reach
from llmjax.train.hooks import EvaluateAt
from llmjax.train.trainer import Trainer

TOKENS = (np.arange(4000) * 7 % 61).astype(np.uint16)  # a cycle a tiny model learns at once


def test_log_steps_start_at_zero_and_end_at_the_last_step():
    steps = log_steps(300, 10)
    assert steps[:3] == [0, 1, 2] and steps[-1] == 300
    assert steps == sorted(set(steps)) and len(steps) <= 11
    assert log_steps(1, 5) == [0, 1]
    with pytest.raises(ValueError, match="end >= 1"):
        log_steps(0, 5)


def test_tokens_to_reach_interpolates_in_log_tokens():
    assert tokens_to_reach([10, 1000], [2.0, 1.0], 1.5) == pytest.approx(100.0)
    assert tokens_to_reach([10, 1000], [2.0, 1.0], 1.0) == pytest.approx(1000.0)
    assert tokens_to_reach([10, 1000], [2.0, 1.0], 3.0) == 10.0  # already there at the start
    assert tokens_to_reach([0, 10], [2.0, 1.0], 1.5) == pytest.approx(5.0)  # linear from 0
    assert tokens_to_reach([10, 100, 1000], [2.0, 1.0, 0.5], 0.4) is None  # needs more
    # The first crossing counts, also when the curve rises again (overfitting).
    assert tokens_to_reach([1, 10, 100], [2.0, 1.0, 3.0], 1.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="equal 1-D"):
        tokens_to_reach([1, 2], [1.0], 1.0)


def test_tokens_to_match_brackets_the_mean_with_the_seeds_envelopes():
    tokens = [10, 100, 1000, 10000]
    curves = np.array([[3.0, 2.0, 1.5, 1.0], [3.2, 2.4, 1.8, 1.2]])
    match = tokens_to_match(tokens, curves, levels=[1.6, 1.9])
    assert match["low"] <= match["tokens"] <= match["high"]
    assert match["low"] == tokens_to_reach(tokens, curves.min(0), 1.9)
    assert match["high"] == tokens_to_reach(tokens, curves.max(0), 1.6)
    assert tokens_to_match(tokens, curves, [0.5])["tokens"] is None


def _trainer(steps=4):
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        ["model.vocab_size=61", "data.batch_size=4", f"train.steps={steps}", "optim.lr=3e-3",
         "optim.warmup_steps=0", "train.mfu=false"],
    )  # fmt: skip
    return Trainer(cfg)


def test_learning_curve_evaluates_every_split_at_the_chosen_steps():
    trainer = _trainer()
    seq = trainer.cfg.seq_len

    def split(tokens):
        return lambda: val_batches(tokens, batch_size=4, seq_len=seq, max_batches=2)

    splits = {"a": split(TOKENS[:1000]), "b": split(np.full(1000, 5, np.uint16))}
    start = trainer.init_state()
    before = trainer.evaluate(start, splits["a"]())
    windows = TextWindows(TOKENS, 4, seq, seed=0)
    state, records = learning_curve(trainer, start, windows, splits, [0, 1, 3])
    assert int(state.step) == 3
    assert [(r["step"], r["split"]) for r in records] == [
        (s, name) for s in (0, 1, 3) for name in ("a", "b")
    ]
    steps, loss = curve(records, "a")
    assert steps.tolist() == [0, 1, 3]
    assert loss[0] == pytest.approx(before["loss"])
    assert loss[-1] < loss[0]  # it learns the cycle
    assert curve(records, "b", "accuracy")[1].shape == (3,)
    with pytest.raises(ValueError, match="no evaluation records of split 'c'"):
        curve(records, "c")
    with pytest.raises(ValueError, match="at least one split"):
        EvaluateAt({}, [1])


def test_init_state_seed_picks_the_initial_params():
    trainer = _trainer()

    def leaves(seed=None):
        return jax.tree.leaves(jax.device_get(trainer.init_state(seed).params))

    def same(x, y):
        return all(np.array_equal(a, b) for a, b in zip(x, y, strict=True))

    seed = trainer.cfg.train.seed
    assert same(leaves(), leaves(seed))
    assert not same(leaves(), leaves(seed + 1))
