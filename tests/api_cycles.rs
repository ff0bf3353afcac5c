//! 1,000 disk create/delete cycles through the API of a real daemon (scratch XFS, a cache
//! from a registry on 127.0.0.1): the daemon's open file descriptors and RSS end where they
//! were after a warm-up, and no loop device, mount or file is left (issue 10, "Load").
//!
//! Bounds: RSS within 10 % of the warm figure. File descriptors: 10 % of the warm count
//! (about 20 here, so 2) would hide a leak of one descriptor per 500 cycles, so the count
//! must come back to exactly where it was, give or take the one connection the daemon may
//! not have closed yet when it is read (polled for up to 2 s until it settles).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use imagecache::cli::Client;
use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const DISKS: &str = "/apis/imagecache.io/v1/disks";
const WARM_UP: usize = 50;
const CYCLES: usize = 1000;
/// Bounds on one create+delete cycle's p50 and p99, in ms. Quiet, they took 2.5 / 9.6 ms; with
/// a compile beside them 23 / 107 ms, and with other tests and builds on the machine (load
/// average 8) 36 / 141 ms. About 2x that: a cycle that waits on something slow (a sync of
/// the store, a lock held by other work) shows, a busy machine does not.
const CYCLE_BOUND_MS: (f64, f64) = (60.0, 300.0);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The fd count once it stops moving (an answered connection may still be closing).
fn settled_fds(pid: u32, at_most: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = open_fds(pid);
        if n <= at_most || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn cycle(client: &Client, body: &[u8], i: usize) -> f64 {
    let t = Instant::now();
    let answer = client
        .post(DISKS, body.to_vec(), "application/json")
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: create: {e}"));
    let disk: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(disk["status"]["phase"], "Ready", "cycle {i}: {disk:#}");
    let id = disk["metadata"]["name"].as_str().unwrap();
    client
        .delete(&format!("{DISKS}/{id}"))
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: delete {id}: {e}"));
    t.elapsed().as_secs_f64() * 1e3
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn thousand_api_disk_cycles_keep_fds_and_rss_and_leave_nothing() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let image = feature_set(1).push_all(&addr, None).remove(0);
    let root = scratch.path().join("state");
    let daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(
        &cache_yaml(
            "base",
            std::slice::from_ref(&image),
            "  imageCacheSize: 20\n",
        ),
        true,
    );
    assert!(out.status.success(), "cache: {}", daemon.log());
    let body = serde_json::json!({
        "apiVersion": "imagecache.io/v1", "kind": "Disk",
        "spec": {"images": [image], "cacheId": "base"}
    })
    .to_string()
    .into_bytes();
    let client = Client::new(&daemon.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = daemon.pid();

    rt.block_on(async {
        for i in 0..WARM_UP {
            cycle(&client, &body, i).await;
        }
    });
    let fds_before = settled_fds(pid, 0);
    let rss_before = rss_kib(pid);
    let started = Instant::now();
    let mut ms: Vec<f64> = rt.block_on(async {
        let mut ms = Vec::with_capacity(CYCLES);
        for i in 0..CYCLES {
            ms.push(cycle(&client, &body, i).await);
        }
        ms
    });
    let took = started.elapsed();
    let fds_after = settled_fds(pid, fds_before);
    let rss_after = rss_kib(pid);
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "{CYCLES} create+delete cycles in {:.1} s: p50 {:.2} ms, p99 {:.2} ms; fds {fds_before} -> {fds_after}; RSS {rss_before} -> {rss_after} KiB ({:+.1} %)",
        took.as_secs_f64(),
        ms[ms.len() / 2],
        ms[ms.len() * 99 / 100],
        (rss_after as f64 / rss_before as f64 - 1.0) * 100.0
    );

    assert!(
        fds_after <= fds_before + 1 && fds_after + 1 >= fds_before,
        "open descriptors moved from {fds_before} to {fds_after} over {CYCLES} cycles"
    );
    let drift = (rss_after as f64 - rss_before as f64).abs() / rss_before as f64;
    assert!(
        drift <= 0.10,
        "RSS moved from {rss_before} KiB to {rss_after} KiB over {CYCLES} cycles"
    );
    let (p50, p99) = (ms[ms.len() / 2], ms[ms.len() * 99 / 100]);
    assert!(
        p50 <= CYCLE_BOUND_MS.0 && p99 <= CYCLE_BOUND_MS.1,
        "create+delete cycles p50 {p50:.2} ms p99 {p99:.2} ms, bounds {} / {} ms",
        CYCLE_BOUND_MS.0,
        CYCLE_BOUND_MS.1
    );
    let left = files_in(&root.join("disks"));
    assert!(left.is_empty(), "left in disks/: {left:?}");
    assert_no_leaks(&root.join("disks"));
    drop(daemon);
    assert_no_leaks(&root);
}
