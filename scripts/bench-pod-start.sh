#!/usr/bin/env bash
# Pod start as the kubelet sees it, side by side on this machine and in this run: containerd
# 1.6 over CRI (RunPodSandbox + PullImage + CreateContainer + StartContainer until the
# container's first line is in its CRI log) of the debian-sized 4-layer benchmark image with
# (a) the overlayfs snapshotter, cold; (b) imagecache's snapshotter, the image in a Ready
# cache; (c) the same with the container on a per-pod disk cloned from that cache, the disk's
# create included; (a2) imagecache's snapshotter with no cache, the daemon's cold pull;
# (a3) the same on a node whose share registry holds both images' snapshots; (w) overlayfs
# with both images already pulled, no PullImage; (b2) imagecache with both images in a cache
# published into containerd, no PullImage. The driver is benches/pod_start.rs (it says what
# each case does).
#
# Everything runs on 127.0.0.1 under one temp dir (the driver's scratch XFS, registry and
# daemon all make their temp dirs under it), removed on exit with every process, mount and
# loop device beneath it.
#
# The page cache is dropped before each run; the node's runtime (containerd, shim, runc) is
# read back, as on any node that runs pods, so what comes from disk is the images.
#
# (w) and (b2) also run with the kernel's RCU grace periods expedited (/sys/kernel/rcu_expedited
# is 1 during their timed part and put back after it, or by this script if the driver died),
# which takes out a 7-16 ms wait inside runc that moved (b2) against (w) between runs of this
# script; the driver's comment says why, docs/BENCHMARKS.md how it was found.
#
# Usage: scripts/bench-pod-start.sh [--check] [--runs N] [--published-runs N]
#                                   [--expedited-runs N] [--cases a2,w,b2]
#   --runs   timed runs of each case (3)
#   --published-runs  timed runs of (w) and (b2) under the kernel's default grace periods
#            (21, and never fewer than --runs), reported
#   --expedited-runs  timed runs of (w) and (b2) with expedited grace periods (9; 0: none)
#   --cases  only these cases besides (a), reported without thresholds (scripts/demo.sh)
#   --check  fail unless (b) and (c) each start a pod in at most 0.1x of (a)'s time, (a2) in
#            at most 0.5x, (a3) in at most 0.3x, (b)'s PullImage takes at most 0.05x of
#            (a)'s, and (b2) starts it in at most 1.1x of (w)'s time with expedited grace
#            periods (medians of the runs). (b2) against (w) under the default is reported.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
runs=3
published_runs=21
expedited_runs=9
cases=
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --runs) runs="$2"; shift ;;
    --published-runs) published_runs="$2"; shift ;;
    --expedited-runs) expedited_runs="$2"; shift ;;
    --cases) cases="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$check" = 1 ] && [ -n "$cases" ]; then
  echo "--check needs every case: leave out --cases" >&2
  exit 2
fi
if [ "$check" = 1 ] && [ "$expedited_runs" -lt 1 ]; then
  echo "--check compares (b2) with (w) on their runs with expedited grace periods: give --expedited-runs 1 or more" >&2
  exit 2
fi
max_start_ratio=0.1
max_pull_ratio=0.05
max_cold_ratio=0.5
max_shared_ratio=0.3
max_published_ratio=1.1

bash scripts/setup.sh
source scripts/bench-lib.sh
driver_bin=$(bench_driver pod_start)
bench_workdir pod
# The driver sets this during the timed part of each expedited run and puts it back; this
# puts it back too, for a driver that died in the middle of one, once the driver is gone.
if [ "$expedited_runs" -gt 0 ]; then
  rcu_expedited=/sys/kernel/rcu_expedited
  # (The driver checks it can write it before it sets anything up.)
  rcu_expedited_before=$(cat "$rcu_expedited") || {
    echo "FAIL: cannot read $rcu_expedited, which the runs with expedited grace periods set (--expedited-runs 0 runs none)" >&2
    exit 1
  }
  trap '{ bench_cleanup; } || true; { echo "$rcu_expedited_before" > "$rcu_expedited"; } 2>/dev/null || echo "could not put $rcu_expedited back to $rcu_expedited_before" >&2' EXIT
