#!/usr/bin/env bash
# Installs what imagecache's build, tests, benchmarks and demo need on a Debian 12 node, as
# root, from one list: PROGRAMS below (tests/programs_installed.rs fails when a source starts
# a program that list does not name).
# Safe to run again: it only installs what is missing, and says nothing when nothing is.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every program that imagecached, the test kit, the tests, the benches, the examples and the
# scripts start, with where it comes from. This script installs from this list and nothing
# else; tests/programs_installed.rs reads the sources and fails when they start a program this
# list does not name, and checks that each program named here is installed.
#
#   KIND PACKAGE: PROGRAM...
#
# KIND is one of:
#   base  a Debian package every Debian 12 system has (priority required or important);
#         it is still installed if it is missing
#   apt   a Debian package installed with apt-get when it is missing
#   rust  the Rust toolchain (rustup, with the rustfmt and clippy components); checked, and
#         missing components added, but rustup itself cannot be installed from here
# A program is listed once, on the line of the package that ships it (`dpkg -S bin/NAME`), or
# of a package whose dependency ships it (python3).
list=$(cat <<'PROGRAMS'
apt   e2fsprogs: mkfs.ext4 e2fsck resize2fs dumpe2fs filefrag chattr  # the cache's ext4 images; chattr in a test
apt   xfsprogs: mkfs.xfs xfs_growfs                          # the backing image; scratch XFS in tests

# Tests, benches and the demo
apt   docker-registry: docker-registry  # the OCI registry on 127.0.0.1 the tests pull from
apt   apache2-utils: htpasswd           # the registry with basic auth
apt   containerd: containerd ctr        # the benchmark's baseline; the CRI tests' runtime
apt   runc: runc                        # containerd's container runtime
apt   skopeo: skopeo                    # the test kit's oracle: registry image to OCI layout
apt   umoci: umoci                      # the test kit's oracle: OCI layout to a rootfs
apt   busybox-static: busybox           # a static busybox put into test images (pause, tools)
apt   debootstrap: debootstrap          # a real Debian rootfs for the end-to-end test
apt   systemd-container: systemd-nspawn # boots that rootfs with systemd as PID 1 (the unit's test)
apt   python3: python3                  # free ports in the scripts
apt   curl: curl
apt   jq: jq
apt   golang-go: go                     # builds and runs containerd's snapshotter suite (Go 1.19)
apt   golang-github-containerd-containerd-dev:  # that suite and the proxy client, as sources (GOPATH)

# Building: C parts of crates (zstd, sqlite), and protoc for the gRPC crates' build scripts
apt   build-essential: gcc            # also a static setuid test program (host_user_access)
apt   pkg-config: pkg-config
apt   protobuf-compiler: protoc
apt   ca-certificates:                  # HTTPS to the package registries

# On every Debian 12 system
base  coreutils: cat chroot cut date df dirname du id mkdir mktemp mv nproc rm seq sleep sort stat sync tail tee truncate uname wc
base  util-linux: fallocate findmnt flock nsenter setpriv setsid unshare
base  mount: losetup mount umount
base  procps: free kill
base  bash: bash
base  dash: sh
base  grep: grep
base  sed: sed
base  mawk: awk
base  findutils: xargs
base  tar: tar
base  gzip: gzip
base  dpkg: dpkg-query
base  apt: apt-get
base  libc-bin: ldd
base  systemd: systemctl systemd-analyze systemd-socket-activate journalctl

# Not from Debian: cargo builds and runs everything; `cargo fmt` and `cargo clippy` in test.sh
rust  rustup: rustup cargo rustc cargo-fmt rustfmt cargo-clippy clippy-driver
PROGRAMS
)

packages=() # Debian packages: the list's base and apt lines
programs=() # every program the list names
while read -r kind package names; do
  [ -n "$kind" ] || continue
  package=${package%:}
  case "$kind" in
    base | apt) packages+=("$package") ;;
    rust) ;;
    *) echo "scripts/setup.sh: unknown kind '$kind' for $package in PROGRAMS" >&2; exit 1 ;;
  esac
  read -r -a names <<<"$names"
  programs+=("${names[@]}")
done < <(sed -e 's/#.*//' <<<"$list")

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

# The Rust toolchain comes from rustup, not from Debian (whose cargo is too old).
need=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install a Rust toolchain (rustup, $need or newer) and run this again" >&2
  exit 1
fi
have=$(rustc --version | cut -d' ' -f2)
if ! printf '%s\n%s\n' "$need" "$have" | sort -V -C; then
  echo "rustc $have is older than Cargo.toml's rust-version $need: run 'rustup update' and this again" >&2
  exit 1
fi
# scripts/test.sh runs cargo fmt and cargo clippy: components a minimal rustup profile lacks.
if ! command -v cargo-fmt >/dev/null || ! command -v cargo-clippy >/dev/null; then
  if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
  fi
fi

absent=()
for p in "${programs[@]}"; do
  command -v "$p" >/dev/null || absent+=("$p")
done
if [ ${#absent[@]} -gt 0 ]; then
  echo "not found after setup: ${absent[*]} (listed in PROGRAMS in scripts/setup.sh)" >&2
  exit 1
fi
