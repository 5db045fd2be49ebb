"""The tables fhirlake writes are ordinary Delta tables: deltalake, polars and DuckDB read
their typed, nested columns. The data is loaded by the real `fhirlake import` binary from
the Synthea NDJSON fixtures, once per test session."""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches"))
import duckdb_delta  # noqa: E402

from fixtures_root import FIXTURES  # noqa: E402
BIN = os.environ.get("FHIRLAKE_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "fhirlake"))


def ndjson(name):
    with open(FIXTURES / "synthea" / "ndjson" / name) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fhirlake") / "data"
    subprocess.run(
        [BIN, "import", "--no-progress", "--data", str(root), "--errors", str(root.parent / "errors.ndjson"),
         str(FIXTURES / "synthea" / "ndjson")],
        check=True, capture_output=True,
    )
    return root


def test_deltalake_reads_typed_nested_columns(data):
    patients = ndjson("Patient.ndjson")
    t = DeltaTable(str(data / "resources" / "Patient"))
    assert t.protocol().min_reader_version == 1
    stats = set(t.get_add_actions(flatten=True).column_names)
    for col in ("id", "_patient", "_last_updated", "_version_id"):
        assert f"min.{col}" in stats, f"no file statistics for {col}: {sorted(stats)[:20]}"
    table = t.to_pyarrow_table()
    assert table.num_rows == len(patients)
    schema = table.schema
    assert schema.field("birthDate").type == pa.string()
    assert schema.field("_birthDate_ts").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_list(schema.field("name").type)
    rows = {r["id"]: r for r in table.select(["id", "birthDate", "_birthDate_ts", "gender"]).to_pylist()}
    for p in patients:
        r = rows[p["id"]]
        assert r["birthDate"] == p["birthDate"]
        assert r["_birthDate_ts"].date().isoformat() == p["birthDate"]
        assert r["gender"] == p["gender"]


def test_polars_reads_decimal_quantities_and_text_dates(data):
    obs = ndjson("Observation.ndjson")
    df = pl.read_delta(str(data / "resources" / "Observation"))
    assert df.height == len(obs)
    vq = df.schema["valueQuantity"]
    value_type = {f.name: f.dtype for f in vq.fields}["value"]
    assert isinstance(value_type, pl.Decimal), value_type
    got = {
        r["id"]: r
        for r in df.select(
            "id", pl.col("valueQuantity").struct.field("value").alias("v"), "effectiveDateTime", "_effectiveDateTime_ts"
        ).to_dicts()
    }
    checked = 0
    for o in obs:
        r = got[o["id"]]
        assert r["effectiveDateTime"] == o.get("effectiveDateTime")
        if "valueQuantity" in o:
            assert r["v"] == Decimal(str(o["valueQuantity"]["value"])), o["id"]
            checked += 1
        if "effectiveDateTime" in o:
            assert r["_effectiveDateTime_ts"] is not None
    assert checked > 1000


def test_duckdb_delta_scan_reads_the_tables(data):
    con = duckdb_delta.connect()  # the PyPI-packaged extension, loaded by path
    patients = ndjson("Patient.ndjson")
    rows = con.execute(
        f"SELECT gender, count(*) FROM delta_scan('{data / 'resources' / 'Patient'}') GROUP BY gender ORDER BY gender"
    ).fetchall()
    expected = {}
    for p in patients:
        expected[p["gender"]] = expected.get(p["gender"], 0) + 1
    assert dict(rows) == expected
    value_type, ts_type = con.execute(
        f"SELECT typeof(valueQuantity.value), typeof(_effectiveDateTime_ts) "
        f"FROM delta_scan('{data / 'resources' / 'Observation'}') WHERE valueQuantity.value IS NOT NULL LIMIT 1"
    ).fetchone()
    assert value_type == "DECIMAL(38,18)"
    assert ts_type == "TIMESTAMP WITH TIME ZONE"
    hist = con.execute(f"SELECT count(*), max(_version_id) FROM delta_scan('{data / 'history' / 'Patient'}')").fetchone()
    assert hist == (len(patients), 1)


def test_search_index_columns_read_from_polars_and_duckdb(data):
    """The `_sp_*` columns are plain lists of structs: a data scientist can filter on
    LOINC codes and birth-date ranges without FHIRPath."""
    obs = ndjson("Observation.ndjson")
    df = pl.read_delta(str(data / "resources" / "Observation"))
    codes = df.select(pl.col("_sp_code").explode().struct.field("code").alias("c"), pl.col("_sp_code").explode().struct.field("system").alias("s"))
    expected = sum(1 for o in obs for c in o["code"].get("coding", []) if c.get("system") == "http://loinc.org" and c.get("code") == "8302-2")
    assert expected > 0
    assert codes.filter((pl.col("s") == "http://loinc.org") & (pl.col("c") == "8302-2")).height == expected

    patients = ndjson("Patient.ndjson")
    con = duckdb.connect()
    rows = con.execute(
        "SELECT id, b.start, b.\"end\" FROM (SELECT id, unnest(_sp_birthdate) AS b FROM read_parquet(?))",
        [DeltaTable(str(data / "resources" / "Patient")).file_uris()],
    ).fetchall()
    assert len(rows) == len(patients)
    by_id = {p["id"]: p for p in patients}
    for pid, start, end in rows:
        day = by_id[pid]["birthDate"]
        assert start.isoformat().startswith(day + "T00:00:00"), (pid, start, day)
        assert (end - start).total_seconds() == 86400 - 1e-6, (pid, start, end)
