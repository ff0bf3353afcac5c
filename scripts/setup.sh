#!/usr/bin/env bash
# Installs what imagecache's build, tests, benchmarks and demo need on a Debian 12 node, as
# root, from one list: scripts/programs.txt (tests/programs_installed.rs fails when a source
# starts a program that list does not name).
# Safe to run again: it only installs what is missing, and says nothing when nothing is.
set -euo pipefail
cd "$(dirname "$0")/.."
list=scripts/programs.txt

packages=() # Debian packages: the list's base and apt lines
programs=() # every program the list names
while read -r kind package names; do
  [ -n "$kind" ] || continue
  package=${package%:}
  case "$kind" in
    base | apt) packages+=("$package") ;;
    rust) ;;
    *) echo "$list: unknown kind '$kind' for $package" >&2; exit 1 ;;
  esac
  read -r -a names <<<"$names"
  programs+=("${names[@]}")
done < <(sed -e 's/#.*//' "$list")

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
  echo "not found after setup: ${absent[*]} (listed in $list)" >&2
  exit 1
fi
