#!/usr/bin/env bash
# The main job on this node, end to end: start imagecached on its embedded defaults (state
# in /var/lib/imagecache on the embedded XFS backing image /var/lib/imagecache.xfs, so disks
# are reflink clones even on an ext4 host; API on /run/imagecache/imagecache.sock), push a
# generated ~420 MB image to a registry on 127.0.0.1, build an ImageCache of it through the
# CLI, clone a per-pod disk from it, and show, verify and delete both; then pod start through
# containerd's CRI, cold with containerd alone, cold through imagecache and from a published
# cache, with the ratios. Run as root.
# Pass --keep to leave the daemon, the cache and the disk in place.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1

bash scripts/setup.sh
cargo build --release --locked --bins --example gen-image
bin=target/release
socket=/run/imagecache/imagecache.sock

work=$(mktemp -d /tmp/imagecache-demo.XXXXXX)
pids=()
cleanup() {
  if [ "$keep" = 0 ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry="127.0.0.1:$port"
cat > "$work/registry.yml" <<YAML
version: 0.1
log: { level: error }
storage:
  filesystem: { rootdirectory: $work/registry }
http: { addr: $registry }
YAML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://$registry/v2/" >/dev/null && break; sleep 0.1; done
echo "== pushing a generated image to $registry"
"$bin/examples/gen-image" --registry "$registry" --repo demo/app --tag v1 --compression gzip --kind realistic

echo "== starting imagecached (defaults; $registry trusted over plain HTTP)"
"$bin/imagecached" --insecure-registry "$registry" --backing-image /var/lib/imagecache.xfs \
  > "$work/imagecached.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.05; done

ic() { "$bin/imagecache" "$@"; }
ic delete demo >/dev/null 2>&1 || true
echo "== imagecache create -f - --wait"
ic create -f - --wait <<YAML
apiVersion: eci.alibabacloud.com/v1
kind: ImageCache
metadata:
  name: demo
spec:
  images: ["$registry/demo/app:v1"]
  imageCacheSize: 20
  retentionDays: 7
YAML
echo "== imagecache get -o wide"
ic get -o wide
echo "== imagecache describe demo"
ic describe demo
echo "== imagecache verify demo"
ic verify demo
echo "== imagecache disk create --image $registry/demo/app:v1 --size 40"
disk_json=$(ic disk create --image "$registry/demo/app:v1" --size 40 -o json)
disk=$(echo "$disk_json" | jq -r .metadata.name)
echo "$disk_json" | jq '{id: .metadata.name, phase: .status.phase, cache: .status.cacheId, device: .status.device, mountpoint: .status.mountpoint, sizeGiB: .status.sizeGiB, timings: .status.timings}'
mnt=$(echo "$disk_json" | jq -r .status.mountpoint)
echo "== the pod's disk: its images are already there"
df -h "$mnt" | tail -n 1
jq -r 'keys[]' "$mnt/snapshots.json"
echo "== imagecache info"
ic info
if [ "$keep" = 0 ]; then
  echo "== imagecache disk delete $disk; imagecache delete demo"
  ic disk delete "$disk"
  ic delete demo
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  umount /var/lib/imagecache 2>/dev/null || true
  # Pod start as the kubelet sees it, with a containerd 1.6 of its own on 127.0.0.1, its own
  # registry, daemons and scratch filesystem (benches/pod_start.rs): the image cold with
  # containerd alone (a), cold through imagecache's snapshotter with no cache anywhere (a2),
  # and from a cache published into containerd (b2, beside (w): containerd with the image
  # already present).
  echo "== pod start through CRI: containerd alone, cold through imagecache, from a published cache"
  bash scripts/bench-pod-start.sh --runs 1 --published-runs 5 --expedited-runs 5 --cases a2,w,b2
fi
