"""docs/notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (as a reader would run it)."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = {i: c.outputs for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(str(o.get("data", {}).get("text/plain", o.get("text", ""))) for cell in outputs.values()
                     for o in cell)
    assert "Run('notebook-runs/titan', 10 rounds" in text
    assert "Run('notebook-runs/own-model', 10 rounds" in text  # a model class written in the notebook's folder
    assert "8 of 8 runs done" in text and "warmup-loss - random" in text
    assert (tmp_path / "notebook-runs" / "pruning-sweep" / "report.html").exists()
    assert any("image/png" in o.get("data", {}) for cell in outputs.values() for o in cell)  # the figures
