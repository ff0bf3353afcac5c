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

# cargo-fuzz builds with -Z flags (sanitizer, coverage instrumentation) that only a nightly
# compiler takes; RUSTC_BOOTSTRAP lets the stable one take them.
export RUSTC_BOOTSTRAP=1

work="$PWD/fuzz/target/corpus/$target"
mkdir -p "$work"
# layer_apply unpacks into a sandbox under here; removed with everything in it on exit.
scratch=$(mktemp -d)
log="$scratch/fuzz.log"
export IMAGECACHE_FUZZ_DIR="$scratch"
trap 'rm -rf "$scratch"' EXIT

status=0
cargo fuzz run --fuzz-dir fuzz "$target" "$work" "$PWD/fuzz/corpus/$target" -- \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  2>&1 | tee "$log" || status=$?

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
echo "fuzz $target: ${executions:-unknown} executions in ${seconds}s, exit status $status"
exit "$status"
