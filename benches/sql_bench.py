#!/usr/bin/env python3
"""SQL benchmark: analytical queries over the same data three ways, one run.

The Synthea NDJSON fixtures are replicated with fresh ids (as in import_bench.py) to at
least --resources resources and imported with `fhirlake import` (or --data / --ndjson reuse
a loaded root and its NDJSON). Then `fhirlake serve` runs on the root and, per query:

  fhirlake        POST $sql (HTTP on loopback, JSON result), best of --repeat
  DuckDB/Parquet  the same query over the same Delta tables' Parquet files (delta_scan,
                  DuckDB 1.5.5 with the PyPI delta extension, threads=2), best of --repeat
  DuckDB/NDJSON   the same query over the raw NDJSON (read_json, threads=2), once

fhirlake's SQL uses its typed reference columns (`subject._target_id`); DuckDB's uses
`split_part(subject.reference, '/', 2)`, which works on both of its inputs (and casts dates
to text where it takes substrings, since its JSON reader types dateTimes as TIMESTAMP). The scripts check
that the three return the same rows (numbers to 6 significant digits) and print each time
and the ratios DuckDB-Parquet/fhirlake and NDJSON/fhirlake (>1: fhirlake faster).
--smoke: one replica, one repeat, no NDJSON side (CI runs it with the debug binary; the
numbers mean nothing).
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_bench import FIXTURES, replicate, run  # noqa: E402

REF = "split_part({c}.reference, '/', 2)"

# (name, fhirlake SQL, DuckDB SQL with {T} = the table expression for a resource type)
QUERIES = [
    ("patients by gender",
     "SELECT gender, count(*) AS n FROM patient GROUP BY 1 ORDER BY 1",
     "SELECT gender, count(*) AS n FROM {Patient} GROUP BY 1 ORDER BY 1"),
    ("observations by LOINC code, top 10",
     "SELECT code.coding[1]['code'] AS c, count(*) AS n FROM observation GROUP BY 1 ORDER BY n DESC, c LIMIT 10",
     "SELECT code.coding[1].code AS c, count(*) AS n FROM {Observation} GROUP BY 1 ORDER BY n DESC, c LIMIT 10"),
    ("mean value by code",
     "SELECT code.coding[1]['code'] AS c, avg(CAST(valueQuantity.value AS DOUBLE)) AS v FROM observation "
     "WHERE valueQuantity.value IS NOT NULL GROUP BY 1 ORDER BY 1",
     "SELECT code.coding[1].code AS c, avg(CAST(valueQuantity.value AS DOUBLE)) AS v FROM {Observation} "
     "WHERE valueQuantity.value IS NOT NULL GROUP BY 1 ORDER BY 1"),
    ("BMI over 30",
     "SELECT count(*) AS n FROM observation WHERE code.coding[1]['code'] = '39156-5' AND valueQuantity.value > 30",
     "SELECT count(*) AS n FROM {Observation} WHERE code.coding[1].code = '39156-5' AND valueQuantity.value > 30"),
    ("encounters by class",
     "SELECT class.code AS c, count(*) AS n FROM encounter GROUP BY 1 ORDER BY 1",
     "SELECT class.code AS c, count(*) AS n FROM {Encounter} GROUP BY 1 ORDER BY 1"),
    ("conditions by code, top 10",
     "SELECT code.coding[1]['code'] AS c, count(*) AS n FROM condition GROUP BY 1 ORDER BY n DESC, c LIMIT 10",
     "SELECT code.coding[1].code AS c, count(*) AS n FROM {Condition} GROUP BY 1 ORDER BY n DESC, c LIMIT 10"),
    ("observations per patient gender (join)",
     "SELECT p.gender, count(*) AS n FROM observation o JOIN patient p ON o.subject._target_id = p.id GROUP BY 1 ORDER BY 1",
     "SELECT p.gender, count(*) AS n FROM {Observation} o JOIN {Patient} p ON " + REF.format(c="o.subject") +
     " = p.id GROUP BY 1 ORDER BY 1"),
    ("encounters per patient (subquery)",
     "SELECT max(n) AS mx, min(n) AS mn, round(avg(n), 4) AS av FROM "
     "(SELECT subject._target_id AS pid, count(*) AS n FROM encounter GROUP BY 1)",
     "SELECT max(n) AS mx, min(n) AS mn, round(avg(n), 4) AS av FROM "
     "(SELECT " + REF.format(c="subject") + " AS pid, count(*) AS n FROM {Encounter} GROUP BY 1)"),
    ("latest observation per patient",
     "SELECT count(*) AS patients, max(last) AS latest FROM "
     "(SELECT subject._target_id AS pid, max(effectiveDateTime) AS last FROM observation GROUP BY 1)",
     "SELECT count(*) AS patients, max(last) AS latest FROM "
     "(SELECT " + REF.format(c="subject") + " AS pid, max(effectiveDateTime) AS last FROM {Observation} GROUP BY 1)"),
    ("medication requests per year",
     "SELECT substr(authoredOn, 1, 4) AS y, count(*) AS n FROM medicationrequest GROUP BY 1 ORDER BY 1",
     "SELECT substr(CAST(authoredOn AS VARCHAR), 1, 4) AS y, count(*) AS n FROM {MedicationRequest} GROUP BY 1 ORDER BY 1"),
    ("systolic by year (unnest components)",
     "SELECT substr(effectiveDateTime, 1, 4) AS y, round(avg(CAST(c['valueQuantity']['value'] AS DOUBLE)), 4) AS v FROM "
     "(SELECT effectiveDateTime, unnest(component) AS c FROM observation WHERE code.coding[1]['code'] = '55284-4') "
     "WHERE c['code']['coding'][1]['code'] = '8480-6' GROUP BY 1 ORDER BY 1",
     "SELECT substr(CAST(effectiveDateTime AS VARCHAR), 1, 4) AS y, round(avg(CAST(c.valueQuantity.value AS DOUBLE)), 4) AS v FROM "
     "(SELECT effectiveDateTime, unnest(component) AS c FROM {Observation} WHERE code.coding[1].code = '55284-4') "
     "WHERE c.code.coding[1].code = '8480-6' GROUP BY 1 ORDER BY 1"),
    ("glucose of prediabetic patients (join + filter)",
     "SELECT count(DISTINCT o.subject._target_id) AS patients, round(avg(CAST(o.valueQuantity.value AS DOUBLE)), 4) AS g "
     "FROM observation o JOIN (SELECT DISTINCT subject._target_id AS pid FROM condition "
     "WHERE code.coding[1]['code'] = '15777000') c ON o.subject._target_id = c.pid WHERE o.code.coding[1]['code'] = '2339-0'",
     "SELECT count(DISTINCT " + REF.format(c="o.subject") + ") AS patients, round(avg(CAST(o.valueQuantity.value AS DOUBLE)), 4) AS g "
     "FROM {Observation} o JOIN (SELECT DISTINCT " + REF.format(c="subject") + " AS pid FROM {Condition} "
     "WHERE code.coding[1].code = '15777000') c ON " + REF.format(c="o.subject") + " = c.pid WHERE o.code.coding[1].code = '2339-0'"),
]


def norm(rows):
    """Rows compared across engines: numbers to 6 significant digits; dateTimes to the
    second (DuckDB's JSON reader turns FHIR dateTime text into TIMESTAMPs)."""
    def v(x):
        if isinstance(x, datetime.datetime):
            return x.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        if isinstance(x, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", x):
            return datetime.datetime.fromisoformat(x).astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        if isinstance(x, float):
            return float(f"{x:.6g}") if not math.isnan(x) else None
        if isinstance(x, str):
            try:
                if re.fullmatch(r"-?\d+\.\d+", x):
                    return float(f"{float(x):.6g}")
            except ValueError:
                pass
        return x
    return [tuple(v(x) for x in r) for r in rows]


def post_sql(base, query):
    body = json.dumps({"query": query, "limit": 1_000_000}).encode()
    req = urllib.request.Request(f"{base}/$sql", data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return [tuple(o.values()) for o in json.load(r)]


def best(f, n):
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-release")) / "release" / "fhirlake"))
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--data")
    ap.add_argument("--ndjson")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.resources, a.repeat = 1, 1
    binary = Path(a.bin)
    if not binary.exists():
        sys.exit(f"{binary} not found; build it (cargo build --release --bin fhirlake) or pass --bin")
    import duckdb_delta

    work = Path(tempfile.mkdtemp(prefix="fhirlake-sql-bench-"))
    server = None
    try:
        ndjson = Path(a.ndjson) if a.ndjson else work / "ndjson"
        if not a.ndjson:
            print(f"data: {replicate(FIXTURES / 'synthea' / 'ndjson', ndjson, a.resources):,} resources of NDJSON")
        root = Path(a.data) if a.data else work / "root"
        if not a.data:
            secs, rss, _ = run([binary, "import", "--data", root, ndjson])
            print(f"fhirlake import: {secs:.1f} s")
        server = subprocess.Popen([binary, "serve", "--data", str(root), "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        base = None
        while base is None:
            line = server.stdout.readline()
            if not line:
                sys.exit("fhirlake serve did not start")
            if m := re.search(r"listening on (http://\S+)", line):
                base = m.group(1) + "/fhir"
        con = duckdb_delta.connect()
        con.execute("SET threads=2")
        parquet = {t: f"delta_scan('{root / 'resources' / t}')" for t in
                   ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest")}
        raw = {t: f"read_json('{ndjson / (t + '.ndjson')}', format='newline_delimited', sample_size=-1, "
                  f"maximum_object_size=67108864)" for t in parquet}
        results = []
        for name, fl_sql, duck_sql in QUERIES:
            fl_s, fl_rows = best(lambda: post_sql(base, fl_sql), a.repeat)
            pq_s, pq_rows = best(lambda: con.execute(duck_sql.format(**parquet)).fetchall(), a.repeat)
            same = norm(fl_rows) == norm(pq_rows)
            nd_s = None
            if not a.smoke:
                nd_s, nd_rows = best(lambda: con.execute(duck_sql.format(**raw)).fetchall(), 1)
                same = same and norm(nd_rows) == norm(fl_rows)
            results.append((name, fl_s, pq_s, nd_s, same))
            print(json.dumps({"query": name, "fhirlake_s": fl_s, "duckdb_parquet_s": pq_s, "duckdb_ndjson_s": nd_s,
                              "same_rows": same}), flush=True)
            if not same:
                print(f"  rows differ:\n  fhirlake {norm(fl_rows)[:5]}\n  duckdb   {norm(pq_rows)[:5]}")
        print()
        print("| query | fhirlake s | DuckDB Parquet s | Parquet/fhirlake | DuckDB NDJSON s | NDJSON/fhirlake | same rows |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for name, fl_s, pq_s, nd_s, same in results:
            nd = f"{nd_s:.3f} | {nd_s / fl_s:.1f}x" if nd_s is not None else "- | -"
            print(f"| {name} | {fl_s:.3f} | {pq_s:.3f} | {pq_s / fl_s:.2f}x | {nd} | {'yes' if same else 'NO'} |")
        print("\nratios > 1: fhirlake faster. fhirlake times include HTTP and JSON encoding of the result.")
        if not all(r[4] for r in results):
            sys.exit("some queries returned different rows")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
