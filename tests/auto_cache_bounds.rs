//! Auto-created caches are bounded, through the real daemon, registry and loop devices:
//! - sized at least the node's default and the size of the disk that asked (a `Sized` event
//!   says how the images' manifests set it), with `auto_cache_retention_days` as retentionDays;
//!   a pod asking for a smaller disk than such a cache gets an empty disk, not a refusal;
//! - each disk cloned from one renews its expiry;
//! - a Failed one is not retried by the pods that come within `auto_cache_retry_after_secs`
//!   of the failure (`AutoCacheFailed` on their disks), and is rebuilt by the first that comes
//!   after (`AutoCacheRetried`);
//! - over `max_cache_space_gib`, the least recently used auto-created Ready caches are deleted
//!   (here by the retention pass that runs as the daemon starts with a lowered budget, so in
//!   the log), never a user's cache nor one still building, and the disks cloned from a
//!   deleted one keep working.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::oci::push;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

fn disk(daemon: &TestDaemon, image: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--image", image];
    args.extend_from_slice(extra);
    daemon.disk_create(&args)
}

fn disk_get(daemon: &TestDaemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["disk", "get", id, "-o", "json"])).unwrap()
}

fn id(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap()
}

fn with_reason<'a>(object: &'a Value, reason: &str) -> Vec<&'a str> {
    object["status"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {object:#}"))
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap())
        .collect()
}

