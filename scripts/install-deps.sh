#!/usr/bin/env bash
# Installs the Debian packages flannel-rs needs, when any is missing:
#   ./scripts/install-deps.sh           what the demo needs (README command one)
#   ./scripts/install-deps.sh --tests   that, and what the tests need (README command two, CI)
#   ./scripts/install-deps.sh --print [--tests]   only print the list
# Needs root (apt-get). Safe to run again: installs nothing when everything is there.
#
# Nothing else is touched: no recommended packages (wireguard-tools recommends a kernel
# module package, which pulls a whole kernel image), and no service a package ships is
# started or left enabled (etcd-server enables etcd on 127.0.0.1:2379, flannelctl's default
# endpoint; prometheus a server on :9090): while installing, a policy-rc.d refuses every
# start, and afterwards those units are disabled. The lab and the tests start what they need
# themselves, in their own network namespaces.
set -euo pipefail

# The demo: build flannel-rs, bring up the lab (etcd datastore), ping every pod.
DEMO_PACKAGES=(
  protobuf-compiler libprotobuf-dev  # build: etcd-client compiles etcd's protos
  etcd-server                        # the lab's datastore (etcd)
  etcd-client                        # etcdctl: the lab writes the network config with it
  containernetworking-plugins        # bridge, host-local, portmap in /usr/lib/cni: pods' CNI
  iproute2                           # ip, bridge: namespaces, links, routes, FDB
  iptables                           # flanneld's masquerade and forward rules
  iputils-ping                       # ping-all
)
# The tests: the demo's, and these.
TEST_PACKAGES=(
  "${DEMO_PACKAGES[@]}"
  nftables                           # flanneld's nftables mode, and doctor's nft checks
  iperf3                             # lab traffic, bench
  buildah                            # the image build test (scripts/build-image.sh) offline
  prometheus                         # promtool, and a real Prometheus scraping flanneld
  tcpdump                            # flannel-lab trace captures each hop
  wireguard-go wireguard-tools       # an independent WireGuard (and wg) the wireguard backend talks to
)
# Units the packages above ship and enable (package:unit); none may run on the host. Only the
# units of packages this script installs are disabled: a machine's own etcd stays as it was.
SERVICES=(etcd-server:etcd prometheus:prometheus prometheus-node-exporter:prometheus-node-exporter)

tests=0
print=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    --print) print=1 ;;
    *) echo "usage: $0 [--tests] [--print]" >&2; exit 2 ;;
  esac
done
if ((tests)); then
  PACKAGES=("${TEST_PACKAGES[@]}")
  # The real kubectl drives the Kubernetes API fake in the tests; Debian's is
  # kubernetes-client, a machine may have a newer one as /usr/bin/kubectl already.
  command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)
else
  PACKAGES=("${DEMO_PACKAGES[@]}")
fi
if ((print)); then
  echo "${PACKAGES[@]}"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing (no recommended packages, no services started): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # invoke-rc.d asks policy-rc.d before starting any service: 101 means "not now".
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [ -e "$policy" ] && had_policy=1 && mv "$policy" "$policy.flannel-rs"
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  restore() {
    rm -f "$policy"
    if ((had_policy)); then mv "$policy.flannel-rs" "$policy"; fi
  }
  trap restore EXIT
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  restore
  trap - EXIT
  for pu in "${SERVICES[@]}"; do
    pkg=${pu%%:*} unit=${pu##*:}.service
    [[ " ${missing[*]} " == *" $pkg "* ]] || continue
    if command -v systemctl >/dev/null && [ -e "/lib/systemd/system/$unit" ]; then
      systemctl disable "$unit" >/dev/null 2>&1 || true
      systemctl stop "$unit" >/dev/null 2>&1 || true
      echo "disabled $unit (its package enables it; the lab and the tests start their own, in their namespaces)"
    fi
  done
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
