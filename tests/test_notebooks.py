"""The teaching notebooks (``notebooks/*.ipynb``): committed without outputs, rendered in the docs, and run.

Each notebook is executed top to bottom in a fresh Jupyter kernel (nbclient) with the checkout on
``PYTHONPATH``; a cell that raises fails the test. The first cell (how to install) is tagged
``skip-execution``, which nbclient skips. The default run executes every notebook once with the backend it
names (about 30-60 s each on two quiet cores); ``pytest -m slow`` also runs the ones with a ``BACKEND``
switch in the other backend. Strip outputs before committing:
``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [path.name for path in NOTEBOOKS]
BACKEND_LINE = re.compile(r'^BACKEND = "(torch|tf)"', re.MULTILINE)
SKIP_TAG = "skip-execution"


def read(path: Path):
    return nbformat.read(str(path), as_version=4)


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_four_notebooks_exist():
    assert [name.split("_", 1)[0] for name in NAMES] == ["01", "02", "03", "04"], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_holds_no_outputs(name):
    nb = read(ROOT / "notebooks" / name)
    nbformat.validate(nb)
    stale = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not stale, (f"{name}: code cells {stale} hold outputs; strip them before committing: "
                       "jupyter nbconvert --clear-output --inplace notebooks/*.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_says_how_to_install_and_is_skipped_by_the_tests(name):
    nb = read(ROOT / "notebooks" / name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first = code_cells(nb)[0]
    assert SKIP_TAG in first.metadata.get("tags", []) and "pip install" in first.source
    assert all(SKIP_TAG not in cell.metadata.get("tags", []) for cell in code_cells(nb)[1:])


def test_docs_site_lists_every_notebook():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert "mkdocs-jupyter" in nav
    missing = [name for name in NAMES if f"notebooks/{name}" not in nav]
    assert not missing, f"notebooks missing from the mkdocs.yml nav: {missing}"
    link = ROOT / "docs" / "notebooks"
    assert link.is_symlink() and link.resolve() == (ROOT / "notebooks").resolve()


def execute(name: str, backend: str | None = None) -> float:
    """Runs notebook ``name`` (with ``BACKEND = backend`` if given); returns the wall time in seconds."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = read(ROOT / "notebooks" / name)
    if backend is not None:
        cells = [cell for cell in code_cells(nb) if BACKEND_LINE.search(cell.source)]
        assert len(cells) == 1, f"{name}: expected one cell setting BACKEND"
        cells[0].source = BACKEND_LINE.sub(f'BACKEND = "{backend}"', cells[0].source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("DUALMETA_VERBOSE", None)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", skip_cells_with_tag=SKIP_TAG,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError, naming the cell, if one raises
    seconds = time.perf_counter() - start
    errors = [out for cell in code_cells(nb) for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, errors
    skipped = code_cells(nb)[0]
    assert not skipped.get("outputs") and skipped.get("execution_count") is None  # the install cell did not run
    return seconds


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name):
    seconds = execute(name)
    print(f"{name}: {seconds:.0f} s")


def _switchable():
    return [name for name in NAMES if BACKEND_LINE.search("\n".join(c.source for c in code_cells(read(ROOT / "notebooks" / name))))]


@pytest.mark.slow
@pytest.mark.parametrize("name", _switchable())
def test_notebook_runs_with_the_other_backend(name):
    nb = read(ROOT / "notebooks" / name)
    (current,) = {m.group(1) for c in code_cells(nb) for m in [BACKEND_LINE.search(c.source)] if m}
    seconds = execute(name, backend="tf" if current == "torch" else "torch")
    print(f"{name}: {seconds:.0f} s")
