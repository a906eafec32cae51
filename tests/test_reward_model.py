"""The reward objective: -log sigmoid(r_chosen - r_rejected - margin) of a value head read at
each reply's last token, against the closed form; its config checks; a reward model trained
on the built-in pairs scoring held-out pairs well above chance; and the tokenizer check a
reward run must pass before it scores a policy's samples."""

from __future__ import annotations

import numpy as np
import pytest

from llmjax.align import score
from llmjax.align.preference import (
    check_same_tokenizer,
    fit_reward,
    open_preference,
    preference_config,
)
from llmjax.config import apply_overrides, get_preset, load_config
from llmjax.data import ByteTokenizer, CharTokenizer
from llmjax.data.preference import PreferenceDataConfig, load_preference_pairs, reward_ids
from llmjax.errors import ConfigError
from llmjax.objectives import Forward, RewardModel, build_objective, reply_ends
from llmjax.runs import load_run
from tests.preference_helpers import (
    RUN_SET,
    TableModel,
    base_run,
    jnp_batch,
    log_sigmoid,
    np_last_values,
    pair_batch,
    table_params,
)


@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_loss_is_minus_log_sigmoid_of_the_reward_gap(margin):
    rng = np.random.default_rng(0)
    params, batch = table_params(rng, 9), pair_batch(rng, 9)
    objective = RewardModel(margin=margin)
    model = Forward(TableModel(), params)
    loss, metrics = objective.loss(model, jnp_batch(batch), objective.weight(jnp_batch(batch)))
    rc, rr = np_last_values(params, batch, "chosen"), np_last_values(params, batch, "rejected")
    np.testing.assert_allclose(loss, -log_sigmoid(rc - rr - margin).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], (rc > rr).mean())
    np.testing.assert_allclose(metrics["margin"], (rc - rr).mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["chosen_reward"], rc.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rejected_reward"], rr.mean(), rtol=1e-5)


def test_reply_ends_is_one_past_the_last_masked_position():
    mask = np.float32([[0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(reply_ends(mask), [3, 5, 0])


def test_the_objective_needs_a_value_head():
    cfg = apply_overrides(get_preset("test-tiny"), ["train.objective=reward"])
    with pytest.raises(ConfigError, match="model.value_head=true"):
        build_objective(cfg)
    cfg = apply_overrides(cfg, ["model.value_head=true", "preference.margin=0.5"])
    assert build_objective(cfg) == RewardModel(margin=0.5)


@pytest.fixture(scope="module")
def base(tmp_path_factory, word_corpus):
    return base_run(tmp_path_factory.mktemp("reward"), word_corpus)


@pytest.mark.slow
def test_a_reward_model_learns_the_gold_preference(base, tmp_path):
    steps = 40
    overrides = [
        *RUN_SET,
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        "train.eval_batches=4",
    ]
    cfg = preference_config("reward", init_from=base, overrides=overrides)
    assert cfg.model.value_head and cfg.train.objective == "reward"
    data = open_preference(cfg, PreferenceDataConfig("builtin", builtin_pairs=600))
    result = fit_reward(cfg, tmp_path / "rm", data, progress=False)
    final = result.final_eval
    assert final["pairs"] == 60  # every held-out pair, padding rows not counted
    assert final["accuracy"] > 0.7 and final["margin"] > 0.3  # chance: 0.5 and 0
    assert load_config(tmp_path / "rm" / "config.json").model.value_head
    # llmjax.align.score reads a sequence as training does: the ids up to the last reply
    # token (before the end-of-reply token) give the reward the objective computed.
    pair = data.val[0]
    got = score(tmp_path / "rm", [reward_ids(pair.chosen), reward_ids(pair.rejected)])
    run = load_run(tmp_path / "rm")
    want = RewardModel().rewards(Forward(run.model, run.params), jnp_batch(data.val_batches(1)[0]))
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-4, atol=1e-5)
    # (prompt, reply) texts are rendered with the run's template and read the same way, by
    # score and by the RL reward function of a reward model.
    first = load_preference_pairs(data.config)[1][0]  # the pair of data.val[0] (none dropped)
    prompt, replies = (
        first.prompt[-1].content,
        [first.chosen[-1].content, first.rejected[-1].content],
    )
    texts = score(tmp_path / "rm", [(prompt, r) for r in replies])
    np.testing.assert_allclose(texts, got, rtol=1e-5, atol=1e-6)
    from llmjax.align import RewardModel as RewardFunction

    np.testing.assert_allclose(
        RewardFunction(tmp_path / "rm")([prompt, prompt], replies), got, rtol=1e-5, atol=1e-6
    )
    check_same_tokenizer(tmp_path / "rm", base)  # the same tokenizer: no error


def test_a_reward_run_with_another_tokenizer_is_refused():
    with pytest.raises(ConfigError, match="another tokenizer") as e:
        check_same_tokenizer(CharTokenizer.from_text("abc"), ByteTokenizer())
    assert "\n" not in str(e.value)
    check_same_tokenizer(ByteTokenizer(), ByteTokenizer())


def test_a_batch_without_pair_fields_is_a_batch_error():
    from llmjax.errors import BatchError
    from llmjax.objectives import check_batch

    with pytest.raises(BatchError, match="'chosen_inputs'.*choose another train.objective"):
        check_batch(RewardModel(), {"inputs": np.zeros((2, 3))})


@pytest.mark.slow
def test_lora_trains_the_adapters_and_the_head_alone(base, tmp_path):
    import jax

    from llmjax.models.lora import split_adapters

    overrides = [*RUN_SET, "train.steps=3", "train.eval_every=3", "train.eval_batches=1"]
    cfg = preference_config("reward", init_from=base, overrides=[*overrides, "model.lora.rank=2"])
    data = open_preference(cfg, PreferenceDataConfig("builtin", builtin_pairs=40))
    result = fit_reward(cfg, tmp_path / "rm", data, progress=False)
    weights, added = split_adapters(result.state.params)
    start = load_run(base)
    for x, y in zip(jax.tree.leaves(weights), jax.tree.leaves(start.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the base is frozen
    assert float(np.abs(np.asarray(added["value_head"]["kernel"])).max()) > 0  # trained from 0
    # The run saves the adapters and the head; loading joins them with the base weights.
    run = load_run(tmp_path / "rm")
    assert run.config.model.lora.rank == 2 and run.config.model.value_head
    np.testing.assert_array_equal(
        np.asarray(run.params["value_head"]["kernel"]), np.asarray(added["value_head"]["kernel"])
    )
