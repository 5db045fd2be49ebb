#!/usr/bin/env python3
"""Search benchmark: latency and throughput of FHIR searches against a running fhirlake.

The Synthea NDJSON fixtures are replicated with fresh ids (as in import_bench.py) to at
least --resources resources and imported with `fhirlake import` (or --data reuses a
loaded storage root), then `fhirlake compact --full` clusters the tables by patient (as a
running server's background compaction does over time; --no-compact skips it). Then
`fhirlake serve` runs on it and, in this one invocation:

  (a) Observation?patient=X&code=Y            p50/p99 latency, requests/s
  (b) Observation?code=Y&_summary=count       latency, matching resources counted per second;
                                              peer: DuckDB counting the same rows over the
                                              same Delta table (delta_scan + list filter)
  (c) Patient?name=...&birthdate=ge...        p50/p99 latency, requests/s
  (d) Observation?code=Y&_include=Observation:patient   first page, p50/p99

The FHIR-server peer (Helios) runs the same four searches in `benches/run.sh search-peer`
(rest_bench.py), where both servers are loaded with the same transaction Bundles; loading
2 M resources into Helios over HTTP would take most of an hour here. --smoke uses
one replica and few repetitions (CI runs it with the debug binary; the numbers mean
nothing).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_bench import FIXTURES, replicate  # noqa: E402

LOINC_HEIGHT = "http://loinc.org|8302-2"


def get(url):
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.loads(r.read())


def timed(url, n):
    lat = []
    body = None
    for _ in range(n):
        t0 = time.perf_counter()
        body = get(url)
        lat.append(time.perf_counter() - t0)
    return lat, body


def throughput(url, seconds, threads=4):
    done = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker():
        while time.perf_counter() < stop:
            get(url)
            with lock:
                done[0] += 1

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0] / (time.perf_counter() - t0)


def pct(xs, p):
    """The p-th percentile of xs (nearest rank; NaN when xs is empty)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-release")) / "release" / "fhirlake"))
    ap.add_argument("--resources", type=int, default=2_100_000, help="default: ~1.02M Observations")
    ap.add_argument("--no-compact", action="store_true", help="search the tables as imported (no `fhirlake compact --full`)")
    ap.add_argument("--data", help="storage root to use: loaded here when it does not exist, reused (no import) when it does")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.resources, a.repeat, a.seconds = 2_000, 2, 0.5
    work = Path(tempfile.mkdtemp(prefix="fhirlake-search-bench-"))
    server = None
    try:
        data = Path(a.data) if a.data else work / "data"
        if not data.exists():
            src = work / "ndjson"
            n = replicate(FIXTURES / "synthea" / "ndjson", src, a.resources)
            t0 = time.perf_counter()
            p = subprocess.run([a.bin, "import", "--no-progress", "--data", str(data), "--errors", str(work / "e.ndjson"), str(src)], capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(p.stdout + p.stderr)
            print(f"data: {n} resources imported in {time.perf_counter() - t0:.0f} s")
            shutil.rmtree(src, ignore_errors=True)
        if not a.no_compact:
            t0 = time.perf_counter()
            p = subprocess.run([a.bin, "compact", "--full", "--data", str(data)], capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(p.stdout + p.stderr)
            print(f"fhirlake compact --full: {time.perf_counter() - t0:.0f} s (tables clustered by _patient, id)")
        code = LOINC_HEIGHT

        server = subprocess.Popen([a.bin, "serve", "--data", str(data), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
        line = server.stdout.readline()
        base = line.split("FHIR base ")[1].split(",")[0] if "FHIR base" in line else None
        if not base:
            sys.exit(f"server did not start: {line}")
        q = lambda path, **kw: f"{base}/{path}?{urllib.parse.urlencode(kw)}"
        # Search values from the data itself.
        # The first token search after start builds the token postings of the code column
        # (one read of that column per file); later token searches and counts use them.
        t0 = time.perf_counter()
        first_obs = get(q("Observation", code=code, _count="1"))["entry"][0]["resource"]
        print(f"first token search after start (builds the postings of _sp_code): {(time.perf_counter() - t0) * 1000:.1f} ms")
        patient = first_obs["subject"]["reference"].split("/")[-1]
        family = get(q("Patient", _count="1"))["entry"][0]["resource"]["name"][0]["family"][:3]
        searches = {
            "(a) Observation?patient&code": q("Observation", patient=patient, code=code),
            "(b) Observation?code&_summary=count": q("Observation", code=code, _summary="count"),
            "(c) Patient?name&birthdate=ge": q("Patient", name=family, birthdate="ge1950-01-01"),
            "(d) Observation?code&_include": q("Observation", code=code, _include="Observation:patient", _count="20"),
        }
        # "first": the first request of its kind (after the one above).
        print(f"{'':40}{'first ms':>10}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}  result")
        counted = None
        for name, url in searches.items():
            first, _ = timed(url, 1)
            lat, body = timed(url, a.repeat)
            rps = throughput(url, a.seconds)
            result = f"total={body.get('total')}" if "total" in body else f"{len(body.get('entry', []))} entries"
            print(f"{name:40}{first[0] * 1000:10.1f}{pct(lat, 50) * 1000:10.1f}{pct(lat, 99) * 1000:10.1f}{rps:10.1f}  {result}")
            if name.startswith("(b)"):
                counted = (body["total"], pct(lat, 50))
        total, p50 = counted
        obs_rows = get(q("Observation", _summary="count"))["total"]
        print(f"(b) fhirlake counts {total / p50:,.0f} matches/s (p50) among {obs_rows:,} Observations")

        # Peer for (b): DuckDB over the same Delta table.
        try:
            import duckdb_delta
            con = duckdb_delta.connect()
            con.execute("SET threads=2")
            sql = (f"SELECT count(*) FROM delta_scan('{data / 'resources' / 'Observation'}') "
                   "WHERE len(list_filter(_sp_code, x -> x.system = 'http://loinc.org' AND x.code = '8302-2')) > 0")
            lat = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                dd = con.execute(sql).fetchone()[0]
                lat.append(time.perf_counter() - t0)
            if dd != total:
                sys.exit(f"DuckDB counted {dd}, fhirlake {total}")
            d50 = pct(lat, 50)
            print(f"(b) DuckDB delta_scan: p50 {d50 * 1000:.1f} ms, {total / d50:,.0f} matches/s; fhirlake/DuckDB time ratio {p50 / d50:.4f} (fhirlake {d50 / p50:,.0f}x faster)")
        except ImportError as e:
            print(f"(b) DuckDB peer not available: {e}")
        print("peer FHIR server: see `benches/run.sh search-peer` (both servers, same Bundles)")
    finally:
        if server:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
