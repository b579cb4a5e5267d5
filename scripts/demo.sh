#!/usr/bin/env bash
# README command one: install what is missing, build, bring up the lab (3 nodes, 2 pods each)
# and show every pod reaching every other pod across nodes. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Only the binaries the demo runs (flannel-lab starts flanneld, the CNI plugin and flannelctl).
cargo build --release -p flannel-rs --bin flannel-lab --bin flanneld --bin flannel --bin flannelctl
lab=target/release/flannel-lab
# A lab left over from an earlier demo is ours to replace.
"$lab" down >/dev/null 2>&1 || true
"$lab" up
"$lab" status
"$lab" ping-all
echo
echo "The lab is still up: try '$lab status --json', or 'ip netns exec flab-node1-pod1 ping 10.244.x.y'."
echo "Remove it with: $lab down"
