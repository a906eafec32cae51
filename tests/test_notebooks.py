"""Notebooks run top to bottom (a few training steps) in a fresh kernel."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run(name: str, env: dict[str, str], timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH", "")]
    )
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_quickstart_runs():
    nb = _run("quickstart.ipynb", {"QUICKSTART_STEPS": "6"})
    text = _outputs(nb)
    assert "'bits_per_byte'" in text
    assert "log p(text | first token) =" in text
    assert any(
        o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])
    )  # the loss plot


def test_add_attention_variant_runs():
    nb = _run("add_attention_variant.ipynb", {})
    text = _outputs(nb)
    assert "reads_only_visible_keys" in text  # the conformance table
    assert "over 40 steps" in text  # the training run (the notebook asserts the loss fell)


def test_fine_tuning_runs():
    sizes = {
        "FINETUNE_PRETRAIN_STEPS": "10",
        "FINETUNE_SFT_STEPS": "20",
        "FINETUNE_EVAL_EXAMPLES": "8",
    }
    nb = _run("fine_tuning.ipynb", sizes)
    text = _outputs(nb)
    assert "adapter + " in text  # the trained-param count
    assert "SFT loss (reply tokens):" in text  # the notebook asserts the loss fell
    for split in ("train", "heldout_phrasing", "heldout_task"):
        assert f"--- {split}: exact match" in text
    assert any(
        o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])
    )  # the before/after plot


def test_alignment_runs():
    env = {
        "ALIGN_BASE_STEPS": "10",
        "ALIGN_SFT_STEPS": "6",
        "ALIGN_RM_STEPS": "6",
        "ALIGN_DPO_STEPS": "4",
        "ALIGN_PPO_ROLLOUTS": "1",
        "ALIGN_EVAL_PROMPTS": "4",
    }
    text = _outputs(_run("alignment.ipynb", env))
    assert "held-out pair accuracy" in text
    assert "optimizer steps; last:" in text  # the PPO run's records
    assert "win vs SFT" in text  # the gold-reward comparison


def test_decoding_runs():
    text = _outputs(_run("decoding.ipynb", {"DECODING_STEPS": "10", "DECODING_NEW_TOKENS": "16"}))
    for name in ("greedy", "temperature 1.5", "top-p 0.9", "beam search, 4 beams"):
        assert f"--- {name}: distinct-2" in text
    assert "tokens/s with the KV cache" in text
    assert "top-p 0.9 keeps 1 to" in text
    assert "greedy tokens identical to transformers': True" in text
    diff = float(text.split("against transformers ")[1].split()[0])
    assert diff < 1e-4


def test_every_notebook_installs_from_the_projects_repository():
    import tomllib

    with open(NOTEBOOKS.parent / "pyproject.toml", "rb") as f:
        url = tomllib.load(f)["project"]["urls"]["Repository"]
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        first_code = next(c for c in nbformat.read(path, as_version=4).cells
                          if c.cell_type == "code")  # fmt: skip
        assert f'REPOSITORY = "{url}"' in first_code.source, path.name
        assert "describe_devices()" in first_code.source, path.name
