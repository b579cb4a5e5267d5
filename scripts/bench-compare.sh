#!/usr/bin/env bash
# Two builds of flannel-rs side by side: `flannel-lab bench` (every backend's data path; udp
# and wireguard run our code per packet) and `flannel-lab bench-scale` (one flanneld facing
# many peers: start, memory, idle CPU, event latency), the builds taking turns, RUNS times
# each, so that the machine's drift falls on both. Prints each run's tables, headed
# "== run I, LABEL: bench|bench-scale".
#
#   ./scripts/bench-compare.sh A_LABEL A_DIR B_LABEL B_DIR [RUNS]     (as root; default 5)
#
# Each DIR holds flannel-lab, flanneld, flannel, flannelctl and flannel-kube-fake. Environment:
# BENCH_SECONDS (default 2), SCALE_PEERS (default 5000), SCALE_DATASTORES (default "etcd").
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,12p' "$0"; exit 2; }
labels=("$1" "$3")
dirs=("$2" "$4")
runs=${5:-5}
for i in $(seq "$runs"); do
  for k in 0 1; do
    echo "== run $i, ${labels[$k]}: bench"
    "${dirs[$k]}/flannel-lab" bench --name bc --seconds "${BENCH_SECONDS:-2}" --repeat 1 2>/dev/null
    for ds in ${SCALE_DATASTORES:-etcd}; do
      echo "== run $i, ${labels[$k]}: bench-scale $ds"
      "${dirs[$k]}/flannel-lab" bench-scale --name bs --peers "${SCALE_PEERS:-5000}" \
        --datastore "$ds" --seconds 10 2>/dev/null
    done
  done
done
