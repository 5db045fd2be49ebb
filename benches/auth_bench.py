#!/usr/bin/env python3
"""Auth benchmark: what token validation and scope checks cost on the app-facing path.

One invocation, one data set (`fhirlake generate --format bundles`, loaded once), the same
client (loadgen) and concurrency, three runs over the same storage root:

  off         `serve` without authentication (the peer of this benchmark);
  1 scope     `serve --auth smart`, a SmartUser+Reader RS256 token with `user/*.rs`;
  10 scopes   the same server, a token with ten `user/<Type>.rs` scopes.

Each run: reads by id (`GET /Observation/{id}` over 1,000 ids, --concurrency, --seconds)
and the four searches of the search issue ((a) to (d), one client, --search-seconds each).
The ratio column is auth-on throughput / auth-off throughput (target: at least 0.90).
--quick (CI) uses a few patients and the debug binaries; its numbers mean nothing.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import rest_bench  # noqa: E402

ISSUER = "https://issuer.bench"
AUDIENCE = "https://fhirlake.bench/fhir"
TEN = ["Observation", "Patient", "Condition", "Encounter", "Procedure", "MedicationRequest", "Immunization",
       "DiagnosticReport", "AllergyIntolerance", "CarePlan"]


def token(binary, keys, scope, roles):
    p = subprocess.run([binary, "auth", "token", "--key", str(keys), "--issuer", ISSUER, "--audience", AUDIENCE,
                        "--scope", scope, "--roles", roles, "--expires-in", "36000"],
                       capture_output=True, text=True, check=True)
    return p.stdout.strip()


def measure(server, a, lg, ids, patients, work, headers):
    """Reads by id and the four searches with `headers` on every request."""
    out = {}
    paths = work / "reads.txt"
    paths.write_text("".join(f"/Observation/{i}\n" for i in ids))
    r = peers.loadgen(lg, server.base, paths_file=paths, concurrency=a.concurrency, duration=a.seconds, headers=headers)
    if r["errors"]:
        sys.exit(f"reads failed: {r['first_error'][:500]}")
    out["read"] = r
    for key, template in rest_bench.SEARCHES.items():
        f = work / f"search-{key}.txt"
        f.write_text("\n".join(dict.fromkeys(template.format(patient=p, prefix="Smi") for p in patients[:200])) + "\n")
        r = peers.loadgen(lg, server.base, paths_file=f, concurrency=1, duration=a.search_seconds, headers=headers)
        if r["errors"]:
            sys.exit(f"search ({key}) failed: {r['first_error'][:500]}")
        out[key] = r
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--smoke", action="store_true", dest="quick", help="tiny data, debug binaries (CI)")
    ap.add_argument("--bin", help="fhirlake binary (default: release build, or debug with --quick)")
    ap.add_argument("--patients", type=int, help="patients generated (default 300; --quick 3)")
    ap.add_argument("--concurrency", type=int, default=8, help="reads in flight")
    ap.add_argument("--seconds", type=float, help="duration of the read runs (default 20; --quick 1)")
    ap.add_argument("--search-seconds", type=float, help="duration of each search run (default 10; --quick 1)")
    a = ap.parse_args()
    a.patients = a.patients or (3 if a.quick else 300)
    a.seconds = a.seconds or (1.0 if a.quick else 20.0)
    a.search_seconds = a.search_seconds or (1.0 if a.quick else 10.0)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-target"))
    binary = a.bin or str(target / "debug" / "fhirlake" if a.quick else Path("/var/tmp/fhirlake-release/release/fhirlake"))
    lg = peers.loadgen_binary(a.quick)
    work = Path(tempfile.mkdtemp(prefix="fhirlake-auth-"))
    try:
        gen = work / "bundles"
        n = peers.generate(binary, a.patients, gen, fmt="bundles")
        bundles_file = gen / "transactions.ndjson"
        bundles = sum(1 for _ in open(bundles_file))
        print(f"data: {a.patients} patients, {n:,} entries", flush=True)
        data = work / "data"
        results = {}
        with peers.Fhirlake(binary, data) as s:
            r = peers.loadgen(lg, s.base, method="POST", bodies_file=bundles_file, concurrency=4, duration=3600,
                              requests=bundles)
            if r["errors"]:
                sys.exit(f"load failed: {r['first_error'][:500]}")
            ids = rest_bench.ids_of(s, "Observation", 1000)
            patients = rest_bench.ids_of(s, "Patient", 200)
            results["off"] = measure(s, a, lg, ids, patients, work, [])
        keys = work / "keys"
        subprocess.run([binary, "auth", "keygen", "--out", str(keys)], check=True, capture_output=True)
        one = token(binary, keys, "user/*.rs", "SmartUser,Reader")
        ten = token(binary, keys, " ".join(f"user/{t}.rs" for t in TEN), "SmartUser,Reader")
        auth = ["--auth", "smart", "--issuer", ISSUER, "--jwks", str(keys / "jwks.json"), "--audience", AUDIENCE]
        with peers.Fhirlake(binary, data, extra=auth) as s:
            status, _ = peers.http("GET", f"{s.base}/Patient")
            if status != 401:
                sys.exit(f"the authenticated server answered {status} without a token")
            results["1 scope"] = measure(s, a, lg, ids, patients, work, [f"Authorization: Bearer {one}"])
            results["10 scopes"] = measure(s, a, lg, ids, patients, work, [f"Authorization: Bearer {ten}"])
        report(a, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(a, results):
    off = results["off"]
    rows = []
    labels = {"read": f"reads by id, requests/s (concurrency {a.concurrency})",
              "a": "search (a) Observation?patient=X&code=Y, req/s", "b": "search (b) _summary=count, req/s",
              "c": "search (c) Patient?name&birthdate, req/s", "d": "search (d) _include first page, req/s"}
    for key, label in labels.items():
        base = off[key]["rps"]
        row = [label, f"{base:,.1f}"]
        for run in ("1 scope", "10 scopes"):
            v = results[run][key]["rps"]
            row += [f"{v:,.1f}", peers.ratio(v, base)]
        rows.append(row)
    peers.table("Auth on vs off (ratio = auth-on throughput / auth-off; target >= 0.90)", rows,
                ["measure", "auth off", "1-scope token", "ratio", "10-scope token", "ratio"])


if __name__ == "__main__":
    main()
