"""PPO and GRPO runs on the one loop: rollouts, learning a toy reward, the frozen reference,
exact resumption, and the refusals of bad input."""

import json

import jax
import numpy as np
import pytest

from llmjax.align.rewards import RewardError, count_reward, parse_reward
from llmjax.align.rl import check_rl, fit_grpo, fit_ppo, rl_config
from llmjax.align.rollout import PromptSet, rows_of, sequence_stats
from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens
from llmjax.models import build_model
from llmjax.runs import load_run
from llmjax.train.fit import fit

PROMPTS = ["the", "a fox", "dog", "lazy"]
REWARD = count_reward("o")  # the share of "o" in a completion
# K = ppo_epochs * minibatches = 4 optimizer steps per rollout of 4 prompts x 4 completions.
RL = [
    "rl.max_new_tokens=12",
    "rl.prompt_format=plain",
    "rl.prompts_per_rollout=4",
    "rl.group_size=4",
    "rl.minibatches=2",
    "rl.ppo_epochs=2",
    "rl.kl_coef=0.01",
    "optim.lr=1e-2",
    "optim.warmup_steps=0",
    "train.eval_every=1000",
    "train.log_every=4",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A char-level base model (26 ids) of a text where "o" is 1 character in 11."""
    root = tmp_path_factory.mktemp("rl")
    corpus = root / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [
            f"data.path={corpus}",
            "data.tokenizer=char",
            "model.max_seq_len=64",
            "train.steps=40",
            "train.eval_every=40",
        ],
    )
    fit(cfg, root / "base", progress=False)
    return root / "base"


def policy_reward(model, params, tokenizer, n=64, seed=123):
    """Mean "o" share of n sampled completions (a fixed key): the policy's expected reward."""
    ids = PromptSet.build(PROMPTS, tokenizer, None).ids
    prompts = [ids[i % len(ids)] for i in range(n)]
    out = generate_tokens(
        model,
        {"params": params},
        prompts,
        max_new_tokens=12,
        key=jax.random.key(seed),
        sampling=SamplingConfig(),
        stop_ids=[],
    )
    texts = [tokenizer.decode(out.tokens[b, : out.lengths[b]]) for b in range(n)]
    return float(np.mean(REWARD(["" for _ in texts], texts)))


def rl_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "rl"]


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


# ----------------------------------------------------------------------------- rollouts


def test_experience_logprobs_are_the_teacher_forced_ones(base):
    run = load_run(base)
    prompts = PromptSet.build(PROMPTS, run.tokenizer, None)
    out = generate_tokens(
        run.model, {"params": run.params}, prompts.ids, max_new_tokens=12, key=jax.random.key(0)
    )
    rows = rows_of(prompts.ids, out.tokens, out.lengths, 64)
    # Completion tokens only, the stop token included: the mask counts lengths tokens per row.
    np.testing.assert_array_equal(rows["mask"].sum(1), out.lengths)
    logp, _ = sequence_stats(run.model, run.params, rows["inputs"], rows["targets"])
    gaps = []
    for b, p in enumerate(prompts.ids):
        n = out.lengths[b]
        tf = logp[b, len(p) - 1 : len(p) - 1 + n]
        gaps.append(np.abs(tf - out.log_probs[b, :n]).max())
        np.testing.assert_array_equal(
            rows["targets"][b, len(p) - 1 : len(p) - 1 + n], out.tokens[b, :n]
        )
    assert max(gaps) < 1e-4  # the KV-cached decoder's log-probs agree to float32 rounding