fi

out="$work/out"
# In the background so the traps above run as soon as a signal comes, not when it ends.
# Progress goes to standard error as it happens; the tables come at the end.
published_runs=$((published_runs > runs ? published_runs : runs))
TMPDIR="$work" "$driver_bin" --runs "$runs" --published-runs "$published_runs" \
  --expedited-runs "$expedited_runs" ${cases:+--cases "$cases"} > "$out" &
driver=$!
wait "$driver"
driver=
grep -v '^POD_START_RESULT ' "$out"

# The driver checks that nothing of its own is left; this checks the same from outside.
bench_assert_no_leaks

result=$(grep '^POD_START_RESULT ' "$out" | cut -d' ' -f2-)
[ -n "$result" ] || { echo "FAIL: the driver printed no POD_START_RESULT line" >&2; exit 1; }
expedited_clause=
[ "$expedited_runs" = 0 ] || expedited_clause=", $expedited_runs more of each with RCU grace periods expedited"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), $(containerd --version | awk '{print $1, $3}'); $runs runs ($published_runs of (w) and (b2)$expedited_clause), medians"

# Some cases only (the demo): the driver's own table and ratios, no thresholds.
if [ -n "$cases" ]; then
  exit 0
fi
status=0
ratio() { jq -r --arg x "$1" --arg y "$2" --arg k "$3" '.cases[$x][$k] / .cases[$y][$k]' <<<"$result"; }
over() { awk -v r="$1" -v m="$2" 'BEGIN { exit !(r > m) }'; }
# Each case against its reference: (b2) against (w) on their runs with expedited grace periods
# (~1 ms apart at ~52 ms); under the kernel's default it is reported below.
bounds=("b a $max_start_ratio" "c a $max_start_ratio" "a2 a $max_cold_ratio" "a3 a $max_shared_ratio")
[ "$expedited_runs" = 0 ] || bounds+=("b2-expedited w-expedited $max_published_ratio")
for bound in "${bounds[@]}"; do
  read -r c base max <<<"$bound"
  r=$(ratio "$c" "$base" total)
  title=$(jq -r --arg c "$c" '.cases[$c].title' <<<"$result")
  base_title=$(jq -r --arg c "$base" '.cases[$c].title' <<<"$result")
  printf '%s: pod start %.3fx of %s (at most %s)\n' "$title" "$r" "$base_title" "$max"
  if over "$r" "$max"; then
    printf 'FAIL: %s: pod start %.3f s is %.3fx of %s'"'"'s %.3f s (at most %sx allowed)\n' "$title" \
      "$(jq -r --arg c "$c" '.cases[$c].total' <<<"$result")" "$r" "$base_title" \
      "$(jq -r --arg c "$base" '.cases[$c].total' <<<"$result")" "$max" >&2
    status=1
  fi
done
r=$(ratio b2 w total)
printf '(b2) published cache: pod start %.3fx of (w), RCU grace periods as the kernel has them (reported)\n' "$r"
r=$(ratio b a pull)
printf '(b) PullImage %.3fx of (a)'"'"'s (at most %s)\n' "$r" "$max_pull_ratio"
if over "$r" "$max_pull_ratio"; then
  printf 'FAIL: (b) PullImage %.3f s is %.3fx of (a)'"'"'s %.3f s (at most %sx allowed)\n' \
    "$(jq -r '.cases.b.pull' <<<"$result")" "$r" "$(jq -r '.cases.a.pull' <<<"$result")" \
    "$max_pull_ratio" >&2
  status=1
fi
if [ "$check" = 1 ]; then exit "$status"; fi
