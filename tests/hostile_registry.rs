//! Hostile registries and images through a real daemon (root, scratch XFS), served by the
//! test kit's misbehaving registry (tests/support/hostile_registry.rs): stalls and slow bodies,
//! 429 with Retry-After and 500s, redirects of blobs to another host, 403/404 on blobs,
//! manifests and configs of hundreds of MB, descriptors whose size is wrong, a config whose
//! diffID does not match its layer, symlink loops in a layer, and image references with
//! control characters or invalid UTF-8. Each ends in a clear error (or a safe result) on the
//! cache, nothing is frozen from bad input, and the daemon keeps serving and leaks nothing.
//!
//! Builds that share a daemon run at once, to keep the wall time small.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::LayerSpec;
use support::hostile_registry::{blob_path, manifest_path, HostileRegistry, Misbehaviour};
use support::oci::{sha256_digest, Compression, Image, ManifestFormat};
use support::scratch::{assert_no_leaks, ScratchXfs};

/// A small valid image whose content (so every digest) depends on `seed`.
fn tiny(seed: &str) -> Image {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("etc");
    l.file("etc/hostname", format!("{seed}\n"));
    Image::new(vec![l.to_layer()], ManifestFormat::Oci)
}

/// `image`'s manifest with `edit` applied to its JSON, served as `repo:tag` instead.
fn serve_edited_manifest(
    reg: &HostileRegistry,
    repo: &str,
    image: &Image,
    edit: impl Fn(&mut Value),
) {
    let mut m: Value = serde_json::from_slice(&image.manifest).unwrap();
    edit(&mut m);
    reg.put(
        &manifest_path(repo, "v1"),
        image.manifest_media_type(),
        serde_json::to_vec(&m).unwrap(),
    );
}

/// Restarts `daemon` with `line` added to its config.
fn reconfigure(daemon: &mut TestDaemon, line: &str) {
    daemon.stop();
    let mut config = std::fs::read_to_string(&daemon.config_path).unwrap();
    config.push_str(line);
    std::fs::write(&daemon.config_path, config).unwrap();
    daemon.spawn();
}

