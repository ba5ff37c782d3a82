"""The notebooks execute top to bottom (nbclient, a real Jupyter kernel) on CPU, in fast mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", [pytest.param("quickstart", marks=pytest.mark.slow),
                                  pytest.param("analysis", marks=pytest.mark.slow)])
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("VITLAB_NB_FAST", "1")
    monkeypatch.setenv("VITLAB_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("VITLAB_CKPT", raising=False)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (1 if name == "quickstart" else 4)  # the plots were drawn
    assert os.listdir(tmp_path / "logs" / "notebook")
