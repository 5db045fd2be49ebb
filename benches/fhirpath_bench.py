#!/usr/bin/env python3
"""FHIRPath benchmark: fhirlake's engine vs the HL7 reference JavaScript engine
(`fhirpath` on npm, pinned in benches/package.json), same expressions, same resources,
one invocation.

  expressions  evaluations/s of each expression in benches/fhirpath_expressions.json over
               the Synthea fixture resources of its type (parsed once; compiled once).
  extraction   resources/s of search-index extraction over the whole Synthea mix:
               fhirlake evaluates every applicable R4 SearchParameter (components
               included) and converts the results to typed index values; the JavaScript
               side only evaluates the same expressions (no components, no conversion).

fhirlake's side is the criterion bench `schemas/benches/fhirpath.rs` (release profile);
its throughput lines are parsed from criterion's output. --smoke runs the criterion bench
once in test mode (debug profile) and the JavaScript side on 50 resources per type: it
checks that the script works; its numbers mean nothing.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ROOT / "benches"
from fixtures_root import FIXTURES  # noqa: E402
UNITS = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}


def ensure_node_modules():
    if not (BENCHES / "node_modules" / "fhirpath").exists():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=BENCHES, check=True)


def parse_criterion(text):
    """{bench id: elements/s (the middle estimate)} from criterion's stdout."""
    out, current = {}, None
    for line in text.splitlines():
        # A bench id, alone on its line or followed by `time:` (short ids).
        m = re.match(r"^((?:expressions|extraction)/.+?)\s*(?:time:.*)?$", line)
        if m:
            current = m.group(1)
        m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m and current:
            out[current] = float(m.group(1)) * UNITS[m.group(2)]
            current = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", "--quick", dest="smoke", action="store_true", help="check the script works (debug, tiny); no real numbers")
    a = ap.parse_args()
    ensure_node_modules()
    env = dict(os.environ)
    if a.smoke:
        env["FHIRLAKE_BENCH_LIMIT"] = "50"
        cmd = ["cargo", "test", "--locked", "-p", "fhirlake-schemas", "--bench", "fhirpath"]
    else:
        env.setdefault("CARGO_TARGET_DIR", "/var/tmp/fhirlake-release")
        cmd = ["cargo", "bench", "--locked", "-p", "fhirlake-schemas", "--bench", "fhirpath", "--", "--noplot"]
    print("fhirlake: " + " ".join(cmd), flush=True)
    rust = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if rust.returncode != 0:
        sys.exit(f"criterion bench failed:\n{rust.stdout}\n{rust.stderr}")
    ours = parse_criterion(rust.stdout)

    print("peer: node benches/fhirpath_js.js (fhirpath " + json.load(open(BENCHES / "package.json"))["dependencies"]["fhirpath"] + ")", flush=True)
    js = subprocess.run(
        ["node", "fhirpath_js.js", str(FIXTURES), str(BENCHES / "fhirpath_expressions.json"),
         str(ROOT / "schemas" / "definitions" / "search-parameters.json.gz"), "0.2" if a.smoke else "2"],
        cwd=BENCHES, env=env, capture_output=True, text=True)
    if js.returncode != 0:
        sys.exit(f"fhirpath.js failed:\n{js.stdout}\n{js.stderr}")
    peer = json.loads(js.stdout.strip().splitlines()[-1])

    if a.smoke:
        tested = rust.stdout.count("Success")
        if tested < len(peer["expressions"]) + 1:
            sys.exit(f"criterion ran {tested} benches, expected {len(peer['expressions']) + 1}:\n{rust.stdout}")
        print(f"smoke: criterion ran {tested} benches once; fhirpath.js measured {len(peer['expressions'])} expressions. No ratios in smoke mode.")
        return

    print(f"\n{'':70}{'fhirlake':>14}{'fhirpath.js':>14}{'ratio':>8}")
    ratios = []
    for expr, js_rate in peer["expressions"].items():
        mine = ours.get(f"expressions/{expr}")
        if mine is None:
            sys.exit(f"no criterion result for {expr!r}; parsed: {sorted(ours)}")
        ratios.append(mine / js_rate)
        print(f"{expr[:68]:70}{mine:14,.0f}{js_rate:14,.0f}{mine / js_rate:8.2f}")
    geo = 1.0
    for r in ratios:
        geo *= r
    geo **= 1 / len(ratios)
    print(f"{'expressions: evaluations/s, geometric mean of ratios':70}{'':28}{geo:8.2f}")
    mine = ours["extraction/synthea-mix"]
    print(f"{'extraction: resources/s, Synthea mix (all search parameters)':70}{mine:14,.0f}{peer['extraction']:14,.0f}{mine / peer['extraction']:8.2f}")
    if peer.get("errors"):
        print(f"(fhirpath.js raised {peer['errors']} errors during its runs, counted as evaluations)")


if __name__ == "__main__":
    main()
