#!/usr/bin/env python3
"""End-to-end import benchmark: `fhirlake import` against DuckDB, same NDJSON, one run.

The data is `fhirlake generate` NDJSON of --resources resources (default 1,000,000), or with
--synthea the Synthea NDJSON fixtures replicated with fresh ids (references rewritten
consistently per replica). Then, in this one invocation:

  write  fhirlake: `fhirlake import DIR` into a fresh storage root (validation, typed
         flattening, search-index extraction, Delta commits of current + history
         tables, journal fsync); then again with --no-search-index, to show what the
         extraction costs.
         DuckDB:   per type, COPY (SELECT * FROM read_json(file)) TO parquet.
         Helios:   the peer FHIR server's bulk load, `$bulk-submit` of the same files
                   (served on loopback), from kick-off until its status is complete.
  read   fhirlake: `fhirlake sql` aggregate over Observation's typed columns.
         DuckDB:   the same aggregate over its Parquet file.

Each side runs in its own process; wall time and peak RSS (ru_maxrss of the child) are
printed with the fhirlake/DuckDB ratio. --smoke uses one replica (~11,000 resources; CI runs it with the
debug binary to keep the script working; its numbers mean nothing).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from fixtures_root import FIXTURES  # noqa: E402


def replicate(src: Path, dst: Path, target: int) -> int:
    """Writes replicas of every NDJSON file in src to dst; returns the resource count."""
    files = sorted(src.glob("*.ndjson"))
    originals = {f.name: [json.loads(l) for l in f.open() if l.strip()] for f in files}
    per_replica = sum(len(v) for v in originals.values())
    replicas = max(1, -(-target // per_replica))
    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    outs = {name: (dst / name).open("w") for name in originals}
    for r in range(replicas):
        ns = uuid.UUID(int=r + 1)

        def new_id(old: str) -> str:
            return str(uuid.uuid5(ns, old))

        def rewrite(v):
            if isinstance(v, dict):
                out = {}
                for k, x in v.items():
                    if k == "reference" and isinstance(x, str) and "/" in x:
                        t, _, i = x.rpartition("/")
                        out[k] = f"{t}/{new_id(i)}"
                    else:
                        out[k] = rewrite(x)
                return out
            if isinstance(v, list):
                return [rewrite(x) for x in v]
            return v

        for name, resources in originals.items():
            w = outs[name]
            for res in resources:
                copy = rewrite(res)
                copy["id"] = new_id(res["id"])
                w.write(json.dumps(copy, separators=(",", ":")))
                w.write("\n")
                total += 1
    for w in outs.values():
        w.close()
    return total


WRAPPER = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:])
print(f"MAXRSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(p.returncode)
"""


def run(cmd, env=None):
    """Runs cmd in a fresh wrapper process; returns (seconds, peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, cmd)], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
    kb = int(p.stderr.strip().splitlines()[-1].split("=")[1])
    return dt, kb / 1024, p.stdout


DUCKDB_WRITE = """
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads=2")
import glob, os
for f in sorted(glob.glob(os.path.join(src, '*.ndjson'))):
    name = os.path.basename(f)[:-7]
    con.execute(f"COPY (SELECT * FROM read_json('{f}', format='newline_delimited', maximum_object_size=67108864, sample_size=-1)) TO '{out}/{name}.parquet' (FORMAT parquet)")
