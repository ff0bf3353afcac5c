//! Requests beside each other: reads never wait for another request's filesystem work, and
//! a Remove whose directories cannot go yet still removes the snapshot.

use std::time::{Duration, Instant};

use super::tests::{commit, daemon, prepare, remove, stat};
use super::*;

/// Files in each committed tree: enough that measuring one takes tens of milliseconds.
const FILES_PER_TREE: usize = 40_000;
const TREES: usize = 5;

fn fill(upper: &std::path::Path) {
    for dir in 0..FILES_PER_TREE / 100 {
        let sub = upper.join(format!("d{dir}"));
        std::fs::create_dir(&sub).unwrap();
        for file in 0..100 {
            std::fs::write(sub.join(format!("f{file}")), b"x").unwrap();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Stat answers from the store while Commits walk large trees: its p99 stays far below one
/// Commit's time, where one lock over every request made each Stat wait for a whole walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_does_not_wait_for_commits_of_large_trees() {
    let f = daemon();
    let d = f.d.clone();
    prepare(&d, "base", "").unwrap();
    commit(&d, "layer-base", "base").unwrap();
    for n in 0..TREES {
        let m = prepare(&d, &format!("active-{n}"), "").unwrap();
        fill(std::path::Path::new(&m[0].source));
    }
    let committing = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            for n in 0..TREES {
                let started = Instant::now();
                d.snapshot(SnapshotRequest::Commit {
                    name: format!("layer-{n}"),
                    key: format!("active-{n}"),
                    labels: BTreeMap::new(),
                })
                .await
                .unwrap();
                times.push(started.elapsed());
            }
            times
        })
    };
    let mut stats = Vec::new();
    while !committing.is_finished() {
        let started = Instant::now();
        let reply = d
            .snapshot(SnapshotRequest::Stat {
                key: "layer-base".into(),
            })
            .await
            .unwrap();
        stats.push(started.elapsed());
        assert!(matches!(reply, SnapshotReply::Info(_)), "{reply:?}");
    }
    let mut commits = committing.await.unwrap();
    commits.sort();
    stats.sort();
    let commit_median = percentile(&commits, 0.5);
    let stat_p99 = percentile(&stats, 0.99);
    eprintln!(
        "{} Stats beside {TREES} Commits of {FILES_PER_TREE} files: Stat p50 {:?}, p99 {stat_p99:?}; Commit median {commit_median:?}",
        stats.len(),
        percentile(&stats, 0.5),
    );
    assert!(
        commit_median >= Duration::from_millis(20),
        "a Commit took only {commit_median:?}: the trees are too small to show a stall"
    );
    assert!(
        stats.len() >= 100,
        "only {} Stats answered during the Commits",
        stats.len()
    );
    assert!(
        stat_p99 * 5 < commit_median,
        "Stat p99 {stat_p99:?} against a Commit's {commit_median:?}: reads wait for Commits"
    );
}

/// containerd's rule: once the record is gone the snapshot is gone. A directory that cannot
/// be removed yet (here an immutable file in it) is logged and left to Cleanup.
#[test]
fn a_remove_whose_directory_cannot_go_yet_succeeds_and_cleanup_takes_it_later() {
    let f = daemon();
    let d = &f.d;
    let m = prepare(d, "stuck", "").unwrap();
    let file = std::path::Path::new(&m[0].source).join("pinned");
    std::fs::write(&file, b"x").unwrap();
    let chattr = |flag: &str| {
        let out = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&file)
            .output()
            .expect("chattr (e2fsprogs) runs");
        assert!(out.status.success(), "{out:?}");
    };
    chattr("+i");
    let removed = remove(d, "stuck");
    let dir_left = file.exists();
    chattr("-i");
    removed.expect("Remove answers success once the record is gone");
    assert!(
        dir_left,
        "the immutable file was removed: the test shows nothing"
    );
    assert!(matches!(stat(d, "stuck"), Err(SnapshotError::NotFound(_))));
    ops::handle(d, SnapshotRequest::Cleanup).unwrap();
    assert!(
        !file.exists(),
        "Cleanup left the removed snapshot's directory"
    );
}
