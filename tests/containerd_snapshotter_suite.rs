//! containerd's own snapshotter test suite (snapshots/testsuite of containerd 1.6.20, Debian's
//! golang-github-containerd-containerd-dev, Go 1.19) against imagecached, with containerd's
//! overlayfs snapshotter as the reference in the same run: every suite test that passes on
//! overlayfs must pass on imagecache. The Go side (tests/containerd_suite/) starts one fresh
//! imagecached per suite test and reaches both snapshotters through containerd's proxy client,
//! as containerd reaches a proxy plugin.
//!
//! Both suites make their roots on one scratch XFS filesystem (TMPDIR), the filesystem the
//! daemon's state root lives on in production, so a leaked mount or loop device is seen here.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::scratch::{assert_no_leaks, ScratchXfs};

/// The Go test's top-level name and its two runs.
const TOP: &str = "TestSnapshotterSuite";
const REFERENCE: &str = "overlayfs";
const UNDER_TEST: &str = "imagecache";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// Each run's outcome per suite test, from `go test -v`'s `--- PASS: Top/run/Test (0.01s)`
/// lines (indented by nesting depth).
fn outcomes(output: &str) -> BTreeMap<String, BTreeMap<String, Outcome>> {
    let mut runs: BTreeMap<String, BTreeMap<String, Outcome>> = BTreeMap::new();
    for line in output.lines() {
        let line = line.trim_start();
        let (outcome, rest) = if let Some(r) = line.strip_prefix("--- PASS: ") {
            (Outcome::Pass, r)
        } else if let Some(r) = line.strip_prefix("--- FAIL: ") {
            (Outcome::Fail, r)
        } else if let Some(r) = line.strip_prefix("--- SKIP: ") {
            (Outcome::Skip, r)
        } else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or("");
        let mut parts = name.splitn(3, '/');
        if let (Some(TOP), Some(run), Some(test)) = (parts.next(), parts.next(), parts.next()) {
            runs.entry(run.to_owned())
                .or_default()
                .insert(test.to_owned(), outcome);
        }
    }
    runs
}

/// The lines `go test -v` printed for one suite test (what it logged, its failures).
fn lines_of(output: &str, run: &str, test: &str) -> String {
    let name = format!("{TOP}/{run}/{test}");
    let mut out = Vec::new();
    let mut inside = false;
    for line in output.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("=== ") {
            inside = trimmed.split_whitespace().nth(2) == Some(name.as_str());
            continue;
        }
        if trimmed.starts_with("--- ") && trimmed.contains(&format!(" {name} ")) {
            out.push(line);
            inside = false;
        } else if inside {
            out.push(line);
        }
    }
    out.join("\n")
}

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd_suite")
}

#[test]
fn every_suite_test_overlayfs_passes_passes_on_imagecache() {
    let scratch = ScratchXfs::new(4 << 30);
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // Go's own files (build cache, test binary) stay off the scratch filesystem and out of
    // the user's cache: a run builds containerd's packages from Debian's sources, offline.
    let go = tempfile::Builder::new()
        .prefix("imagecache-go-")
        .tempdir()
        .unwrap();
    let out = Command::new("go")
        .args(["test", "-v", "-count=1", "-timeout=15m", "."])
        .current_dir(suite_dir())
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .env("GOCACHE", go.path().join("cache"))
        .env("GOTMPDIR", go.path())
        .env("TMPDIR", &tmp)
        .env("IMAGECACHED", env!("CARGO_BIN_EXE_imagecached"))
        .output()
        .expect("run go test (golang-go, from scripts/setup.sh)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = outcomes(&output);
    let (Some(reference), Some(ours)) = (runs.get(REFERENCE), runs.get(UNDER_TEST)) else {
        panic!(
            "go test ({}) reported no run of both snapshotters:\n{output}",
            out.status
        );
    };
    let passed_by_reference: Vec<&String> = reference
        .iter()
        .filter(|(_, o)| **o == Outcome::Pass)
        .map(|(t, _)| t)
        .collect();
    eprintln!(
        "containerd snapshotter suite: overlayfs {:?}\nimagecache {:?}",
        reference, ours
    );
    assert!(
        !passed_by_reference.is_empty(),
        "overlayfs passed no suite test, so nothing was compared:\n{output}"
    );
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "the two runs did not report the same suite tests:\n{output}"
    );
    let regressions: Vec<&String> = passed_by_reference
        .iter()
        .copied()
        .filter(|t| ours.get(*t) != Some(&Outcome::Pass))
        .collect();
    let detail: Vec<String> = regressions
        .iter()
        .map(|t| lines_of(&output, UNDER_TEST, t))
        .collect();
    assert!(
        regressions.is_empty(),
        "pass on overlayfs, not on imagecache: {regressions:?}\n{}",
        detail.join("\n\n")
    );
    drop(go);
    assert_no_leaks(&tmp);
}

#[test]
fn go_test_lines_are_read_per_run_and_test() {
    let output = "\
=== RUN   TestSnapshotterSuite/imagecache/Update
=== CONT  TestSnapshotterSuite/imagecache/Update
    testsuite.go:637: (c1) wrong created time
--- FAIL: TestSnapshotterSuite (1.00s)
    --- PASS: TestSnapshotterSuite/overlayfs (0.00s)
        --- PASS: TestSnapshotterSuite/overlayfs/Update (0.07s)
        --- SKIP: TestSnapshotterSuite/overlayfs/Rename (0.00s)
    --- FAIL: TestSnapshotterSuite/imagecache (0.00s)
        --- FAIL: TestSnapshotterSuite/imagecache/Update (0.10s)
        --- PASS: TestSnapshotterSuite/imagecache/Rename/sub (0.10s)
";
    let runs = outcomes(output);
    assert_eq!(
        runs[REFERENCE],
        BTreeMap::from([
            ("Update".to_owned(), Outcome::Pass),
            ("Rename".to_owned(), Outcome::Skip)
        ])
    );
    assert_eq!(runs[UNDER_TEST]["Update"], Outcome::Fail);
    assert_eq!(runs[UNDER_TEST]["Rename/sub"], Outcome::Pass);
    assert!(lines_of(output, UNDER_TEST, "Update").contains("wrong created time"));
}
