#!/usr/bin/env bash
# Installs the Debian packages flannel-rs builds, tests and demos with, when any is missing.
# Needs root (apt-get). Safe to run again: installs nothing when everything is there.
set -euo pipefail

PACKAGES=(
  etcd-server etcd-client          # the datastore, and etcdctl for the lab
  containernetworking-plugins      # bridge, host-local, portmap in /usr/lib/cni
  iproute2 iptables nftables       # ip, bridge, iptables(-restore), nft
  iperf3 iputils-ping              # lab traffic
  openssl                          # test certificates for etcd over TLS
  protobuf-compiler libprotobuf-dev  # etcd-client compiles etcd's protos at build time
  buildah                          # builds the container image (scripts/build-image.sh) offline
  prometheus                       # promtool and a real Prometheus check flanneld's /metrics
  tcpdump                          # flannel-lab trace captures each hop
  wireguard-go wireguard-tools     # an independent WireGuard (and wg) the wireguard backend talks to
)
# The real kubectl drives the Kubernetes API fake in the tests; Debian's is kubernetes-client,
# a machine may have a newer one as /usr/bin/kubectl already.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