/// Creates every cache at once with `--wait`; each one's CLI output and how long it took.
fn build_all(daemon: &TestDaemon, cases: &[(&str, String, &str)]) -> Vec<(Output, Duration)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, image, extra)| {
                s.spawn(move || {
                    let start = Instant::now();
                    let yaml = cache_yaml(name, std::slice::from_ref(image), extra);
                    (daemon.create(&yaml, true), start.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_ready(daemon: &TestDaemon, name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{name} must build: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert_eq!(daemon.get_json(name)["status"]["phase"], "Ready");
}

/// The cache Failed, without a snapshot, its message (also a Warning event) saying every one
/// of `needles`. Returns the message.
fn assert_failed(daemon: &TestDaemon, name: &str, out: &Output, needles: &[&str]) -> String {
    assert!(
        !out.status.success(),
        "{name}: create --wait must fail: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        daemon.log()
    );
    let cache = daemon.get_json(name);
    let status = &cache["status"];
    assert_eq!(status["phase"], "Failed", "{name}: {cache:#}");
    assert!(
        status.get("snapshotDigest").is_none_or(Value::is_null),
        "{name}: {cache:#}"
    );
    let message = status["message"].as_str().unwrap_or_default().to_owned();
    eprintln!("{name}: {message}");
    for n in needles {
        assert!(
            message.contains(n),
            "{name}: status.message should say {n:?}: {message}"
        );
    }
    let warned = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "Warning" && e["message"] == message.as_str());
    assert!(
        warned,
        "{name}: a Warning event carries the cause: {cache:#}"
    );
    message
}

/// The daemon still answers, then stops leaving no loop device, mount or work directory.
fn stop_and_assert_clean(daemon: &mut TestDaemon, root: &Path) {
    daemon.cli_ok(&["get"]);
    daemon.stop();
    assert_no_leaks(root);
    let left: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "work/ is not empty: {left:?}");
}

#[test]
fn stalled_and_slow_registries_fail_within_the_deadline_naming_it() {
    // The default lets a registry that never answers fail a build within a minute.
    assert!(imagecache::registry::DEFAULT_REGISTRY_TIMEOUT <= Duration::from_secs(60));

    let scratch = ScratchXfs::new(8 << 30);
    let root = scratch.path().join("state");
    let reg = HostileRegistry::start();
    let addr = reg.addr().to_owned();
    let images = [
        "stall/manifest",
        "stall/blob",
        "stall/ratelimit",
        "slow/blob",
    ];
    for repo in images {
        reg.push(repo, "v1", &tiny(repo));
    }
    reg.rule(&manifest_path("stall/manifest", "v1"), Misbehaviour::Stall);
    let stalled_blob = tiny("stall/blob").layers[0].digest.clone();
    reg.rule(&blob_path("stall/blob", &stalled_blob), Misbehaviour::Stall);
    // A registry asking to come back in an hour, forever: the deadline still holds.
    reg.rule(
        &manifest_path("stall/ratelimit", "v1"),
        Misbehaviour::Status {
            status: 429,
            times: u32::MAX,
            retry_after: Some("3600"),
        },
    );
    // Slow but alive: a body that takes longer than the deadline, never silent for long.
    let slow = tiny("slow/blob").layers[0].clone();
    reg.rule(
        &blob_path("slow/blob", &slow.digest),
        Misbehaviour::Trickle {
            chunk: (slow.blob.len() / 20).max(1),
            pause: Duration::from_millis(250),
        },
    );

    let mut daemon = TestDaemon::start(&root, &[&addr]);
    reconfigure(&mut daemon, "registry_timeout_secs = 3\n");
    let cases: Vec<(&str, String, &str)> = vec![
        ("stalled-manifest", format!("{addr}/stall/manifest:v1"), ""),
        ("stalled-blob", format!("{addr}/stall/blob:v1"), ""),
        (
            "rate-limited-forever",
            format!("{addr}/stall/ratelimit:v1"),
            "",
        ),
        ("slow-blob", format!("{addr}/slow/blob:v1"), ""),
    ];
    let outs = build_all(&daemon, &cases);

    for (i, what) in [(0, "resolving"), (2, "resolving")] {
        let (name, image, _) = &cases[i];
        let image = image.as_str();
        assert_failed(
            &daemon,
            name,
            &outs[i].0,
            &[what, image, "within 3 s", "registry_timeout_secs"],
        );
        assert!(
            outs[i].1 < Duration::from_secs(20),
            "{name}: {:?}",
            outs[i].1
        );
    }
    assert_failed(
        &daemon,
        "stalled-blob",
        &outs[1].0,
        &[
            "opening blob",
            &stalled_blob,
            "within 3 s",
            "registry_timeout_secs",
        ],
    );
    assert!(outs[1].1 < Duration::from_secs(20), "{:?}", outs[1].1);
    // Retry-After: 3600 was not waited on past the deadline (the wait is capped at 10 s, and
    // the deadline ended it first).
    assert_eq!(
        reg.seen_at(&manifest_path("stall/ratelimit", "v1")).len(),
        1
    );

    assert_ready(&daemon, "slow-blob", &outs[3].0);
    assert!(
        outs[3].1 > Duration::from_secs(3),
        "the slow body outlasts the deadline, which bounds only the wait for an answer: {:?}",
        outs[3].1
    );
    stop_and_assert_clean(&mut daemon, &root);
}

#[test]
fn rate_limits_and_server_errors_are_retried_a_bounded_number_of_times() {
    let scratch = ScratchXfs::new(8 << 30);
    let root = scratch.path().join("state");
    let reg = HostileRegistry::start();
    let addr = reg.addr().to_owned();
    for repo in ["limited", "flaky", "broken", "broken-blob"] {
        reg.push(repo, "v1", &tiny(repo));
    }
    reg.rule(
        &manifest_path("limited", "v1"),
        Misbehaviour::Status {
            status: 429,
            times: 2,
            retry_after: Some("1"),
        },
    );
    let flaky_blob = tiny("flaky").layers[0].digest.clone();
    reg.rule(
        &blob_path("flaky", &flaky_blob),
        Misbehaviour::Status {
            status: 500,
            times: 2,
            retry_after: None,
        },
    );
    reg.rule(
        &manifest_path("broken", "v1"),
        Misbehaviour::Status {
            status: 500,
            times: u32::MAX,
            retry_after: None,
        },
    );
    let broken_blob = tiny("broken-blob").layers[0].digest.clone();
    reg.rule(
        &blob_path("broken-blob", &broken_blob),
        Misbehaviour::Status {
            status: 500,
            times: u32::MAX,
            retry_after: None,
        },
    );
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("rate-limited", format!("{addr}/limited:v1"), ""),
        ("flaky-blob", format!("{addr}/flaky:v1"), ""),
        ("always-500", format!("{addr}/broken:v1"), ""),
        ("always-500-blob", format!("{addr}/broken-blob:v1"), ""),
    ];
    let outs = build_all(&daemon, &cases);

    assert_ready(&daemon, "rate-limited", &outs[0].0);
    let asked = reg.seen_at(&manifest_path("limited", "v1"));
    assert_eq!(asked.len(), 3, "two 429s then the manifest: {asked:#?}");
    for pair in asked.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= Duration::from_millis(900),
            "Retry-After: 1 is honoured, waited {waited:?}"
        );
    }

    assert_ready(&daemon, "flaky-blob", &outs[1].0);
    assert_eq!(reg.seen_at(&blob_path("flaky", &flaky_blob)).len(), 3);

    assert_failed(
        &daemon,
        "always-500",
        &outs[2].0,
        &["HTTP 500", "broken:v1"],
    );
    // max_retries (3) retries after the first attempt, then no more.
    assert_eq!(reg.seen_at(&manifest_path("broken", "v1")).len(), 4);

    // A layer is retried at one level only: four tries of the whole transfer, each asking
    // for the blob once (not four times four).
    assert_failed(
        &daemon,
        "always-500-blob",
        &outs[3].0,
        &["HTTP 500", &broken_blob],
    );
    assert_eq!(
        reg.seen_at(&blob_path("broken-blob", &broken_blob)).len(),
        4
    );
    stop_and_assert_clean(&mut daemon, &root);
}

