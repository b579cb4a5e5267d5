#!/usr/bin/env bash
# The release profile (what the demo, the lab and the benchmarks build) against the dist profile
# (fat LTO, one codegen unit: what the image ships), side by side: `flannel-lab bench` (the data
# paths; only udp and wireguard run our code per packet) and `flannel-lab bench-scale` (one
# flanneld facing many etcd peers: start, memory, event latency), the two builds taking turns,
# RUNS times each. Prints each run's table; BENCHMARKS.md ("Build profiles") has the medians.
#
#   ./scripts/bench-profiles.sh [RUNS]     (as root; default 5)
#
# Environment: RELEASE_DIR, DIST_DIR (directories holding flannel-lab, flanneld, flannel and
# flannelctl; built here when not given), BENCH_SECONDS (default 2), SCALE_PEERS (default 5000).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bins=(-p flannel-rs --bin flannel-lab --bin flanneld --bin flannel --bin flannelctl)
if [ -z "${RELEASE_DIR:-}" ]; then
  cargo build -q --release "${bins[@]}"
  RELEASE_DIR=target/release
fi
if [ -z "${DIST_DIR:-}" ]; then
  cargo build -q --profile dist "${bins[@]}"
  DIST_DIR=target/dist
fi
exec ./scripts/bench-compare.sh release "$RELEASE_DIR" dist "$DIST_DIR" "$runs"
