#!/usr/bin/env python3
"""Restart benchmark: how long `fhirlake serve` takes to be ready on a large root, and how
much disk the serving store takes next to the Delta tables.

One invocation: `fhirlake generate` (--patients, 4,166 = ~1.08M resources), `fhirlake
import` of it (resources/s: the bulk path, which also fills the serving store), then:

  clean    `serve` started, stopped with SIGTERM, started again: seconds from spawn until
           `/health` answers 200 (the second start);
  kill -9  writes for a few seconds with flushes held back (--flush-interval 1h), SIGKILL,
           start again: seconds until ready (the start flushes what Delta lacks) and the
           number of versions it had to flush.

Sizes: `_fhirlake/serving.redb` vs `resources/` + `history/`, after the import, and after
`fhirlake compact` (which also compacts the store). There is no peer for restart time
(Helios keeps SQLite, which opens in O(1)); the figures are fhirlake's own.
--quick: 20 patients, debug binary (checks the script)."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def disk(data: Path) -> dict:
    """Bytes of the serving store and of the Delta tables (current + history)."""
    return {"store": du(data / "_fhirlake" / "serving.redb"), "delta": du(data / "resources") + du(data / "history")}


def start(binary, data, *extra):
    """Spawns serve; returns (process, base URL, seconds until /health is 200)."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(binary), "serve", "--data", str(data), "--listen", "127.0.0.1:0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if "http://" not in line:
        p.kill()
        sys.exit(f"serve did not start: {line}")
    base = "http://" + line.split("http://")[1].split()[0]
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return p, base, time.monotonic() - t0
        except Exception:  # noqa: BLE001 - 503 starting, or not yet listening
            pass
        if p.poll() is not None:
            sys.exit("serve exited during start-up")
        time.sleep(0.02)


def stop(p):
    """SIGTERM and wait: the server flushes, releases the lease and exits."""
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=300)


def write_for(base, seconds):
    """Single Patient creates for `seconds`; returns how many were acknowledged."""
    n = 0
    stop_at = time.monotonic() + seconds
    body = json.dumps({"resourceType": "Patient", "gender": "other"}).encode()
    while time.monotonic() < stop_at:
        req = urllib.request.Request(base + "/fhir/Patient", data=body, method="POST",
                                     headers={"Content-Type": "application/fhir+json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            n += r.status == 201
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="fhirlake binary (default: release build, or debug with --quick)")
    ap.add_argument("--patients", type=int, help="patients generated (default 4,166 = ~1.08M resources)")
    ap.add_argument("--quick", "--smoke", action="store_true", dest="quick")
    ap.add_argument("--work", help="working folder (default: a temporary one, removed)")
    a = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-target"))
    default_bin = target / "debug" / "fhirlake" if a.quick else Path(
        os.environ.get("FHIRLAKE_RELEASE_TARGET_DIR", "/var/tmp/fhirlake-release")) / "release" / "fhirlake"
    binary = Path(a.bin or default_bin)
    patients = a.patients or (20 if a.quick else 4166)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="fhirlake-restart-"))
    try:
        src, data = work / "ndjson", work / "data"
        resources = peers.generate(binary, patients, src)
        t0 = time.monotonic()
        subprocess.run([str(binary), "import", "--no-progress", "--data", str(data), str(src)], check=True,
                       capture_output=True)
        imported = time.monotonic() - t0
        print(f"import: {resources:,} resources in {imported:.1f} s = {resources / imported:,.0f} resources/s", flush=True)
        sizes = disk(data)
        p, base, first = start(binary, data)
        stop(p)
        p, base, clean = start(binary, data)
        print(f"start after a clean stop: {clean:.2f} s (first start after the import: {first:.2f} s)", flush=True)
        stop(p)
        p, base, _ = start(binary, data, "--flush-interval", "1h", "--flush-buffer", "1GiB")
        written = write_for(base, 2 if a.quick else 5)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p, base, killed = start(binary, data)
        print(f"start after kill -9 with {written:,} acknowledged writes not in Delta: {killed:.2f} s", flush=True)
        stop(p)
        subprocess.run([str(binary), "compact", "--data", str(data)], check=True, capture_output=True)
        compacted = disk(data)
        mib = lambda b: f"{b / 1048576:,.0f}"  # noqa: E731
        peers.table("Restart and disk (fhirlake)", [
            ["resources", f"{resources:,}"],
            ["import, resources/s", f"{resources / imported:,.0f}"],
            ["start after a clean stop, s", f"{clean:.2f}"],
            [f"start after kill -9 ({written:,} unflushed writes), s", f"{killed:.2f}"],
            ["serving store MiB (after import / after compact)", f"{mib(sizes['store'])} / {mib(compacted['store'])}"],
            ["Delta tables MiB, resources + history (after import / after compact)",
             f"{mib(sizes['delta'])} / {mib(compacted['delta'])}"],
        ], ["measure", "fhirlake"])
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
