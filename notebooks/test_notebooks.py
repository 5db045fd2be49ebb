"""Executes every notebook in this folder against a real `fhirlake serve` (HTTP `$sql` and
Flight SQL) over a storage root loaded by the real `fhirlake import` from the Synthea NDJSON
fixtures; a cell that raises fails the test. Notebooks find the server and the data in
`FHIRLAKE_URL`, `FHIRLAKE_FLIGHT` and `FHIRLAKE_DATA`."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
import fhirlake_proc  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb") / "data"
    fhirlake_proc.import_synthea(root)
    p, http, grpc = fhirlake_proc.serve(root)
    yield {"FHIRLAKE_DATA": str(root), "FHIRLAKE_URL": http, "FHIRLAKE_FLIGHT": grpc}
    fhirlake_proc.stop(p)


@pytest.mark.parametrize("path", sorted(HERE.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(path, server, monkeypatch):
    for k, v in server.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "benches") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    stored = [c for c in nb.cells if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not stored, f"{path.name}: strip outputs before committing (jupyter nbconvert --clear-output)"
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len(outputs) >= 3
