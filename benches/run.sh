#!/usr/bin/env bash
# One entry point for the benchmarks: benches/run.sh SCENARIO [--quick] [script options]
#
# Scenarios (each prints fhirlake's figure, the peer's and the ratio):
#   import      bulk NDJSON load: fhirlake import vs DuckDB read_json -> Parquet    (import_bench.py)
#   rest-write  transactions + single creates over HTTP vs Helios                    (rest_bench.py)
#   read        read by id over HTTP vs Helios                                       (rest_bench.py)
#   search      the searches of the search issue on >= 1M Observations               (search_bench.py)
#   search-peer the same searches vs Helios, both loaded with the same Bundles       (rest_bench.py)
#   rest        rest-write + read + search-peer (+ search while writing), both servers (rest_bench.py)
#   sql         the SQL queries vs DuckDB on the same Parquet and on NDJSON          (sql_bench.py)
#   views       ViewDefinitions vs fhir4ds / pysof                                   (views_bench.py)
#   writes      updates, deletes and group commits on a large root                   (write_bench.py)
#   restart     serve start-up on ~1M resources (clean, kill -9), store vs Delta disk (restart_bench.py)
#   auth        reads by id and the four searches, auth on (1-, 10-scope RS256 token) vs off (auth_bench.py)
#   fhirpath    the FHIRPath engine vs fhirpath.js                                   (fhirpath_bench.py)
#   generate    fhirlake generate speed (to disk and discarded)
#   all         every scenario above in turn (rest covers rest-write, read, search-peer)
#
# --quick: tiny data and the debug binaries CI already built (checks the scripts work;
# the numbers mean nothing); never builds release or the peer server.
# Default: the real sizes (>= 1,000,000 resources) with the release binary, built first
# into $FHIRLAKE_RELEASE_TARGET_DIR (default /var/tmp/fhirlake-release).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-}"
[ -n "$scenario" ] || { sed -n '2,21p' "$0"; exit 2; }
shift
quick=""
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then quick=1; else args+=("$a"); fi
done

if [ -n "$quick" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/fhirlake-target}"
  bin="$CARGO_TARGET_DIR/debug/fhirlake"
  [ -x "$bin" ] || cargo build --locked -p fhirlake -p fhirlake-loadgen --bins
  mode=(--quick --bin "$bin")
else
  release="${FHIRLAKE_RELEASE_TARGET_DIR:-/var/tmp/fhirlake-release}"
  echo "== release build (into $release)"
  CARGO_TARGET_DIR="$release" cargo build --release --locked -p fhirlake -p fhirlake-loadgen --bins
  bin="$release/release/fhirlake"
  mode=(--bin "$bin")
fi

run() {
  local name="$1"
  shift
  echo "== $name"
  case "$name" in
    import)     python3 benches/import_bench.py "${mode[@]}" "$@" ;;
    rest-write) python3 benches/rest_bench.py --phases tx,create "${mode[@]}" "$@" ;;
    read)       python3 benches/rest_bench.py --phases tx,read "${mode[@]}" "$@" ;;
    search-peer) python3 benches/rest_bench.py --phases tx,search "${mode[@]}" "$@" ;;
    rest)       python3 benches/rest_bench.py --phases tx,create,read,search,busy "${mode[@]}" "$@" ;;
    search)     python3 benches/search_bench.py "${mode[@]}" "$@" ;;
    sql)        python3 benches/sql_bench.py "${mode[@]}" "$@" ;;
    views)      python3 benches/views_bench.py "${mode[@]}" "$@" ;;
    writes)     python3 benches/write_bench.py "${mode[@]}" "$@" ;;
    restart)    python3 benches/restart_bench.py "${mode[@]}" "$@" ;;
    auth)       python3 benches/auth_bench.py "${mode[@]}" "$@" ;;
    fhirpath)   if [ -n "$quick" ]; then python3 benches/fhirpath_bench.py --quick "$@"; else python3 benches/fhirpath_bench.py "$@"; fi ;;
    generate)   python3 benches/generate_bench.py "${mode[@]}" "$@" ;;
    *) echo "unknown scenario '$name' (see benches/run.sh without arguments)" >&2; exit 2 ;;
  esac
}

if [ "$scenario" = all ]; then
  for s in generate import rest search sql views writes restart auth fhirpath; do run "$s" "${args[@]+"${args[@]}"}"; done
else
  run "$scenario" "${args[@]+"${args[@]}"}"
fi
