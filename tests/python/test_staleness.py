"""External Delta readers beside a running server: a write the server acknowledged reaches
the Delta tables within the flush interval T plus a flush, so Python `deltalake` opening the
tables (at their latest version, or at the version the watermark names) sees it within
T + 5 s of the acknowledgement. Through the server (`$sql`, search) it is visible at once."""

import http.client
import json
import time
from pathlib import Path

from deltalake import DeltaTable

from fhirlake_proc import serve, stop

T = 2.0  # the flush interval this test runs the server with (seconds)


def call(base, method, path, body=None):
    host = base.split("//", 1)[1].split("/", 1)[0]
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request(method, "/fhir" + path, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/fhir+json"} if body is not None else {})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")


def ids_in_delta(data: Path, at_watermark: bool):
    path = data / "resources" / "Patient"
    if not (path / "_delta_log").is_dir():
        return set()
    if at_watermark:
        watermark = json.loads((data / "_fhirlake" / "watermark.json").read_text())
        version = watermark["tables"].get("resources/Patient")
        if version is None:
            return set()
        t = DeltaTable(str(path), version=version)
    else:
        t = DeltaTable(str(path))
    return set(t.to_pyarrow_table(columns=["id"])["id"].to_pylist())


def test_a_write_reaches_external_delta_readers_within_the_flush_interval(tmp_path: Path):
    data = tmp_path / "data"
    p, base, _ = serve(data, "--flush-interval", f"{int(T * 1000)}ms")
    try:
        for round_ in range(3):
            status, created = call(base, "POST", "/Patient", {"resourceType": "Patient", "gender": "other"})
            assert status == 201, created
            acked = time.monotonic()
            rid = created["id"]
            seen = {}
            while time.monotonic() - acked < T + 5 and len(seen) < 2:
                for at_watermark in (False, True):
                    if at_watermark not in seen and rid in ids_in_delta(data, at_watermark):
                        seen[at_watermark] = time.monotonic() - acked
                time.sleep(0.05)
            assert len(seen) == 2, f"round {round_}: Patient/{rid} not in the Delta tables {T + 5} s after its ack: {seen}"
            print(f"round {round_}: visible to deltalake after {seen[False]:.2f} s, at the watermark after {seen[True]:.2f} s")
        # The server's own readers see a write at once (a search flushes what it needs).
        status, created = call(base, "POST", "/Patient", {"resourceType": "Patient", "gender": "other"})
        status, page = call(base, "GET", f"/Patient?_id={created['id']}")
        assert status == 200 and [e["resource"]["id"] for e in page.get("entry", [])] == [created["id"]], page
    finally:
        stop(p)
