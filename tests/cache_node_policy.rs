//! Caches that behave as ECI and EKS users expect, through the real daemon and registry:
//! - a refused `imc-enable-reuse` value is a 422 naming the annotation, and nothing is made;
//! - reuse asked for with no candidate says so in the cache's events;
//! - events name their object (`involvedObject`) and this node (`source`), one Pulled per image;
//! - `auto_match = false` on the node: a pod that asks for nothing gets an empty disk and no
//!   cache is built for it, while a pod that asks (`use-image-cache: auto`) gets a clone;
//! - `sandbox_image`: every cache also holds the pause image, in `status.images`, with its own
//!   Pulling and Pulled events.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const REUSE: &str = "k8s.aliyun.com/imc-enable-reuse";
const EKS: &str = "eks.tke.cloud.tencent.com/use-image-cache";

fn with_annotation(yaml: &str, name: &str, key: &str, value: &str) -> String {
    yaml.replace(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  annotations:\n    {key}: {value:?}\n"),
    )
}

fn events(object: &Value) -> &Vec<Value> {
    object["status"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {object:#}"))
}

fn with_reason<'a>(object: &'a Value, reason: &str) -> Vec<&'a Value> {
    events(object)
        .iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Every event names `kind`/`name` (and `uid` when given) and imagecached on this host.
fn assert_events_name(object: &Value, kind: &str, uid: Option<&str>) {
    let name = object["metadata"]["name"].as_str().unwrap();
    for e in events(object) {
        let o = &e["involvedObject"];
        assert_eq!(o["kind"], kind, "{e:#}");
        assert_eq!(o["name"], name, "{e:#}");
        if let Some(uid) = uid {
            assert_eq!(o["uid"], uid, "{e:#}");
        }
        assert_eq!(e["source"]["component"], "imagecached", "{e:#}");
        assert_eq!(e["source"]["host"], host_name().as_str(), "{e:#}");
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e:#}");
    }
}

fn restart_with(daemon: &mut TestDaemon, base: &str, extra: &str) {
    daemon.stop();
    std::fs::write(&daemon.config_path, format!("{base}{extra}")).unwrap();
    daemon.spawn();
}

fn pod_file(dir: &Path, name: &str, annotations: &[(&str, &str)], image: &str) -> PathBuf {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  uid: uid-{name}\n"
    );
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("    {k}: {v:?}\n"));
        }
    }
    y.push_str(&format!(
        "spec:\n  containers:\n  - name: c0\n    image: {image:?}\n"
    ));
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, y).unwrap();
    path
}

fn create_disk(daemon: &TestDaemon, pod: &Path) -> Value {
    daemon.disk_create(&["--pod", pod.to_str().unwrap()])
}

#[test]
fn reuse_values_node_policy_events_and_the_sandbox_image() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let refs = feature_set(3).push_all(&addr, None);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let base = std::fs::read_to_string(&daemon.config_path).unwrap();

    // A reuse value that is neither "true" nor "false" is refused like a bad pod annotation.
    let bad = with_annotation(&cache_yaml("bad", &refs[..1], ""), "bad", REUSE, "yes");
    let out = daemon.create(&bad, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad reuse value must be refused");
    assert!(err.contains("(HTTP 422)"), "{err}");
    assert!(err.contains(REUSE) && err.contains("\"yes\""), "{err}");
    assert!(err.contains("\"true\" or \"false\""), "{err}");
    assert!(!daemon.list_names().contains(&"bad".to_owned()));

    // Reuse asked for, nothing to reuse: the events say so, and the cache is built anyway.
    let lonely = with_annotation(
        &cache_yaml("lonely", &refs[2..3], ""),
        "lonely",
        REUSE,
        "true",
    );
    let out = daemon.create(&lonely, true);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.get_json("lonely");
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    let why = with_reason(&cache, "NoReuseCandidate");
    assert_eq!(why.len(), 1, "{cache:#}");
    assert!(
        why[0]["message"]
            .as_str()
            .unwrap()
            .contains("building from scratch"),
        "{cache:#}"
    );
    assert_events_name(&cache, "ImageCache", cache["metadata"]["uid"].as_str());
    assert_eq!(with_reason(&cache, "Pulled").len(), 1, "{cache:#}");

    // auto_match = false: a pod that asks for nothing is not matched and builds nothing.
    restart_with(&mut daemon, &base, "auto_match = false\n");
    let before = daemon.list_names();
    let plain = pod_file(scratch.path(), "plain", &[], &refs[2]);
    let disk = create_disk(&daemon, &plain);
    let s = &disk["status"];
    assert_eq!(s["phase"], "Ready", "{disk:#}");
    assert!(s["cacheId"].is_null(), "{disk:#}");
    assert!(s["autoCreatedCache"].is_null(), "{disk:#}");
    let cold = with_reason(&disk, "NoCacheMatched");
    assert!(
        cold.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("auto_match = false")),
        "{disk:#}"
    );
    assert_events_name(&disk, "Disk", None);
    assert_eq!(
        daemon.list_names(),
        before,
        "nothing is created for a pod that did not ask"
    );
    daemon.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);

    // A pod that asks gets the cache holding its image.
    let asks = pod_file(scratch.path(), "asks", &[(EKS, "auto")], &refs[2]);
    let disk = create_disk(&daemon, &asks);
    assert_eq!(
        disk["status"]["cacheId"], cache["status"]["imageCacheId"],
        "{disk:#}"
    );
    daemon.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);

    // sandbox_image: the pause image (bravo here) rides along in every new cache.
    restart_with(
        &mut daemon,
        &base,
        &format!("sandbox_image = {:?}\n", refs[1]),
    );
    let out = daemon.create(&cache_yaml("web", &refs[..1], ""), true);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let web = daemon.get_json("web");
    assert_eq!(web["status"]["phase"], "Ready", "{web:#}");
    let held: Vec<&str> = web["status"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(held.len(), 2, "{web:#}");
    assert!(
        held.contains(&refs[0].as_str()) && held.contains(&refs[1].as_str()),
        "{held:?}"
    );
    // The spec still says what the user asked for.
    assert_eq!(
        web["spec"]["images"].as_array().unwrap().len(),
        1,
        "{web:#}"
    );
    for reason in ["Pulling", "Pulled"] {
        let pulls = with_reason(&web, reason);
        assert_eq!(pulls.len(), 2, "one {reason} per image: {web:#}");
        assert!(
            pulls
                .iter()
                .any(|e| e["message"].as_str().unwrap().contains(refs[1].as_str())),
            "{reason} of the sandbox image: {web:#}"
        );
    }
    assert_events_name(&web, "ImageCache", web["metadata"]["uid"].as_str());
    // describe shows where the events came from.
    let described = daemon.cli_ok(&["describe", "web"]);
    assert!(described.contains("Pulled"), "{described}");

    for name in ["lonely", "web"] {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    assert_no_leaks(&root);
}
