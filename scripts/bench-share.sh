#!/usr/bin/env bash
# Shared snapshots through a real registry (issue 17), on this machine: node A builds the
# debian-sized benchmark image's cache and pushes its snapshot to a share registry, node B
# (its own state root) creates the same cache and imports it. Also A's build with sharing off,
# to show the push adds nothing to A's time to Ready. The driver is benches/share.rs (it says
# what each case does).
#
# Everything runs under one temp dir (the driver's scratch XFS, registries and daemons),
# removed on exit with every process, mount and loop device beneath it.
#
# Usage: scripts/bench-share.sh [--check] [--runs N]
#   --check  fail unless B's import takes at most 0.5x A's build time and B fetched at most
#            1.25x the image's compressed layer bytes (medians of the runs, default 3). A's
#            time to Ready with sharing on and off and the push's duration are reported.
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
max_import_ratio=0.5
max_fetched_ratio=1.25

bash scripts/setup.sh
source scripts/bench-lib.sh
driver_bin=$(bench_driver share)
bench_workdir share

out="$work/out"
TMPDIR="$work" "$driver_bin" --runs "$runs" > "$out" &
driver=$!
wait "$driver"
driver=

bench_assert_no_leaks

result=$(grep '^SHARE_RESULT ' "$out" | cut -d' ' -f2-)
[ -n "$result" ] || { echo "FAIL: the driver printed no SHARE_RESULT line" >&2; exit 1; }
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); $runs runs"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
compressed=$(jq -r '.image.compressed_bytes' <<<"$result")
echo
echo "| run | A build, sharing off | A build, sharing on | push (event / seen) | B import | import / build | B fetched | fetched / compressed |"
echo "|---|---|---|---|---|---|---|---|"
jq -r --argjson c "$compressed" '.runs | to_entries[] | .value as $r |
  [.key + 1, $r.build_off_s, $r.build_s, $r.push_s, $r.push_wall_s, $r.import_s,
   $r.import_s / $r.build_s, ($r.share_bytes + $r.image_bytes) / 1048576,
   ($r.share_bytes + $r.image_bytes) / $c] | @tsv' <<<"$result" |
  while IFS=$'\t' read -r n off on push seen import ratio fetched fratio; do
    printf '| %s | %.2f s | %.2f s | %.1f s / %.2f s | %.2f s | %.3fx | %.1f MiB | %.3fx |\n' \
      "$n" "$off" "$on" "$push" "$seen" "$import" "$ratio" "$fetched" "$fratio"
  done
echo
printf "image: %s MiB compressed layers; frozen data %s MiB\n" "$(mib "$compressed")" "$(mib "$(jq -r '.data_bytes' <<<"$result")")"
printf "A's time to Ready, sharing on / off: %.3fx (%.2f s / %.2f s; reported, not checked)\n" \
  "$(jq -r '.build_on_off_ratio' <<<"$result")" "$(jq -r '.build_s' <<<"$result")" "$(jq -r '.build_off_s' <<<"$result")"
printf "push after Ready: %.1f s by the Pushed event, %.2f s until seen (medians)\n" \
  "$(jq -r '.push_s' <<<"$result")" "$(jq -r '.push_wall_s' <<<"$result")"
printf "B's import: %.2f s to Ready, %.1f s by the Imported event (medians)\n" \
  "$(jq -r '.import_s' <<<"$result")" "$(jq -r '.import_event_s' <<<"$result")"

status=0
over() { awk -v r="$1" -v m="$2" 'BEGIN { exit !(r > m) }'; }
limit() {
  local what="$1" value="$2" max="$3"
  printf '%s: %.3fx (at most %sx)\n' "$what" "$value" "$max"
  if over "$value" "$max"; then
    # Without --check a miss is reported, and does not fail the run.
    if [ "$check" = 1 ]; then label=FAIL; else label='MISSED (not checked)'; fi
    printf '%s: %s is %.3fx, more than %sx\n' "$label" "$what" "$value" "$max" >&2
    status=1
  fi
}
limit "B's import / A's build (medians)" "$(jq -r '.import_ratio' <<<"$result")" "$max_import_ratio"
limit "B's bytes fetched / compressed layer bytes (medians)" "$(jq -r '.fetched_ratio' <<<"$result")" "$max_fetched_ratio"
if [ "$check" = 1 ]; then exit "$status"; fi