@pytest.mark.parametrize("kind", ["ppo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_a_rollout_takes_the_decoders_logprobs_and_values(base, kind):
    """The experience batch from the decoder's log-probs and values equals the one a
    teacher-forced pass recomputes (same samples: the same key and logits)."""
    from llmjax.align.advantages import KLController
    from llmjax.align.rollout import make_rollout
    from llmjax.models import init_model

    run = load_run(base)
    batches = []
    for recompute in (False, True):
        over = [*RL, "rl.kl_coef=0.1", f"rl.recompute_logp={str(recompute).lower()}"]
        cfg = rl_config(kind, init_from=base, overrides=over)
        params, _ = init_model(cfg.model, jax.random.key(1))
        if "value_head" in params:  # zero-initialized: a random one, so values are read
            params["value_head"] = jax.tree.map(
                lambda x: 0.3 * jax.random.normal(jax.random.key(2), x.shape, x.dtype),
                params["value_head"],
            )
        batches.append(
            make_rollout(
                rl=cfg.rl,
                kind=kind,
                model=build_model(cfg.model),
                params=params,
                ref_model=run.model,
                ref_params=run.params,
                prompts=PromptSet.build(PROMPTS, run.tokenizer, None),
                tokenizer=run.tokenizer,
                reward_fn=REWARD,
                index=0,
                seed=0,
                seq_len=64,
                kl=KLController(0.1),
            ).batch
        )
    decoded, recomputed = batches
    assert decoded.keys() == recomputed.keys()
    for name in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(decoded[name], recomputed[name])
    assert decoded["mask"].sum() > 0
    mask = decoded["mask"]
    for name in sorted(set(decoded) - {"inputs", "targets", "mask"}):
        a, b = decoded[name], recomputed[name]
        if a.shape == mask.shape:  # per token: what the losses read (the completion's)
            a, b = a * mask, b * mask
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)
    if kind == "ppo":
        assert np.abs(decoded["old_values"]).max() > 1e-3  # the value head was read


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def ppo_run(base, tmp_path_factory):
    # An adaptive KL coefficient: its state must travel through the checkpoint on resume.
    over = [*RL, "train.steps=32", "train.checkpoint_every=8", "rl.kl_target=0.5"]
    cfg = rl_config("ppo", init_from=base, overrides=[*over, "rl.kl_horizon=100"])
    out = tmp_path_factory.mktemp("ppo") / "run"
    result = fit_ppo(cfg, out, prompts=PROMPTS, reward_fn=REWARD, progress=False)
    return cfg, out, result


@pytest.mark.slow
def test_ppo_raises_the_reward(base, ppo_run):
    cfg, out, result = ppo_run
    run = load_run(base)
    model = build_model(result.config.model)
    before = policy_reward(run.model, run.params, run.tokenizer)
    after = policy_reward(model, result.state.params, run.tokenizer)
    print(f"ppo: expected reward {before:.3f} -> {after:.3f} in 32 steps")
    assert after > before + 0.1, (before, after)
    records = rl_records(out)
    assert [r["step"] for r in records] == list(range(1, 33))
    for key in (
        "reward",
        "kl",
        "entropy",
        "clip_frac",
        "approx_kl",
        "value_mse",
        "kl_coef",
        "rollout_s",
        "policy_loss",
        "value_loss",
    ):
        assert key in records[-1], key
    assert "update_s" in records[-1]


@pytest.mark.slow
def test_the_frozen_reference_is_bit_identical_after_training(base, ppo_run):
    _, _, result = ppo_run
    start = load_run(base).params
    reference = result.state.frozen["reference"]
    assert set(reference) == set(start)  # the base model: no value head
    assert _leaves_equal(reference, start)
    assert not _leaves_equal(result.state.params["embed"], start["embed"])  # the policy moved


@pytest.mark.slow
def test_a_ppo_run_killed_and_resumed_ends_identical(base, ppo_run, tmp_path):
    cfg, out, result = ppo_run
    stopped = tmp_path / "run"
    fit_ppo(cfg, stopped, prompts=PROMPTS, reward_fn=REWARD, progress=False, stop_after=16)
    cfg2 = rl_config("ppo", resume=stopped)
    resumed = fit_ppo(cfg2, stopped, prompts=PROMPTS, reward_fn=REWARD, progress=False, resume=True)
    assert int(resumed.state.step) == 32
    assert _leaves_equal(resumed.state.params, result.state.params)
    want = [(r["step"], r["reward"], r["kl"], r["kl_coef"]) for r in rl_records(out)]
    got = [(r["step"], r["reward"], r["kl"], r["kl_coef"]) for r in rl_records(stopped)]
    assert got == want
    assert want[-1][3] != want[0][3]  # the coefficient moved, and resumed where it was


@pytest.mark.slow
def test_grpo_raises_the_reward_with_an_adaptive_kl(base, tmp_path):
    cfg = rl_config(
        "grpo",
        init_from=base,
        overrides=[*RL, "train.steps=32", "rl.kl_target=0.5", "rl.kl_horizon=100"],
    )
    assert not cfg.model.value_head
    result = fit_grpo(cfg, tmp_path / "grpo", prompts=PROMPTS, reward_fn=REWARD, progress=False)
    run = load_run(base)
    before = policy_reward(run.model, run.params, run.tokenizer)
    after = policy_reward(build_model(result.config.model), result.state.params, run.tokenizer)
    print(f"grpo: expected reward {before:.3f} -> {after:.3f} in 32 steps")
    assert after > before + 0.1, (before, after)
    records = rl_records(tmp_path / "grpo")
    coefs = [r["kl_coef"] for r in records]
    assert coefs[0] == 0.01 and coefs[-1] != 0.01  # the controller moved the coefficient
    assert _leaves_equal(result.state.frozen["reference"], run.params)


@pytest.mark.slow
def test_grpo_with_lora_trains_adapters_only(base, tmp_path):
    cfg = rl_config("grpo", init_from=base, overrides=[*RL, "train.steps=4", "model.lora.rank=2"])
    result = fit_grpo(cfg, tmp_path / "lora", prompts=PROMPTS, reward_fn=REWARD, progress=False)
    start = load_run(base).params
    assert _leaves_equal(result.state.params["embed"], start["embed"])  # frozen base
    assert _leaves_equal(result.state.frozen["reference"], start)
    assert len(rl_records(tmp_path / "lora")) == 4


# ----------------------------------------------------------------------------- bad input


def test_minibatches_that_do_not_divide_the_rollout_are_refused(base):
    cfg = rl_config("ppo", init_from=base, overrides=[*RL, "rl.minibatches=3"])
    with pytest.raises(ConfigError, match="equal minibatches"):
        check_rl(cfg)
    cfg = rl_config("ppo", init_from=base, overrides=[*RL, "data.batch_size=5"])
    with pytest.raises(ConfigError, match="data.batch_size=5"):
        check_rl(cfg)
    cfg = rl_config("ppo", init_from=base, overrides=[*RL, "train.steps=10"])
    with pytest.raises(ConfigError, match="multiple of the 4"):
        check_rl(cfg)


def test_a_rollout_longer_than_the_context_is_refused(base, tmp_path):
    cfg = rl_config("ppo", init_from=base, overrides=[*RL, "rl.max_new_tokens=62"])
    with pytest.raises(ConfigError, match="longer than the context"):
        fit_ppo(cfg, tmp_path / "x", prompts=PROMPTS, reward_fn=REWARD, progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _raising(prompts, completions):
    if any(p == "dog" for p in prompts):
        raise RuntimeError("no dogs")
    return [1.0] * len(prompts)


def _nan(prompts, completions):
    return [float("nan") if p == "lazy" else 0.5 for p in prompts]


@pytest.mark.parametrize("fn,match", [(_raising, "no dogs"), (_nan, "not a finite number")])
def test_a_failing_reward_names_the_prompt(base, tmp_path, fn, match):
    cfg = rl_config("grpo", init_from=base, overrides=[*RL, "train.steps=4"])
    bad = "'dog'" if fn is _raising else "'lazy'"
    with pytest.raises(RewardError, match=match) as e:
        fit_grpo(cfg, tmp_path / "r", prompts=PROMPTS, reward_fn=fn, progress=False)
    assert bad in str(e.value)


def test_skip_masks_failing_rows_out_and_counts_them(base):
    from llmjax.align.advantages import KLController
    from llmjax.align.rollout import make_rollout

    run = load_run(base)
    # rl.recompute_logp: the policy's log-probs by the same teacher-forced pass as the
    # reference's, so that equal params give bit-equal log-probs.
    over = [*RL, "train.steps=4", "rl.on_reward_error=skip", "rl.recompute_logp=true"]
    cfg = rl_config("grpo", init_from=base, overrides=over)
    prompts = PromptSet.build(PROMPTS * 2, run.tokenizer, None)
    rollout = make_rollout(
        rl=cfg.rl,
        kind="grpo",
        model=run.model,
        params=run.params,
        ref_model=run.model,
        ref_params=run.params,
        prompts=prompts,
        tokenizer=run.tokenizer,
        reward_fn=_nan,
        index=0,
        seed=0,
        seq_len=64,
        kl=KLController(0.01),
    )
    chosen = [prompts.texts[i] for i in prompts.select(0, 4, 0) for _ in range(4)]
    lazy = np.array([t == "lazy" for t in chosen])
    assert lazy.any() and rollout.stats["reward_skipped"] == lazy.sum()
    mask = rollout.batch["mask"]
    assert np.all(mask[lazy] == 0) and np.all(mask[~lazy].sum(1) > 0)
    assert rollout.stats["reward"] == 0.5  # the mean over the rows that were scored
    # The policy equals the reference: every KL is zero.
    np.testing.assert_array_equal(rollout.batch["old_logp"], rollout.batch["ref_logp"])
    assert rollout.stats["kl"] == 0.0


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "no reward given"),
        ("nonsense", "not a reward spec"),
        ("count:ab", "one character"),
        ("no_such_module_x:fn", "cannot import"),
        ("json:no_such_fn", "no function"),
        ("run:/no/such/dir", "not a run directory"),
    ],
)
def test_bad_reward_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_reward(spec)


