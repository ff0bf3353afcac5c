#!/usr/bin/env bash
# Crash soak: a mixed workload (cache builds and deletes, disk creates and deletes, containerd
# snapshotter requests) against a real imagecached on its own scratch XFS under a temp dir,
# SIGKILLed N times: at a random fault point (IMAGECACHE_FAULT_POINT, src/fault.rs) or after
# a random delay. After each kill the daemon starts again and the invariants of
# tests/crash_points.rs are checked: every cache Ready and verifying or Failed with an event,
# every stored disk attached and mounted or Failed with an event and none vanished, no loop
# device, mount, work file, disk file or snapshot the store does not know. At the end every
# disk and cache is deleted and no snapshot, loop device or mount may remain.
#
# The driver is the ignored `soak` test of tests/crash_points.rs; it prints one line per run
# and a tally (runs, kills, leaks, corrupt Ready snapshots, lost disks), and fails on any, and
# when the time bound ends the soak before its N kills happened (a soak cut short proved less
# than was asked).
#
# Usage: scripts/crash-soak.sh [N] [--max-seconds S] [--seed SEED]
#   N              kills (default 5)
#   --max-seconds  stop starting new runs after S seconds (default 1800), counted from the
#                  end of the soak's set-up (registries, images, first daemon start); fewer
#                  than N kills by then fails the soak
#   --seed         replay the random choices of an earlier soak (it prints its seed)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=5
max_seconds=1800
seed=
while [ $# -gt 0 ]; do
  case "$1" in
    --max-seconds) max_seconds="$2"; shift ;;
    --seed) seed="$2"; shift ;;
    [0-9]*) runs="$1" ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

bash scripts/setup.sh
# Built first and run directly, so the bound below counts the soak only.
driver=$(cargo test --release --locked --test crash_points --no-run --message-format=json |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "crash_points") | .executable')
[ -x "$driver" ] || { echo "FAIL: no crash_points test binary built" >&2; exit 1; }

started=$(date +%s)
status=0
IMAGECACHE_SOAK_RUNS="$runs" IMAGECACHE_SOAK_SECONDS="$max_seconds" IMAGECACHE_SOAK_SEED="$seed" \
  "$driver" --ignored --exact soak --nocapture --test-threads=1 || status=$?
echo "crash soak: N=$runs, wall time $(( $(date +%s) - started )) s, exit status $status"
exit "$status"
