#!/usr/bin/env bash
# Runs every test of imagecache on this machine, as root: lint, unit and integration tests
# (real loop devices, XFS scratch filesystems, a real registry on 127.0.0.1), then the
# benchmarks (cold pull and pod start against containerd, cache and disk sizes, restart with
# 1,000 disks) with their acceptance thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
# Integration tests share the machine's loop devices and CPU: two at a time keeps them fast
# without starving the ones that measure.
cargo test --release --locked -- --test-threads=2
# A few kills at random points of a mixed workload (the soak's N = 100 figure is in
# docs/TESTING.md); bounded so a slow machine cannot stall the run.
bash scripts/crash-soak.sh 5 --max-seconds 180
bash scripts/bench-vs-containerd.sh --check
bash scripts/bench-pod-start.sh --check
bash scripts/bench-disk-size.sh --check
# 1,000 disks attached and mounted, the daemon killed and started again: serving within 1 s
# (a few minutes in all, most of it making and deleting the disks).
bash scripts/bench-restart.sh --check
# Gated on the medians of five runs (the issue asks for three): single runs on this 2-core
# machine spread more than the medians do. docs/BENCHMARKS.md has the figures.
bash scripts/bench-share.sh --check --runs 5
