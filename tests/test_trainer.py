"""The training loop: hooks, batch sources, early stopping, frozen trees, trainable masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.data.sources import FromFunction, TextWindows
from llmjax.models import init_model
from llmjax.objectives import NextToken, register_objective
from llmjax.runs import Checkpointer
from llmjax.train.frozen import Frozen, param_path
from llmjax.train.hooks import Checkpoint, EarlyStop, Evaluate
from llmjax.train.trainer import Hook, StopTraining, Trainer


def _cfg(*overrides):
    return apply_overrides(
        PRESETS["test-tiny"],
        ["model.vocab_size=61", "model.vocab_multiple=8", "model.n_heads=8", "data.batch_size=8",
         "optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=constant", "train.steps=6",
         *overrides],
    )  # fmt: skip


# A learnable stream: a fixed cycle of ids with a little noise.
TOKENS = (np.arange(5000) * 7 % 61 + (np.random.default_rng(0).random(5000) < 0.1)).astype(
    np.uint16
)


def _source(cfg):
    return TextWindows(TOKENS, cfg.data.batch_size, cfg.seq_len, seed=0)


class Recorder(Hook):
    def __init__(self, due_every=3):
        self.events, self.due_every = [], due_every

    def on_start(self, trainer, step):
        self.events.append(("start", step))

    def on_metrics(self, step, metrics):
        self.events.append(("metrics", step))

    def due(self, step, end):
        return step % self.due_every == 0

    def on_state(self, step, state):
        self.events.append(("state", step, int(state.step)))

    def on_end(self, step, state):
        self.events.append(("end", step))

    def close(self):
        self.events.append(("close",))


def test_hooks_see_every_step_in_order_and_the_state_when_due():
    cfg = _cfg()
    trainer = Trainer(cfg)
    hook = Recorder()
    state = trainer.run(trainer.init_state(), _source(cfg), hooks=[hook])
    assert int(state.step) == 6
    metrics = [e[1] for e in hook.events if e[0] == "metrics"]
    assert metrics == [1, 2, 3, 4, 5, 6]
    assert [e for e in hook.events if e[0] == "state"] == [("state", 3, 3), ("state", 6, 6)]
    # metrics of a due step arrive before its state
    assert hook.events.index(("metrics", 3)) < hook.events.index(("state", 3, 3))
    assert hook.events[0] == ("start", 0) and hook.events[-2:] == [("end", 6), ("close",)]


def test_a_plain_list_of_batches_is_a_source_and_running_out_ends_the_loop():
    cfg = _cfg()
    trainer = Trainer(cfg)
    batches = [_source(cfg).batch(s) for s in range(4)]
    state, metrics = trainer.train(batches)
    assert int(state.step) == 4 and len(metrics) == 4


def test_a_hook_can_stop_training_and_close_still_runs():
    class StopAt(Recorder):
        def on_metrics(self, step, metrics):
            super().on_metrics(step, metrics)
            if step == 2:
                raise StopTraining("enough")

    cfg = _cfg()
    trainer = Trainer(cfg)
    hook = StopAt(due_every=100)
    state = trainer.run(trainer.init_state(), _source(cfg), hooks=[hook])
    # metrics arrive one step late, so the loop stops after dispatching step 3
    assert int(state.step) == 3 and trainer.stop_reason == "enough"
    assert hook.events[-1] == ("close",)


def test_early_stop_keeps_a_checkpoint_of_the_step_it_stopped_at(tmp_path):
    cfg = _cfg("train.steps=20")
    trainer = Trainer(cfg)
    val = [_source(cfg).batch(1000)]
    hooks = [
        Evaluate(lambda: val, every=2, last=20),
        Checkpoint(Checkpointer(tmp_path / "ckpt"), every=100),
        EarlyStop("loss", target=100.0),  # reached at the first evaluation
    ]
    state = trainer.run(trainer.init_state(), _source(cfg), hooks=hooks)
    assert int(state.step) == 2 and "reached 100.0 at step 2" in trainer.stop_reason
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.steps() == [2]


def test_early_stop_with_patience_stops_when_nothing_improves():
    stop = EarlyStop("loss", patience=2)
    stopped = []
    stop.trainer = type("T", (), {"request_stop": lambda self, r: stopped.append(r)})()
    for step, loss in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.1)]:
        stop.on_record({"step": step, "split": "val", "loss": loss})
    assert stopped and "did not improve for 2 evaluations (step 4)" in stopped[0]


# ----------------------------------------------------------------------------- frozen trees


@register_objective("toy_kl_to_reference")
@dataclasses.dataclass(frozen=True)
class KLToReference(NextToken):
    """Next-token loss plus the KL from a frozen reference model's next-token distribution."""

    beta: float = 0.1

    def loss(self, model, batch, denominator):
        loss, metrics = super().loss(model, batch, denominator)
        policy = jax.nn.log_softmax(model.on(batch).logits)
        reference = jax.nn.log_softmax(model.frozen("reference").on(batch).logits)
        kl = (jnp.exp(policy) * (policy - reference)).sum(-1).sum() / denominator
        return loss + self.beta * kl, {**metrics, "kl": kl}


def _reference(cfg, seed=7):
    params, _ = init_model(cfg.model, jax.random.key(seed))
    return params


