#!/usr/bin/env bash
# README command two: install what is missing, check formatting and lints, run every test.
# Run as root: the integration tests build network namespaces (never touching the host's own).
# Tests start their own etcd unless FLANNEL_TEST_ETCD_ENDPOINTS names a running one.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
