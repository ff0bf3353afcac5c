//! A cache built with one pod's pull secret is not served to pods without credentials of
//! their own (issue "Multi-tenant node safety", item 7), through the real daemon, CLI and
//! registries on 127.0.0.1:
//!
//! - pod A (secret of user alice) pulls a private image: an auto-created cache of it is built
//!   and records that the image needed credentials;
//! - pod B (no secret) asking for that image is refused the clone (`CredentialsRequired`),
//!   gets what an uncached pull gives it (the registry's refusal), and none of its files;
//! - pod C (another namespace, another user's valid secret) is served the clone, once the
//!   registry has said that user may read the manifest; the answer is remembered for
//!   `credential_check_ttl_secs` (served with the registry down) and no longer (refused then);
//! - a public image cached with a pod's secret is served to a pod with none, with its
//!   registry gone: no registry round trip.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::daemon::TestDaemon;
use support::gen::LayerSpec;
use support::oci::{push_image, Compression, Image, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const ALICE: (&str, &str) = ("alice", "Pw-alice-4b1e-copper-kettle");
const CAROL: (&str, &str) = ("carol", "Pw-carol-93d0-velvet-anchor");
const SECRET_FILE: &str = "srv/recipe.txt";
const SECRET_TEXT: &str = "only for those who log in\n";
const TTL_SECS: u64 = 4;

fn image(file: &str, text: &str) -> Image {
    let mut base = LayerSpec::new(Compression::Gzip);
    base.dir("etc");
    base.file("etc/os-release", "ID=generated\n");
    let mut app = LayerSpec::new(Compression::Gzip);
    app.dir("srv");
    app.file(file, text);
    Image::new(vec![base.to_layer(), app.to_layer()], ManifestFormat::Oci)
}

/// A Pod manifest in `namespace` with `secrets` as its imagePullSecrets.
fn pod_file(dir: &Path, name: &str, namespace: &str, secrets: &[&str], image: &str) -> PathBuf {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: uid-{name}\nspec:\n  containers:\n  - name: app\n    image: {image:?}\n"
    );
    if !secrets.is_empty() {
        y.push_str("  imagePullSecrets:\n");
        for s in secrets {
            y.push_str(&format!("  - name: {s}\n"));
        }
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, y).unwrap();
    path
}

fn disk_for(daemon: &TestDaemon, pod: &Path, wait: bool) -> Value {
    let pod = pod.to_str().unwrap();
    match wait {
        true => daemon.disk_create(&["--pod", pod]),
        false => daemon.disk_create(&["--pod", pod, "--no-wait"]),
    }
}

fn disk_get(daemon: &TestDaemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["disk", "get", id, "-o", "json"])).unwrap()
}

fn id(disk: &Value) -> &str {
    disk["metadata"]["name"].as_str().unwrap()
}

