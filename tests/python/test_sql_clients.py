"""The same query through `POST $sql` (HTTP, JSON and Arrow), Arrow Flight SQL (ADBC, as a
BI tool or notebook would connect) and a direct read of the Delta tables (deltalake +
polars) returns identical results. One real `fhirlake serve` process over the Synthea
fixtures, loaded with the real `fhirlake import`."""

import json
import re
import subprocess
import urllib.error
import urllib.request

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pytest

import fhirlake_proc
from fhirlake_proc import BIN

QUERY = """
SELECT gender, count(*) AS n, min(birthDate) AS first_born
FROM patient GROUP BY gender ORDER BY gender
"""
JOIN = """
SELECT p.gender, count(*) AS observations
FROM observation o JOIN patient p ON o.subject._target_id = p.id
GROUP BY p.gender ORDER BY p.gender
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("sql") / "data"
    fhirlake_proc.import_synthea(data)
    p, http, grpc = fhirlake_proc.serve(data)
    yield {"http": http, "grpc": grpc, "data": data}
    fhirlake_proc.stop(p)


def post_sql(base, query, accept="application/json"):
    req = urllib.request.Request(f"{base}/$sql", data=query.encode(), method="POST",
                                 headers={"Content-Type": "application/sql", "Accept": accept})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def rows_of(table: pa.Table):
    return [tuple(r.values()) for r in table.to_pylist()]


def test_http_flight_and_delta_agree(server):
    for q in (QUERY, JOIN):
        via_json = [tuple(r.values()) for r in json.loads(post_sql(server["http"], q))]
        via_arrow = rows_of(pa.ipc.open_stream(post_sql(server["http"], q, "application/vnd.apache.arrow.stream")).read_all())
        with flight_sql.connect(server["grpc"]) as conn, conn.cursor() as cur:
            cur.execute(q)
            via_flight = rows_of(cur.fetch_arrow_table())
        assert via_json == via_arrow == via_flight, (via_json, via_arrow, via_flight)
        assert len(via_json) >= 2
    # Direct Delta reads compute the same numbers.
    patients = pl.read_delta(str(server["data"] / "resources" / "Patient"))
    direct = (patients.group_by("gender").agg(pl.len().alias("n"), pl.col("birthDate").min().alias("first_born"))
              .sort("gender").rows())
    assert [tuple(r) for r in direct] == [tuple(r.values()) for r in json.loads(post_sql(server["http"], QUERY))]


def test_flight_sql_refuses_what_the_sandbox_refuses(server):
    import adbc_driver_manager
    with flight_sql.connect(server["grpc"]) as conn:
        for bad in ("DROP TABLE patient", "COPY patient TO '/tmp/x.csv'", "SELECT * FROM '/etc/passwd'"):
            with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error):
                cur.execute(bad)
                cur.fetchall()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM Patient")
            assert cur.fetchone()[0] == 40


def test_http_errors_are_operation_outcomes(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        post_sql(server["http"], "DELETE FROM patient")
    assert e.value.code == 403
    assert json.loads(e.value.read())["resourceType"] == "OperationOutcome"


def test_cli_against_the_server_and_the_directory_agree(server):
    via_url = json.loads(subprocess.run([BIN, "sql", "--url", server["http"], "--format", "json", QUERY],
                                        check=True, capture_output=True, text=True).stdout)
    via_dir = json.loads(subprocess.run([BIN, "sql", "--data", str(server["data"]), "--format", "json", QUERY],
                                        check=True, capture_output=True, text=True).stdout)
    via_http = json.loads(post_sql(server["http"], QUERY))
    assert via_url == via_dir == via_http
    # SQL on stdin; a table rendered from the server's Arrow stream; errors say what happened.
    piped = subprocess.run([BIN, "sql", "--url", server["http"]], input="SELECT count(*) AS n FROM patient",
                           check=True, capture_output=True, text=True).stdout
    assert re.search(r"\|\s*40\s*\|", piped), piped
    bad = subprocess.run([BIN, "sql", "--url", server["http"], "DROP TABLE patient"], capture_output=True, text=True)
    assert bad.returncode == 1 and "403" in bad.stderr, bad.stderr
