"""Every `llmjax` command failure is one line naming the file or value and the fix: out of
memory, unwritable outputs, damaged files, init-from shape mismatches and impossible values."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from llmjax.cli import main
from llmjax.cli.errors import (
    DEBUG_ENV,
    memory_asked,
    os_error_message,
    out_of_memory_message,
    train_memory,
)
from llmjax.config import apply_overrides, get_preset

CPU_OOM = "RESOURCE_EXHAUSTED: Out of memory allocating 39155374688 bytes."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("to be or not to be, that is the question.\n" * 300)
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    """One tiny trained run (2 steps) that the tests copy and damage."""
    from llmjax import apply_overrides, fit

    cfg = apply_overrides(
        get_preset("test-tiny"),
        [
            f"data.path={corpus}",
            "train.steps=2",
            "train.eval_every=2",
            "train.eval_batches=1",
            "train.checkpoint_every=2",
            "train.mfu=false",
        ],
    )
    out = tmp_path_factory.mktemp("runs") / "run"
    fit(cfg, out, progress=False)
    return out


@pytest.fixture
def damaged(run_dir, tmp_path):
    """A scratch copy of the trained run."""
    return shutil.copytree(run_dir, tmp_path / "copy")


@pytest.fixture(scope="module")
def hf_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "hf"
    assert main(["convert", "--to-hf", str(run_dir), "--out", str(out)]) == 0
    return out


def _fails(argv, capsys, *names, code=2):
    """Runs the CLI in-process; asserts exit `code`, one message naming each of `names`, and no
    traceback. Returns the message."""
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"llmjax {argv[0]}: ")
    for name in names:
        assert str(name) in message, message
    return message


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- out of memory


def test_out_of_memory_names_the_batch_the_memory_and_the_fixes():
    cfg = apply_overrides(get_preset("test-tiny"), ["data.batch_size=100000"])
    facts, fixes = train_memory(cfg)
    message = out_of_memory_message(jax.errors.JaxRuntimeError(CPU_OOM), facts, fixes)
    assert "out of device memory" in message and "36.5 GiB" in message
    assert "data.batch_size=100000" in message and "seq_len=32" in message
    assert "2 layers x d_model 32" in message
    assert "--set data.batch_size=25000" in message and "--grad-accum 2" in message
    assert "model.remat=full" in message


@pytest.mark.parametrize(
    ("text", "asked"),
    [
        (CPU_OOM, "36.5 GiB"),
        ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2147483648 bytes.", "2.0 GiB"),
        ("Failed to allocate request for 1.20GiB (1288490188B) on device ordinal 0", "1.2 GiB"),
        ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.48G hbm.",
         "20.5GB of hbm memory, of 15.48GB available"),
        ("RESOURCE_EXHAUSTED: something else", None),
    ],
)  # fmt: skip
def test_memory_asked_reads_each_backends_message(text, asked):
    got = memory_asked(text)
    assert got == asked if asked is None else asked in got


def test_train_out_of_memory_is_one_line_at_the_cli(corpus, tmp_path, capsys, monkeypatch):
    import llmjax.train.fit

    def fit(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(CPU_OOM)

    monkeypatch.setattr(llmjax.train.fit, "fit", fit)
    argv = ["train", "--preset", "test-tiny", "--data", corpus, "--out", tmp_path / "r"]
    message = _fails([*argv, "--set", "data.batch_size=100000"], capsys, "data.batch_size=100000")
    assert "36.5 GiB" in message and "--grad-accum" in message


# ----------------------------------------------------------------------------- output paths


def test_out_under_a_regular_file(corpus, tmp_path, capsys):
    (tmp_path / "somefile").write_text("x")
    out = tmp_path / "somefile" / "run"
    argv = ["train", "--preset", "test-tiny", "--data", corpus, "--steps", 2, "--out", out]
    message = _fails(argv, capsys, "--out", tmp_path / "somefile")
    assert "is a file, not a directory" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_out_in_a_read_only_directory(corpus, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        argv = ["train", "--preset", "test-tiny", "--data", corpus, "--out", parent / "run"]
        assert "permission denied" in _fails(argv, capsys, "--out", parent)
    finally:
        parent.chmod(0o755)


def test_out_where_the_system_refuses(corpus, capsys):
    out = "/sys/llmjax-cannot-be-here"
    try:
        os.mkdir(out)
    except OSError:
        pass
    else:
        os.rmdir(out)
        pytest.skip("needs a /sys that refuses new directories")
    argv = ["train", "--preset", "test-tiny", "--data", corpus, "--steps", 2, "--out", out]
    message = _fails(argv, capsys, out, "--out")
    assert "not permitted" in message or "permission denied" in message


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), "permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/x/ckpt"), "free some space"),
        (OSError(errno.EROFS, "Read-only file system", "/data/x"), "read-only"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/x"), "not a directory"),
    ],
)
def test_os_errors_name_the_path_and_the_option(error, words):
    message = os_error_message(error, {"--out": "/data/x", "--data": "/elsewhere"})
    assert "/data/x" in message and words in message and "choose another --out" in message


# ----------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [
        (lambda d: _truncate(d / "model.safetensors"), "model.safetensors", "truncated or damaged"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors", "header"),
        (lambda d: (d / "config.json").write_text('{"model_type": '), "config.json", "JSON"),
        (lambda d: (d / "config.json").unlink(), "config.json", "no config.json"),
        (
            lambda d: _edit_json(d / "config.json", lambda c: c.update(n_embd="wide")),
            "config.json",
            "d_model must be a positive integer",
        ),
    ],
)
def test_convert_from_a_damaged_hf_directory(damage, file, words, hf_dir, tmp_path, capsys):
    copy = shutil.copytree(hf_dir, tmp_path / "hf")
    damage(copy)
    message = _fails(["convert", "--from-hf", copy, "--out", tmp_path / "out"], capsys, copy, file)
    assert words in message and not (tmp_path / "out").exists()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ----------------------------------------------------------------------------- init-from shapes


def test_init_from_a_run_whose_config_disagrees_with_its_checkpoint(damaged, tmp_path):
    """Restoring onto other shapes fails inside orbax and tensorstore (in the worst case by
    aborting the process), so this runs the CLI as a user does, in a subprocess."""
    _edit_json(damaged / "config.json", lambda c: c["model"].update(d_model=16))
    out = tmp_path / "ft"
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "train", "--init-from", str(damaged), "--steps", "2"]
        + ["--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert str(damaged / "config.json") in message and str(damaged / "checkpoints" / "2") in message
    assert "(2, 4, 8) in the checkpoint, (2, 4, 4) from config.json" in message
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("edit", [dict(scan_layers=False), dict(tie_embeddings=False)])
def test_sample_from_a_run_whose_config_disagrees_with_its_checkpoint(edit, damaged, capsys):
    # A tree that differs (not only shapes) used to come back from orbax with placeholders.
    _edit_json(damaged / "config.json", lambda c: c["model"].update(edit))
    message = _fails(["sample", "--run", damaged, "--max-new-tokens", 2], capsys, "config.json")
    assert "do not have the shapes" in message


def test_convert_to_hf_from_a_run_whose_config_disagrees_with_its_checkpoint(
    damaged, tmp_path, capsys
):
    _edit_json(damaged / "config.json", lambda c: c["model"].update(n_layers=3))
    argv = ["convert", "--to-hf", damaged, "--out", tmp_path / "hf"]
    assert "(2, 4, 8) in the checkpoint, (3, 4, 8)" in _fails(argv, capsys, damaged)


def test_convert_out_under_a_regular_file(hf_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["convert", "--from-hf", hf_dir, "--out", tmp_path / "file" / "run"]
    assert "is a file, not a directory" in _fails(argv, capsys, "--out", tmp_path / "file")


def test_init_from_with_other_model_settings(run_dir, corpus, tmp_path, capsys):
    argv = ["train", "--init-from", run_dir, "--preset", "nano", "--data", corpus, "--steps", 2]
    argv += ["--out", tmp_path / "ft", "--set", "model.n_heads=2", "--no-progress"]
    message = _fails(argv, capsys, run_dir, "model.n_heads")
    assert "other shapes" in message


# ----------------------------------------------------------------------------- run directories


CORRUPT_CONFIGS = {
    "invalid JSON": (lambda p: p.write_text('{"model": {'), "is not valid JSON"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8"),
    "wrong type": (
        lambda p: _edit_json(p, lambda c: c["model"].update(d_model="big")),
        "model.d_model must be an integer, got a string 'big'",
    ),
    "section of the wrong type": (
        lambda p: _edit_json(p, lambda c: c.update(optim=[1])),
        "config.optim must be a JSON object",
    ),
    "unknown key": (
        lambda p: _edit_json(p, lambda c: c["train"].update(colour="blue")),
        "unknown field(s) ['colour']",
    ),
    "impossible value": (
        lambda p: _edit_json(p, lambda c: c["optim"].update(lr=float("inf"))),
        "optim.lr must be a finite number",
    ),
}


@pytest.mark.parametrize("command", ["sample", "eval", "resume", "init-from"])
@pytest.mark.parametrize("corruption", list(CORRUPT_CONFIGS))
def test_a_corrupt_run_config_is_named(command, corruption, damaged, corpus, tmp_path, capsys):
    damage, words = CORRUPT_CONFIGS[corruption]
    damage(damaged / "config.json")
    argv = {
        "sample": ["sample", "--run", damaged],
        "eval": ["eval", "--run", damaged, "--data", corpus],
        "resume": ["train", "--resume", "--out", damaged, "--steps", 4],
        "init-from": ["train", "--init-from", damaged, "--out", tmp_path / "ft"],
    }[command]
    message = _fails(argv, capsys, damaged / "config.json")
    assert words in message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"kind": ', "is not a tokenizer JSON file"),
        ('{"kind": "char", "llmjax_tokenizer": 1, "chars": 5}', "damaged llmjax char tokenizer"),
        ('{"kind": "char", "llmjax_tokenizer": 1}', "no 'chars'"),
        ('{"kind": ["byte"], "llmjax_tokenizer": 1}', "of kind ['byte']"),
    ],
)
def test_a_corrupt_tokenizer_is_named(content, words, damaged, capsys):
    (damaged / "tokenizer.json").write_text(content)
    message = _fails(["sample", "--run", damaged], capsys, damaged / "tokenizer.json")
    assert words in message


def test_the_tokenizer_of_another_run_is_named(damaged, capsys):
    (damaged / "tokenizer.json").write_text(
        '{"kind": "char", "llmjax_tokenizer": 1, "chars": "abc"}'
    )
    message = _fails(["sample", "--run", damaged, "--prompt", "abc"], capsys, "tokenizer.json")
    assert "has 3 token ids but the model" in message and "has 259" in message


def test_a_damaged_checkpoint_is_one_line(damaged, capsys):
    for f in (damaged / "checkpoints" / "2").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:64])  # the array data, truncated
    message = _fails(["sample", "--run", damaged, "--max-new-tokens", 2], capsys, damaged)
    assert "could be read" in message and len(message) < 1000


# ----------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lr=inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
        ("optim.clip_norm=inf", "optim.clip_norm must be a finite number"),
        ("optim.eps=0", "optim.eps must be > 0"),
        ("optim.momentum=1", "optim.momentum must be in [0, 1)"),
        ("optim.muon.adam_lr=inf", "optim.muon.adam_lr must be a finite number"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
        ("model.norm_eps=nan", "model.norm_eps must be a finite number"),
        ("model.rope_scaling.factor=inf", "model.rope_scaling.factor must be a finite number"),
        ("model.rope_scaling.beta_slow=0", "beta_fast and beta_slow count rotations"),
        ("train.z_loss=inf", "train.z_loss must be a finite number"),
        ("train.seed=-1", "train.seed must be an integer >= 0"),
        ("data.batch_size=0", "data.batch_size must be a positive integer"),
        ("data.seq_len=1000", "data.seq_len=1000 is longer than the learned position table"),
        ("data.nokey=1", "unknown option 'data.nokey'"),
    ],
)
def test_impossible_train_values_are_refused(override, words, corpus, tmp_path, capsys):
    argv = ["train", "--preset", "test-tiny", "--data", corpus, "--out", tmp_path / "r"]
    assert words in _fails([*argv, "--set", override], capsys)
    assert not (tmp_path / "r").exists()


def test_negative_steps_are_refused(corpus, tmp_path, capsys):
    argv = ["train", "--preset", "test-tiny", "--data", corpus, "--steps", -1]
    assert "train.steps must be a positive integer" in _fails(argv, capsys)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--stop-token-id", 99999], "stop token id 99999 is outside the vocabulary"),
        (["--stop-token-id", -1], "stop token id -1 is outside the vocabulary"),
        (["--num-beams", 2, "--length-penalty", "nan"], "length_penalty=nan is out of range"),
    ],
)
def test_impossible_sample_values_are_refused(args, words, run_dir, capsys):
    argv = ["sample", "--run", run_dir, "--max-new-tokens", 2, *args]
    assert words in _fails(argv, capsys)


def test_generate_refuses_stop_ids_outside_the_vocabulary(run_dir):
    from llmjax import generate, load_run

    with pytest.raises(ValueError, match=r"stop token id 259 is outside.*0\.\.258"):
        generate(load_run(run_dir), "to be", max_new_tokens=2, stop_token_ids=[259])


def test_a_binary_prompt_file_is_refused(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    _fails(["sample", "--run", run_dir, "--prompt-file", prompts], capsys, prompts, "not UTF-8")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, "NUL byte"),
        (bytes(range(128, 256)) * 40, "not UTF-8"),
        (b"", "is empty"),
    ],
)
def test_a_data_file_that_is_not_text_is_refused(content, words, tmp_path, capsys):
    data = tmp_path / "input.bin"
    data.write_bytes(content)
    argv = ["train", "--preset", "test-tiny", "--data", data, "--out", tmp_path / "r"]
    assert words in _fails(argv, capsys, data)


def test_a_data_directory_without_text_files(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    argv = ["train", "--preset", "test-tiny", "--data", tmp_path / "data", "--out", tmp_path / "r"]
    assert "no usable text files" in _fails(argv, capsys, tmp_path / "data")


def test_eval_batch_size_must_be_positive(run_dir, capsys):
    assert "--batch-size=0" in _fails(["eval", "--run", run_dir, "--batch-size", 0], capsys)


# ----------------------------------------------------------------------------- unexpected errors


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch, capsys):
    import llmjax.cli.presets

    def boom(args):
        raise RuntimeError("inner detail\nand pages of context")

    monkeypatch.setattr(llmjax.cli.presets, "run", boom)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    message = _fails(["presets"], capsys, "RuntimeError: inner detail", f"{DEBUG_ENV}=1", code=1)
    assert "pages of context" not in message
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(["presets"]) == 1
    assert "Traceback" in capsys.readouterr().err
