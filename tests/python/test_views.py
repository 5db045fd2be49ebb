"""Materialized SQL-on-FHIR views are ordinary Delta tables: `fhirlake view materialize`
(the real binary) writes views/<name>, and deltalake, polars, DuckDB and `fhirlake sql`
read the same rows, which this test also computes on its own from the Synthea NDJSON."""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches"))
import duckdb_delta  # noqa: E402

from fixtures_root import FIXTURES  # noqa: E402
BIN = os.environ.get("FHIRLAKE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "fhirlake"))
BP_CODES = {"85354-9", "55284-4"}


def ndjson(name):
    with open(FIXTURES / "synthea" / "ndjson" / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def expected_blood_pressure():
    """(id, patient_id, component_code, value) computed directly from the JSON."""
    rows = []
    for o in ndjson("Observation.ndjson"):
        codes = [c for c in o["code"].get("coding", []) if c.get("system") == "http://loinc.org"]
        if not any(c.get("code") in BP_CODES for c in codes):
            continue
        for comp in o.get("component", []):
            code = next((c["code"] for c in comp["code"]["coding"] if c.get("system") == "http://loinc.org"), None)
            value = comp.get("valueQuantity", {}).get("value")
            rows.append((o["id"], o["subject"]["reference"].split("/")[-1], code, None if value is None else Decimal(str(value))))
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "data"
    subprocess.run(
        [BIN, "import", "--no-progress", "--data", str(root), "--errors", str(root.parent / "errors.ndjson"),
         str(FIXTURES / "synthea" / "ndjson")],
        check=True, capture_output=True,
    )
    out = subprocess.run(
        [BIN, "view", "--data", str(root), "materialize", "--file", str(ROOT / "benches" / "views" / "blood_pressure.json")],
        check=True, capture_output=True, text=True,
    )
    assert "views.blood_pressure: full refresh" in out.stdout, out.stdout
    return root


def test_deltalake_and_polars_read_the_materialized_view(data):
    want = expected_blood_pressure()
    assert len(want) > 100
    t = DeltaTable(str(data / "views" / "blood_pressure"))
    cols = ["id", "patient_id", "component_code", "value"]
    got = sorted((tuple(r[c] for c in cols) for r in t.to_pyarrow_table(columns=cols).to_pylist()), key=repr)
    # Decimal128(38,18) keeps every digit Synthea wrote.
    assert [(a, b, c, None if d is None else d.normalize()) for a, b, c, d in got] == \
        [(a, b, c, None if d is None else d.normalize()) for a, b, c, d in want]
    df = pl.read_delta(str(data / "views" / "blood_pressure"))
    assert df.height == len(want)
    assert df.columns[:4] == ["id", "patient_id", "encounter_id", "effective"]
    assert "_source_id" in df.columns
    assert (df["_source_id"] == df["id"]).all()


def test_duckdb_and_fhirlake_sql_agree_on_an_aggregate(data):
    want = {}
    for _, _, code, value in expected_blood_pressure():
        want[code] = want.get(code, 0) + 1
    con = duckdb_delta.connect()  # the PyPI-packaged extension, loaded by path
    got = dict(con.execute(
        f"SELECT component_code, count(*) FROM delta_scan('{data / 'views' / 'blood_pressure'}') GROUP BY 1").fetchall())
    assert got == want
    out = subprocess.run(
        [BIN, "sql", "--data", str(data), "--format", "json",
         "SELECT component_code, count(*) AS n FROM views.blood_pressure GROUP BY 1"],
        check=True, capture_output=True, text=True,
    )
    assert {r["component_code"]: r["n"] for r in json.loads(out.stdout)} == want


def test_a_second_materialize_without_writes_does_nothing(data):
    out = subprocess.run(
        [BIN, "view", "--data", str(data), "materialize", "--file", str(ROOT / "benches" / "views" / "blood_pressure.json")],
        check=True, capture_output=True, text=True,
    )
    assert "unchanged refresh" in out.stdout, out.stdout
    explain = subprocess.run(
        [BIN, "view", "--data", str(data), "explain", "--file", str(ROOT / "benches" / "views" / "blood_pressure.json")],
        check=True, capture_output=True, text=True,
    )
    assert explain.stdout.startswith("compiled"), explain.stdout
    assert "Unnest" in explain.stdout and "fhir_where" in explain.stdout, explain.stdout
