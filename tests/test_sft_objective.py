"""The `sft` objective: loss on reply tokens only, metrics per token and per conversation."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import InstructBatches, encode_all, make_rows, make_tasks
from llmjax.models import build_model, init_model
from llmjax.objectives import Forward, Supervised, build_objective
from llmjax.train.trainer import Trainer

SEQ = 64


@pytest.fixture(scope="module")
def setup():
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [
            "train.objective=sft",
            f"model.max_seq_len={SEQ}",
            f"data.seq_len={SEQ}",
            "data.batch_size=4",
        ],
    )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=259))
    conversations = [e.conversation() for e in make_tasks(0, 24, "train")]
    encoded, _ = encode_all(conversations, ByteTokenizer(), SEQ)
    params, state = init_model(cfg.model, jax.random.key(0))
    return cfg, encoded, build_model(cfg.model), params, state


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_per_conversation_metrics_equal_a_hand_computation(setup):
    cfg, encoded, model, params, state = setup
    rows, _ = make_rows(encoded[:8], SEQ, packed=True)
    batch = {k: jax.numpy.asarray(v) for k, v in rows.items()}
    sums = Supervised().eval_sums(Forward(model, params, state), batch)
    logits = np.asarray(model.apply({"params": params}, batch["inputs"], batch["positions"],
                                    batch["segments"]).logits, np.float64)  # fmt: skip
    logp = _log_softmax(logits)
    targets, mask, segments = (np.asarray(rows[k]) for k in ("targets", "mask", "segments"))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    right = logits.argmax(-1) == targets
    losses, exact = [], []
    for r in range(targets.shape[0]):
        for s in set(segments[r][mask[r] > 0]):
            keep = (segments[r] == s) & (mask[r] > 0)
            losses.append(nll[r][keep].mean())
            exact.append(right[r][keep].all())
    assert float(sums["examples"]) == len(losses) == 8
    np.testing.assert_allclose(float(sums["example_loss_sum"]), sum(losses), rtol=1e-5)
    assert float(sums["examples_exact"]) == sum(exact)
    np.testing.assert_allclose(float(sums["nll_sum"]), (nll * mask).sum(), rtol=1e-5)
    assert float(sums["tokens"]) == mask.sum()
    report = Supervised().report({k: float(v) for k, v in sums.items()})
    np.testing.assert_allclose(report["example_loss"], np.mean(losses), rtol=1e-5)


def test_only_reply_tokens_carry_gradient(setup):
    cfg, encoded, model, params, state = setup
    rows, _ = make_rows(encoded[:4], SEQ, packed=False)
    batch = {k: jax.numpy.asarray(v) for k, v in rows.items()}
    changed = dict(batch)
    prompt = (np.asarray(rows["mask"]) == 0) & (np.asarray(rows["segments"]) > 0)
    targets = np.asarray(rows["targets"]).copy()
    targets[prompt] = (targets[prompt] + 1) % 256  # other targets where no loss is taken
    changed["targets"] = jax.numpy.asarray(targets)
    objective = Supervised()

    def loss(b):
        return objective.loss(Forward(model, params, state), b, objective.weight(b))[0]

    assert float(loss(batch)) == float(loss(changed))


def test_sft_trains_through_the_loop_and_reports_per_example_metrics(setup):
    cfg, encoded, *_ = setup
    cfg = apply_overrides(cfg, ["train.steps=8", "optim.lr=3e-3", "optim.warmup_steps=0"])
    assert isinstance(build_objective(cfg), Supervised)
    trainer = Trainer(cfg)
    source = InstructBatches(encoded, batch_size=4, seq_len=SEQ, seed=0)
    before = trainer.evaluate(trainer.init_state(), [source.batch(100)])
    state, metrics = trainer.train(source)
    after = trainer.evaluate(state, [source.batch(100)])
    assert len(metrics) == 8
    assert after["loss"] < before["loss"]
    assert after["example_loss"] < before["example_loss"]
    assert before["examples"] == after["examples"] >= 4  # every row holds a conversation
