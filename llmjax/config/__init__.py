"""Frozen, validated configs for model, data, optimizer and training; presets; overrides.

The package imports nothing above it: names of registered parts (norms, attention kernels,
optimizers, parallel modes, objectives ...) are checked where they are built.
"""

from llmjax.config.align import KL_ESTIMATORS, PREFERENCE_LOSSES, PreferenceConfig, RLConfig
from llmjax.config.files import config_text, read_config_file
from llmjax.config.io import RENAMED, from_dict, load_config, migrate, save_config, to_dict
from llmjax.config.model import (
    DTYPES,
    LORA_DEFAULT_TARGETS,
    NORM_POSITIONS,
    LoraConfig,
    ModelConfig,
    MoEConfig,
    RopeScaling,
)
from llmjax.config.overrides import apply_overrides
from llmjax.config.presets import PRESET_DESCRIPTIONS, PRESETS, get_preset
from llmjax.config.run import (
    LOSS_SCALE_MODES,
    Config,
    DataConfig,
    MuonConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from llmjax.errors import ConfigError

__all__ = [
    "PRESET_DESCRIPTIONS",
    "DTYPES",
    "KL_ESTIMATORS",
    "LORA_DEFAULT_TARGETS",
    "LOSS_SCALE_MODES",
    "NORM_POSITIONS",
    "PRESETS",
    "RENAMED",
    "Config",
    "ConfigError",
    "DataConfig",
    "LoraConfig",
    "MoEConfig",
    "ModelConfig",
    "MuonConfig",
    "OptimConfig",
    "PREFERENCE_LOSSES",
    "ParallelConfig",
    "PreferenceConfig",
    "RLConfig",
    "RopeScaling",
    "TrainConfig",
    "apply_overrides",
    "config_text",
    "from_dict",
    "get_preset",
    "load_config",
    "migrate",
    "read_config_file",
    "save_config",
    "to_dict",
]