#[test]
fn hostile_manifests_and_blobs_fail_naming_what_was_wrong() {
    let scratch = ScratchXfs::new(16 << 30);
    let root = scratch.path().join("state");
    let reg = HostileRegistry::start();
    let addr = reg.addr().to_owned();
    // Behind Basic auth, with blobs in "object storage" on another port.
    let authed = HostileRegistry::start();
    authed.require_basic("puller", "s3cret-pw");
    let storage = HostileRegistry::start();
    let (auth_addr, storage_addr) = (authed.addr().to_owned(), storage.addr().to_owned());

    let redirected = tiny("redirected");
    authed.push("app", "v1", &redirected);
    let blob = &redirected.layers[0];
    storage.put(
        &blob_path("app", &blob.digest),
        "application/octet-stream",
        blob.blob.to_vec(),
    );
    authed.rule(
        &blob_path("app", &blob.digest),
        Misbehaviour::Redirect {
            base: format!("http://{storage_addr}"),
        },
    );

    // 403 and 404 on a blob.
    for repo in ["forbidden", "missing"] {
        reg.push(repo, "v1", &tiny(repo));
    }
    let forbidden_blob = tiny("forbidden").layers[0].digest.clone();
    reg.rule(
        &blob_path("forbidden", &forbidden_blob),
        Misbehaviour::Status {
            status: 403,
            times: u32::MAX,
            retry_after: None,
        },
    );
    let missing_blob = tiny("missing").layers[0].digest.clone();
    reg.rule(
        &blob_path("missing", &missing_blob),
        Misbehaviour::Status {
            status: 404,
            times: u32::MAX,
            retry_after: None,
        },
    );

    // Manifests of 400 MiB, announced and not.
    for (repo, announce) in [("huge/announced", true), ("huge/streamed", false)] {
        reg.rule(
            &manifest_path(repo, "v1"),
            Misbehaviour::Endless {
                bytes: 400 << 20,
                announce,
            },
        );
    }

    // A config descriptor of 300 MiB.
    let big_config = tiny("bigconfig");
    reg.push("bigconfig", "v1", &big_config);
    serve_edited_manifest(&reg, "bigconfig", &big_config, |m| {
        m["config"]["size"] = Value::from(300u64 << 20)
    });

    // Layer descriptors whose size is not the blob's.
    let mut wrong_sizes = Vec::new();
    for (repo, delta) in [("size/larger", 100i64), ("size/smaller", -10)] {
        let image = tiny(repo);
        reg.push(repo, "v1", &image);
        serve_edited_manifest(&reg, repo, &image, |m| {
            let size = m["layers"][0]["size"].as_i64().unwrap();
            m["layers"][0]["size"] = Value::from(size + delta);
        });
        wrong_sizes.push(image.layers[0].digest.clone());
    }

    // A config whose diffID is not its layer's.
    let mut layer = tiny("diffid").layers[0].clone();
    layer.diff_id = sha256_digest(b"some other layer");
    let wrong_diff_id = Image::new(vec![layer.clone()], ManifestFormat::Oci);
    reg.push("diffid", "v1", &wrong_diff_id);

    // Symlink loops: kept as links (a safe result); a write through one is refused.
    let mut loops = LayerSpec::new(Compression::Gzip);
    loops.symlink("a", "b");
    loops.symlink("b", "a");
    loops.symlink("self", "self");
    loops.symlink("deep/x", "../deep/x");
    loops.file("plain", "still here\n");
    reg.push(
        "loops",
        "v1",
        &Image::new(vec![loops.to_layer()], ManifestFormat::Oci),
    );
    let mut through = LayerSpec::new(Compression::Gzip);
    through.symlink("a", "b");
    through.symlink("b", "a");
    through.file("a/escape", "must not be written\n");
    reg.push(
        "loops/write",
        "v1",
        &Image::new(vec![through.to_layer()], ManifestFormat::Oci),
    );

    let mut daemon = TestDaemon::start(&root, &[&addr, &auth_addr, &storage_addr]);
    daemon.write_pull_secret("default", "regcred", &auth_addr, "puller", "s3cret-pw");
    let secret = "  imagePullSecrets: [\"default:regcred\"]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("redirected-blob", format!("{auth_addr}/app:v1"), secret),
        ("blob-403", format!("{addr}/forbidden:v1"), ""),
        ("blob-404", format!("{addr}/missing:v1"), ""),
        (
            "manifest-400mib-announced",
            format!("{addr}/huge/announced:v1"),
            "",
        ),
        (
            "manifest-400mib-streamed",
            format!("{addr}/huge/streamed:v1"),
            "",
        ),
        ("config-300mib", format!("{addr}/bigconfig:v1"), ""),
        ("size-larger", format!("{addr}/size/larger:v1"), ""),
        ("size-smaller", format!("{addr}/size/smaller:v1"), ""),
        ("diffid-mismatch", format!("{addr}/diffid:v1"), ""),
        ("symlink-loops", format!("{addr}/loops:v1"), ""),
        ("write-through-loop", format!("{addr}/loops/write:v1"), ""),
    ];
    let outs = build_all(&daemon, &cases);
    let out = |name: &str| &outs[cases.iter().position(|(n, _, _)| *n == name).unwrap()].0;

    // The redirect is followed, and our credentials stay with the registry they belong to.
    assert_ready(&daemon, "redirected-blob", out("redirected-blob"));
    let at_registry = authed.seen_at(&blob_path("app", &blob.digest));
    assert!(
        !at_registry.is_empty()
            && at_registry
                .iter()
                .all(|s| s.headers.contains_key("authorization")),
        "the registry itself gets the credentials: {at_registry:#?}"
    );
    let at_storage = storage.seen();
    assert!(!at_storage.is_empty(), "the redirect was followed");
    for s in &at_storage {
        assert!(
            !s.headers.contains_key("authorization") && !s.headers.contains_key("cookie"),
            "credentials sent to another host: {s:#?}"
        );
    }

    assert_failed(
        &daemon,
        "blob-403",
        out("blob-403"),
        &[&forbidden_blob, "forbidden:v1", "HTTP 403"],
    );
    assert_failed(
        &daemon,
        "blob-404",
        out("blob-404"),
        &[&missing_blob, "not found"],
    );

    assert_failed(
        &daemon,
        "manifest-400mib-announced",
        out("manifest-400mib-announced"),
        &["manifest", "419430400 bytes", "4194304-byte limit"],
    );
    assert_failed(
        &daemon,
        "manifest-400mib-streamed",
        out("manifest-400mib-streamed"),
        &["manifest", "more than 4194304 bytes", "4194304-byte limit"],
    );
    let sent = reg.endless_sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "the client stopped reading at the limit, not after {sent} bytes"
    );
    assert_failed(
        &daemon,
        "config-300mib",
        out("config-300mib"),
        &["config", "314572800 bytes", "16777216"],
    );
    assert!(
        reg.seen_at(&blob_path("bigconfig", &big_config.config_digest))
            .is_empty(),
        "a config over the limit is not fetched at all"
    );

    assert_failed(
        &daemon,
        "size-larger",
        out("size-larger"),
        &[&wrong_sizes[0], "truncated"],
    );
    assert_failed(
        &daemon,
        "size-smaller",
        out("size-smaller"),
        &[&wrong_sizes[1], "larger than"],
    );
    assert_failed(
        &daemon,
        "diffid-mismatch",
        out("diffid-mismatch"),
        &[&layer.digest, &layer.diff_id],
    );

    assert_ready(&daemon, "symlink-loops", out("symlink-loops"));
    assert_failed(
        &daemon,
        "write-through-loop",
        out("write-through-loop"),
        &["a/escape"],
    );

    // Nothing from any of it was frozen but the two good caches.
    let list: Value = serde_json::from_str(&daemon.cli_ok(&["get", "-o", "json"])).unwrap();
    let ready: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"]["phase"] == "Ready")
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(ready.len(), 2, "{ready:?}");
    stop_and_assert_clean(&mut daemon, &root);
}

