#!/usr/bin/env bash
# Cold pull, side by side on this machine and in this run: containerd's `ctr images pull`
# (overlayfs snapshotter, Debian's containerd) against imagecache's cold build to Ready of
# the same image from the same local registry.
#
# Cases: a generated ~420 MB, 4-layer image of ~22,000 realistic files (text and binaries
# compressing ~3:1), in a gzip and a zstd variant. Each tool starts every run from an empty
# state root on the same scratch XFS filesystem, page cache dropped before each run.
#
# Usage: scripts/bench-vs-containerd.sh [--check] [--runs N]
#   --check  fail unless imagecache takes at most half of containerd's time (median of the
#            runs, per variant) and the daemon's peak RSS stays at or under 100 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --runs) runs="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
max_ratio=0.5
max_rss_kb=$((100 * 1024))

bash scripts/setup.sh
cargo build --release --locked --bins --example gen-image
bin=target/release

source scripts/bench-lib.sh
# The temp dir; on exit, every process started, mount made and loop device attached beneath
# it goes too.
bench_workdir vs-ctr

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
wait_for_socket() {
  for _ in $(seq 1 300); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "$2 did not create $1" >&2; return 1
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Both tools keep their state on the same XFS scratch filesystem (reflink on, as imagecache
# wants its state root), so neither gets a faster disk than the other.
truncate -s 64G "$work/scratch.img"
mkfs.xfs -q -m reflink=1 -s size=4096 "$work/scratch.img"
mkdir -p "$work/fs"
mount -o loop "$work/scratch.img" "$work/fs"
fs="$work/fs"

port=$(free_port)
registry="127.0.0.1:$port"
mkdir -p "$work/registry"
cat > "$work/registry/config.yml" <<EOF
version: 0.1
log: { level: error }
storage:
  filesystem: { rootdirectory: $work/registry/data }
http: { addr: $registry }
EOF
docker-registry serve "$work/registry/config.yml" > "$work/registry/log" 2>&1 &
# Not this shell's job any more: the cleanup ends it, and bash need not report that.
disown
for _ in $(seq 1 100); do curl -sf "http://$registry/v2/" >/dev/null && break; sleep 0.1; done

for variant in gzip zstd; do
  "$bin/examples/gen-image" --registry "$registry" --repo bench/app --tag "$variant" \
    --compression "$variant" --kind realistic --seed 1 >"$work/gen-$variant.log"
  tail -n 3 "$work/gen-$variant.log"
done

containerd_pull() { # $1 = tag; prints seconds
  local root="$fs/containerd"
  rm -rf "$root"; mkdir -p "$root"
  cat > "$root/config.toml" <<EOF
version = 2
root = "$root/root"
state = "$root/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$root/containerd.sock"
EOF
  containerd --config "$root/config.toml" > "$root/log" 2>&1 &
  local pid=$!
  wait_for_socket "$root/containerd.sock" containerd
  drop_caches
  local t0 t1
  t0=$(now)
  ctr --address "$root/containerd.sock" --namespace bench images pull --plain-http \
    "$registry/bench/app:$1" > "$root/pull.log"
  t1=$(now)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  grep " $root" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$root"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

imagecache_build() { # $1 = tag; prints "seconds peak_rss_kb"
  local root="$fs/imagecache"
  rm -rf "$root"; mkdir -p "$root/state"
  "$bin/imagecached" --root "$root/state" --socket "$root/api.sock" \
    --insecure-registry "$registry" --secrets-dir "$root/secrets" > "$root/log" 2>&1 &
  local pid=$!
  wait_for_socket "$root/api.sock" imagecached
  cat > "$root/cache.yaml" <<EOF
apiVersion: imagecache.io/v1
kind: ImageCache
metadata: { name: bench }
spec:
  images: ["$registry/bench/app:$1"]
EOF
  drop_caches
  local t0 t1
  t0=$(now)
  "$bin/imagecache" --socket "$root/api.sock" create -f "$root/cache.yaml" --wait > "$root/create.log"
  t1=$(now)
  local rss
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$root"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }') $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

status=0
results=()
for variant in gzip zstd; do
  ctr_times=(); ic_times=(); rss_max=0
  for run in $(seq 1 "$runs"); do
    c=$(containerd_pull "$variant")
    read -r i rss < <(imagecache_build "$variant")
    ctr_times+=("$c"); ic_times+=("$i")
    [ "$rss" -gt "$rss_max" ] && rss_max=$rss
    printf '%s run %d: ctr pull %.2fs, imagecache build %.2fs, daemon peak RSS %d MB\n' \
      "$variant" "$run" "$c" "$i" $((rss / 1024))
  done
  c_med=$(printf '%s\n' "${ctr_times[@]}" | median)
  i_med=$(printf '%s\n' "${ic_times[@]}" | median)
  ratio=$(awk -v i="$i_med" -v c="$c_med" 'BEGIN { printf "%.3f", i / c }')
  results+=("$(printf '| %s | %.2f s | %.2f s | %.2f | %d MB |' "$variant" "$c_med" "$i_med" "$ratio" $((rss_max / 1024)))")
  if awk -v r="$ratio" -v m="$max_ratio" 'BEGIN { exit !(r > m) }'; then
    echo "FAIL: $variant: imagecache takes $(printf %.2f "$ratio") of containerd's time (at most $max_ratio allowed)" >&2
    status=1
  fi
  if [ "$rss_max" -gt "$max_rss_kb" ]; then
    echo "FAIL: $variant: daemon peak RSS $((rss_max / 1024)) MB is over 100 MB" >&2
    status=1
  fi
done

echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); $runs runs, medians"
echo "| variant | ctr images pull | imagecache build to Ready | ratio | daemon peak RSS |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
if [ "$check" = 1 ]; then exit "$status"; fi