"""

DUCKDB_READ = """
import sys, duckdb
con = duckdb.connect()
con.execute("SET threads=2")
print(con.execute(f"SELECT count(*), count(valueQuantity.value), max(effectiveDateTime) FROM read_parquet('{sys.argv[1]}/Observation.parquet')").fetchone())
"""

READ_SQL = "SELECT count(*), count(valueQuantity.value), max(effectiveDateTime) FROM observation"


def helios_bulk_load(binary, src, work):
    """Helios' bulk load: FHIR Bulk Submit (`$bulk-submit`) of the same NDJSON files,
    served on loopback, with search indexing during ingest (as fhirlake's import does).
    Returns (seconds from kick-off until the status says complete, server peak RSS MiB)."""
    import functools
    import http.server
    import threading
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading a file (it says why in its status)

    handler = functools.partial(Quiet, directory=str(src))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"
    counts = {f.stem: sum(1 for _ in f.open()) for f in sorted(src.glob("*.ndjson"))}
    manifest = {"transactionTime": "2020-01-01T00:00:00Z", "request": f"{base}/$export", "requiresAccessToken": False,
                "output": [{"type": t, "url": f"{base}/{t}.ndjson", "count": c} for t, c in counts.items()], "error": []}
    (src / "manifest.json").write_text(json.dumps(manifest))
    submitter = {"name": "submitter", "valueIdentifier": {"system": "https://fhirlake.test/bench", "value": "bench"}}
    sub_id = {"name": "submissionId", "valueString": "import-bench"}
    env = {"HFS_BULK_SUBMIT_ENABLED": "true",
           "HFS_BULK_SUBMIT_DEFER_INDEXING": "false", "HFS_BULK_SUBMIT_OUTPUT_DIR": str(work / "helios-out")}
    try:
        with peers.Helios(binary, work / "helios", env) as h:
            t0 = time.perf_counter()
            status, body = peers.http("POST", f"{h.base}/$bulk-submit", json.dumps({"resourceType": "Parameters", "parameter": [
                submitter, sub_id, {"name": "manifestUrl", "valueUrl": f"{base}/manifest.json"},
                {"name": "fhirBaseUrl", "valueUrl": base},
                {"name": "submissionStatus", "valueCoding": {"code": "complete"}}]}))
            if status >= 300:
                print(f"Helios $bulk-submit refused: {status} {str(body)[:500]}")
                return None, None
            status, _, headers = peers.http_with_headers("POST", f"{h.base}/$bulk-submit-status", json.dumps(
                {"resourceType": "Parameters", "parameter": [submitter, sub_id]}))
            poll = headers.get("content-location")
            if status != 202 or not poll:
                print(f"Helios $bulk-submit-status: {status}, no Content-Location")
                return None, None
            last = time.time()
            while True:
                # Helios allows 10 status polls a minute and says when to come back.
                status, body, hdrs = peers.http_with_headers("GET", poll)
                if status == 200:
                    break
                if status >= 400 and status != 429:
                    print(f"Helios bulk submit failed: {status} {str(body)[:500]}")
                    return None, None
                if time.time() - last > 30:
                    print(f"  Helios bulk submit running ({time.perf_counter() - t0:.0f} s)", flush=True)
                    last = time.time()
                try:
                    wait = float(hdrs.get("retry-after", "6"))
                except ValueError:
                    wait = 6.0
                time.sleep(min(max(wait, 1.0), 10.0))
            seconds = time.perf_counter() - t0
            st, b = peers.http("GET", f"{h.base}/Observation?_summary=count")
            got = b.get("total") if isinstance(b, dict) else None
            if got != counts.get("Observation"):
                print(f"Helios holds {got} Observations after the bulk load, not {counts.get('Observation')}")
            return seconds, h.peak_rss_mib()
    finally:
        files.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-release")) / "release" / "fhirlake"))
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--synthea", action="store_true", help="replicate the Synthea fixtures instead of `fhirlake generate`")
    ap.add_argument("--no-peer", action="store_true", help="skip the Helios bulk load")
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true", help="one replica (~11,000 resources): checks the script, not the speed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    target = 2_000 if a.smoke else a.resources
    work = Path(tempfile.mkdtemp(prefix="fhirlake-bench-"))
    try:
        src = work / "ndjson"
        if a.synthea:
            n = replicate(FIXTURES / "synthea" / "ndjson", src, target)
        else:
            n = peers.generate(a.bin, max(1, target // 240), src)  # ~250 resources per patient
        size = sum(f.stat().st_size for f in src.glob("*.ndjson")) / 2**20
        print(f"data: {n} resources, {size:.1f} MiB NDJSON, {len(list(src.glob('*.ndjson')))} types")
        env = dict(os.environ, RUST_LOG="warn")

        data = work / "fhirlake-data"
        t_fl, rss_fl, out = run([a.bin, "import", "--no-progress", "--data", str(data), "--errors", str(work / "errors.ndjson"), str(src)], env)
        if f"imported {n} resources" not in out:
            sys.exit(f"fhirlake import did not import {n} resources:\n{out}")
        # The same import without the search-index columns: the cost of extraction.
        data_noix = work / "fhirlake-data-no-index"
        t_nx, rss_nx, out = run([a.bin, "import", "--no-progress", "--no-search-index", "--data", str(data_noix), "--errors", str(work / "errors2.ndjson"), str(src)], env)
        if f"imported {n} resources" not in out:
            sys.exit(f"fhirlake import --no-search-index did not import {n} resources:\n{out}")
        pq = work / "duckdb-parquet"
        pq.mkdir()
        t_dd, rss_dd, _ = run([sys.executable, "-c", DUCKDB_WRITE, str(src), str(pq)])

        helios, why = (None, "skipped (--no-peer)") if a.no_peer else peers.helios_binary(build=not a.smoke)
        t_hs = rss_hs = None
        if helios:
            t_hs, rss_hs = helios_bulk_load(helios, src, work)
        else:
            print(f"peer Helios: {why}")

        r_fl, rss_rfl, out_fl = run([a.bin, "sql", "--data", str(data), "--format", "csv", READ_SQL], env)
        r_dd, rss_rdd, out_dd = run([sys.executable, "-c", DUCKDB_READ, str(pq)])

        print(f"{'':22}{'fhirlake':>14}{'DuckDB':>14}{'ratio':>10}")
        print(f"{'write resources/s':22}{n / t_fl:14,.0f}{n / t_dd:14,.0f}{(n / t_fl) / (n / t_dd):10.2f}")
        print(f"{'write seconds':22}{t_fl:14.2f}{t_dd:14.2f}{t_fl / t_dd:10.2f}")
        print(f"{'  without search index':22}{n / t_nx:14,.0f}{'':14}{(n / t_nx) / (n / t_dd):10.2f}   ({t_nx:.2f} s, peak {rss_nx:.0f} MiB)")
        print(f"search-index extraction costs {100 * (t_fl - t_nx) / t_nx:.0f}% more import time ({n / t_fl:,.0f} vs {n / t_nx:,.0f} resources/s)")
        print(f"{'write peak RSS MiB':22}{rss_fl:14.0f}{rss_dd:14.0f}")
        if t_hs:
            print(f"{'Helios $bulk-submit':22}{n / t_hs:14,.0f} resources/s ({t_hs:.1f} s, server peak {rss_hs:.0f} MiB); "
                  f"fhirlake/Helios {(n / t_fl) / (n / t_hs):.2f}x")
        print(f"{'read query seconds':22}{r_fl:14.2f}{r_dd:14.2f}{r_fl / r_dd:10.2f}")
        print(f"{'read peak RSS MiB':22}{rss_rfl:14.0f}{rss_rdd:14.0f}")
        print(f"fhirlake read result: {out_fl.strip().splitlines()[-1]}; DuckDB: {out_dd.strip()}")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
