"""A run directory opened for a command, its config.json checked against its checkpoint."""

from __future__ import annotations


def check_run(path: str, option: str = "--run") -> None:
    """The params of the run in `path` have the shapes its config.json gives, checked from the
    checkpoint's metadata: restoring onto other shapes fails inside orbax."""
    from llmjax.config import load_config
    from llmjax.runs import RunDir
    from llmjax.runs.init_from import check_saved_shapes

    run = RunDir.open(path)
    check_saved_shapes(f"{option} {path}", run, load_config(run.config).model)


def load_checked_run(path: str, step: int | None = None, option: str = "--run"):
    """`llmjax.load_run(path, step)` after `check_run`."""
    from llmjax.runs import load_run

    check_run(path, option)
    return load_run(path, step)
