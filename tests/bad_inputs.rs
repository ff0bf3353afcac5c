//! Bad inputs through the CLI against a running daemon: manifests the API refuses (400/422
//! naming the field and what is allowed, and no cache created), then builds that must end in
//! phase Failed with `status.message` and a Warning event: unknown images, tampered and
//! truncated blobs, path-escape layers, images larger than the cache. A duplicate name is a
//! 409. Every test ends with the daemon stopped and nothing left attached, mounted or in work/.
//!
//! Cases that need the same registry and daemon share them and run their builds at once, to
//! keep the suite fast; each case is still asserted on its own.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::malicious::{escape_targets, malicious_cases, push_tampered, Tamper};
use support::gen::oversized::{oversized_image, GIB, OVERSIZED_PATH};
use support::gen::LayerSpec;
use support::oci::{push_image, Compression, Image, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The CLI failed and its error carries the API's HTTP code and every one of `needles`.
fn assert_refused(daemon: &TestDaemon, case: &str, out: &Output, code: u16, needles: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{case}: create must fail, it printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(&format!("(HTTP {code})")),
        "{case}: expected HTTP {code}: {err}\n--- daemon log ---\n{}",
        daemon.log()
    );
    for n in needles {
        assert!(err.contains(n), "{case}: the error should say {n:?}: {err}");
    }
}

/// `create --wait` failed because the cache Failed, and the cache says why in
/// `status.message` and in a Warning event, with no snapshot. Returns the message.
fn assert_build_failed(daemon: &TestDaemon, name: &str, out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{name}: create --wait must fail: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        daemon.log()
    );
    assert!(
        err.contains(&format!("imagecache {name} Failed: ")),
        "{name}: the CLI should report the failure: {err}"
    );
    let cache = daemon.get_json(name);
    let status = &cache["status"];
    assert_eq!(status["phase"], "Failed", "{name}: {cache:#}");
    assert!(
        status.get("snapshotDigest").is_none_or(Value::is_null),
        "{name}: a failed cache has no snapshot: {cache:#}"
    );
    assert!(
        status["expireDateTime"].is_string(),
        "{name}: a failed cache expires: {cache:#}"
    );
    let message = status["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: Failed without status.message: {cache:#}"))
        .to_owned();
    eprintln!("{name}: {message}");
    for n in needles {
        assert!(
            message.contains(n),
            "{name}: status.message should say {n:?}: {message}"
        );
    }
    assert!(
        err.contains(&message),
        "{name}: the CLI prints the cache's message: {err}"
    );
    let warnings: Vec<&Value> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert!(
        warnings.iter().any(|e| e["message"] == message.as_str()),
        "{name}: a Warning event carries the cause: {:#}",
        status["events"]
    );
    message
}

/// The daemon is stopped, then no loop device or mount is left under the state root (the
/// scratch filesystem's own mount is the test's, not the daemon's) and work/ is empty.
fn stop_and_assert_clean(daemon: &mut TestDaemon, root: &Path) {
    daemon.stop();
    assert_no_leaks(root);
    let left: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "work/ is not empty: {left:?}");
}

/// No Ready cache anywhere: whatever bad input came in, nothing was frozen from it.
fn assert_no_ready_cache(daemon: &TestDaemon) {
    let list: Value = serde_json::from_str(&daemon.cli_ok(&["get", "-o", "json"])).unwrap();
    for c in list["items"].as_array().unwrap() {
        assert_ne!(c["status"]["phase"], "Ready", "{c:#}");
    }
}

/// A small, valid image: the control that shows the daemon builds what it should.
fn tiny_image() -> Image {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("etc");
    l.file("etc/hostname", "tiny\n");
    l.dir("app");
    l.file("app/run.sh", "#!/bin/sh\necho hello\n").mode(0o755);
    Image::new(vec![l.to_layer()], ManifestFormat::Oci)
}

