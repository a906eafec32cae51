"""Run directories on disk: their layout, checkpoints, loading weights, and how a run starts
(fresh, resumed, or from another run's params). Decoding, export and evaluation read runs
through this package alone; only training writes them."""

from llmjax.runs.chat_template import choose_template, run_template, save_template
from llmjax.runs.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from llmjax.runs.init_from import Source, init_from_config, open_source, restore_params
from llmjax.runs.load import LoadedRun, load_run, save_weights
from llmjax.runs.rundir import MANIFEST, RUN_FILES, RunDir, RunDirError
from llmjax.runs.shapes import check_saved_shapes, weights_target
from llmjax.runs.start import Start, check_resumable, open_start, start_config

__all__ = [
    "MANIFEST",
    "RUN_FILES",
    "CheckpointError",
    "CheckpointWarning",
    "Checkpointer",
    "LoadedRun",
    "RunDir",
    "RunDirError",
    "Source",
    "Start",
    "check_resumable",
    "check_saved_shapes",
    "choose_template",
    "init_from_config",
    "load_run",
    "open_source",
    "open_start",
    "restore_params",
    "run_template",
    "save_template",
    "save_weights",
    "start_config",
    "weights_target",
]
