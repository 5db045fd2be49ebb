#!/usr/bin/env python3
"""REST benchmark: fhirlake against the peer FHIR server (Helios), same data, same client,
same concurrency, one invocation.

Data: `fhirlake generate --format bundles` (one transaction Bundle per patient, ~270
entries, shared Organizations/Practitioners as PUT). Each server starts empty and runs:

  rest-write  transactions: every patient Bundle POSTed once (loadgen, fixed concurrency);
              resources/s = entries / wall time.
              creates: single `POST /Observation` for --seconds (bodies are generated
              Observations pointing at a Patient the server holds).
  read        read by id: `GET /Observation/{id}` over 1,000 ids the server returned,
              for --seconds.
  search      the searches of the search issue, (a) to (d), one client, --search-seconds
              each: latency, and for (b) resources counted per second.
  busy        search (b) again, one client, while single creates run beside it at
              --concurrency (reads that must see every acknowledged write).

Peak RSS of each server process is read from /proc at the end (VmHWM). --quick (CI) uses
a few patients, the debug binaries and Helios only if it is already built; its numbers
mean nothing.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402


def observation_bodies(bundles_file, patient_ids, out, limit=2000):
    """Single Observations taken from the generated Bundles, subjects set to `patient_ids`."""
    n = 0
    with open(bundles_file) as f, open(out, "w") as o:
        for line in f:
            for e in json.loads(line)["entry"]:
                r = e["resource"]
                if r["resourceType"] != "Observation":
                    continue
                r.pop("encounter", None)
                r["subject"] = {"reference": f"Patient/{patient_ids[n % len(patient_ids)]}"}
                o.write(json.dumps(r, separators=(",", ":")) + "\n")
                n += 1
                if n >= limit:
                    return n
    return n


def ids_of(server, rtype, count):
    """Up to `count` ids of `rtype` from the server's own search (first page)."""
    status, b = peers.http("GET", f"{server.base}/{rtype}?_count={count}")
    if status != 200 or not isinstance(b, dict):
        sys.exit(f"{server.name}: search {rtype} failed: {status} {str(b)[:500]}")
    return [e["resource"]["id"] for e in b.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def run_server(server, a, lg, bundles_file, entries, bundles, work):
    out = {}
    if "tx" in a.phases:
        r = peers.loadgen(lg, server.base, method="POST", bodies_file=bundles_file, concurrency=a.tx_concurrency,
                          duration=a.tx_max_seconds, requests=bundles)
        if r["errors"]:
            print(f"{server.name}: {r['errors']} transactions failed; first: {r['first_error'][:800]}")
        done = r["ok"] / bundles
        out["tx"] = dict(r, resources_per_s=entries * done / r["seconds"], completed=done)
        print(f"{server.name}: transactions {r['ok']}/{bundles} in {r['seconds']:.1f} s = "
              f"{entries * done / r['seconds']:,.0f} resources/s", flush=True)
    patients = ids_of(server, "Patient", 200)
    if "search" in a.phases:  # before the creates add Observations
        out["search"] = run_searches(server, a, lg, patients, work)
    if "create" in a.phases:
        if not patients:
            sys.exit(f"{server.name}: no Patient stored to point creates at")
        bodies = work / f"creates-{server.name}.ndjson"
        observation_bodies(bundles_file, patients, bodies)
        r = peers.loadgen(lg, server.base, method="POST", paths=["/Observation"], bodies_file=bodies,
                          concurrency=a.concurrency, duration=a.seconds)
        if r["errors"]:
            print(f"{server.name}: {r['errors']} creates failed; first: {r['first_error'][:800]}")
        out["create"] = r
    if "busy" in a.phases:
        import threading
        bodies = work / f"busy-{server.name}.ndjson"
        observation_bodies(bundles_file, patients, bodies)
        writes = {}
        writer = threading.Thread(target=lambda: writes.update(peers.loadgen(
            lg, server.base, method="POST", paths=["/Observation"], bodies_file=bodies, concurrency=a.concurrency,
            duration=a.search_seconds + 2)))
        writer.start()
        paths = work / f"busy-search-{server.name}.txt"
        paths.write_text(SEARCHES["b"] + "\n")
        r = peers.loadgen(lg, server.base, paths_file=paths, concurrency=1, duration=a.search_seconds)
        writer.join()
        out["busy"] = dict(r, writes_rps=writes.get("rps"))
        print(f"{server.name}: search (b) while writing p50 {r['latency_ms']['p50']:.1f} ms, "
              f"creates beside it {writes.get('rps', 0):,.0f}/s", flush=True)
    if "read" in a.phases:
        ids = ids_of(server, "Observation", 1000)
        if not ids:
            sys.exit(f"{server.name}: no Observation ids to read")
        paths = work / f"reads-{server.name}.txt"
        paths.write_text("".join(f"/Observation/{i}\n" for i in ids))
        r = peers.loadgen(lg, server.base, paths_file=paths, concurrency=a.concurrency, duration=a.seconds)
        if r["errors"]:
            print(f"{server.name}: {r['errors']} reads failed; first: {r['first_error'][:800]}")
        out["read"] = r
    out["rss_mib"] = server.peak_rss_mib()
    return out


HEIGHT = "http://loinc.org|8302-2"
# The searches of the search issue: (a) a patient's observations of one code, (b) counting
# one code, (c) name prefix and birth date, (d) a first page with _include.
SEARCHES = {
    "a": "/Observation?patient={patient}&code=" + HEIGHT,
    "b": "/Observation?code=" + HEIGHT + "&_summary=count",
    "c": "/Patient?name={prefix}&birthdate=ge1950-01-01",
    "d": "/Observation?code=" + HEIGHT + "&_include=Observation:patient",
}


def run_searches(server, a, lg, patients, work):
    """Each search for --search-seconds at concurrency 1 (latency) after one warm-up."""
    import urllib.parse
    family = []
    for pid in patients[:50]:
        status, p = peers.http("GET", f"{server.base}/Patient/{pid}")
        if status == 200:
            family += [n.get("family", "") for n in p.get("name", []) if n.get("family")]
    prefixes = sorted({f[:3] for f in family if len(f) >= 3})[:20] or ["Smi"]
    out = {}
    for key, template in SEARCHES.items():
        paths = [template.format(patient=pid, prefix=urllib.parse.quote(pre))
                 for pid, pre in zip(patients * 2, prefixes * (len(patients) * 2 // len(prefixes) + 1))][:200]
        status, first = peers.http("GET", server.base + paths[0])
        if status != 200:
            print(f"{server.name}: search ({key}) failed: {status} {str(first)[:300]}")
            continue
        f = work / f"search-{key}-{server.name}.txt"
        f.write_text("\n".join(dict.fromkeys(paths)) + "\n")
        r = peers.loadgen(lg, server.base, paths_file=f, concurrency=1, duration=a.search_seconds)
        r["total"] = first.get("total") if isinstance(first, dict) else None
        r["entries"] = len(first.get("entry", [])) if isinstance(first, dict) else None
        out[key] = r
        print(f"{server.name}: search ({key}) p50 {r['latency_ms']['p50']:.1f} ms, {r['rps']:.1f} req/s, "
              f"total {r['total']}, first page {r['entries']} entries", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--smoke", action="store_true", dest="quick", help="tiny data, debug binaries (CI)")
    ap.add_argument("--bin", help="fhirlake binary (default: release build, or debug with --quick)")
    ap.add_argument("--patients", type=int, help="patients generated (default 3,900 = ~1.02M resources; --quick 3)")
    ap.add_argument("--phases", default="tx,create,read,search,busy", help="comma list of tx, create, read, search, busy")
    ap.add_argument("--search-seconds", type=float, help="duration of each search run (default 15; --quick 1)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight for creates and reads")
    ap.add_argument("--tx-concurrency", type=int, default=16, help="transactions in flight")
    ap.add_argument("--seconds", type=float, help="duration of the create and read runs (default 20; --quick 2)")
    ap.add_argument("--tx-max-seconds", type=float, default=3600, help="time limit of the transaction load")
    ap.add_argument("--no-peer", action="store_true", help="skip Helios")
    ap.add_argument("--work", help="working folder (default: a temporary one, removed)")
    a = ap.parse_args()
    a.phases = set(a.phases.split(","))
    a.patients = a.patients or (3 if a.quick else 3900)
    a.seconds = a.seconds or (2.0 if a.quick else 20.0)
    a.search_seconds = a.search_seconds or (1.0 if a.quick else 15.0)
    if a.quick:
        a.concurrency, a.tx_concurrency = min(a.concurrency, 2), min(a.tx_concurrency, 2)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-target"))
    binary = a.bin or str(target / "debug" / "fhirlake" if a.quick else Path("/var/tmp/fhirlake-release/release/fhirlake"))
    lg = peers.loadgen_binary(a.quick)
    helios, why = (None, "skipped (--no-peer)") if a.no_peer else peers.helios_binary(build=not a.quick)

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="fhirlake-rest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        gen = work / "bundles"
        n = peers.generate(binary, a.patients, gen, fmt="bundles")
        bundles_file = gen / "transactions.ndjson"
        bundles = sum(1 for _ in open(bundles_file))
        print(f"data: {a.patients} patients, {bundles} transaction Bundles, {n:,} entries "
              f"({bundles_file.stat().st_size / 1e6:.0f} MB)", flush=True)
        results = {}
        with peers.Fhirlake(binary, work / "fhirlake-data") as s:
            results["fhirlake"] = run_server(s, a, lg, bundles_file, n, bundles, work)
        shutil.rmtree(work / "fhirlake-data", ignore_errors=True)
        if helios:
            with peers.Helios(helios, work / "helios") as s:
                results["helios"] = run_server(s, a, lg, bundles_file, n, bundles, work)
            shutil.rmtree(work / "helios", ignore_errors=True)
        else:
            print(f"peer Helios: {why}")
        report(a, results)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def dig(d, *keys):
    """d[k1][k2]..., or None where a level is missing."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(a, results):
    f, h = results.get("fhirlake", {}), results.get("helios", {})
    rows = []
    if "tx" in a.phases:
        fv, hv = dig(f, "tx", "resources_per_s"), dig(h, "tx", "resources_per_s")
        rows.append([f"transactions, resources/s (concurrency {a.tx_concurrency})", fmt(fv, ",.0f"), fmt(hv, ",.0f"), peers.ratio(fv, hv)])
        fv, hv = dig(f, "tx", "latency_ms", "p50"), dig(h, "tx", "latency_ms", "p50")
        rows.append(["transaction p50 ms", fmt(fv, ".0f"), fmt(hv, ".0f"), peers.ratio(hv, fv)])
    for phase, label in (("create", "creates"), ("read", "reads by id")):
        if phase not in a.phases:
            continue
        fv, hv = dig(f, phase, "rps"), dig(h, phase, "rps")
        rows.append([f"{label}, requests/s (concurrency {a.concurrency})", fmt(fv, ",.0f"), fmt(hv, ",.0f"), peers.ratio(fv, hv)])
        for q in ("p50", "p99"):
            fv, hv = dig(f, phase, "latency_ms", q), dig(h, phase, "latency_ms", q)
            rows.append([f"{label} {q} ms", fmt(fv, ".2f"), fmt(hv, ".2f"), peers.ratio(hv, fv)])
    if "search" in a.phases:
        names = {"a": "(a) Observation?patient=X&code=Y", "b": "(b) Observation?code=Y&_summary=count",
                 "c": "(c) Patient?name=..&birthdate=ge..", "d": "(d) Observation?code=Y&_include (first page)"}
        for key, label in names.items():
            fv, hv = dig(f, "search", key, "latency_ms", "p50"), dig(h, "search", key, "latency_ms", "p50")
            rows.append([f"search {label} p50 ms", fmt(fv, ".1f"), fmt(hv, ".1f"), peers.ratio(hv, fv)])
        ft, ht = dig(f, "search", "b", "total"), dig(h, "search", "b", "total")
        fr, hr = dig(f, "search", "b", "rps"), dig(h, "search", "b", "rps")
        fc = ft * fr if ft is not None and fr else None
        hc = ht * hr if ht is not None and hr else None
        rows.append(["search (b) resources counted/s", fmt(fc, ",.0f"), fmt(hc, ",.0f"), peers.ratio(fc, hc)])
        rows.append(["search (b) total (same data: should agree)", fmt(ft, ","), fmt(ht, ","), ""])
    if "busy" in a.phases:
        fv, hv = dig(f, "busy", "latency_ms", "p50"), dig(h, "busy", "latency_ms", "p50")
        rows.append(["search (b) p50 ms while creates run", fmt(fv, ".1f"), fmt(hv, ".1f"), peers.ratio(hv, fv)])
        fv, hv = dig(f, "busy", "writes_rps"), dig(h, "busy", "writes_rps")
        rows.append([f"creates/s beside it (concurrency {a.concurrency})", fmt(fv, ",.0f"), fmt(hv, ",.0f"), peers.ratio(fv, hv)])
    rows.append(["peak RSS MiB", fmt(f.get("rss_mib"), ".0f"), fmt(h.get("rss_mib"), ".0f"), peers.ratio(h.get("rss_mib"), f.get("rss_mib"))])
    peers.table("REST: fhirlake vs Helios (ratio = how many times better fhirlake is)", rows,
                ["measure", "fhirlake", "Helios", "ratio"])


if __name__ == "__main__":
    main()
