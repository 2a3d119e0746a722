"""The lecture notebook runs end to end with this library, and its plain-text twin holds the same cells."""
import glob
import os
import shutil

import pytest

from conftest import NO_NETWORK, ROOT, run_script

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra: pip install -e '.[test]'")

NOTEBOOK = os.path.join(ROOT, "notebooks", "build_gpt.ipynb")
TWIN = os.path.join(ROOT, "notebooks", "build_gpt.py")


def tiny_shakespeare():
    for path in (os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt"),
                 os.path.join(ROOT, "data", "shakespeare_char", "input.txt"),
                 os.environ.get("TINY_SHAKESPEARE", "")):
        if os.path.isfile(path):
            return path
    pytest.skip("the notebook trains on Tiny Shakespeare: run python prepare.py first")


def twin_cells(text):
    """(kind, source) of each cell of a jupytext percent-format script."""
    cells, kind, lines = [], None, []
    for line in text.splitlines() + ["# %%"]:
        if line.startswith("# %%"):
            if kind:
                cells.append((kind, "\n".join(lines).strip()))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind:
            lines.append(line)
    return cells


def test_the_notebook_is_committed_without_outputs_and_matches_its_twin():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code")
    with open(TWIN, encoding="utf-8") as f:
        assert twin_cells(f.read()) == [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_the_notebook_runs_end_to_end_offline_after_prepare_of_a_local_copy(tmp_path, monkeypatch):
    """As the README has a user without internet do it: a checkout, python prepare.py --input PATH, then
    the notebook, with every connection refused."""
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        shutil.copy(path, checkout)
    shutil.copy(NOTEBOOK, checkout / "notebooks")
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TINY_SHAKESPEARE", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(checkout))  # the kernel imports the library from this checkout
    run_script("prepare.py", "--input", tiny_shakespeare(), cwd=checkout)
    assert not (checkout / "data" / "shakespeare_char" / "input.txt").exists()  # read back from the tokens
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(checkout / "notebooks")}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell (or its asserts) fails
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs)
    assert "spelled-out heads == CausalSelfAttention" in printed and "ROMEO:" in printed
