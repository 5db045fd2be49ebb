#!/usr/bin/env python3
"""`fhirlake generate` speed: resources/s with the bytes discarded (generation alone) and
written to NDJSON files (generation + disk), and that two thread counts give the same
bytes. No peer: Synthea (Java) is the natural one, but its release jar is a GitHub
download this machine cannot make.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(binary, patients, *extra):
    t0 = time.perf_counter()
    p = subprocess.run([binary, "generate", "--patients", str(patients), "--no-progress", *extra], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(p.stderr)
    m = re.search(r"generated (\d+) resources .*\(([\d.]+) MB\)", p.stderr)
    return int(m.group(1)), float(m.group(2)), secs


def digest(folder):
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.ndjson")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", default=str(Path("/var/tmp/fhirlake-release/release/fhirlake")))
    ap.add_argument("--quick", "--smoke", dest="quick", action="store_true")
    ap.add_argument("--patients", type=int, help="default 3,900 (~1.02M resources); --quick 20")
    a = ap.parse_args()
    patients = a.patients or (20 if a.quick else 3900)
    n, mb, secs = run(a.bin, patients, "--discard")
    print(f"generate (discarded): {n:,} resources, {mb:,.0f} MB in {secs:.2f} s = {n / secs:,.0f} resources/s "
          f"({os.cpu_count()} threads)")
    work = Path(tempfile.mkdtemp(prefix="fhirlake-gen-", dir="/var/tmp"))
    try:
        n, mb, secs = run(a.bin, patients, "--out", str(work / "a"))
        print(f"generate (NDJSON to disk): {n:,} resources, {mb:,.0f} MB in {secs:.2f} s = {n / secs:,.0f} resources/s")
        small = min(patients, 200)
        run(a.bin, small, "--out", str(work / "one"), "--threads", "1")
        run(a.bin, small, "--out", str(work / "two"), "--threads", "2")
        same = digest(work / "one") == digest(work / "two")
        print(f"1 thread and 2 threads, {small} patients: {'byte-identical' if same else 'DIFFERENT'}")
        if not same:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