def test_frozen_params_reach_the_objective_and_stay_bit_identical():
    cfg = _cfg("train.objective=toy_kl_to_reference")
    reference = _reference(cfg)
    trainer = Trainer(cfg, frozen={"reference": reference})
    state, metrics = trainer.train(_source(cfg))
    assert all(m["kl"] > 0 for m in metrics)
    jax.tree.map(
        np.testing.assert_array_equal, jax.device_get(state.frozen["reference"]), reference
    )


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["parallel.mesh=data=2,fsdp=2,tensor=2", "parallel.mode=pmap"])
def test_frozen_params_are_placed_like_the_params_on_many_devices(parallel):
    cfg = _cfg("train.objective=toy_kl_to_reference", parallel)
    reference = _reference(cfg)
    trainer = Trainer(cfg, frozen={"reference": reference})
    state, _ = trainer.train(_source(cfg))
    kernel = lambda tree: tree["blocks"]["attention"]["query_kernel"]  # noqa: E731
    assert kernel(state.frozen["reference"]).sharding == kernel(state.params).sharding
    host = jax.device_get(trainer.parallel.host_state(state).frozen["reference"])
    jax.tree.map(np.testing.assert_array_equal, host, reference)


def test_frozen_params_of_another_shape_say_which_leaves_differ():
    cfg = _cfg()
    other = _reference(apply_overrides(cfg, ["model.d_ff=48"]))
    with pytest.raises(
        ConfigError, match=r"frozen params 'reference' do not match.*mlp/fc_in/kernel"
    ):
        Trainer(cfg, frozen={"reference": other})
    missing = dict(_reference(cfg))
    missing.pop("final_norm")
    with pytest.raises(ConfigError, match=r"final_norm/scale: in the model, not in the given tree"):
        Trainer(cfg, frozen={"reference": missing})


def test_frozen_params_of_another_model_need_their_config():
    cfg = _cfg()
    small = apply_overrides(cfg, ["model.n_layers=1"])
    trainer = Trainer(cfg, frozen={"reward": Frozen(_reference(small), model=small.model)})
    state = trainer.init_state()
    assert state.frozen["reward"]["blocks"]["mlp"]["fc_in"]["kernel"].shape[0] == 1


def test_saved_frozen_params_come_back_on_restore_and_unsaved_ones_are_given_again(tmp_path):
    cfg = _cfg("train.steps=2")
    keep, given = _reference(cfg, 1), _reference(cfg, 2)
    frozen = {"kept": Frozen(keep, save=True), "given": given}
    trainer = Trainer(cfg, frozen=frozen)
    ckpt = Checkpointer(tmp_path / "c", async_save=False)
    state = trainer.run(trainer.init_state(), _source(cfg), hooks=[Checkpoint(ckpt, every=2)])
    with Checkpointer(tmp_path / "c") as reopened:
        saved = reopened.restore({"frozen": {"kept": keep}}, partial=True)[0]
    with Checkpointer(tmp_path / "c") as reopened:
        restored = Trainer(cfg, frozen=frozen).restore(reopened)
    jax.tree.map(np.testing.assert_array_equal, saved["frozen"]["kept"], keep)
    for name, tree in (("kept", keep), ("given", given)):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.frozen[name]), tree)
    jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))


# ----------------------------------------------------------------------------- trainable masks


def _opt_paths(opt_state, params):
    """The params that have optimizer state (moments): leaves whose path ends with theirs."""
    names = {param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)]
    return {n for n in names for p in paths if p.endswith("/" + n)}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_trainable_mask_leaves_the_rest_unchanged_and_without_optimizer_state(optimizer):
    cfg = _cfg(f"optim.name={optimizer}", "train.trainable=mlp|final_norm")
    trainer = Trainer(cfg)
    start = jax.device_get(trainer.init_state().params)
    state, metrics = trainer.train(_source(cfg))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    for path, before in jax.tree_util.tree_leaves_with_path(start):
        after = jax.device_get(state.params)
        for key in path:
            after = after[key.key]
        if "mlp" in param_path(path) or "final_norm" in param_path(path):
            assert not np.array_equal(before, after), param_path(path)
        else:
            np.testing.assert_array_equal(before, after)
    moments = _opt_paths(state.opt_state, start)
    assert moments and all("mlp" in p or "final_norm" in p for p in moments), moments


def test_a_trainable_mask_that_selects_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"selects no params.*blocks/attention/query_kernel"):
        Trainer(_cfg("train.trainable=lora"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        Trainer(_cfg("train.trainable=(("))


def test_a_trainable_predicate_or_tree_selects_params():
    cfg = _cfg()
    params = jax.device_get(Trainer(cfg).init_state().params)
    by_predicate = Trainer(cfg, trainable=lambda path, leaf: path.startswith("embed"))
    tree = jax.tree_util.tree_map_with_path(lambda p, _: param_path(p).startswith("embed"), params)
    by_tree = Trainer(cfg, trainable=tree)
    assert by_predicate.training.trainable == by_tree.training.trainable
    state, _ = by_tree.train(FromFunction(_source(cfg).batch))
    np.testing.assert_array_equal(
        jax.device_get(state.params)["final_norm"]["scale"], params["final_norm"]["scale"]
    )


def test_a_checkpoint_written_before_frozen_trees_existed_still_restores(tmp_path):
    """Older runs saved the state's five fields of then (no "frozen" entry at all)."""
    cfg = _cfg("train.steps=2")
    trainer = Trainer(cfg)
    state, _ = trainer.train(_source(cfg))
    old = {k: getattr(state, k) for k in ("step", "params", "opt_state", "model_state")}
    with Checkpointer(tmp_path / "c", async_save=False) as ckpt:
        ckpt.save(2, {**old, "loss_scale": None})
    with Checkpointer(tmp_path / "c") as ckpt:
        restored = Trainer(cfg).restore(ckpt)
    assert int(restored.step) == 2 and restored.frozen is None
    jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))
