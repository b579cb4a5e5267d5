#!/usr/bin/env bash
# Builds the flannel-rs image contents, and the image itself when buildah is installed.
#
#   ./scripts/build-image.sh            # dist build (fat LTO); image flannel-rs:<version> if buildah is there
#
# Our binaries are linked statically against glibc (-C target-feature=+crt-static; only the
# glibc target exists on these machines) into target/static. The image is one FROM scratch
# stage (deploy/Containerfile) holding:
#   /opt/bin/flanneld          the daemon (the DaemonSet's command)
#   /flannel                   the CNI plugin (install-plugin / install-conf for the init containers)
#   /opt/bin/flannelctl        the operator's tool (kubectl exec ... -- /opt/bin/flannelctl doctor)
#   /usr/sbin/iptables*, nft   the firewall tools flanneld runs, with exactly the shared
#                              libraries and xtables extensions they load (from this machine)
# Environment: FLANNEL_IMAGE_PROFILE=dist|release|dev (default dist: what we ship, fat LTO and one
# codegen unit, see Cargo.toml), FLANNEL_IMAGE_TAG, FLANNEL_IMAGE_BINS=DIR (take flanneld,
# flannel and flannelctl, already linked statically, from DIR instead of building them).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${FLANNEL_IMAGE_PROFILE:-dist}
target=x86_64-unknown-linux-gnu
out=target/static
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${FLANNEL_IMAGE_TAG:-flannel-rs:v$version}

if [ -n "${FLANNEL_IMAGE_BINS:-}" ]; then
  # Binaries already linked statically (the test command builds everything that way): taken
  # as they are, no second build.
  bin=$FLANNEL_IMAGE_BINS
  for b in flanneld flannel flannelctl; do
    # ldd says "statically linked" (static-pie) or "not a dynamic executable"; never "=>".
    if ldd "$bin/$b" 2>&1 | grep -q "=>"; then
      echo "$bin/$b is dynamically linked: FLANNEL_IMAGE_BINS must hold static binaries" >&2
      exit 1
    fi
  done
else
  # Symbols stripped for the image (optimized profiles; panics still name file and line).
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_DIST_STRIP=symbols RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile "$profile" --target "$target" \
    --target-dir "$out" -p flannel-rs --bin flanneld --bin flannel --bin flannelctl
  dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
  bin="$out/$target/$dir"
fi

ctx=target/image
root=$ctx/rootfs
rm -rf "$root"
# Mount points a container runtime fills: /etc (hosts, resolv.conf), /proc, /sys, /dev.
mkdir -p "$root/opt/bin" "$root/usr/sbin" "$root/run" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
install -m 0755 "$bin/flanneld" "$root/opt/bin/flanneld"
install -m 0755 "$bin/flannel" "$root/flannel"
install -m 0755 "$bin/flannelctl" "$root/opt/bin/flannelctl"

# The firewall tools, their libraries (as ldd finds them) and iptables' extensions.
copy_with_libs() {
  local f=$1
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
  ldd "$f" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
copy_with_libs /usr/sbin/xtables-nft-multi
copy_with_libs /usr/sbin/nft
for ext in /usr/lib/x86_64-linux-gnu/xtables/*.so; do
  copy_with_libs "$ext"
done
for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ln -sf xtables-nft-multi "$root/usr/sbin/$t"
done
cp deploy/Containerfile "$ctx/Containerfile"
echo "image contents in $root ($(du -sh "$root" | cut -f1))"

if command -v buildah >/dev/null; then
  buildah build --quiet --isolation chroot -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
  echo "built image $tag (buildah images $tag; push with: buildah push $tag docker://REGISTRY/flannel-rs:v$version)"
else
  echo "buildah not installed: no image built (apt-get install buildah, then run this again)"
fi
