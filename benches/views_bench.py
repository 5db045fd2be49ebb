#!/usr/bin/env python3
"""SQL-on-FHIR views benchmark: materializing the views in benches/views/ with fhirlake,
against FHIR4DS (a DuckDB-based SQL-on-FHIR engine from PyPI) on the same NDJSON, one run.

The Synthea NDJSON fixtures are replicated with fresh ids (as in import_bench.py) to at
least --resources resources and imported with `fhirlake import` (or --data reuses a
loaded storage root built from the same --resources). Then, per view:

  fhirlake  `fhirlake view materialize --file VIEW --full` (compiled DataFusion plan over
            the typed Delta table, written to views/<name>): wall time of the process,
            rows written, rows/s and source resources/s.
  FHIR4DS   in its own virtual environment (--peer-venv, pinned: fhir4ds 0.5.1,
            duckdb 1.5.5 with the PyPI duckdb-extension-json file installed offline),
            the resource type's NDJSON loaded into DuckDB (timed apart), then the view run
            to a DataFrame (timed).

The peer's rows are compared with fhirlake's (as multisets; resource keys compared without
a `Type/` prefix, numbers to 9 significant digits). Speed ratios are printed only for views
the peer answers correctly. pysof 0.2.6 (the Helios wrapper) is not run: its native module
needs glibc 2.38 and this machine has an older one; the script says so.

--smoke: one replica, no peer unless its venv exists (CI runs this with the debug binary;
the numbers mean nothing).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_bench import FIXTURES, WRAPPER, replicate, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ROOT / "benches" / "views"
PEER_PINS = ["fhir4ds==0.5.1", "duckdb==1.5.5", "duckdb-extension-json==1.5.5"]
KEY_COLUMNS = {"id", "patient_id", "encounter_id", "provider_id"}

PEER_SCRIPT = r"""
import json, sys, time
from fhir4ds.datastore import QuickConnect
view_path, ndjson, out = sys.argv[1], sys.argv[2], sys.argv[3]
view = json.load(open(view_path))
db = QuickConnect.duckdb(':memory:')
t0 = time.perf_counter()
batch = []
with open(ndjson) as f:
    for line in f:
        if line.strip():
            batch.append(json.loads(line))
        if len(batch) >= 50000:
            db.load_resources(batch)
            batch = []
if batch:
    db.load_resources(batch)
t1 = time.perf_counter()
try:
    df = db.execute_to_dataframe(view)
    t2 = time.perf_counter()
    rows = json.loads(df.to_json(orient='values', double_precision=15, date_format='iso'))
    json.dump({"load_s": t1 - t0, "run_s": t2 - t1, "columns": list(df.columns), "rows": rows}, open(out, "w"))
except Exception as e:
    json.dump({"load_s": t1 - t0, "error": str(e).splitlines()[0][:300]}, open(out, "w"))
"""


def ensure_peer(venv: Path, smoke: bool):
    """The peer venv's python, creating it with the pinned packages when missing."""
    py = venv / "bin" / "python"
    home = venv / "home"
    ext_dir = home / ".duckdb" / "extensions" / "v1.5.5" / "linux_amd64"
    if not py.exists():
        if smoke:
            return None
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    ext = ext_dir / "json.duckdb_extension"
    if not ext.exists():
        found = list(venv.glob("lib/python*/site-packages/duckdb_extension_json/extensions/v1.5.5/json.duckdb_extension"))
        if not found:
            sys.exit(f"{venv}: duckdb-extension-json 1.5.5 is not installed; pip install {' '.join(PEER_PINS)}")
        ext_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(found[0], ext)
    return py


