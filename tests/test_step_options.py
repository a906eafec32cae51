"""The compiler options of the steps that run many times (llmjax.runtime.step_compiler_options):
on a CPU, XLA:CPU's YNNPACK library fusions are off in the train and eval steps, unless the user
keeps XLA's defaults; the losses are the same either way."""

import numpy as np
import pytest

from llmjax import runtime
from llmjax.config import apply_overrides, get_preset
from llmjax.train.bench import compile_step

OPTION = "xla_cpu_experimental_ynn_fusion_type"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(runtime.XLA_DEFAULTS_ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    return monkeypatch


def test_cpu_steps_turn_library_fusions_off(clean_env):
    assert runtime.step_compiler_options() == {OPTION: ""}


@pytest.mark.parametrize("setting", ["1", "on", "yes"])
def test_xla_defaults_env_keeps_xla_choice(clean_env, setting):
    clean_env.setenv(runtime.XLA_DEFAULTS_ENV, setting)
    assert runtime.step_compiler_options() == {}


def test_user_xla_flags_win(clean_env):
    clean_env.setenv("XLA_FLAGS", f"--{OPTION}=dot")
    assert runtime.step_compiler_options() == {}


def test_a_jaxlib_without_the_option_gets_xla_defaults(clean_env):
    clean_env.setattr(runtime, "CPU_STEP_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
    assert runtime.step_compiler_options() == {}


def _step(monkeypatch, keep_defaults: bool):
    if keep_defaults:
        monkeypatch.setenv(runtime.XLA_DEFAULTS_ENV, "1")
    cfg = apply_overrides(get_preset("test-tiny"), ["model.vocab_size=64"])
    step = compile_step(cfg)
    text = step.trainer.compile_train_step(step.state, step.batch).as_text()
    step.run(3)
    return text, [m["loss"] for m in step.metrics]


def test_train_step_compiles_without_library_fusions_to_the_same_losses(clean_env):
    ours, ours_loss = _step(clean_env, keep_defaults=False)
    xla, xla_loss = _step(clean_env, keep_defaults=True)
    assert "ynn" not in ours
    assert "ynn" in xla  # jaxlib 0.10's XLA:CPU fuses this model's matmuls by default
    np.testing.assert_allclose(ours_loss, xla_loss, rtol=1e-5)
