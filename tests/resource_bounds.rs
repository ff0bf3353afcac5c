//! The node's resource bounds hold through the real daemon, registry and loop devices:
//! - at most `max_concurrent_builds` builds run; later caches are `Queued` (their create
//!   answers so, with a `Queued` event naming the bound), build one at a time in the order
//!   they were created, and a queued cache can be deleted; with `max_queued_builds` caches
//!   waiting, one more create is a 429 with `Retry-After` that records nothing;
//! - at `max_loop_devices`, a disk create is a 503 with `Retry-After` naming the bound, and
//!   leaves no disk, file, loop device or mount behind; a build waits `Queued` for a device
//!   and starts once a disk is deleted;
//! - without `max_cache_space_gib`, auto-created caches are kept within
//!   `max_cache_space_percent` of the state root's filesystem (a small scratch XFS here): over
//!   it, the least recently used is deleted.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::http::{http, Answer};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A TCP proxy to `upstream` that holds every connection, unanswered, until `open` is set;
/// returns its "127.0.0.1:PORT". Its threads end with the test process.
fn gated_proxy(upstream: String, open: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (upstream, open) = (upstream.clone(), open.clone());
            std::thread::spawn(move || {
                while !open.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let (mut server, mut client) = (server, client);
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

fn create_cache(daemon: &TestDaemon, name: &str, image: &str) -> Answer {
    http(
        &daemon.socket,
        "POST",
        "/apis/imagecache.io/v1/imagecaches",
        "application/yaml",
        &cache_yaml(name, &[image.to_owned()], ""),
    )
}

fn create_disk(daemon: &TestDaemon, image: &str) -> Answer {
    let body = serde_json::json!({
        "apiVersion": "imagecache.io/v1",
        "kind": "Disk",
        "spec": {"images": [image]},
    });
    http(
        &daemon.socket,
        "POST",
        "/apis/imagecache.io/v1/disks",
        "application/json",
        &body.to_string(),
    )
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or("")
}

fn events<'a>(object: &'a Value, reason: &str) -> Vec<&'a str> {
    object["status"]["events"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|e| e["reason"] == reason)
                .map(|e| e["message"].as_str().unwrap_or(""))
                .collect()
        })
        .unwrap_or_default()
}

/// Adds `lines` to the daemon's config and restarts it.
fn restart_with(daemon: &mut TestDaemon, lines: &str) {
    let base = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.stop();
    std::fs::write(&daemon.config_path, format!("{base}{lines}")).unwrap();
    daemon.spawn();
}

/// The loop devices whose backing file lies under `root`, as `losetup -a` shows them.
fn loops_under(root: &Path) -> usize {
    support::oracle::held_under(root).0.len()
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    support::oracle::held_under(root).1
}

fn disk_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("disks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "img"))
        })
        .count()
}

