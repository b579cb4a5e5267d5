#!/usr/bin/env bash
# README command two: install what is missing, check formatting and lints, run every test and
# every fuzz target for a short time (./scripts/fuzz.sh SECONDS runs them longer).
# Run as root: the integration tests build network namespaces (never touching the host's own).
# Tests start their own etcd unless FLANNEL_TEST_ETCD_ENDPOINTS names a running one.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets 2>&1 | tee "$log" || status=$?
fuzz_failed=0
./scripts/fuzz.sh "${FUZZ_SECONDS:-10}" | tee -a "$log" || fuzz_failed=$?
[ "$fuzz_failed" -eq 0 ] || status=1
# One closing line for the whole run (cargo prints one per test binary; fuzz targets count too).
awk '/^test result:/ { p += $4; f += $6 } /^fuzz .*: ok/ { p++ } /^fuzz .*: FAILED/ { f++ }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