#[test]
fn malformed_and_invalid_manifests_are_refused_by_the_api() {
    let scratch = ScratchXfs::new(8 << 30);
    let root = scratch.path().join("state");
    // No build may start, so no registry is needed: the references point nowhere.
    let mut daemon = TestDaemon::start(&root, &[]);
    let img = "127.0.0.1:9/never/pulled:v1";
    let head = |name: &str| {
        format!("apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata:\n  name: {name}\n")
    };

    let out = daemon.create_file(
        "broken.yaml",
        &format!(
            "{}spec:\n  images: [\"{img}\"\n  imageCacheSize: 20\n",
            head("broken-yaml")
        ),
        false,
    );
    assert_refused(&daemon, "malformed YAML", &out, 400, &["malformed YAML"]);

    let out = daemon.create_file(
        "broken.json",
        &format!(
            r#"{{"apiVersion":"imagecache.io/v1","kind":"ImageCache","metadata":{{"name":"broken-json"}},"spec":{{"images":["{img}"]"#
        ),
        false,
    );
    assert_refused(&daemon, "malformed JSON", &out, 400, &["malformed JSON"]);

    let out = daemon.create_file(
        "typo-in-spec.yaml",
        &format!(
            "{}spec:\n  images: [\"{img}\"]\n  imageCacheSise: 25\n",
            head("typo-in-spec")
        ),
        false,
    );
    assert_refused(
        &daemon,
        "unknown spec field",
        &out,
        400,
        &["imageCacheSise"],
    );

    let out = daemon.create_file(
        "typo-at-top.yaml",
        &format!(
            "{}spex:\n  images: [\"{img}\"]\nspec:\n  images: [\"{img}\"]\n",
            head("typo-at-top")
        ),
        false,
    );
    assert_refused(&daemon, "unknown top-level field", &out, 400, &["spex"]);

    let out = daemon.create_file(
        "typo-in-metadata.yaml",
        &format!(
            "{}  labelz: {{a: b}}\nspec:\n  images: [\"{img}\"]\n",
            head("typo-in-metadata")
        ),
        false,
    );
    assert_refused(&daemon, "unknown metadata field", &out, 400, &["labelz"]);

    let out = daemon.create_file(
        "typo-in-spec.json",
        &format!(
            r#"{{"apiVersion":"imagecache.io/v1","kind":"ImageCache","metadata":{{"name":"typo-json"}},"spec":{{"images":["{img}"],"retentionDay":3}}}}"#
        ),
        false,
    );
    assert_refused(
        &daemon,
        "unknown field in JSON",
        &out,
        400,
        &["retentionDay"],
    );

    for size in [19, 32769] {
        let name = format!("size-{size}");
        let out = daemon.create(
            &cache_yaml(&name, &[img.into()], &format!("  imageCacheSize: {size}\n")),
            false,
        );
        assert_refused(
            &daemon,
            &name,
            &out,
            422,
            &[
                "spec.imageCacheSize",
                &format!("{size} GiB is out of range"),
                "20 to 32768",
            ],
        );
    }

    let out = daemon.create(
        &cache_yaml("retention-0", &[img.into()], "  retentionDays: 0\n"),
        false,
    );
    assert_refused(
        &daemon,
        "retentionDays 0",
        &out,
        422,
        &["spec.retentionDays", "0 is out of range", "1 to 65536"],
    );

    let out = daemon.create(
        &format!("{}spec:\n  images: []\n", head("no-images")),
        false,
    );
    assert_refused(
        &daemon,
        "empty images",
        &out,
        422,
        &["spec.images", "at least 1"],
    );

    let out = daemon.create(
        &format!("{}spec:\n  imageCacheSize: 20\n", head("images-missing")),
        false,
    );
    assert_refused(
        &daemon,
        "images left out",
        &out,
        422,
        &["spec.images", "at least 1"],
    );

    let out = daemon.create(&cache_yaml("bad-ref", &["Not A Ref!!".into()], ""), false);
    assert_refused(
        &daemon,
        "unparseable reference",
        &out,
        422,
        &["spec.images[0]", "Not A Ref!!"],
    );

    // Every problem of one manifest is reported at once, each naming its field.
    let out = daemon.create(
        &cache_yaml(
            "many-problems",
            &[img.into(), "nginx@sha256:0123".into()],
            "  imageCacheSize: 19\n  retentionDays: 65537\n",
        ),
        false,
    );
    assert_refused(
        &daemon,
        "several invalid fields",
        &out,
        422,
        &[
            "spec.images[1]",
            "spec.imageCacheSize",
            "spec.retentionDays",
            "65537 is out of range",
        ],
    );

    let names = daemon.list_names();
    assert!(
        names.is_empty(),
        "no refused manifest may leave a cache: {names:?}"
    );
    let table = daemon.cli_ok(&["get"]);
    assert!(
        !table.contains("size-19") && !table.contains("bad-ref"),
        "{table}"
    );
    let out = daemon.cli(&["get", "size-19"]);
    assert!(
        !out.status.success() && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
    stop_and_assert_clean(&mut daemon, &root);
}

#[test]
fn registry_and_blob_failures_end_in_failed_with_a_warning() {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let reg = TestRegistry::start();
    // The gzip tampering cases share one blob, so each needs a registry of its own.
    let reg_flip = TestRegistry::start();
    let addr = reg.addr();
    let flip_addr = reg_flip.addr();

    push_image(&addr, "good/tiny", "v1", &tiny_image(), None);
    let good = format!("{addr}/good/tiny:v1");
    let (_, content_digest) =
        push_tampered(&reg, "tampered/content", "v1", Tamper::FlipContentByte);
    let (_, truncated_digest) = push_tampered(&reg, "tampered/truncated", "v1", Tamper::Truncate);
    let (_, flipped_digest) =
        push_tampered(&reg_flip, "tampered/gzip", "v1", Tamper::FlipCompressedByte);

    let mut daemon = TestDaemon::start(&root, &[&addr, &flip_addr]);

    let cases: Vec<(&str, String)> = vec![
        ("unknown-repo", format!("{addr}/no/such-image:v1")),
        ("unknown-tag", format!("{addr}/good/tiny:no-such-tag")),
        ("content-mismatch", format!("{addr}/tampered/content:v1")),
        ("truncated-blob", format!("{addr}/tampered/truncated:v1")),
        ("gzip-mismatch", format!("{flip_addr}/tampered/gzip:v1")),
        ("good", good.clone()),
    ];
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, image)| {
                let daemon = &daemon;
                s.spawn(move || {
                    daemon.create(&cache_yaml(name, std::slice::from_ref(image), ""), true)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = |name: &str| &outs[cases.iter().position(|(n, _)| *n == name).unwrap()];

    // The control: a valid image from the same registry builds.
    assert!(
        out("good").status.success(),
        "the valid image must build: {}\n--- daemon log ---\n{}",
        stderr(out("good")),
        daemon.log()
    );
    let good_cache = daemon.get_json("good");
    assert_eq!(good_cache["status"]["phase"], "Ready", "{good_cache:#}");

    assert_build_failed(
        &daemon,
        "unknown-repo",
        out("unknown-repo"),
        &["no/such-image:v1", "not found in registry", &addr],
    );
    assert_build_failed(
        &daemon,
        "unknown-tag",
        out("unknown-tag"),
        &["good/tiny:no-such-tag", "not found in registry"],
    );
    assert_build_failed(
        &daemon,
        "content-mismatch",
        out("content-mismatch"),
        &["digest mismatch", &content_digest],
    );
    assert_build_failed(
        &daemon,
        "truncated-blob",
        out("truncated-blob"),
        &["truncated", &truncated_digest],
    );
    let msg = assert_build_failed(
        &daemon,
        "gzip-mismatch",
        out("gzip-mismatch"),
        &[&flipped_digest],
    );
    assert!(
        msg.contains("digest mismatch") || msg.contains("corrupt"),
        "a flipped gzip byte is reported as corrupt data: {msg}"
    );
    for name in ["unknown-repo", "unknown-tag"] {
        let cache = daemon.get_json(name);
        let reasons: Vec<&str> = cache["status"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert!(reasons.contains(&"FailedPull"), "{name}: {reasons:?}");
    }

    // A duplicate name is refused, and the cache already there is left as it was.
    let id = good_cache["status"]["imageCacheId"].clone();
    let out = daemon.create(
        &cache_yaml(
            "good",
            std::slice::from_ref(&good),
            "  imageCacheSize: 30\n",
        ),
        true,
    );
    assert_refused(
        &daemon,
        "duplicate name",
        &out,
        409,
        &["\"good\" already exists"],
    );
    let after = daemon.get_json("good");
    assert_eq!(after["status"]["imageCacheId"], id, "{after:#}");
    assert_eq!(after["spec"]["imageCacheSize"], 20, "{after:#}");
    // A failed cache holds its name as well.
    let out = daemon.create(
        &cache_yaml("unknown-repo", std::slice::from_ref(&good), ""),
        false,
    );
    assert_refused(
        &daemon,
        "duplicate of a failed cache",
        &out,
        409,
        &["already exists"],
    );
    let mut names = daemon.list_names();
    names.sort();
    let mut expected: Vec<String> = cases.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);

    // Only the control froze a snapshot.
    let snapshots: Vec<_> = std::fs::read_dir(root.join("snapshots/sha256"))
        .unwrap()
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    daemon.cli_ok(&["delete", "good"]);
    assert_no_ready_cache(&daemon);
    stop_and_assert_clean(&mut daemon, &root);
}

#[test]
fn malicious_layers_are_refused_naming_the_entry() {
    for target in escape_targets() {
        assert!(
            !Path::new(target).exists(),
            "{target} exists before the test: remove it, the test checks nothing escapes there"
        );
    }
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let reg = TestRegistry::start();
    let addr = reg.addr();
    let cases = malicious_cases();
    for c in &cases {
        push_image(
            &addr,
            &format!("malicious/{}", c.name),
            "v1",
            &c.image,
            None,
        );
    }
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                let daemon = &daemon;
                let yaml = cache_yaml(c.name, &[format!("{addr}/malicious/{}:v1", c.name)], "");
                s.spawn(move || daemon.create(&yaml, true))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (c, out) in cases.iter().zip(&outs) {
        // The offending entry is the last one of the bad layer, named as the tar spells it.
        let entry = c.layers[1].entries.last().unwrap().tar_name();
        let bad_digest = &c.image.layers[1].digest;
        let message = assert_build_failed(
            &daemon,
            c.name,
            out,
            &[&format!("`{entry}`"), bad_digest, "refused"],
        );
        let cache = daemon.get_json(c.name);
        let reasons: Vec<&str> = cache["status"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert!(
            reasons.contains(&"FailedUnpack"),
            "{} ({}): {reasons:?}: {message}",
            c.name,
            c.what
        );
    }
    for target in escape_targets() {
        assert!(
            !Path::new(target).exists(),
            "a malicious layer wrote {target} on the host"
        );
    }
    assert_no_ready_cache(&daemon);
    stop_and_assert_clean(&mut daemon, &root);
    // Nothing was frozen from a refused layer.
    assert_eq!(
        std::fs::read_dir(root.join("snapshots/sha256"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn images_larger_than_the_cache_fail_saying_how_much_is_needed() {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let reg = TestRegistry::start();
    let addr = reg.addr();
    // One file of 21 GiB (apparent size) against the default 20 GiB cache.
    let image = oversized_image(21 * GIB);
    push_image(&addr, "big/zeros", "v1", &image, None);
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    let out = daemon.create(
        &cache_yaml("too-big", &[format!("{addr}/big/zeros:v1")], ""),
        true,
    );
    let message = assert_build_failed(
        &daemon,
        "too-big",
        &out,
        &["do not fit in imageCacheSize 20 GiB", "21.0 GiB"],
    );
    let suggested: u64 = message
        .split("at least ")
        .nth(1)
        .and_then(|rest| rest.split(" GiB").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the message should say what size to use: {message}"));
    assert!(
        suggested > 21,
        "the suggested size must hold the 21 GiB file ({OVERSIZED_PATH}): {message}"
    );
    let cache = daemon.get_json("too-big");
    let reasons: Vec<&str> = cache["status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"InsufficientSize"), "{reasons:?}");
    // The cache image was sparse and went with the failed build: the host did not fill up.
    assert!(
        scratch_used_bytes(scratch.path()) < 4 * GIB,
        "the failed build left data behind"
    );
    stop_and_assert_clean(&mut daemon, &root);
}

fn scratch_used_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}
