#!/usr/bin/env bash
# The test command of the README: Rust tests (debug profile), the Python readers against
# tables written by the real binary, and a smoke run of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/fhirlake-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Everything the tests need is installed here, so this command passes on a fresh clone.
echo "== node (peer of the FHIRPath benchmark)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd benches && npm ci --ignore-scripts --no-audit --no-fund --silent)

echo "== python requirements"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "== test fixtures (tests/fixtures; unpacked once)"
bash tests/fixtures/unpack.sh

echo "== build (debug)"
cargo build --locked --workspace --all-targets

echo "== rust tests"
cargo test --locked --workspace

echo "== benchmark smoke run (debug binaries, tiny data: checks the scripts, not the speed)"
bash benches/run.sh all --quick

echo "== python tests"
FHIRLAKE_BIN="$CARGO_TARGET_DIR/debug/fhirlake" python3 -m pytest -q tests/python notebooks
