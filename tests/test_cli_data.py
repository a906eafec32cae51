"""`llmjax train --data` with records: a bad JSONL, Parquet or dataset input fails in one line
naming the input, what it has and the fix, never a traceback; the data options are checked."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmjax.cli import main
from llmjax.config import ConfigError, DataConfig, apply_overrides, get_preset
from llmjax.data.inputs import InputOptions


def _fails(argv, capsys, *words):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("llmjax train: error: "), message
    for word in words:
        assert word in message, message
    return message


def _train(data, out, *sets):
    argv = ["train", "--preset", "test-tiny", "--data", data, "--out", out, "--no-progress"]
    return argv + [a for s in sets for a in ("--set", s)]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"doc {i}", "id": i}) + "\n" for i in range(9)))
    return path


def test_jsonl_without_the_text_field(jsonl, tmp_path, capsys):
    _fails(_train(jsonl, tmp_path / "r"), capsys, f"{jsonl}, line 1", "no field 'text'",
           "'body', 'id'", "--set data.text_field=body")  # fmt: skip


def test_parquet_without_the_text_field(tmp_path, capsys):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "lang": ["en", "fr"]}), path)
    argv = _train(path, tmp_path / "r", "data.text_field=txt")
    _fails(argv, capsys, str(path), "no field 'txt'", "'content', 'lang'")


def test_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("text\n" * 100)
    argv = _train(tmp_path / "plain", tmp_path / "r", "data.format=datasets")
    _fails(argv, capsys, "is not a dataset directory", "save_to_disk")


def test_a_missing_optional_package_names_the_extra(tmp_path, capsys, monkeypatch):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    for name in [n for n in sys.modules if n == "pyarrow" or n.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)
    _fails(_train(path, tmp_path / "r"), capsys, "pip install 'llmjax[parquet]'")


def test_data_options_are_checked(tmp_path, capsys, jsonl):
    message = _fails(_train(jsonl, tmp_path / "r", "data.val_split=random"), capsys)
    assert "data.val_split='random' is not known; valid choices: tail, documents" in message
    message = _fails(_train(jsonl, tmp_path / "r", "data.format=csv"), capsys)
    assert "data.format='csv' is not known" in message and "jsonl, parquet, text" in message
    assert not (tmp_path / "r").exists()  # refused before the run directory is made
    with pytest.raises(ConfigError, match="must not be empty"):
        DataConfig(text_field="")


def test_input_options_follow_the_config():
    cfg = apply_overrides(get_preset("test-tiny"), ["data.text_field=body", "data.streaming=true",
                                                    "data.dataset_split=test"])  # fmt: skip
    assert InputOptions.of(cfg.data) == InputOptions(
        text_field="body", dataset_split="test", streaming=True
    )


@pytest.mark.slow  # a 2-step training run: about 30 s on a busy 2-core machine
def test_train_on_jsonl_split_by_documents(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}: the cat sat. " * 3}) + "\n"
                            for i in range(300)))  # fmt: skip
    sets = ["train.steps=2", "train.eval_every=2", "train.eval_batches=1", "train.mfu=false",
            "data.val_split=documents"]  # fmt: skip
    assert main([str(a) for a in _train(path, tmp_path / "r", *sets)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["loss"] > 0
