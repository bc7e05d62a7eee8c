"""Execute every committed notebook at small sizes."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbclient import NotebookClient  # noqa: E402

# Run first in every executed notebook: each figure shown must have a title and labelled
# axes on every subplot, and a legend on every subplot that draws more than one line or
# collection (its own or the figure's); plt.show() raises otherwise, which fails the cell.
LABEL_CHECK = """
import matplotlib.pyplot as _plt
_show = _plt.show
def _labelled_show(*args, **kwargs):
    _fig = _plt.gcf()
    for _ax in _fig.axes:
        _missing = [k for k, v in (("title", _ax.get_title()), ("x label", _ax.get_xlabel()),
                                   ("y label", _ax.get_ylabel())) if not v]
        if len(_ax.lines) + len(_ax.collections) > 1 and not (_ax.get_legend() or _fig.legends):
            _missing.append("legend")
        if _missing:
            raise AssertionError(f"a plot lacks its {', '.join(_missing)}")
    return _show(*args, **kwargs)
_plt.show = _labelled_show
print("figures checked")
"""

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_dp_sgd_quickstart.ipynb", "02_privacy_accounting.ipynb",
            "03_fast_dp_training.ipynb", "04_anonymization.ipynb",
            "05_output_noise.ipynb", "06_privacy_audit.ipynb"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MXPRIVACY_NB_EPOCHS", "3")
    monkeypatch.setenv("MXPRIVACY_NB_LIMIT", "3000")
    nb = nbformat.read(path, as_version=4)
    assert all(c.get("outputs") for c in nb.cells if c.cell_type == "code" and
               "import" not in c.source.splitlines()[0]), "commit notebooks with outputs"
    nb.cells.insert(0, nbformat.v4.new_code_cell(LABEL_CHECK))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert "figures checked" in "".join(o.get("text", "") for o in nb.cells[0].outputs)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its plots"
