//! Hostile API bodies and names through a real daemon (root, scratch XFS): an enormous body,
//! a deeply nested one, names that are not DNS labels (control characters and invalid UTF-8
//! among them), and concurrent creates of one name. Each gets a clear refusal, nothing is
//! created from it, and the daemon keeps serving.

mod support;

use std::process::Command;

use support::daemon::TestDaemon;
use support::scratch::{assert_no_leaks, ScratchXfs};

const CACHES: &str = "/apis/imagecache.io/v1/imagecaches";

/// POSTs `body` (JSON) to `path`; the status code and the answer's body.
fn post(daemon: &TestDaemon, path: &str, body: &[u8]) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&daemon.socket)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), answer.to_owned())
}

fn cache_body(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "imagecache.io/v1",
        "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {"images": ["127.0.0.1:1/nothing:here"]},
    })
    .to_string()
}

fn names(daemon: &TestDaemon) -> Vec<String> {
    daemon.list_names()
}

#[test]
fn hostile_bodies_and_names_are_refused_clearly() {
    let scratch = ScratchXfs::new(4 << 30);
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), &[]);

    // An enormous body: refused without being read into a cache.
    let mut huge = cache_body("huge").into_bytes();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"padding\":\"");
    huge.extend(std::iter::repeat_n(b'x', 64 << 20));
    huge.extend_from_slice(b"\"}");
    let (code, answer) = post(&daemon, CACHES, &huge);
    assert!(code == 413 || code == 400, "{code}: {answer}");

    // Deeply nested: a parse error, not a stack overflow.
    let nested = format!("{}{}{}", "[".repeat(100_000), "1", "]".repeat(100_000));
    let (code, answer) = post(&daemon, CACHES, nested.as_bytes());
    assert_eq!(code, 400, "{answer}");
    let mut nested_spec = cache_body("nested");
    nested_spec.insert_str(
        nested_spec.len() - 1,
        &format!(
            ",\"x\":{}{}",
            "{\"a\":".repeat(10_000),
            "1".to_owned() + &"}".repeat(10_000)
        ),
    );
    let (code, answer) = post(&daemon, CACHES, nested_spec.as_bytes());
    assert_eq!(code, 400, "{answer}");

    // Names that are not DNS labels, control characters and invalid UTF-8 among them.
    for name in [
        "UPPER",
        "under_score",
        "-leading-dash",
        "a.",
        "tab\there",
        "new\nline",
        "nul\u{0}byte",
        "é",
        &"x".repeat(254),
    ] {
        let (code, answer) = post(&daemon, CACHES, cache_body(name).as_bytes());
        assert_eq!(code, 422, "{name:?}: {answer}");
        assert!(answer.contains("metadata.name"), "{name:?}: {answer}");
    }
    let mut bad_utf8 = cache_body("ok-name").into_bytes();
    let at = bad_utf8.windows(7).position(|w| w == b"ok-name").unwrap();
    bad_utf8[at] = 0xff;
    let (code, answer) = post(&daemon, CACHES, &bad_utf8);
    assert_eq!(code, 400, "{answer}");
    assert!(names(&daemon).is_empty(), "{:?}", names(&daemon));

    // Concurrent creates of one name: exactly one wins, the rest are told it exists.
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post(&daemon, CACHES, cache_body("same").as_bytes()).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 7, "{codes:?}");
    assert_eq!(names(&daemon), ["same"]);

    // Still serving.
    let health = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("http://localhost/healthz")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    daemon.stop();
    assert_no_leaks(&daemon.root);
}
