"""Config files (YAML or JSON) over presets, `llmjax config show`, `llmjax presets`, and the
one-line errors for a bad config file."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from llmjax.cli import main
from llmjax.config import (
    PRESET_DESCRIPTIONS,
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    config_text,
    from_dict,
    read_config_file,
    to_dict,
)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_reads_back_from_its_text(name, fmt, tmp_path):
    path = tmp_path / f"cfg.{fmt}"
    path.write_text(config_text(PRESETS[name], fmt))
    assert read_config_file(path, base=Config()) == PRESETS[name]


def test_a_partial_file_replaces_only_its_fields(tmp_path):
    path = tmp_path / "run.yaml"
    # `1e-3` is a string to YAML 1.1 (PyYAML); where a number goes it is read as one.
    path.write_text("optim:\n  lr: 1e-3\n  warmup_steps: 5\ntrain:\n  steps: 50\n")
    cfg = read_config_file(path, base=PRESETS["test-tiny"])
    tiny = PRESETS["test-tiny"]
    assert cfg == dataclasses.replace(
        tiny,
        optim=dataclasses.replace(tiny.optim, lr=1e-3, warmup_steps=5),
        train=dataclasses.replace(tiny.train, steps=50),
    )


def bad_file(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("a.yaml", "train:\n  steps: 10\n  stepz: 3\n",
         ["a.yaml line 3", "unknown key 'train.stepz'", "did you mean train.steps?", "Rename"]),
        ("b.yaml", "modle:\n  d_model: 8\n", ["line 1", "'modle'", "did you mean model?"]),
        ("c.yaml", "optim:\n  lr: 1e-3\ntrain:\n  steps: ten\n",
         ["c.yaml line 4", "train.steps must be an integer, got a string 'ten'"]),
        ("d.yaml", "train:\n  eval_every: 5\n  steps: -4\n",
         ["d.yaml line 3", "train.steps must be a positive integer, got -4"]),
        ("e.yaml", "train: 5\n", ["e.yaml line 1", "train must be a mapping", "got a number 5"]),
        ("f.yaml", "train: [1\n", ["f.yaml line 2", "not valid YAML", "fix the syntax"]),
        ("g.json", '{"train": {"steps": "x"}}', ["g.json line 1", "must be an integer"]),
        ("h.json", '{"train": }', ["h.json line 1", "not valid JSON"]),
        ("i.yaml", "# nothing yet\n", ["i.yaml is empty", "llmjax config show"]),
        ("j.yaml", "- model\n", ["the config must be a mapping", "got a list"]),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_key_its_line_and_the_fix(tmp_path, capsys, name, text, words):
    path = bad_file(tmp_path, name, text)
    with pytest.raises(ConfigError) as error:
        read_config_file(path, PRESETS["nano"])
    for word in words:
        assert word in str(error.value)
    # At the command line: exit 2 and that one line, no traceback.
    assert main(["config", "show", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and words[0] in err


def test_train_with_a_bad_config_file_stops_before_anything_is_written(tmp_path, capsys):
    path = bad_file(tmp_path, "run.yaml", "train:\n  stepz: 3\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--no-progress"]) == 2
    assert "run.yaml line 2: unknown key 'train.stepz'" in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_config_file_and_config_with_resume(tmp_path, capsys):
    assert main(["config", "show", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    args = ["train", "--config", str(tmp_path / "x.yaml"), "--resume", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--config cannot be combined with --resume" in capsys.readouterr().err


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    path = bad_file(tmp_path, "run.yaml", "train:\n  steps: 50\n  seed: 3\n")
    args = ["config", "show", "--preset", "test-tiny", "--config", str(path)]
    assert main([*args, "--set", "train.steps=7", "--format", "json"]) == 0
    shown = from_dict(json.loads(capsys.readouterr().out))
    assert shown == apply_overrides(PRESETS["test-tiny"], ["train.seed=3", "train.steps=7"])
    assert main(args) == 0  # YAML by default, every field
    assert yaml.safe_load(capsys.readouterr().out) == to_dict(
        apply_overrides(PRESETS["test-tiny"], ["train.seed=3", "train.steps=50"])
    )


def test_presets_lists_aligned_names_params_and_descriptions(capsys):
    assert main(["presets"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["name", "params", "description"]
    assert [line.split()[0] for line in lines] == list(PRESETS)
    start = header.index("description")
    for line, name in zip(lines, PRESETS, strict=True):
        assert line[start:] == PRESET_DESCRIPTIONS[name]
        assert line[start - 2 : start] == "  " and line[start - 3] != " "  # params end together
    assert re.search(r"^gpt2-small +124\.5M ", "\n".join(lines), re.M)


def test_presets_name_shows_one_preset_in_full(capsys):
    assert main(["presets", "nano"]) == 0
    assert from_dict(yaml.safe_load(capsys.readouterr().out)) == PRESETS["nano"]
    assert main(["presets", "nano", "--format", "json"]) == 0
    assert from_dict(json.loads(capsys.readouterr().out)) == PRESETS["nano"]
    assert main(["presets", "nope"]) == 2
    assert "unknown preset 'nope'; valid presets: test-tiny" in capsys.readouterr().err
