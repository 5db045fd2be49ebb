#!/usr/bin/env bash
# The test command of the README: Rust tests (debug profile), the Python readers against
# tables written by the real binary, and a smoke run of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/fhirlake-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== python requirements"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "== build (debug)"
cargo build --locked --workspace --all-targets

echo "== rust tests"
cargo test --locked --workspace

echo "== benchmark smoke run (debug binaries, tiny data: checks the scripts, not the speed)"
bash benches/run.sh all --quick

echo "== python tests"
FHIRLAKE_BIN="$CARGO_TARGET_DIR/debug/fhirlake" python3 -m pytest -q tests/python notebooks
