//! The matching policy against real caches, through the CLI and a running daemon (the rules
//! themselves are table-tested in src/matching.rs; here they meet real builds):
//!
//! - an explicit cache that is not Ready (Failed; still Pulling behind a slow registry proxy)
//!   is an error naming its phase, by `--cache` and by annotation;
//! - degree, then imageCacheSize: three Ready caches of 1, 2 and 3 feature images;
//! - `imc-perfect-match` and `imc-match-count-request`, and perfect match winning over count;
//! - digest-pinned references: the manifest digest and, for an index, the index digest
//!   match; another image's digest under the same repository does not.
//!
//! Cold disks here turn automatic creation off (`eci-auto-imc: "false"` with
//! `eci-image-cache: "true"`), so no background build outlives a check.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::oci::push;
use support::proxy::throttled_proxy;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const ECI_IMC_ID: &str = "k8s.aliyun.com/eci-imc-id";
const PERFECT: &str = "k8s.aliyun.com/imc-perfect-match";
const COUNT: &str = "k8s.aliyun.com/imc-match-count-request";
/// Matching on, automatic creation off.
const NO_AUTO_CREATE: [&str; 4] = [
    "--annotation",
    "k8s.aliyun.com/eci-auto-imc=false",
    "--annotation",
    "k8s.aliyun.com/eci-image-cache=true",
];

fn build(daemon: &TestDaemon, name: &str, images: &[String], size: u32) -> String {
    daemon.ready_cache_id(name, images, &format!("  imageCacheSize: {size}\n"))
}

/// Creates a disk with `args`, returns it, and deletes it.
fn disk_for(daemon: &TestDaemon, args: &[&str]) -> Value {
    let disk = daemon.disk_create(args);
    assert_eq!(disk["status"]["phase"], "Ready", "{disk:#}");
    daemon.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);
    disk
}

fn cache_of(disk: &Value) -> Option<&str> {
    disk["status"]["cacheId"].as_str()
}

fn finish(mut daemon: TestDaemon, root: &std::path::Path) {
    let list: Value = serde_json::from_str(&daemon.cli_ok(&["disk", "get", "-o", "json"])).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list:#}");
    daemon.stop();
    assert_no_leaks(root);
}

