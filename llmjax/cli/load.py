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
    """`llmjax.load_run(path, step)` after `check_run`, with its tokenizer checked to be the
    one the model was trained with (as far as the vocabulary sizes tell)."""
    from llmjax.runs import RunDirError, load_run

    check_run(path, option)
    loaded = load_run(path, step)
    have, want = loaded.tokenizer.vocab_size, loaded.config.model.vocab_size
    # A run trains on its tokenizer's exact vocabulary; a converted one may have more
    # embedding rows than its tokenizer has ids, never fewer.
    exact = loaded.tokenizer.kind in ("byte", "char")
    if have > want or (exact and have != want):
        raise RunDirError(
            f"{option} {path}: {loaded.run.tokenizer} has {have} token ids but the model in "
            f"{loaded.run.config} has {want}, so it is not the tokenizer this run was trained "
            f"with; restore the run's own tokenizer.json"
        )
    return loaded