#[test]
fn builds_beyond_the_limit_wait_queued_in_order_and_a_full_queue_answers_429() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let refs = feature_set(5).push_all(&registry.addr(), None);
    // The first cache's image comes through a gate held shut until the others are looked
    // at: its build stays in Pulling, whatever the machine's speed.
    let open = Arc::new(AtomicBool::new(false));
    let gate = gated_proxy(registry.addr(), open.clone());
    let held = refs[0].replace(&registry.addr(), &gate);
    let features = [&refs[1], &refs[2], &refs[0]];
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&registry.addr(), &gate]);
    restart_with(
        &mut daemon,
        "max_concurrent_builds = 1\nmax_queued_builds = 2\n",
    );

    let first = create_cache(&daemon, "first", &held);
    assert_eq!(first.code, 201, "{}", first.body);
    assert_eq!(phase(&first.json()), "Pending", "{}", first.body);
    let second = create_cache(&daemon, "second", features[0]);
    assert_eq!(second.code, 201, "{}", second.body);
    let second = second.json();
    assert_eq!(phase(&second), "Queued", "{second:#}");
    let said = events(&second, "Queued");
    assert!(
        said.len() == 1
            && said[0].contains("number 1 in the build queue")
            && said[0].contains("max_concurrent_builds = 1"),
        "{second:#}"
    );
    let third = create_cache(&daemon, "third", features[1]).json();
    assert_eq!(phase(&third), "Queued", "{third:#}");
    assert!(
        events(&third, "Queued")[0].contains("number 2 in the build queue")
            && events(&third, "Queued")[0].contains("max_concurrent_builds = 1"),
        "{third:#}"
    );

    // Two wait: the queue is full, and one more is refused, recording nothing.
    let refused = create_cache(&daemon, "fourth", features[2]);
    assert_eq!(refused.code, 429, "{}", refused.body);
    assert_eq!(
        refused.headers.get("retry-after").map(String::as_str),
        Some("30"),
        "{:?}",
        refused.headers
    );
    let status = refused.json();
    assert_eq!(status["reason"], "TooManyRequests", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("max_queued_builds = 2") && message.contains("nothing was recorded"),
        "{message}"
    );
    assert!(!daemon.list_names().contains(&"fourth".to_owned()));
    let out = daemon.cli(&["get", "fourth"]);
    assert!(!out.status.success(), "fourth was recorded");

    // While the first builds, the others still wait; a waiting one can be deleted, and its
    // place in the queue is free again.
    assert_eq!(phase(&daemon.get_json("first")), "Pulling");
    assert_eq!(phase(&daemon.get_json("third")), "Queued");
    daemon.cli_ok(&["delete", "third"]);
    assert!(!daemon.list_names().contains(&"third".to_owned()));
    let again = create_cache(&daemon, "again", features[2]);
    assert_eq!(again.code, 201, "{}", again.body);
    assert_eq!(phase(&again.json()), "Queued", "{}", again.body);

    // Open the gate: each builds in turn, never two at once, in the order created.
    open.store(true, Ordering::Relaxed);
    let names = ["first", "second", "again"];
    let mut ready: Vec<&str> = Vec::new();
    let deadline = Instant::now() + BUILD_TIMEOUT;
    while ready.len() < names.len() {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        // One listing, so every phase is read at the same moment: reading the caches one by
        // one could see one still Freezing and the next already dequeued after it.
        let list = daemon.list();
        let mut building = Vec::new();
        for name in names {
            let cache = list
                .iter()
                .find(|c| c["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{name} is not listed: {list:#?}"));
            match phase(cache) {
                "Ready" if !ready.contains(&name) => ready.push(name),
                "Pending" | "Pulling" | "Freezing" => building.push(name),
                "Failed" => panic!("{name} failed: {cache:#}\n{}", daemon.log()),
                _ => {}
            }
        }
        assert!(building.len() <= 1, "built at once: {building:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ready, names, "Ready in the order created");
    let second = daemon.get_json("second");
    assert_eq!(events(&second, "Dequeued").len(), 1, "{second:#}");

    for name in names {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    assert_no_leaks(&root);
}

#[test]
fn at_the_loop_device_ceiling_a_disk_create_answers_503_and_a_build_waits() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let refs = feature_set(6).push_all(&addr, None);
    let (alpha, bravo) = (&refs[0], &refs[1]);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    restart_with(&mut daemon, "max_loop_devices = 2\n");
    let out = daemon.create(&cache_yaml("base", std::slice::from_ref(alpha), ""), true);
    assert!(out.status.success(), "{}", daemon.log());

    let mut disks = Vec::new();
    for _ in 0..2 {
        let made = create_disk(&daemon, alpha);
        assert_eq!(made.code, 201, "{}", made.body);
        disks.push(made.json()["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(loops_under(&root), 2);
    let mounts = mounts_under(&root);

    let refused = create_disk(&daemon, alpha);
    assert_eq!(refused.code, 503, "{}", refused.body);
    assert_eq!(
        refused.headers.get("retry-after").map(String::as_str),
        Some("10"),
        "{:?}",
        refused.headers
    );
    let status = refused.json();
    assert_eq!(status["reason"], "ServiceUnavailable", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("max_loop_devices = 2") && message.contains("no disk was created"),
        "{message}"
    );
    // Nothing behind: no record, no disk file, no loop device, no mount.
    let listed: Value =
        serde_json::from_str(&daemon.cli_ok(&["disk", "get", "-o", "json"])).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed:#}");
    assert_eq!(disk_files(&root), 2);
    assert_eq!(loops_under(&root), 2);
    assert_eq!(mounts_under(&root), mounts);

    // A build needs a device too: it waits, saying why, and starts once a disk goes.
    let later = create_cache(&daemon, "later", bravo);
    assert_eq!(later.code, 201, "{}", later.body);
    let later = later.json();
    assert_eq!(phase(&later), "Queued", "{later:#}");
    assert!(
        events(&later, "Queued")[0].contains("max_loop_devices = 2"),
        "{later:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        phase(&daemon.get_json("later")),
        "Queued",
        "started past the ceiling"
    );
    daemon.cli_ok(&["disk", "delete", &disks.remove(0)]);
    let built = daemon.wait_until("later", BUILD_TIMEOUT, |c| {
        matches!(phase(c), "Ready" | "Failed")
    });
    assert_eq!(phase(&built), "Ready", "{built:#}");
    let made = create_disk(&daemon, alpha);
    assert_eq!(made.code, 201, "{}", made.body);
    disks.push(made.json()["metadata"]["name"].as_str().unwrap().to_owned());

    for disk in &disks {
        daemon.cli_ok(&["disk", "delete", disk]);
    }
    for name in ["base", "later"] {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    assert_no_leaks(&root);
}

fn data_bytes(cache: &Value) -> u64 {
    cache["status"]["dataSizeBytes"].as_u64().unwrap()
}

fn auto_cache_of(daemon: &TestDaemon, image: &str) -> (String, String) {
    let out = daemon.cli_ok(&["disk", "create", "--image", image, "-o", "json"]);
    let disk: Value = serde_json::from_str(&out).unwrap();
    let cache = disk["status"]["autoCreatedCache"]
        .as_str()
        .unwrap_or_else(|| panic!("no cache auto-created: {disk:#}"))
        .to_owned();
    let built = daemon.wait_until(&cache, BUILD_TIMEOUT, |c| {
        matches!(phase(c), "Ready" | "Failed")
    });
    assert_eq!(phase(&built), "Ready", "{built:#}");
    (disk["metadata"]["name"].as_str().unwrap().to_owned(), cache)
}

#[test]
fn without_max_cache_space_gib_auto_created_caches_stay_within_a_share_of_the_state_filesystem() {
    // Small, so a share of a few percent is the size of a cache or two.
    let scratch = ScratchXfs::new(512 << 20);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let refs = feature_set(7).push_all(&addr, None);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    // Under the default share (half the filesystem) both stay.
    let (disk_a, auto_a) = auto_cache_of(&daemon, &refs[0]);
    std::thread::sleep(Duration::from_millis(1100));
    let (disk_b, auto_b) = auto_cache_of(&daemon, &refs[1]);
    let names = daemon.list_names();
    assert!(
        names.contains(&auto_a) && names.contains(&auto_b),
        "{names:?}"
    );
    let (a, b) = (
        data_bytes(&daemon.get_json(&auto_a)),
        data_bytes(&daemon.get_json(&auto_b)),
    );

    // The smallest whole percentage that holds the larger cache but not both.
    let total = {
        let st = rustix::fs::statvfs(&root).unwrap();
        st.f_blocks * st.f_frsize
    };
    let percent = (a.max(b) * 100).div_ceil(total);
    let share = total * percent / 100;
    eprintln!("caches of {a} and {b} bytes on {total}: {percent}% is {share} bytes");
    assert!(
        percent >= 1 && share < a + b,
        "the caches ({a}, {b} bytes) are too small against {total} bytes for a whole percentage to tell one from two"
    );
    restart_with(
        &mut daemon,
        &format!("max_cache_space_percent = {percent}\n"),
    );
    // The retention pass as the daemon starts finds them over the share: A, used least
    // recently, goes, and only A.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.list_names().contains(&auto_a) {
        assert!(Instant::now() < deadline, "{auto_a} not evicted at start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.list_names().contains(&auto_b));
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Deleted auto-created image cache")
                && l.contains(&auto_a)
                && l.contains(&format!("max_cache_space_percent = {percent}"))),
        "{log}"
    );

    for disk in [&disk_a, &disk_b] {
        daemon.cli_ok(&["disk", "delete", disk]);
    }
    daemon.cli_ok(&["delete", &auto_b]);
    daemon.stop();
    assert_no_leaks(&root);
}