#[test]
fn image_references_with_control_characters_or_bad_utf8_are_refused() {
    let scratch = ScratchXfs::new(4 << 30);
    let root = scratch.path().join("state");
    // No build may start, so no registry: the references point nowhere.
    let mut daemon = TestDaemon::start(&root, &[]);
    let bad = [
        "127.0.0.1:9/a\u{7}b:v1",
        "127.0.0.1:9/ab:v1\n",
        "127.0.0.1:9/a\tb:v1",
        "127.0.0.1:9/ab:v\u{0}1",
        "127.0.0.1:9/caf\u{e9}:v1",
        "127.0.0.1:9/ab:v\u{1b}[31m",
        "127.0.0.1:9/ab@sha256:\u{7f}",
    ];
    for (i, image) in bad.iter().enumerate() {
        let name = format!("bad-ref-{i}");
        let body = serde_json::json!({
            "apiVersion": "imagecache.io/v1",
            "kind": "ImageCache",
            "metadata": {"name": name},
            "spec": {"images": [image]},
        });
        let out = daemon.create_file(&format!("{name}.json"), &body.to_string(), false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{image:?} was accepted");
        assert!(err.contains("(HTTP 422)"), "{image:?}: {err}");
        assert!(err.contains("spec.images[0]"), "{image:?}: {err}");
    }
    // Invalid UTF-8 inside an image reference, sent as the raw bytes of a JSON request.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-utf8.json");
    let body = serde_json::json!({
        "apiVersion": "imagecache.io/v1",
        "kind": "ImageCache",
        "metadata": {"name": "bad-utf8"},
        "spec": {"images": ["127.0.0.1:9/abc:v1"]},
    });
    let mut body = body.to_string().into_bytes();
    let at = body.windows(3).position(|w| w == b"abc").unwrap();
    body[at + 1] = 0xff;
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&daemon.socket)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg("http://localhost/apis/imagecache.io/v1/imagecaches")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "400", "invalid UTF-8 in an image reference: {answer}");

    assert!(daemon.list_names().is_empty(), "nothing was created");
    stop_and_assert_clean(&mut daemon, &root);
}
