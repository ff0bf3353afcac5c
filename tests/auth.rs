//! Pulling from a registry that requires authentication (distribution's htpasswd basic auth):
//! credentials from an imagePullSecret work; no secret and wrong credentials each fail the
//! build with a message saying what to fix; and no password ever reaches the daemon's log,
//! the API's answers or the state database.

mod support;

use std::path::Path;
use std::process::Output;

use base64::Engine;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::LayerSpec;
use support::oci::{push_image, Compression, Image, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const USER: &str = "puller";
const PASSWORD: &str = "Pw-7f3a9c-right-horse";
const WRONG_PASSWORD: &str = "Pw-51d2e8-wrong-battery";

fn image() -> Image {
    let mut base = LayerSpec::new(Compression::Gzip);
    base.dir("etc");
    base.file("etc/os-release", "ID=private\n");
    let mut app = LayerSpec::new(Compression::Zstd);
    app.dir("srv");
    app.file("srv/secret-sauce.txt", "only for those who log in\n");
    Image::new(vec![base.to_layer(), app.to_layer()], ManifestFormat::Oci)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The cache Failed with every one of `needles` in its message and a Warning event of
/// `reason`.
fn assert_failed(daemon: &TestDaemon, name: &str, out: &Output, reason: &str, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "{name}: create --wait must fail\n--- daemon log ---\n{}",
        daemon.log()
    );
    let cache = daemon.get_json(name);
    let status = &cache["status"];
    assert_eq!(status["phase"], "Failed", "{name}: {cache:#}");
    let message = status["message"].as_str().unwrap_or_default();
    for n in needles {
        assert!(
            message.contains(n),
            "{name}: status.message should say {n:?}: {message}"
        );
    }
    assert!(
        stderr(out).contains(message),
        "{name}: the CLI prints why: {}",
        stderr(out)
    );
    let events = status["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == reason && e["message"] == message),
        "{name}: a Warning event {reason} with the message: {events:#?}"
    );
}

#[test]
fn pull_secrets_authenticate_and_bad_credentials_fail_without_leaking_them() {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let reg = TestRegistry::start_with_htpasswd(USER, PASSWORD);
    let addr = reg.addr();
    push_image(&addr, "private/app", "v1", &image(), reg.credentials());
    let reference = format!("{addr}/private/app:v1");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    daemon.write_pull_secret("default", "regcred", &addr, USER, PASSWORD);
    daemon.write_pull_secret("default", "wrongcred", &addr, USER, WRONG_PASSWORD);

    let cases = [
        ("with-secret", "  imagePullSecrets: [\"default:regcred\"]\n"),
        ("without-secret", ""),
        (
            "wrong-secret",
            "  imagePullSecrets: [\"default:wrongcred\"]\n",
        ),
        (
            "missing-secret",
            "  imagePullSecrets: [\"default:nosuch\"]\n",
        ),
    ];
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, extra)| {
                let daemon = &daemon;
                let yaml = cache_yaml(name, std::slice::from_ref(&reference), extra);
                s.spawn(move || daemon.create(&yaml, true))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The right credentials, from the pull secret: the cache builds.
    assert!(
        outs[0].status.success(),
        "with-secret must build: {}\n--- daemon log ---\n{}\n--- registry log ---\n{}",
        stderr(&outs[0]),
        daemon.log(),
        reg.log()
    );
    let ready = daemon.get_json("with-secret");
    assert_eq!(ready["status"]["phase"], "Ready", "{ready:#}");
    assert_eq!(
        ready["spec"]["imagePullSecrets"],
        serde_json::json!(["default:regcred"])
    );

    // No credentials at all: the registry's 401 becomes advice to add a pull secret.
    assert_failed(
        &daemon,
        "without-secret",
        &outs[1],
        "FailedPull",
        &["requires authentication", &addr, "imagePullSecret"],
    );
    // Credentials the registry refuses.
    assert_failed(
        &daemon,
        "wrong-secret",
        &outs[2],
        "FailedPull",
        &["refused the credentials", &addr],
    );
    // A secret that is not there is named, with where it was looked for.
    assert_failed(
        &daemon,
        "missing-secret",
        &outs[3],
        "FailedPullSecret",
        &["default:nosuch"],
    );

    // No password, nor the base64 `user:password` of the docker config, anywhere an operator
    // or a log collector can see.
    let b64 = |p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"));
    let secrets = [
        PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        b64(PASSWORD),
        b64(WRONG_PASSWORD),
    ];
    let mut seen = vec![
        ("daemon log", daemon.log()),
        ("get -o json", daemon.cli_ok(&["get", "-o", "json"])),
        ("get -o yaml", daemon.cli_ok(&["get", "-o", "yaml"])),
        ("get -o wide", daemon.cli_ok(&["get", "-o", "wide"])),
    ];
    for (name, _) in &cases {
        seen.push((
            "get NAME -o json",
            daemon.cli_ok(&["get", name, "-o", "json"]),
        ));
        seen.push(("describe", daemon.cli_ok(&["describe", name])));
    }
    for (what, text) in &seen {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{what} shows a credential:\n{text}"
            );
        }
    }
    daemon.stop();
    for file in ["state.db", "state.db-wal"] {
        let path = root.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for s in &secrets {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{} holds a credential",
                path.display()
            );
        }
    }
    assert_no_leaks(&root);
    assert_work_empty(&root);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_work_empty(root: &Path) {
    let left: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "work/ is not empty: {left:?}");
}
