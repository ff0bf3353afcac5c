#!/usr/bin/env bash
# Runs one fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS and prints how many inputs
# it executed. Targets: layer_apply reference manifest api_body matching snapshot_manifest
# (fuzz/fuzz_targets/; what each checks is in fuzz/checks/).
#
# The checked-in seeds (fuzz/corpus/TARGET/) are read, never written: what the fuzzer finds
# interesting goes to fuzz/target/corpus/TARGET/ and is reused by the next run. A crash leaves
# its input in fuzz/artifacts/TARGET/; once fixed, copy it into fuzz/corpus/TARGET/ so
# tests/fuzz_corpora.rs replays it on every `cargo test`.
#
# Usage: scripts/fuzz.sh TARGET SECONDS
#
# Environment (all optional):
#   FUZZ_SANITIZER  address (default) or none. AddressSanitizer costs 2-3x in executions per
#                   second; the code under test is safe Rust, where it finds little, so long
#                   runs for counts may go without it. Each choice builds into its own
#                   directory (fuzz/target/build-SANITIZER), so switching rebuilds nothing.
#   FUZZ_RUNS       stop after this many executions if SECONDS have not run out first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  echo "usage: scripts/fuzz.sh TARGET SECONDS" >&2
  exit 2
fi
target=$1
seconds=$2

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

sanitizer=${FUZZ_SANITIZER:-address}
case "$sanitizer" in
  address | none) ;;
  *)
    echo "FUZZ_SANITIZER must be address or none, not $sanitizer" >&2
    exit 2
    ;;
esac

# cargo-fuzz builds with -Z flags (sanitizer, coverage instrumentation) that only a nightly
# compiler takes; RUSTC_BOOTSTRAP lets the stable one take them.
export RUSTC_BOOTSTRAP=1

# Built once and then run directly: `cargo fuzz run` builds twice (its build and its run use
# different debug settings), recompiling the main crate each time.
build_dir="$PWD/fuzz/target/build-$sanitizer"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" --target-dir "$build_dir" "$target"
binary="$build_dir/x86_64-unknown-linux-gnu/release/$target"

work="$PWD/fuzz/target/corpus/$target"
mkdir -p "$work" "fuzz/artifacts/$target"
# layer_apply unpacks into a sandbox under here; removed with everything in it on exit. On
# tmpfs when there is one: every input makes, walks and removes files there, and a disk
# filesystem's journal only adds kernel time.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=$(mktemp -d -p /dev/shm)
else
  scratch=$(mktemp -d)
fi
log="$scratch/fuzz.log"
export IMAGECACHE_FUZZ_DIR="$scratch"
trap 'rm -rf "$scratch"' EXIT

runs=()
if [ -n "${FUZZ_RUNS:-}" ]; then
  runs=(-runs="$FUZZ_RUNS")
fi

# -reload=0: one process per corpus, so nothing else adds to it; rereading the directory
# every second only costs time.
status=0
"$binary" -artifact_prefix="$PWD/fuzz/artifacts/$target/" -max_total_time="$seconds" \
  "${runs[@]}" -reload=0 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  "$work" "$PWD/fuzz/corpus/$target" 2>&1 | tee "$log" || status=$?

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
elapsed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
echo "fuzz $target (sanitizer $sanitizer): ${executions:-unknown} executions in ${elapsed:-$seconds}s, exit status $status"
exit "$status"
