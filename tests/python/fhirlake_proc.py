"""Running the real fhirlake binary from Python tests: loading the Synthea fixtures with
`fhirlake import`, and starting `fhirlake serve` (HTTP and Flight SQL on free ports)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches"))
from fixtures_root import FIXTURES  # noqa: E402
BIN = os.environ.get("FHIRLAKE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "fhirlake"))


def import_synthea(data: Path):
    """`fhirlake import` of the Synthea NDJSON into the storage root `data`."""
    subprocess.run([BIN, "import", "--no-progress", "--data", str(data), "--errors", str(data.parent / "errors.ndjson"),
                    str(FIXTURES / "synthea" / "ndjson")], check=True, capture_output=True)


def serve(data: Path, *extra: str):
    """Starts `fhirlake serve` on `data` (with `extra` flags); returns (process, FHIR base URL,
    Flight SQL URL). Its log (stderr) goes to `data`'s folder, `serve.log`: a pipe nobody
    reads would fill and stall the server."""
    data.parent.mkdir(parents=True, exist_ok=True)
    log = open(data.parent / "serve.log", "w")
    p = subprocess.Popen([BIN, "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0",
                          *extra], stdout=subprocess.PIPE, stderr=log, text=True)
    p.log_path = data.parent / "serve.log"
    http = grpc = None
    deadline = time.time() + 60
    while time.time() < deadline and not (http and grpc):
        line = p.stdout.readline()
        if not line:
            break
        if m := re.search(r"listening on (http://\S+)", line):
            http = m.group(1) + "/fhir"
        if m := re.search(r"Flight SQL listening on (grpc://\S+)", line):
            grpc = m.group(1)
    if not (http and grpc):
        p.kill()
        raise RuntimeError(f"fhirlake serve did not start: {p.log_path.read_text()}")
    return p, http, grpc


def stop(p):
    p.terminate()
    p.wait(timeout=60)
