# Sourced by the bench-*.sh scripts that run a compiled bench driver (benches/*.rs) under a
# temp dir of their own: building the driver, the temp dir, and undoing everything beneath
# it however the script ends.

# Builds benches/$1.rs and prints the path of its binary. Built before the temp dir exists,
# so a build never writes beneath it; the binary is run directly, not through cargo, so a
# signal reaches it and nothing outlives the script.
bench_driver() {
  local name=$1 bin
  bin=$(cargo bench --locked --bench "$name" --no-run --message-format=json |
    jq -r --arg n "$name" 'select(.reason == "compiler-artifact" and .target.name == $n) | .executable')
  [ -x "$bin" ] || { echo "FAIL: no $name bench binary built" >&2; exit 1; }
  echo "$bin"
}

# Makes the run's temp dir /tmp/ic-$1.XXXXXX (short: sockets end up under it, and unix
# socket paths are short) into $work, and removes it on exit with every process, container,
# mount and loop device beneath it. The caller sets $driver to the driver's pid while it runs.
bench_workdir() {
  work=$(mktemp -d "/tmp/ic-$1.XXXXXX")
  bench_prefix="/tmp/ic-$1."
  driver=
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  case "$work" in "$bench_prefix"?*) ;; *) return ;; esac
  # Normally the driver has undone everything itself; this is for a driver that died.
  if [ -n "$driver" ]; then kill "$driver" 2>/dev/null || true; wait "$driver" 2>/dev/null || true; fi
  # Processes started for the run (daemons, registries, containerd and its shims) each name
  # a path under $work on their command line; killed by pid.
  for p in /proc/[0-9]*; do
    if grep -qaF "$work" "$p/cmdline" 2>/dev/null; then kill -9 "${p#/proc/}" 2>/dev/null || true; fi
  done
  # Containers whose shims were killed, by runc's state under $work.
  for s in "$work"/*/mnt/cd-*/runc/*/*/state.json; do
    [ -e "$s" ] || continue
    local id=${s%/state.json}
    runc --root "${id%/*}" delete --force "${id##*/}" 2>/dev/null || true
  done
  # Innermost mounts first; grep finds nothing once everything is gone, which under
  # pipefail must not fail the run.
  for _ in 1 2 3; do
    { grep " $work" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    { losetup -a | grep "$work" || true; } | cut -d: -f1 | while read -r d; do
      losetup -d "$d" 2>/dev/null || true
    done
  done
  rm -rf "$work"
}

# Fails the run if a mount or loop device is left beneath $work after the driver ended.
bench_assert_no_leaks() {
  local leaks
  leaks=$({ grep " $work" /proc/self/mountinfo || true; } | awk '{print $5}'; { losetup -a | grep "$work" || true; } | cut -d: -f1)
  if [ -n "$leaks" ]; then
    echo "FAIL: left behind under $work:" >&2
    echo "$leaks" >&2
    exit 1
  fi
}
