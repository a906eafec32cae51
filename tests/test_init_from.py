"""Starting a run from another run's params: fine-tuning with a fresh optimizer."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from llmjax.cli import main
from llmjax.config import PRESETS, apply_overrides
from llmjax.runs import RunDirError, init_from_config, load_run
from llmjax.train.fit import fit


def _tree_files(path):
    return {
        os.path.relpath(os.path.join(d, f), path): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(path)
        for f in files
    }


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora over the same words: the source run trains on one, fine-tuning on the other."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    paths = []
    for name in ("pretrain.txt", "finetune.txt"):
        path = root / name
        path.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(600)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def source(corpora, tmp_path_factory):
    """A trained test-tiny run (byte tokenizer) and its result."""
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [
            f"data.path={corpora[0]}",
            "train.steps=30",
            "train.eval_every=30",
            "train.checkpoint_every=30",
            "train.eval_batches=2",
            "optim.lr=3e-3",
        ],
    )
    out = tmp_path_factory.mktemp("runs") / "source"
    return out, fit(cfg, out, progress=False)


def _finetune_cfg(source_dir, corpus, *overrides):
    cfg = init_from_config(source_dir)
    return apply_overrides(
        cfg,
        [
            f"data.path={corpus}",
            "train.steps=6",
            "train.eval_every=6",
            "train.checkpoint_every=3",
            "train.log_every=1",
            "train.eval_batches=2",
            "model.dropout=0.1",  # changes no shape, so it may differ from the source
            *overrides,
        ],
    )


def test_a_run_starts_from_the_source_params_with_a_fresh_optimizer(source, corpora, tmp_path):
    src_dir, src = source
    before = _tree_files(src_dir)
    cfg = _finetune_cfg(src_dir, corpora[1], "optim.lr=1e-9", "optim.warmup_steps=0")
    assert cfg.model.d_model == src.config.model.d_model
    assert cfg.train.init_from == str(src_dir.absolute())
    result = fit(cfg, tmp_path / "ft", progress=False)
    # lr ~0: the params stay the source's; the step count starts over.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        jax.device_get(src.state.params),
        jax.device_get(result.state.params),
    )
    assert int(result.state.step) == 6
    records = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").open()]
    first = next(r for r in records if r["split"] == "train")
    # A random init would start near ln(259) = 5.6; this starts where the source ended.
    assert first["step"] == 1 and abs(first["loss"] - src.final_eval["loss"]) < 0.2
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (
        src_dir / "tokenizer.json"
    ).read_text()
    assert _tree_files(src_dir) == before  # the source is only read


def test_resuming_a_fine_tune_equals_running_it_through(source, corpora, tmp_path):
    src_dir, _ = source
    cfg = _finetune_cfg(src_dir, corpora[1])
    full = fit(cfg, tmp_path / "full", progress=False)
    fit(cfg, tmp_path / "split", progress=False, stop_after=4)
    resumed = fit(cfg, tmp_path / "split", resume=True, progress=False)
    assert int(resumed.state.step) == 6
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(full.state.params),
        jax.device_get(resumed.state.params),
    )


def test_a_mesh_run_starts_from_a_single_device_run(source, corpora, tmp_path):
    src_dir, src = source
    mesh = "parallel.mesh=data=-1,fsdp=2,tensor=2"  # tensor=2 pads the vocabulary to 384
    cfg = _finetune_cfg(src_dir, corpora[1], "optim.lr=1e-9", "optim.warmup_steps=0", mesh)
    result = fit(cfg, tmp_path / "ft", progress=False)
    assert result.config.model.padded_vocab_size == 384 != src.config.model.padded_vocab_size

    def same_rows(a, b):
        np.testing.assert_allclose(a, b[tuple(slice(0, n) for n in a.shape)], atol=1e-6)

    got = jax.device_get(result.state.params)
    jax.tree.map(same_rows, jax.device_get(src.state.params), got)
    assert got["embed"]["embedding"].shape == (384, 32)


def test_a_model_of_other_shapes_is_refused_before_anything_is_written(source, corpora, tmp_path):
    src_dir, _ = source
    cfg = _finetune_cfg(src_dir, corpora[1], "model.d_model=64")
    with pytest.raises(RunDirError, match=r"other shapes.*model\.d_model \(32 -> 64\)"):
        fit(cfg, tmp_path / "ft", progress=False)


def test_another_tokenizer_is_refused(source, corpora, tmp_path):
    src_dir, _ = source
    cfg = dataclasses.replace(
        _finetune_cfg(src_dir, corpora[1]),
        data=dataclasses.replace(_finetune_cfg(src_dir, corpora[1]).data, tokenizer="char"),
    )
    from llmjax.data import prepare_data

    data = prepare_data(corpora[1], "char")
    with pytest.raises(RunDirError, match="vocabulary of 259 ids.*tokenizer"):
        fit(cfg, tmp_path / "ft", progress=False, data=data)


def test_the_source_is_never_the_output(source, corpora):
    src_dir, _ = source
    before = _tree_files(src_dir)
    cfg = _finetune_cfg(src_dir, corpora[1])
    with pytest.raises(RunDirError, match="both.*replace the params being read"):
        fit(cfg, src_dir, overwrite=True, progress=False)
    assert _tree_files(src_dir) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume", "--out", "x"], "--init-from starts a new run and --resume continues one"),
        ([], "does not exist"),
    ],
)
def test_cli_bad_init_from_exits_2(extra, message, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["train", "--init-from", str(missing), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_init_from_takes_the_source_model_and_the_preset_optimizer(source, corpora, tmp_path):
    src_dir, _ = source
    out = tmp_path / "ft"
    argv = ["train", "--init-from", str(src_dir), "--preset", "nano", "--data", str(corpora[1])]
    argv += ["--steps", "2", "--set", "train.eval_every=2", "--set", "train.eval_batches=1"]
    argv += ["--set", "train.mfu=false", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    run = load_run(out)
    assert run.config.model == dataclasses.replace(
        load_run(src_dir).config.model, vocab_multiple=run.config.model.vocab_multiple
    )
    # The preset's optimizer, with the schedule length the run saved (its train.steps).
    steps = run.config.train.steps
    assert run.config.optim == dataclasses.replace(PRESETS["nano"].optim, schedule_steps=steps)
    assert run.config.train.init_from == str(src_dir.absolute())


def test_a_run_started_from_another_spans_its_own_schedule(source, tmp_path):
    """The source saved the length of its own lr schedule; a new run plans one over its steps."""
    from llmjax.runs import init_from_config

    out, result = source
    assert result.config.optim.schedule_steps == 30
    assert init_from_config(out).optim.schedule_steps is None