def test_reward_specs():
    assert parse_reward("arith")(["What is 17 + 25?", "What is 3 * 4?"], [" 42 ", "13"]) == [1, 0]
    assert parse_reward("count:o")(["p"], ["oooa"]) == [0.75]
    assert parse_reward("tests.test_rl_runs:_nan") is _nan


@pytest.mark.slow
def test_a_reward_model_with_another_tokenizer_is_refused(base, tmp_path):
    from llmjax.align.rewards import RewardModel
    from llmjax.data import build_tokenizer

    corpus = tmp_path / "t.txt"
    corpus.write_text("hello reward model\n" * 50)
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [f"data.path={corpus}", "model.value_head=true", "train.steps=2", "train.eval_every=2"],
    )
    fit(cfg, tmp_path / "rm", progress=False)  # byte tokenizer; the policy's is char-level
    rm = RewardModel(tmp_path / "rm")
    assert rm(["a"], ["b"]).shape == (1,)
    rm.check_tokenizer(build_tokenizer("byte", b""))
    with pytest.raises(ConfigError, match="another tokenizer"):
        rm.check_tokenizer(load_run(base).tokenizer)


@pytest.mark.slow
def test_bench_rollout_quick(tmp_path):
    from experiments import bench_rollout

    m = bench_rollout.main(["--quick", "--out-dir", str(tmp_path)])
    assert m["rollout_tokens_per_s"] > 0 and m["generate_tokens_per_s"] > 0
    assert m["rollout_over_generate"] > 0 and "within_target" in m
    assert m["decoder_vs_teacher_forced_logp_max_abs"] < 1e-4
    assert (tmp_path / "bench_rollout" / "metrics.json").is_file()


@pytest.mark.slow
def test_grpo_on_a_mesh_trains_as_on_one_device(base, tmp_path):
    over = [*RL, "train.steps=8"]
    runs = {}
    for name, extra in (("one", []), ("mesh", ["parallel.mesh=data=2,fsdp=4"])):
        cfg = rl_config("grpo", init_from=base, overrides=[*over, *extra])
        result = fit_grpo(cfg, tmp_path / name, prompts=PROMPTS, reward_fn=REWARD, progress=False)
        runs[name] = rl_records(tmp_path / name)
        assert _leaves_equal(result.state.frozen["reference"], load_run(base).params)
    assert len(runs["mesh"]) == 8
    # The first rollout is the same; its updates agree to float32 rounding.
    for a, b in zip(runs["one"][:4], runs["mesh"][:4], strict=True):
        assert a["reward"] == b["reward"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3, atol=1e-5)
