#!/usr/bin/env bash
# Installs what imagecache's build, tests and benchmarks need on a Debian 12 node, as root.
# Safe to run again: it only installs what is missing.
set -euo pipefail

packages=(
  e2fsprogs         # mkfs.ext4, e2fsck, resize2fs: the cache image
  xfsprogs          # mkfs.xfs: reflink-capable scratch filesystems in tests
  docker-registry   # the OCI distribution registry the tests pull from
  apache2-utils     # htpasswd, for the registry with basic auth
  containerd runc   # the baseline of the benchmark
  debootstrap       # a real Debian image for the end-to-end test
  ca-certificates curl jq
  build-essential pkg-config
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The registry and containerd packages start system services; tests run their own copies on
# free loopback ports, so the system ones are not needed.
for svc in docker-registry containerd; do
  systemctl stop "$svc" 2>/dev/null || true
done

if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install a Rust toolchain (1.85 or newer) and run this again" >&2
  exit 1
fi