def materialize(binary, root, view_file):
    """`fhirlake view materialize --full` in a wrapper process: (wall s, peak RSS MiB,
    stdout, query s, commit s) -- the last two from the progress lines on stderr."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", WRAPPER, str(binary), "view", "--data", str(root), "materialize",
                        "--file", str(view_file), "--full"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"materialize {view_file} failed:\n{p.stdout}\n{p.stderr}")
    lines = p.stderr.strip().splitlines()
    rss = int(lines[-1].split("=")[1]) / 1024
    query = commit = float("nan")
    for line in lines:
        if " rows in " in line and line.endswith("writing"):
            query = float(line.split(" rows in ")[1].split(" s")[0])
        if "committed in " in line:
            commit = float(line.split("committed in ")[1].split(" s")[0])
    return wall, rss, p.stdout, query, commit


def norm_value(col, v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if col in KEY_COLUMNS and isinstance(v, str) and "/" in v:
        return v.rsplit("/", 1)[1]
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, Decimal)):
        return float(f"{float(v):.9g}")
    if isinstance(v, str):
        try:
            if any(c in v for c in ".eE") and not any(c.isalpha() and c not in "eE" for c in v):
                return float(f"{float(v):.9g}")
        except ValueError:
            pass
    return v


def norm_rows(columns, rows):
    out = [tuple(norm_value(c, v) for c, v in zip(columns, r)) for r in rows]
    return sorted(out, key=repr)


def fhirlake_rows(root: Path, name: str, columns):
    from deltalake import DeltaTable

    t = DeltaTable(str(root / "views" / name)).to_pyarrow_table(columns=columns)
    cols = [t.column(c).to_pylist() for c in columns]
    return [list(r) for r in zip(*cols)] if cols else []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-release")) / "release" / "fhirlake"))
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--data", help="a storage root already loaded with the same --resources (skips import)")
    ap.add_argument("--ndjson", help="a folder of the replicated NDJSON (skips replication)")
    ap.add_argument("--peer-venv", default="/var/tmp/fhirlake-peers")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.resources = 1
    binary = Path(a.bin)
    if not binary.exists():
        sys.exit(f"{binary} not found; build it (cargo build --release --bin fhirlake) or pass --bin")
    work = Path(tempfile.mkdtemp(prefix="fhirlake-views-bench-"))
    try:
        ndjson = Path(a.ndjson) if a.ndjson else work / "ndjson"
        if not a.ndjson:
            n = replicate(FIXTURES / "synthea" / "ndjson", ndjson, a.resources)
            print(f"data: {n:,} resources of NDJSON in {ndjson}")
        root = Path(a.data) if a.data else work / "root"
        if not a.data:
            secs, rss, _ = run([binary, "import", "--data", root, ndjson])
            print(f"fhirlake import: {secs:.1f} s, peak RSS {rss:.0f} MiB")
        peer = None
        if not a.no_peer:
            peer = ensure_peer(Path(a.peer_venv), a.smoke)
            if peer is None:
                print("peer: FHIR4DS venv not present; skipped in --smoke (run without --smoke to create it)")
        print("peer: pysof 0.2.6 not run (its native module needs glibc 2.38; this machine's is older)")
        counts = {f.stem: sum(1 for line in f.open() if line.strip()) for f in ndjson.glob("*.ndjson")}
        results = []
        for vf in sorted(VIEWS.glob("*.json")):
            view = json.loads(vf.read_text())
            name, rt = view["name"], view["resource"]
            columns = [c["name"] for s in view["select"] for c in s.get("column", [])]
            secs, rss, out, query_s, commit_s = materialize(binary, root, vf)
            rows = fhirlake_rows(root, name, columns)
            line = {"view": name, "resource": rt, "sources": counts.get(rt, 0), "rows": len(rows), "fl_s": secs,
                    "fl_query_s": query_s, "fl_commit_s": commit_s, "fl_rss": rss}
            line["fallback"] = "row by row" in out
            if peer is not None:
                res_file = work / f"{name}.peer.json"
                env = dict(os.environ, HOME=str(Path(a.peer_venv) / "home"))
                t0 = time.perf_counter()
                p = subprocess.run([str(peer), "-c", PEER_SCRIPT, str(vf), str(ndjson / f"{rt}.ndjson"), str(res_file)],
                                   capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t0
                if p.returncode != 0 or not res_file.exists():
                    line["peer"] = f"failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
                else:
                    r = json.loads(res_file.read_text())
                    line["peer_load_s"] = r["load_s"]
                    if "error" in r:
                        line["peer"] = f"error: {r['error']}"
                    else:
                        line["peer_s"] = r["run_s"]
                        pcols = r["columns"]
                        prow = [[dict(zip(pcols, x)).get(c) for c in columns] for x in r["rows"]]
                        ok = norm_rows(columns, prow) == norm_rows(columns, rows)
                        line["peer"] = "correct" if ok else f"wrong rows ({len(prow)} rows vs {len(rows)})"
                line["peer_wall"] = wall
            results.append(line)
            print(json.dumps(line))
        print()
        print("| view | source resources | rows | fhirlake s (query / commit) | rows/s | resources/s | query rows/s | FHIR4DS run s (load s) | FHIR4DS rows | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in results:
            rps = r["rows"] / r["fl_s"]
            sps = r["sources"] / r["fl_s"]
            peer_s = f"{r['peer_s']:.2f} ({r['peer_load_s']:.1f})" if "peer_s" in r else (f"- ({r['peer_load_s']:.1f})" if "peer_load_s" in r else "-")
            ratio = f"{r['peer_s'] / r['fl_s']:.2f}x" if r.get("peer") == "correct" else "-"
            qps = r["rows"] / r["fl_query_s"] if r["fl_query_s"] > 0 else float("nan")
            print(f"| {r['view']}{' (fallback)' if r['fallback'] else ''} | {r['sources']:,} | {r['rows']:,} | {r['fl_s']:.2f} ({r['fl_query_s']:.2f} / {r['fl_commit_s']:.2f}) | {rps:,.0f} | {sps:,.0f} | {qps:,.0f} | {peer_s} | {r.get('peer', 'not run')} | {ratio} |")
        print("\nfhirlake s = wall time of `fhirlake view materialize --full` (process start, plan, run, Parquet write,")
        print("Delta commit); query = running the plan to Arrow batches; rows/s and resources/s use the wall time.")
        print("ratio = FHIR4DS run time / fhirlake wall time (>1: fhirlake faster), only where FHIR4DS's rows are correct.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
