#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: config parser, subnet-key and lease codecs, CNI
# config and subnet.env, the udp packet path, flanneld's flags and health requests, Node
# objects, flannelctl's state, WireGuard input, netlink dumps and notifications) for SECONDS
# each: ./scripts/fuzz.sh [SECONDS]
# Each run starts from the seed corpus checked in under fuzz/seeds/<target>/ (so a short run
# already covers the code; runs of 30 s or less use an unoptimized build, see below) and writes what it finds to a temporary corpus; the repository stays
# untouched. FUZZ_UPDATE_SEEDS=1 merges the inputs that add coverage into fuzz/seeds/ after the
# run (do it after a long session, then commit them).
# Prints one line per target; exits non-zero if any target found a crash (the input is kept in
# fuzz/artifacts/<target>/ and can be replayed with `cargo fuzz run <target> <file>`).
set -euo pipefail
secs=${1:-10}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes nightly-only flags (the sanitizer); this machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A short run (the test command's 10 s) is a smoke test: the targets build, every seed replays
# without a crash, a little exploration. Its build is unoptimized (3 min instead of 8 on two
# cores, but ~20x fewer runs a second); longer runs are worth the optimized build.
mode=()
if [ "$secs" -le 30 ]; then mode=(--dev); fi
export FUZZ_MODE="${mode[*]}"
cargo fuzz build "${mode[@]}" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
# One target per core at a time: each is a single process.
run_one() {
  local t=$1
  mkdir -p "$work/$t" "seeds/$t"
  # shellcheck disable=SC2086 # FUZZ_MODE is empty or one flag
  if cargo fuzz run $FUZZ_MODE "$t" "$work/$t" "seeds/$t" -- -max_total_time="$secs" >"$work/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -oE 'Done [0-9]+ runs' "$work/$t.log" | tail -1) in ${secs} s," \
      "coverage $(grep -oE 'cov: [0-9]+' "$work/$t.log" | tail -1 | cut -d' ' -f2)" >"$work/$t.result"
  else
    { echo "fuzz $t: FAILED"
      grep -A20 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$work/$t.log" | head -40; } >"$work/$t.result"
  fi
  if [ "${FUZZ_UPDATE_SEEDS:-0}" = 1 ]; then
    cargo fuzz run $FUZZ_MODE "$t" "seeds/$t" "$work/$t" -- -merge=1 >"$work/$t.merge.log" 2>&1 ||
      { echo "merging $t failed:"; tail -5 "$work/$t.merge.log"; } >>"$work/$t.result"
  fi
}
export -f run_one
export work secs
targets=$(cargo fuzz list)
printf '%s\n' $targets | xargs -P "$(nproc)" -I{} bash -c 'run_one {}'
failed=0
for t in $targets; do
  cat "$work/$t.result"
  grep -q "^fuzz $t: ok" "$work/$t.result" || failed=$((failed + 1))
done
exit "$failed"