#[test]
fn degree_then_size_perfect_match_count_and_digests_pick_the_cache() {
    let scratch = ScratchXfs::new(128 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(5);
    let refs = set.push_all(&addr, None);
    let (alpha, bravo, charlie) = (&refs[0], &refs[1], &refs[2]);
    // An image no cache holds (alpha's content under another name), and bravo's manifest in
    // alpha's repository, so a digest of the wrong image is pullable there.
    let delta = format!("{addr}/features/delta:v1");
    push(
        &addr,
        "features/delta",
        "v1",
        &set.get("alpha").artifact,
        None,
    );
    let bravo_digest = push(
        &addr,
        "features/alpha",
        "b",
        &set.get("bravo").artifact,
        None,
    );
    let root = scratch.path().join("state");
    let daemon = TestDaemon::start(&root, &[&addr]);

    let a20 = build(&daemon, "a20", &refs[..1], 20);
    let ab30 = build(&daemon, "ab30", &refs[..2], 30);
    let abc40 = build(&daemon, "abc40", &refs[..3], 40);

    // Degree first, then the smaller imageCacheSize.
    let d = disk_for(&daemon, &["--image", alpha]);
    assert_eq!(cache_of(&d), Some(a20.as_str()), "{d:#}");
    assert_eq!(d["status"]["sizeGiB"], 20);
    let d = disk_for(&daemon, &["--image", alpha, "--image", bravo]);
    assert_eq!(cache_of(&d), Some(ab30.as_str()), "{d:#}");
    assert_eq!(
        d["status"]["sizeGiB"], 30,
        "a disk defaults to its cache's size"
    );
    let d = disk_for(
        &daemon,
        &["--image", bravo, "--image", charlie, "--image", alpha],
    );
    assert_eq!(cache_of(&d), Some(abc40.as_str()), "{d:#}");

    // Without requirements a partial match is cloned and the rest pulled.
    let three = [
        "--image",
        alpha,
        "--image",
        bravo,
        "--image",
        delta.as_str(),
    ];
    let d = disk_for(&daemon, &three);
    assert_eq!(cache_of(&d), Some(ab30.as_str()), "{d:#}");
    assert_eq!(d["status"]["pulledImages"], serde_json::json!([delta]));

    // Perfect match: nothing holds all three, so an empty disk ...
    let with = |extra: &[&str]| -> Value {
        let mut args: Vec<&str> = three.to_vec();
        args.extend_from_slice(&NO_AUTO_CREATE);
        args.extend_from_slice(extra);
        disk_for(&daemon, &args)
    };
    let perfect = format!("{PERFECT}=true");
    let d = with(&["--annotation", &perfect]);
    assert_eq!(cache_of(&d), None, "{d:#}");
    assert!(d["status"]["autoCreatedCache"].is_null(), "{d:#}");
    assert_eq!(d["status"]["pulledImages"].as_array().unwrap().len(), 3);
    // ... and from a Pod's annotations too; a pod whose images one cache holds gets it.
    let pod = scratch.path().join("perfect.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    {PERFECT}: \"true\"\nspec:\n  containers:\n  - name: a\n    image: {alpha}\n  - name: c\n    image: {charlie}\n"
        ),
    )
    .unwrap();
    let d = disk_for(&daemon, &["--pod", pod.to_str().unwrap()]);
    assert_eq!(cache_of(&d), Some(abc40.as_str()), "{d:#}");

    // Match count: 2 of 3 is enough for ab30; 3 of 3 is not available.
    let d = with(&["--annotation", &format!("{COUNT}=2")]);
    assert_eq!(cache_of(&d), Some(ab30.as_str()), "{d:#}");
    let d = with(&["--annotation", &format!("{COUNT}=3")]);
    assert_eq!(cache_of(&d), None, "{d:#}");
    // Perfect match wins over a count that would be met.
    let d = with(&[
        "--annotation",
        &perfect,
        "--annotation",
        &format!("{COUNT}=1"),
    ]);
    assert_eq!(cache_of(&d), None, "{d:#}");
    // A bad count is refused, naming the annotation.
    let out = daemon.cli(&[
        "disk",
        "create",
        "--image",
        alpha,
        "--annotation",
        &format!("{COUNT}=zero"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(COUNT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Digests: alpha's manifest digest, with or without a (stale) tag, matches alpha's cache.
    let alpha_digest = set.get("alpha").artifact.digest().to_owned();
    let repo_alpha = format!("{addr}/features/alpha");
    let d = disk_for(
        &daemon,
        &["--image", &format!("{repo_alpha}@{alpha_digest}")],
    );
    assert_eq!(cache_of(&d), Some(a20.as_str()), "{d:#}");
    let d = disk_for(
        &daemon,
        &["--image", &format!("{repo_alpha}:old@{alpha_digest}")],
    );
    assert_eq!(cache_of(&d), Some(a20.as_str()), "{d:#}");
    // Another image's digest in the same repository matches nothing.
    let mut args = vec!["--image".to_owned(), format!("{repo_alpha}@{bravo_digest}")];
    args.extend(NO_AUTO_CREATE.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = disk_for(&daemon, &args);
    assert_eq!(cache_of(&d), None, "{d:#}");
    assert_eq!(d["status"]["pulledImages"].as_array().unwrap().len(), 1);
    // charlie is an index: its digest and its host manifest's digest both match abc40.
    let charlie_art = &set.get("charlie").artifact;
    let repo_charlie = format!("{addr}/features/charlie");
    for digest in [
        charlie_art.digest(),
        charlie_art.host_image().manifest_digest.as_str(),
    ] {
        let d = disk_for(&daemon, &["--image", &format!("{repo_charlie}@{digest}")]);
        assert_eq!(cache_of(&d), Some(abc40.as_str()), "{digest}: {d:#}");
        assert!(d["status"]["missingImages"].as_array().unwrap().is_empty());
    }

    finish(daemon, &root);
}

fn refused(daemon: &TestDaemon, args: &[&str], phase: &str) {
    let mut all = vec!["disk", "create"];
    all.extend_from_slice(args);
    let out = daemon.cli(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(&format!("is {phase}, not Ready")) && stderr.contains("HTTP 409"),
        "{args:?}: {stderr}"
    );
}

#[test]
fn an_explicit_cache_that_is_not_ready_is_an_error() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(6);
    let refs = set.push_all(&addr, None);
    let rate = Arc::new(AtomicU64::new(20_000));
    let slow = throttled_proxy(addr.clone(), rate.clone());
    let root = scratch.path().join("state");
    let daemon = TestDaemon::start(&root, &[&addr, &slow]);

    // Failed: the image does not exist.
    let out = daemon.create(
        &cache_yaml("broken", &[format!("{addr}/features/nothing:v1")], ""),
        true,
    );
    assert!(!out.status.success());
    let broken = daemon.get_json("broken");
    assert_eq!(broken["status"]["phase"], "Failed", "{broken:#}");
    let broken_id = broken["status"]["imageCacheId"].as_str().unwrap();
    refused(
        &daemon,
        &["--image", &refs[0], "--cache", "broken"],
        "Failed",
    );
    refused(
        &daemon,
        &[
            "--image",
            &refs[0],
            "--annotation",
            &format!("{ECI_IMC_ID}={broken_id}"),
        ],
        "Failed",
    );

    // Pulling: the same images through a proxy passing 20 kB/s.
    let slow_ref = format!("{slow}/features/alpha:v1");
    let out = daemon.create(
        &cache_yaml("slow", std::slice::from_ref(&slow_ref), ""),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = daemon.wait_until("slow", Duration::from_secs(60), |c| {
        c["status"]["phase"] != "Pending"
    });
    assert_eq!(cache["status"]["phase"], "Pulling", "{cache:#}");
    let slow_id = cache["status"]["imageCacheId"].as_str().unwrap().to_owned();
    refused(
        &daemon,
        &["--image", &slow_ref, "--cache", "slow"],
        "Pulling",
    );
    refused(
        &daemon,
        &[
            "--image",
            &slow_ref,
            "--annotation",
            &format!("eks.tke.cloud.tencent.com/use-image-cache={slow_id}"),
        ],
        "Pulling",
    );
    // Automatic matching does not pick a cache that is not Ready either.
    let started = Instant::now();
    let mut args = vec!["--image", slow_ref.as_str(), "-o", "json", "--no-wait"];
    args.extend_from_slice(&NO_AUTO_CREATE);
    let mut all = vec!["disk", "create"];
    all.extend_from_slice(&args);
    let d: Value = serde_json::from_str(&daemon.cli_ok(&all)).unwrap();
    assert_eq!(cache_of(&d), None, "{d:#}");
    // Let it all through: the cache becomes Ready, and then it is cloned.
    rate.store(1 << 40, Ordering::Relaxed);
    let id = d["metadata"]["name"].as_str().unwrap().to_owned();
    daemon.cli_ok(&["disk", "delete", &id]);
    let cache = daemon.wait_until("slow", Duration::from_secs(300), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    let d = disk_for(&daemon, &["--image", &slow_ref, "--cache", "slow"]);
    assert_eq!(cache_of(&d), Some(slow_id.as_str()));
    eprintln!("slow cache checks took {:?}", started.elapsed());

    finish(daemon, &root);
}
