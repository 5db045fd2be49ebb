"""Executes every notebook in this folder against a storage root loaded by the real
`fhirlake import` from the Synthea NDJSON fixtures; a cell that raises fails the test."""

import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = Path(os.environ.get("FHIRLAKE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
BIN = os.environ.get("FHIRLAKE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "fhirlake"))


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb") / "data"
    subprocess.run([BIN, "import", "--no-progress", "--data", str(root), "--errors", str(root.parent / "e.ndjson"),
                    str(FIXTURES / "synthea" / "ndjson")], check=True, capture_output=True)
    return root


@pytest.mark.parametrize("path", sorted(HERE.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(path, data, monkeypatch):
    monkeypatch.setenv("FHIRLAKE_DATA", str(data))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len(outputs) >= 3
