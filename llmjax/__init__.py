"""llmjax: a JAX/Flax functional model zoo for language models that is also a runnable textbook.

The public API, in the order a notebook meets it::

    cfg = llmjax.get_preset("nano")                              # a frozen Config
    cfg = llmjax.apply_overrides(cfg, ["model.n_layers=2"])      # checked overrides
    result = llmjax.fit(cfg, "runs/demo")                        # train, eval, checkpoint
    run = llmjax.load_run("runs/demo")                           # params + tokenizer back
    ft = llmjax.fit(llmjax.init_from_config("runs/demo"), "runs/ft")  # fine-tune those params
    trainer = llmjax.Trainer(cfg, objective=MyObjective())       # the loop, any objective
    print(llmjax.generate(run, "def ", temperature=0.8, top_p=0.95))  # KV-cached sampling
    hf = llmjax.load_hf("checkpoints/gpt2")                      # a Hugging Face checkpoint
"""

__version__ = "0.1.0"

from llmjax.align import score
from llmjax.attention import ATTENTION, Mask, reference_attention, register_attention
from llmjax.config import (
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RopeScaling,
    TrainConfig,
    apply_overrides,
    get_preset,
    load_config,
    save_config,
)
from llmjax.decode import Completion, SamplingConfig, generate
from llmjax.eval import evaluate
from llmjax.hf import export_hf, load_hf
from llmjax.models import build_model, count_params, init_model, logical_axes
from llmjax.objectives import (
    Objective,
    cross_entropy,
    register_objective,
    token_log_probs,
)
from llmjax.runs import LoadedRun, init_from_config, load_run
from llmjax.runtime import enable_compilation_cache
from llmjax.train.fit import FitResult, fit
from llmjax.train.frozen import Frozen
from llmjax.train.hooks import TrainingDiverged
from llmjax.train.trainer import Hook, Trainer

__all__ = [
    "ATTENTION",
    "PRESETS",
    "Completion",
    "Config",
    "ConfigError",
    "DataConfig",
    "FitResult",
    "Frozen",
    "Hook",
    "LoadedRun",
    "Mask",
    "ModelConfig",
    "Objective",
    "OptimConfig",
    "ParallelConfig",
    "RopeScaling",
    "SamplingConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "apply_overrides",
    "build_model",
    "count_params",
    "cross_entropy",
    "enable_compilation_cache",
    "evaluate",
    "export_hf",
    "fit",
    "generate",
    "score",
    "get_preset",
    "init_from_config",
    "init_model",
    "load_config",
    "load_hf",
    "load_run",
    "logical_axes",
    "reference_attention",
    "register_attention",
    "register_objective",
    "save_config",
    "token_log_probs",
]
