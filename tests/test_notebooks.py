"""Execute every committed notebook at small sizes."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbclient import NotebookClient  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_dp_sgd_quickstart.ipynb", "02_privacy_accounting.ipynb",
            "03_fast_dp_training.ipynb", "04_anonymization.ipynb",
            "05_output_noise.ipynb"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MXPRIVACY_NB_EPOCHS", "3")
    monkeypatch.setenv("MXPRIVACY_NB_LIMIT", "3000")
    nb = nbformat.read(path, as_version=4)
    assert all(c.get("outputs") for c in nb.cells if c.cell_type == "code" and
               "import" not in c.source.splitlines()[0]), "commit notebooks with outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its plots"
