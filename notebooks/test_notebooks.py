"""Executes every notebook in this folder against a real `fhirlake serve` (HTTP `$sql` and
Flight SQL) over a storage root loaded by the real `fhirlake import` from the Synthea NDJSON
fixtures; a cell that raises fails the test. Notebooks find the server and the data in
`FHIRLAKE_URL`, `FHIRLAKE_FLIGHT` and `FHIRLAKE_DATA`."""

import os
import re
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = Path(os.environ.get("FHIRLAKE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
BIN = os.environ.get("FHIRLAKE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "fhirlake"))


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb") / "data"
    subprocess.run([BIN, "import", "--no-progress", "--data", str(root), "--errors", str(root.parent / "e.ndjson"),
                    str(FIXTURES / "synthea" / "ndjson")], check=True, capture_output=True)
    p = subprocess.Popen([BIN, "serve", "--data", str(root), "--listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    http = grpc = None
    deadline = time.time() + 60
    while time.time() < deadline and not (http and grpc):
        line = p.stdout.readline()
        if not line:
            break
        if m := re.search(r"listening on (http://\S+)", line):
            http = m.group(1)
        if m := re.search(r"Flight SQL listening on (grpc://\S+)", line):
            grpc = m.group(1)
    assert http and grpc, "the server did not start"
    yield {"FHIRLAKE_DATA": str(root), "FHIRLAKE_URL": http + "/fhir", "FHIRLAKE_FLIGHT": grpc}
    p.terminate()
    p.wait(timeout=60)


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
