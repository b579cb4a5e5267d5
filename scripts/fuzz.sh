#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: config parser, subnet-key and lease codecs, CNI
# config and subnet.env, the udp packet path) for SECONDS each: ./scripts/fuzz.sh [SECONDS]
# The test command runs them briefly; run e.g. `./scripts/fuzz.sh 600` for a long session.
# Prints one line per target; exits non-zero if any target found a crash (the input is kept in
# fuzz/artifacts/<target>/ and can be replayed with `cargo fuzz run <target> <file>`).
set -euo pipefail
secs=${1:-10}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes nightly-only flags (the sanitizer); this machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
cargo fuzz build >"$logs/build.log" 2>&1 || { cat "$logs/build.log"; exit 1; }
failed=0
for t in $(cargo fuzz list); do
  if cargo fuzz run "$t" -- -max_total_time="$secs" >"$logs/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -oE 'Done [0-9]+ runs' "$logs/$t.log" | tail -1) in ${secs} s"
  else
    echo "fuzz $t: FAILED"
    grep -A20 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$logs/$t.log" | head -40
    failed=$((failed + 1))
  fi
done
exit "$failed"
