"""The notebooks in notebooks/: committed without outputs, and each one runs from top to bottom
on a kernel of the running interpreter (nbclient), in a temporary working directory, with a few
of its outputs checked. Each notebook loads the embedded model once (about half a minute)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["quickstart.ipynb", "ioi.ipynb", "hf-workflow.ipynb"]
CELL_TIMEOUT = 600  # the first cell loads the embedded model; a busy machine can take minutes

import nbformat  # noqa: E402


def test_notebooks_exist():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["language"] == "python"
    for i, cell in enumerate(nb.cells):
        assert cell.source.strip(), f"{name}: cell {i} is empty"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {i} has outputs; strip them before committing"
            assert cell.execution_count is None, f"{name}: cell {i} has an execution count"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4, f"{name}: too little prose"


# --------------------------------------------------------------------------------------------
# running them


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
    """A kernelspec for the running interpreter, in a private Jupyter data folder."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "ltt-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ltt tests",
        "language": "python",
    }))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.delenv("LTT_QUIET", raising=False)  # run as a user would
    return "ltt-test"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def execute(name: str, kernel_name: str, cwd: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.perf_counter()
    # allow_errors=False: the first failing cell raises CellExecutionError with its traceback
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{name}: cell {i} raised {out.get('ename')}"
    return nb


def text_of(nb, tag: str) -> str:
    """The printed text and plain-text results of the code cell tagged ``tag``."""
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"no single cell tagged {tag!r}"
    parts = []
    for out in cells[0].outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def mime_types(nb, tag: str) -> set[str]:
    cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
    return {m for out in cell.outputs for m in out.get("data", {})}


def test_quickstart(kernel_name, tmp_path):
    nb = execute("quickstart.ipynb", kernel_name, tmp_path)
    assert "' Paris'" in text_of(nb, "prediction").splitlines()[2]
    assert "application/vnd.jupyter.widget-view+json" in mime_types(nb, "widget")
    report = tmp_path / "quickstart-report.html"
    graph = tmp_path / "quickstart-graph.json"
    assert report.stat().st_size > 10_000
    assert "</html>" in report.read_text(encoding="utf-8").lower()
    data = json.loads(graph.read_text(encoding="utf-8"))
    assert data["model"] == "smollm2-135m" and data["settings"]["threshold"] == 0.04
    assert len(data["edges"]) > 0
    assert "quickstart-graph.json" in text_of(nb, "export")


def test_ioi(kernel_name, tmp_path):
    nb = execute("ioi.ipynb", kernel_name, tmp_path)
    first = re.search(r"'(.*?)'\s+p = ([0-9.]+)", text_of(nb, "prediction"))
    assert first and first.group(1) == " Mary" and float(first.group(2)) > 0.8, first
    flows = text_of(nb, "flow")
    assert "' Mary'" in flows
    edges = text_of(nb, "edges")
    assert "strongest route: ' Mary' (position 1) -> ' to'" in edges
    assert "L23H" in text_of(nb, "heads")
    assert "' Mary'" in text_of(nb, "promoted")
    swapped = re.search(r"'(.*?)'\s+p = ([0-9.]+)", text_of(nb, "swapped"))
    assert swapped and swapped.group(1) == " John", swapped
    assert "prediction ' Mary' -> ' John'" in text_of(nb, "diff")
    # the logit lens ends with ' Mary' at rank 0 in the last layer
    last = text_of(nb, "lens").strip().splitlines()[-1].split()
    assert last[1] == "0", last


def test_hf_workflow(kernel_name, tmp_path):
    nb = execute("hf-workflow.ipynb", kernel_name, tmp_path)
    preds = text_of(nb, "predictions").splitlines()
    assert len(preds) == 5
    assert preds[0].endswith("-> ' Mary'") and preds[2].endswith("-> ' Paris'")
    layers = text_of(nb, "layers")
    assert "layers moving the most between positions" in layers
    rows = [l for l in text_of(nb, "heads").splitlines() if l.startswith("L")]
    assert len(rows) >= 5
    assert (tmp_path / "ioi-route.graphml").stat().st_size > 1000


def test_progress_bars_shown_in_a_kernel(kernel_name, tmp_path):
    """In a Jupyter kernel (stderr is no terminal there) ltt's progress bars stay on unless
    LTT_QUIET is set (the kernel fixture unsets it, as a user's environment would)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("from ltt import progress\nprint(progress.quiet())"))
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "".join(o.get("text", "") for o in nb.cells[0].outputs).strip() == "False"