fn events(disk: &Value, reason: &str) -> Vec<String> {
    disk["status"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["reason"] == reason)
                .map(|e| e["message"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_disk(daemon: &TestDaemon, disk: &str, phase: &str) -> Value {
    for _ in 0..3000 {
        let d = disk_get(daemon, disk);
        if d["status"]["phase"] == phase {
            return d;
        }
        if matches!(d["status"]["phase"].as_str(), Some("Ready" | "Failed")) {
            panic!(
                "disk {disk} ended {} instead of {phase}: {d:#}",
                d["status"]["phase"]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "disk {disk} never reached {phase}: {:#}\n{}",
        disk_get(daemon, disk),
        daemon.log()
    );
}

/// Whether any regular file under the disk's mount holds `text` (symlinks not followed).
fn holds_text(disk: &Value, text: &str) -> bool {
    fn search(dir: &Path, text: &str) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            (kind.is_dir() && search(&e.path(), text))
                || (kind.is_file() && std::fs::read(e.path()).unwrap() == text.as_bytes())
        })
    }
    search(
        Path::new(disk["status"]["mountpoint"].as_str().unwrap()),
        text,
    )
}

/// A disk the cache `cache_id` was cloned for, with no refusal on it.
fn assert_served(disk: &Value, cache_id: &str) {
    assert_eq!(disk["status"]["cacheId"], cache_id, "{disk:#}");
    assert!(events(disk, "CredentialsRequired").is_empty(), "{disk:#}");
}

/// A disk that was refused the cache: a `CredentialsRequired` event whose message contains
/// each of `needles`, and no cache.
fn assert_refused(disk: &Value, needles: &[&str]) {
    assert!(disk["status"]["cacheId"].is_null(), "{disk:#}");
    let refusals = events(disk, "CredentialsRequired");
    assert_eq!(refusals.len(), 1, "{disk:#}");
    for n in needles {
        assert!(refusals[0].contains(n), "{n:?} not in {:?}", refusals[0]);
    }
}

#[test]
fn a_private_image_is_cloned_only_for_pods_whose_own_credentials_read_it() {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let private = TestRegistry::start_with_users(&[ALICE, CAROL]);
    let public = TestRegistry::start();
    let (priv_addr, pub_addr) = (private.addr(), public.addr());
    push_image(
        &priv_addr,
        "team/app",
        "v1",
        &image(SECRET_FILE, SECRET_TEXT),
        Some(ALICE),
    );
    push_image(
        &pub_addr,
        "lib/tool",
        "v1",
        &image("srv/tool.txt", "anyone's\n"),
        None,
    );
    let private_ref = format!("{priv_addr}/team/app:v1");
    let public_ref = format!("{pub_addr}/lib/tool:v1");

    let mut daemon = TestDaemon::start(&root, &[&priv_addr, &pub_addr]);
    let base = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.stop();
    std::fs::write(
        &daemon.config_path,
        format!("{base}credential_check_ttl_secs = {TTL_SECS}\n"),
    )
    .unwrap();
    daemon.spawn();
    daemon.write_pull_secret("shop", "alice-cred", &priv_addr, ALICE.0, ALICE.1);
    daemon.write_pull_secret("other", "carol-cred", &priv_addr, CAROL.0, CAROL.1);
    let pods = scratch.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();

    // Pod A: an uncached pull with its secret, and a cache of the image built with it.
    let pod_a = pod_file(&pods, "a", "shop", &["alice-cred"], &private_ref);
    let a = disk_for(&daemon, &pod_a, true);
    assert_eq!(a["status"]["phase"], "Ready", "{a:#}");
    assert!(holds_text(&a, SECRET_TEXT), "pod A's disk holds its image");
    let auto = a["status"]["autoCreatedCache"].as_str().unwrap().to_owned();
    let cache = daemon.wait_until(&auto, Duration::from_secs(300), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    assert_eq!(
        cache["status"]["images"][0]["credentialsRequired"], true,
        "{cache:#}"
    );
    let cache_id = cache["status"]["imageCacheId"].as_str().unwrap().to_owned();

    // Pod A again, naming the same secret: served without asking the registry.
    let mark = private.log_mark();
    let a2 = disk_for(&daemon, &pod_a, true);
    assert_served(&a2, &cache_id);
    assert_eq!(private.manifest_requests_since(mark), Vec::<String>::new());

    // Pod B, no secret: refused the clone; what an uncached pull gives it is the registry's
    // refusal, and nothing of the image.
    let pod_b = pod_file(&pods, "b", "intruder", &[], &private_ref);
    let b = disk_for(&daemon, &pod_b, false);
    assert_refused(
        &b,
        &[
            &private_ref,
            &auto,
            "does not let this pod's (anonymous) requests read it",
        ],
    );
    let b = wait_disk(&daemon, id(&b), "Failed");
    let message = b["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("requires authentication"), "{b:#}");
    assert!(
        !holds_text(&b, SECRET_TEXT),
        "pod B's disk holds none of the image: {b:#}"
    );
    // Pod B naming a secret it does not have in its namespace gets no further.
    let pod_b2 = pod_file(&pods, "b2", "intruder", &["alice-cred"], &private_ref);
    let b2 = disk_for(&daemon, &pod_b2, false);
    assert_refused(&b2, &["could not be read", "intruder:alice-cred"]);

    // Pod C, another user's valid secret: the registry says carol may read it; served.
    let pod_c = pod_file(&pods, "c", "other", &["carol-cred"], &private_ref);
    let c = disk_for(&daemon, &pod_c, true);
    assert_served(&c, &cache_id);
    assert!(holds_text(&c, SECRET_TEXT));

    // A public image, cached with pod A's secret (which covers only the private registry),
    // needed no credentials: pod B is served it even with its registry gone.
    let pod_pub_a = pod_file(&pods, "pub-a", "shop", &["alice-cred"], &public_ref);
    let pa = disk_for(&daemon, &pod_pub_a, true);
    let pub_auto = pa["status"]["autoCreatedCache"]
        .as_str()
        .unwrap()
        .to_owned();
    let pub_cache = daemon.wait_until(&pub_auto, Duration::from_secs(300), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(
        pub_cache["status"]["images"][0]["credentialsRequired"], false,
        "{pub_cache:#}"
    );
    drop(public);
    let pod_pub_b = pod_file(&pods, "pub-b", "intruder", &[], &public_ref);
    let pb = disk_for(&daemon, &pod_pub_b, true);
    assert_served(&pb, pub_cache["status"]["imageCacheId"].as_str().unwrap());

    // Remembered for the TTL: pod C is served with the private registry gone; after the TTL
    // its access cannot be checked, and it is refused (never served on a guess).
    drop(private);
    let c2 = disk_for(&daemon, &pod_c, true);
    assert_served(&c2, &cache_id);
    std::thread::sleep(Duration::from_secs(TTL_SECS + 1));
    let c3 = disk_for(&daemon, &pod_c, false);
    assert_refused(&c3, &["could not be checked"]);

    for disk in [&a, &a2, &b, &b2, &c, &pa, &pb, &c2, &c3] {
        daemon.cli_ok(&["disk", "delete", id(disk)]);
    }
    // No password in the log or the state database.
    let log = daemon.log();
    for secret in [ALICE.1, CAROL.1] {
        assert!(!log.contains(secret), "a password reached the daemon's log");
    }
    daemon.stop();
    let db = std::fs::read(root.join("state.db")).unwrap();
    for secret in [ALICE.1, CAROL.1] {
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    drop(daemon);
    assert_no_leaks(&root);
}
