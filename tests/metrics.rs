//! `GET /metrics` through a real daemon (root, loop devices, a registry on 127.0.0.1, a
//! scratch XFS state root), scraped around a build, a disk create, a failed build and a disk
//! delete: every counter, histogram and gauge the work touches moves by what was done.

mod support;

use std::path::Path;
use std::process::Command;

use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

/// One scrape: the exposition text and its content type.
fn scrape(socket: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-D", "-", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metrics_move_with_builds_disks_and_failures() {
    let scratch = ScratchXfs::new(32 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(1);
    let image = set.push_all(&addr, None).remove(0);
    let layers = set.images[0].artifact.host_image().layers.len() as f64;
    let compressed: u64 = set.images[0]
        .artifact
        .host_image()
        .layers
        .iter()
        .map(|l| l.blob.len() as u64)
        .sum();
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);

    let before = scrape(&daemon.socket);
    for series in [
        "imagecache_pulled_bytes_total",
        "imagecache_layers_unpacked_total",
        "imagecache_build_duration_seconds_count",
        "imagecache_disk_ready_seconds_count",
        "imagecache_snapshots",
        "imagecache_loop_devices",
    ] {
        assert!(before.contains(series), "{series} missing:\n{before}");
        assert_eq!(value(&before, series), 0.0, "{series}");
    }

    // A build: bytes and layers counted, one build timed, one Ready cache and snapshot.
    let out = daemon.create(&cache_yaml("m", std::slice::from_ref(&image), ""), true);
    assert!(out.status.success(), "{}", daemon.log());
    let built = scrape(&daemon.socket);
    assert!(
        value(&built, "imagecache_pulled_bytes_total") >= compressed as f64,
        "pulled {} of {compressed} bytes",
        value(&built, "imagecache_pulled_bytes_total")
    );
    assert_eq!(value(&built, "imagecache_layers_unpacked_total"), layers);
    assert_eq!(
        value(&built, "imagecache_build_duration_seconds_count"),
        1.0
    );
    assert!(value(&built, "imagecache_build_duration_seconds_sum") > 0.0);
    assert_eq!(value(&built, r#"imagecache_caches{phase="Ready"}"#), 1.0);
    assert_eq!(value(&built, "imagecache_snapshots"), 1.0);
    assert_eq!(
        value(
            &built,
            r#"imagecache_api_requests_total{route="/apis/imagecache.io/v1/imagecaches",method="POST",code="201"}"#
        ),
        1.0,
        "{built}"
    );

    // A disk: timed, counted by phase, and its loop device seen.
    let cache_id = daemon.cache_id("m");
    let made = daemon.cli_ok(&[
        "disk", "create", "--image", &image, "--cache", &cache_id, "-o", "json",
    ]);
    let disk: serde_json::Value = serde_json::from_str(&made).unwrap();
    let with_disk = scrape(&daemon.socket);
    assert_eq!(
        value(&with_disk, "imagecache_disk_ready_seconds_count"),
        1.0
    );
    assert_eq!(value(&with_disk, r#"imagecache_disks{phase="Ready"}"#), 1.0);
    assert_eq!(value(&with_disk, "imagecache_loop_devices"), 1.0);
    assert_eq!(
        value(
            &with_disk,
            r#"imagecache_api_requests_total{route="/apis/imagecache.io/v1/disks",method="POST",code="201"}"#
        ),
        1.0,
        "{with_disk}"
    );
    // A scrape counts itself too.
    assert!(
        value(
            &with_disk,
            r#"imagecache_api_requests_total{route="/metrics",method="GET",code="200"}"#
        ) >= 2.0
    );

    // A failed build is an error of its kind and a Failed cache; a missing object a 404.
    let out = daemon.create(
        &cache_yaml("broken", &[format!("{addr}/no/such:image")], ""),
        true,
    );
    assert!(!out.status.success());
    assert!(!daemon.cli(&["get", "nothing-here"]).status.success());
    let failed = scrape(&daemon.socket);
    assert_eq!(value(&failed, r#"imagecache_caches{phase="Failed"}"#), 1.0);
    let errors: f64 = failed
        .lines()
        .filter(|l| l.starts_with("imagecache_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(errors, 1.0, "{failed}");
    assert_eq!(
        value(
            &failed,
            r#"imagecache_api_requests_total{route="/apis/imagecache.io/v1/imagecaches/{name}",method="GET",code="404"}"#
        ),
        1.0,
        "{failed}"
    );

    // Deleting the disk gives its loop device back.
    daemon.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);
    let after = scrape(&daemon.socket);
    assert_eq!(value(&after, "imagecache_loop_devices"), 0.0);
    assert_eq!(value(&after, r#"imagecache_disks{phase="Ready"}"#), 0.0);
    daemon.stop();
    assert_no_leaks(&daemon.root);
}
