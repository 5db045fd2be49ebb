#!/usr/bin/env python3
"""Write benchmark: transactions, single creates, updates and deletes over HTTP.

In one invocation, against one `fhirlake serve` (release binary for real figures):

  transactions  the 40 Synthea transaction Bundles (tests/fixtures/synthea/bundles),
                posted --tx-rounds times by 8 concurrent clients: resources/s
  creates       small Observations POSTed by 64 concurrent clients for --seconds:
                requests/s, p50/p99 latency
  updates       PUT of random existing Observations (16 clients, --seconds) in a table of
                --resources (the Synthea NDJSON replicated with fresh ids and imported
                first, or --data reuses a loaded root): requests/s, p50/p99
  deletes       DELETE of random existing Observations, same table: requests/s, p50/p99

With --compact the update and delete phases run twice: on the table as imported and after
`fhirlake compact --full` (clustered by patient).

No peer FHIR server is built here yet (Helios needs ~40 minutes of build; issue #8), so no
ratio is printed; targets from issue #4 are printed beside the figures. The load client is
Python threads with keep-alive connections; on 2 cores it competes with the server.
--smoke runs each phase for a second on tiny data, four Bundles and no import (CI, debug
binary; the numbers mean nothing).
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_bench import FIXTURES, replicate  # noqa: E402
from search_bench import pct  # noqa: E402


class Conn:
    def __init__(self, host, port):
        self.c = http.client.HTTPConnection(host, port, timeout=600)

    def call(self, method, path, body=None):
        h = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"} if body is not None else {}
        self.c.request(method, "/fhir" + path, body=body, headers=h)
        r = self.c.getresponse()
        data = r.read()
        return r.status, data


def load(host, port, clients, seconds, make_request, expect):
    """Runs `clients` threads for `seconds`; each calls make_request(rng) -> (method, path,
    body) and checks the status is in `expect`. Returns (count, latencies, elapsed)."""
    lat = []
    lock = threading.Lock()
    errors = []
    stop = time.perf_counter() + seconds

    def worker(k):
        rng = random.Random(k)
        c = Conn(host, port)
        mine = []
        while time.perf_counter() < stop:
            method, path, body = make_request(rng)
            t0 = time.perf_counter()
            status, data = c.call(method, path, body)
            mine.append(time.perf_counter() - t0)
            if status not in expect:
                errors.append((status, data[:300]))
                break
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit(f"unexpected answer: {errors[0]}")
    return len(lat), lat, time.perf_counter() - t0


def report(name, n, lat, elapsed, target):
    print(f"{name:<12} {n / elapsed:>10,.0f} req/s  p50 {pct(lat, 50) * 1000:7.1f} ms  p99 {pct(lat, 99) * 1000:7.1f} ms"
          f"  ({n} requests, {elapsed:.1f} s)  target: {target}")


def transactions(host, port, rounds, limit=None, clients=8):
    bundles = sorted((FIXTURES / "synthea" / "bundles").glob("*.json"))[:limit]
    bodies = [b.read_bytes() for b in bundles]
    entries = sum(len(json.loads(b)["entry"]) for b in bodies)
    work = [b for _ in range(rounds) for b in bodies]
    lock = threading.Lock()
    lat = []

    def worker():
        c = Conn(host, port)
        while True:
            with lock:
                if not work:
                    return
                body = work.pop()
            t0 = time.perf_counter()
            status, data = c.call("POST", "", body)
            if status != 200:
                sys.exit(f"transaction failed: {status} {data[:300]}")
            with lock:
                lat.append(time.perf_counter() - t0)

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    n = entries * rounds
    print(f"{'transactions':<12} {n / elapsed:>10,.0f} resources/s ({len(lat)} Bundles of {entries // len(bodies)} entries "
          f"on average, 8 clients, {elapsed:.1f} s; Bundle p50 {pct(lat, 50) * 1000:.0f} ms)  target: 10,000 resources/s")


def observation_ids(data, limit):
    from deltalake import DeltaTable
    t = DeltaTable(str(data / "resources" / "Observation")).to_pyarrow_table(columns=["id", "_raw"])
    ids = t["id"].to_pylist()
    raws = t["_raw"].to_pylist()
    pick = random.Random(7).sample(range(len(ids)), min(limit, len(ids)))
    return [(ids[i], json.loads(raws[i])) for i in pick], len(ids)


def serve(binary, data):
    p = subprocess.Popen([binary, "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--compact-every-secs", "0"],
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
    line = p.stdout.readline()
    if "listening on http://" not in line:
        p.kill()
        sys.exit(f"server did not start: {line}")
    host, port = line.split("http://", 1)[1].split()[0].split(":")
    return p, host, int(port)


def stop(p):
    p.terminate()
    p.wait(timeout=300)


def updates_and_deletes(binary, data, seconds, label):
    sample, table_rows = observation_ids(data, 200_000)
    p, host, port = serve(binary, data)
    try:
        victims = list(sample)
        random.Random(1).shuffle(victims)
        half = len(victims) // 2
        to_update, to_delete = victims[:half], victims[half:]
        lock = threading.Lock()

        def update(rng):
            with lock:
                rid, r = to_update[rng.randrange(len(to_update))]
            r = dict(r)
            r["status"] = rng.choice(["amended", "corrected", "final"])
            r.pop("meta", None)
            return "PUT", f"/Observation/{rid}", json.dumps(r)

        n, lat, el = load(host, port, 16, seconds, update, (200,))
        report(f"updates {label}", n, lat, el, f"1,000/s, p99 < 100 ms (table of {table_rows:,} Observations)")

        def delete(rng):
            with lock:
                if not to_delete:
                    rid = victims[0][0]
                else:
                    rid = to_delete.pop()[0]
            return "DELETE", f"/Observation/{rid}", None

        n, lat, el = load(host, port, 16, seconds, delete, (200, 204))
        report(f"deletes {label}", n, lat, el, "1,000/s, p99 < 100 ms")
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "release" / "fhirlake"))
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, help="a loaded storage root to use (it is modified: updates and deletes)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--tx-rounds", type=int, default=3)
    ap.add_argument("--compact", action="store_true", help="also measure updates/deletes after fhirlake compact --full")
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.resources, a.seconds, a.tx_rounds = 1, 1.0, 1
    work = Path(tempfile.mkdtemp(prefix="fhirlake-write-bench-"))
    try:
        print(f"fhirlake write benchmark ({a.bin}); {os.cpu_count()} cores")
        # Transactions and creates on an empty root.
        empty = work / "empty"
        p, host, port = serve(a.bin, empty)
        try:
            transactions(host, port, a.tx_rounds, 4 if a.smoke else None)

            def create(rng):
                body = {"resourceType": "Observation", "status": "final", "code": {"text": f"c{rng.randrange(50)}"},
                        "subject": {"reference": f"Patient/{uuid.UUID(int=rng.getrandbits(128))}"},
                        "valueQuantity": {"value": rng.randrange(1000) / 10, "unit": "mg"}}
                return "POST", "/Observation", json.dumps(body)

            n, lat, el = load(host, port, 64, a.seconds, create, (201,))
            report("creates", n, lat, el, "3,000/s, p99 < 50 ms (64 clients)")
        finally:
            stop(p)
        # Updates and deletes on a big table.
        if a.smoke:
            data = empty  # the Observations written above
        elif a.data:
            data = a.data
        else:
            nd = work / "ndjson"
            total = replicate(FIXTURES / "synthea" / "ndjson", nd, a.resources)
            data = work / "data"
            t0 = time.perf_counter()
            subprocess.run([a.bin, "import", "--no-progress", "--data", str(data), str(nd)], check=True, capture_output=True)
            print(f"imported {total:,} resources in {time.perf_counter() - t0:.1f} s")
            shutil.rmtree(nd)
        updates_and_deletes(a.bin, data, a.seconds, "(as imported)" if a.compact else "")
        if a.compact:
            t0 = time.perf_counter()
            subprocess.run([a.bin, "compact", "--full", "--data", str(data), "--no-vacuum"], check=True, capture_output=True)
            print(f"fhirlake compact --full: {time.perf_counter() - t0:.1f} s")
            updates_and_deletes(a.bin, data, a.seconds, "(compacted)")
        print("peer FHIR server: not built on this machine yet (issue #8); no ratio")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
