#!/usr/bin/env bash
# Builds a Debian bookworm minbase rootfs with debootstrap and writes it as a tar (numeric
# owners, xattrs and capabilities kept) to OUT_TAR: a real-world layer for benchmarks and
# end-to-end tests. Cached: does nothing when OUT_TAR exists. Needs root.
#
#   scripts/build-debian-minbase.sh OUT_TAR [MIRROR]
set -euo pipefail

out=${1:?usage: $0 OUT_TAR [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}

if [[ -s $out ]]; then
    echo "$out exists, reusing it" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "debootstrap needs root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/minbase.XXXXXX")
# The rootfs has device nodes and root-owned files: remove it whatever happens.
trap 'rm -rf --one-file-system "$work"' EXIT

start=$(date +%s)
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}
# Downloaded .debs are not part of an image.
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

mkdir -p "$(dirname "$out")"
# Names are not sorted nor mtimes normalised: the point is a real rootfs as debootstrap left it.
tar --numeric-owner --xattrs --xattrs-include='*' --acls --sparse \
    -C "$work/rootfs" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out: $(du -h "$out" | cut -f1), $(tar -tf "$out" | wc -l) entries, $(( $(date +%s) - start )) s" >&2
