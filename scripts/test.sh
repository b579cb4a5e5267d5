#!/usr/bin/env bash
# README command two: install what is missing, check formatting and lints, run every test and
# every fuzz target for a short time (./scripts/fuzz.sh SECONDS runs them longer).
# Run as root: the integration tests build network namespaces (never touching the host's own).
# Tests start their own etcd unless FLANNEL_TEST_ETCD_ENDPOINTS names a running one.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where the time goes: one line per phase (install, lints, tests build and run, fuzzing).
start=$SECONDS
mark=$SECONDS
phase() {
  echo "phase $1: $((SECONDS - mark)) s (total $((SECONDS - start)) s)"
  mark=$SECONDS
}
./scripts/install-deps.sh --tests
phase install
# The fuzz targets build in the background, at the lowest CPU and I/O priority, while the tests
# build and run: the integration tests mostly wait on daemons and namespaces (a third of the
# two cores). scripts/fuzz.sh below then finds them built (same command, same flags).
fuzz_build_log=$(mktemp)
# Its own session, so its own scheduler autogroup, whose weight is set to the lowest too: the
# kernel shares the CPU between autogroups first (the tests run in one of their own, see
# `bounded`), and a process's nice value only counts inside its group.
(cd fuzz && setsid sh -c 'echo 19 >/proc/self/autogroup 2>/dev/null
  command -v cargo-fuzz >/dev/null || nice -n 19 cargo install cargo-fuzz --locked || exit 1
  export RUSTC_BOOTSTRAP=1; exec nice -n 19 ionice -c 3 cargo fuzz build --dev') >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
cargo fmt --all -- --check
phase fmt
log=$(mktemp) first_log=$(mktemp)
trap 'rm -f "$log" "$fuzz_build_log" "$first_log"' EXIT

# Runs a command in its own process group, killed whole (test binaries, flanneld, etcd it
# started) after a time limit: a hung test fails the run with its output instead of stalling
# CI until its own limit.
bounded() {
  local limit=$1 pid watchdog rc=0
  shift
  setsid "$@" &
  pid=$!
  (sleep "$limit" && kill -KILL -- -"$pid") </dev/null >/dev/null 2>&1 &
  watchdog=$!
  wait "$pid" || rc=$?
  pkill -P "$watchdog" sleep 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  if [ "$rc" -eq 137 ]; then
    echo "test result: FAILED. 0 passed; 1 failed: '$*' did not finish within $limit s (a test hung; see above)"
  fi
  return "$rc"
}

# Every test runs here: one that needs root fails instead of skipping itself.
export FLANNEL_TESTS_REQUIRE_ROOT=1
status=0
# Linked statically for the one target there is, as the image's binaries are
# (scripts/build-image.sh): the image tests then take the binaries the tests already built
# instead of building the whole stack a second time. Build scripts and proc macros (host
# code) are not affected by RUSTFLAGS when --target is given. --no-fail-fast: every failing
# test is reported, not only those of the first failing test binary. --workspace everywhere:
# every cargo call resolves the same features, so nothing is built twice.
export RUSTFLAGS="-C target-feature=+crt-static"
# Clippy lints our crates while they are compiled for the tests: clippy-driver stands in for
# rustc on the workspace's crates (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy` sets it; the
# dependencies are compiled by rustc alone), with `-D warnings` as `cargo clippy -- -D warnings`
# passes it. A separate `cargo clippy` checks every dependency once more for nothing: 90 s of
# the two cores. Every cargo call below carries the same two variables, or it would compile our
# crates again.
test_cargo=(env RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
  CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
  cargo test --workspace --target x86_64-unknown-linux-gnu)
# --tests: the libraries' unit tests and the integration tests, and with them every library and
# binary (the binaries have no tests; --all-targets would link an empty test executable for each).
"${test_cargo[@]}" --tests --no-run
phase "clippy + tests build"
# Tests that wait out a clock (a lease renewal a minute after it was taken, outages of 30 s):
# they start first, in a process of their own beside the rest, instead of ending the run a
# minute after everything else.
first=(
  lab_e2e::the_lease_is_renewed_when_its_margin_says_so
  kube_lab::pods_keep_talking_while_the_api_server_is_away
  lab_e2e::an_etcd_outage_keeps_the_data_plane_and_costs_no_cpu_then_heals
  kube_mode::the_api_away_for_30s_costs_no_cpu_and_heals
)
# The tests that hold a latency bound under a flood (100 ms for the health probes while 2000
# connections hammer them, ...) measure flanneld, not a busy machine: they run after the rest,
# one at a time.
alone=(
  flanneld_cli::idle_and_slow_connections_never_hold_up_the_health_probes
  flanneld_cli::idle_connections_on_the_state_socket_never_hold_up_state_or_doctor
  wireguard::a_handshake_flood_does_not_starve_the_pods
)
skips=()
for t in "${first[@]}" "${alone[@]}"; do skips+=(--skip "$t"); done
bounded 600 "${test_cargo[@]}" --test it -- --test-threads="${#first[@]}" --exact "${first[@]}" \
  >"$first_log" 2>&1 &
first_run=$!
# Eight tests at a time on two cores: they mostly wait on daemons, namespaces and timers (the
# CPU is three quarters idle at four); every test makes its own namespaces, names and ports.
bounded "${TEST_TIME_LIMIT:-2700}" \
  "${test_cargo[@]}" --tests --no-fail-fast \
  -- --test-threads="${TEST_THREADS:-8}" --exact "${skips[@]}" 2>&1 | tee "$log" || status=$?
wait "$first_run" || status=1
tee -a "$log" <"$first_log"
bounded 600 "${test_cargo[@]}" --test it -- --test-threads=1 --exact "${alone[@]}" 2>&1 |
  tee -a "$log" || status=$?
unset RUSTFLAGS # cargo fuzz adds its own flags to these
phase tests
# A failed background build is reported by fuzz.sh, which builds again.
wait "$fuzz_build" || true
phase "fuzz build (the rest of it)"
fuzz_failed=0
./scripts/fuzz.sh "${FUZZ_SECONDS:-10}" | tee -a "$log" || fuzz_failed=$?
[ "$fuzz_failed" -eq 0 ] || status=1
phase fuzz
# One closing line for the whole run (cargo prints one per test binary; fuzz targets count too).
awk '/^test result:/ { p += $4; f += $6 } /^fuzz .*: ok/ { p++ } /^fuzz .*: FAILED/ { f++ }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
# A fuzz build that fails runs no target: say so, the counts above cannot.
if [ "$fuzz_failed" -ne 0 ] && ! grep -q '^fuzz .*: FAILED' "$log"; then
  echo "fuzz: FAILED before any target ran (the fuzz build; its errors are above)"
fi
[ "$status" -eq 0 ] || echo "the run FAILED"
exit "$status"