fn wait_phase(daemon: &TestDaemon, name: &str, phase: &str) -> Value {
    let cache = daemon.wait_until(name, Duration::from_secs(300), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(cache["status"]["phase"], phase, "{cache:#}");
    cache
}

fn expiry(cache: &Value) -> String {
    cache["status"]["expireDateTime"]
        .as_str()
        .unwrap_or_else(|| panic!("no expiry: {cache:#}"))
        .to_owned()
}

fn data_bytes(cache: &Value) -> u64 {
    cache["status"]["dataSizeBytes"].as_u64().unwrap()
}

/// Whole-second timestamps: wait for the next second so "later" shows.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn auto_created_caches_are_sized_renewed_retried_and_kept_within_the_budget() {
    let scratch = ScratchXfs::new(128 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(5);
    let refs = set.push_all(&addr, None);
    let (alpha, bravo) = (&refs[0], &refs[1]);
    // Pushed later: until then its cache fails.
    let zulu = format!("{addr}/features/zulu:v1");
    let delta = format!("{addr}/features/delta:v1");
    push(
        &addr,
        "features/delta",
        "v1",
        &set.get("alpha").artifact,
        None,
    );
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let base = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.stop();
    let bounds = "auto_cache_retention_days = 3\nauto_cache_retry_after_secs = 5\n";
    std::fs::write(&daemon.config_path, format!("{base}{bounds}")).unwrap();
    daemon.spawn();

    // Sized: never below the disk that asked (30 GiB) nor the default (20 GiB).
    let a1 = disk(&daemon, alpha, &["--size", "30"]);
    let auto_a = a1["status"]["autoCreatedCache"]
        .as_str()
        .unwrap()
        .to_owned();
    let cache_a = wait_phase(&daemon, &auto_a, "Ready");
    assert_eq!(cache_a["spec"]["imageCacheSize"], 30, "{cache_a:#}");
    assert_eq!(cache_a["spec"]["retentionDays"], 3, "{cache_a:#}");
    let sized = with_reason(&cache_a, "Sized");
    assert_eq!(sized.len(), 1, "{cache_a:#}");
    assert!(
        sized[0].contains("Sized to 30 GiB") && sized[0].contains("at least 30 GiB"),
        "{sized:?}"
    );
    // A pod asking for less than that cache goes without it, and is not refused.
    let small = disk(&daemon, alpha, &["--size", "20"]);
    assert!(small["status"]["cacheId"].is_null(), "{small:#}");
    assert!(small["status"]["autoCreatedCache"].is_null(), "{small:#}");
    let why = with_reason(&small, "NoCacheMatched");
    assert!(
        why.len() == 1 && why[0].contains(&auto_a) && why[0].contains("larger than the 20 GiB"),
        "{small:#}"
    );
    daemon.cli_ok(&["disk", "delete", id(&small)]);
    let b1 = disk(&daemon, bravo, &[]);
    let auto_b = b1["status"]["autoCreatedCache"]
        .as_str()
        .unwrap()
        .to_owned();
    let cache_b = wait_phase(&daemon, &auto_b, "Ready");
    assert_eq!(cache_b["spec"]["imageCacheSize"], 20, "{cache_b:#}");

    // Each clone renews the expiry by retentionDays.
    next_second();
    let a2 = disk(&daemon, alpha, &["--size", "30"]);
    assert_eq!(
        a2["status"]["cacheId"], cache_a["status"]["imageCacheId"],
        "{a2:#}"
    );
    let renewed = daemon.get_json(&auto_a);
    assert!(
        expiry(&renewed) > expiry(&cache_a),
        "{} then {}",
        expiry(&cache_a),
        expiry(&renewed)
    );

    // A failed auto-created cache: the next pod within the retry delay goes without it...
    let z1 = disk(&daemon, &zulu, &["--no-wait"]);
    let auto_z = z1["status"]["autoCreatedCache"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = wait_phase(&daemon, &auto_z, "Failed");
    let z2 = disk(&daemon, &zulu, &["--no-wait"]);
    assert!(z2["status"]["autoCreatedCache"].is_null(), "{z2:#}");
    let said = with_reason(&z2, "AutoCacheFailed");
    assert_eq!(said.len(), 1, "{z2:#}");
    assert!(
        said[0].contains(&auto_z) && said[0].contains("builds it again"),
        "{said:?}"
    );
    assert_eq!(
        daemon.get_json(&auto_z)["metadata"]["uid"],
        failed["metadata"]["uid"],
        "not rebuilt within the delay"
    );
    // ... and the first after it builds it again.
    push(
        &addr,
        "features/zulu",
        "v1",
        &set.get("charlie").artifact,
        None,
    );
    std::thread::sleep(Duration::from_secs(6));
    let z3 = disk(&daemon, &zulu, &[]);
    assert_eq!(z3["status"]["phase"], "Ready", "{z3:#}");
    assert_eq!(z3["status"]["autoCreatedCache"], auto_z.as_str(), "{z3:#}");
    let said = with_reason(&z3, "AutoCacheRetried");
    assert_eq!(said.len(), 1, "{z3:#}");
    assert!(said[0].contains(&auto_z), "{said:?}");
    let cache_z = wait_phase(&daemon, &auto_z, "Ready");
    assert_ne!(cache_z["metadata"]["uid"], failed["metadata"]["uid"]);
    for d in [&z1, &z2, &z3] {
        daemon.cli_ok(&["disk", "delete", id(d)]);
    }

    // A cache of the user's (charlie), never counted nor deleted by the budget.
    let out = daemon.create(&cache_yaml("mine", &refs[2..3], ""), true);
    assert!(out.status.success(), "{}", daemon.log());

    // Use order, oldest first: A (cloned above), Z (built), B (cloned now).
    next_second();
    let b2 = disk(&daemon, bravo, &[]);
    assert_eq!(
        b2["status"]["cacheId"], cache_b["status"]["imageCacheId"],
        "{b2:#}"
    );
    let sizes: Vec<u64> = [&auto_a, &auto_b, &auto_z]
        .iter()
        .map(|n| data_bytes(&daemon.get_json(n)))
        .collect();
    assert!(sizes.iter().all(|b| *b > 0), "{sizes:?}");
    // Room for B, Z and half of A: A, the least recently used, goes, and only A.
    let budget = (sizes[1] + sizes[2] + sizes[0] / 2) as f64 / (1u64 << 30) as f64;
    daemon.stop();
    std::fs::write(
        &daemon.config_path,
        format!("{base}{bounds}max_cache_space_gib = {budget:.12}\n"),
    )
    .unwrap();
    daemon.spawn();
    // The retention pass runs as the daemon starts, and finds the caches over the lowered
    // budget: A goes then, logged, before any pod asks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.list_names().contains(&auto_a) {
        assert!(
            std::time::Instant::now() < deadline,
            "{auto_a} not evicted at start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Deleted auto-created image cache")
                && l.contains(&auto_a)
                && l.contains("max_cache_space_gib")),
        "{log}"
    );
    // Within the budget again, so the next pod's create deletes nothing more.
    let d1 = disk(&daemon, &delta, &[]);
    assert!(with_reason(&d1, "AutoCacheEvicted").is_empty(), "{d1:#}");
    let names = daemon.list_names();
    assert!(!names.contains(&auto_a), "{names:?}");
    let auto_d = d1["status"]["autoCreatedCache"]
        .as_str()
        .unwrap()
        .to_owned();
    for kept in [&auto_b, &auto_z, &"mine".to_owned(), &auto_d] {
        assert!(names.contains(kept), "{kept} kept: {names:?}");
    }
    wait_phase(&daemon, &auto_d, "Ready");

    // The disks cloned from the deleted cache keep working.
    for a in [&a1, &a2] {
        let now = disk_get(&daemon, id(a));
        assert_eq!(now["status"]["phase"], "Ready", "{now:#}");
        let mnt = PathBuf::from(now["status"]["mountpoint"].as_str().unwrap());
        let index = std::fs::read_to_string(mnt.join("index.json")).unwrap();
        assert!(index.contains(alpha.as_str()), "{index}");
        std::fs::write(mnt.join("still.txt"), id(a)).unwrap();
        assert_eq!(
            std::fs::read_to_string(mnt.join("still.txt")).unwrap(),
            id(a)
        );
    }

    for d in [&a1, &a2, &b1, &b2, &d1] {
        daemon.cli_ok(&["disk", "delete", id(d)]);
    }
    for name in [&auto_b, &auto_z, &auto_d, &"mine".to_owned()] {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    assert_no_leaks(&root);
}
