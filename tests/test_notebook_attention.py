"""The attention-variant notebook runs top to bottom (locally, without network)."""

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "add_attention_variant.ipynb"


def _kernel_name(tmp_path: Path) -> str:
    """'python3' if Jupyter knows it, else a spec pointing at this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        spec = tmp_path / "kernels" / "llmjax-test"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "llmjax test", "language": "python"})
        )
        os.environ["JUPYTER_PATH"] = f"{tmp_path}{os.pathsep}{os.environ.get('JUPYTER_PATH', '')}"
        return "llmjax-test"


def test_add_attention_variant_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=_kernel_name(tmp_path),
        timeout=300,
        # Run where the notebook lives: its first cell finds the clone instead of installing.
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "reads_only_visible_keys" in outputs and "loss" in outputs
