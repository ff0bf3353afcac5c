//! ImageCaches as Alibaba ECI and Tencent EKS users expect them, through the real daemon: each
//! keeps the apiVersion it was written with and is served under every group's path (one set of
//! names); `get -o yaml` and a `kubectl get -o yaml` of an ECI cache are accepted back by
//! `create -f`, their read-only metadata and status dropped; objects carry `resourceVersion`
//! and `generation`, lists their `resourceVersion`; pull secrets may be `namespace/name`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::TestDaemon;
use support::gen::LayerSpec;
use support::oci::{push_image, Compression, Image, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const GROUPS: [&str; 3] = [
    "imagecache.io/v1",
    "eci.alibabacloud.com/v1",
    "eks.cloud.tencent.com/v1",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(socket: &Path) -> imagecache::cli::Client {
    imagecache::cli::Client::new(socket)
}

/// GET `path` as JSON; Err carries the API's message for a non-2xx answer.
fn api_get(socket: &Path, path: &str) -> Result<serde_json::Value, String> {
    runtime()
        .block_on(client(socket).get(path))
        .map(|a| serde_json::from_slice(&a.body).unwrap())
        .map_err(|e| format!("{e:#}"))
}

fn api_post_yaml(socket: &Path, path: &str, yaml: &str) -> Result<serde_json::Value, String> {
    runtime()
        .block_on(client(socket).post(path, yaml.as_bytes().to_vec(), "application/yaml"))
        .map(|a| serde_json::from_slice(&a.body).unwrap())
        .map_err(|e| format!("{e:#}"))
}

fn api_delete(socket: &Path, path: &str) -> Result<serde_json::Value, String> {
    runtime()
        .block_on(client(socket).delete(path))
        .map(|a| serde_json::from_slice(&a.body).unwrap())
        .map_err(|e| format!("{e:#}"))
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list:#}"))
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn rv(object: &serde_json::Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("resourceVersion is a string: {object:#}"))
        .parse()
        .unwrap()
}

#[test]
fn caches_keep_their_api_version_and_are_served_under_every_group() {
    let scratch = ScratchXfs::new(8 << 30);
    let root = scratch.path().join("state");
    // The caches need not become Ready: their images point at a registry that is not there.
    let mut daemon = TestDaemon::start(&root, &[]);
    let socket = daemon.socket.clone();
    let img = "127.0.0.1:9/never/pulled:v1";

    // One cache created under each group's path, each written with its own apiVersion.
    let made: Vec<(String, &str)> = GROUPS
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let name = format!("c-{i}");
            let yaml = format!(
                "apiVersion: {group}\nkind: ImageCache\nmetadata:\n  name: {name}\nspec:\n  images: [\"{img}\"]\n"
            );
            let created = api_post_yaml(&socket, &format!("/apis/{group}/imagecaches"), &yaml)
                .unwrap_or_else(|e| panic!("create under {group}: {e}"));
            assert_eq!(created["apiVersion"], *group, "{created:#}");
            assert_eq!(created["metadata"]["generation"], 1, "{created:#}");
            assert!(rv(&created) > 0);
            (name, *group)
        })
        .collect();

    // Every cache is found under every group's path, with the apiVersion it was created with.
    for (name, group) in &made {
        for path_group in GROUPS {
            let got = api_get(&socket, &format!("/apis/{path_group}/imagecaches/{name}"))
                .unwrap_or_else(|e| panic!("get {name} under {path_group}: {e}"));
            assert_eq!(got["apiVersion"], *group, "{name} under {path_group}");
            assert_eq!(got["metadata"]["name"], name.as_str());
        }
        assert_eq!(daemon.get_json(name)["apiVersion"], *group);
    }

    // Each group's list lists them all, says its group, and carries a resourceVersion.
    let mut list_versions = Vec::new();
    for group in GROUPS {
        let list = api_get(&socket, &format!("/apis/{group}/imagecaches")).unwrap();
        assert_eq!(list["apiVersion"], group, "{list:#}");
        assert_eq!(list["kind"], "ImageCacheList");
        assert_eq!(names(&list), vec!["c-0", "c-1", "c-2"], "{group}");
        let items = list["items"].as_array().unwrap();
        for (item, (_, g)) in items.iter().zip(&made) {
            assert_eq!(item["apiVersion"], *g);
        }
        list_versions.push(rv(&list));
    }

    // One set of names: a name taken under one group is taken under the others.
    let again = format!(
        "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: c-2\nspec:\n  images: [\"{img}\"]\n"
    );
    let err =
        api_post_yaml(&socket, "/apis/eci.alibabacloud.com/v1/imagecaches", &again).unwrap_err();
    assert!(err.contains("already exists"), "{err}");

    // Deleted under one group, gone under all; the list's resourceVersion moves on.
    api_delete(&socket, "/apis/eks.cloud.tencent.com/v1/imagecaches/c-1").unwrap();
    for group in GROUPS {
        let err = api_get(&socket, &format!("/apis/{group}/imagecaches/c-1")).unwrap_err();
        assert!(err.contains("not found"), "{group}: {err}");
        let list = api_get(&socket, &format!("/apis/{group}/imagecaches")).unwrap();
        assert_eq!(names(&list), vec!["c-0", "c-2"], "{group}");
        assert!(
            rv(&list) > *list_versions.iter().max().unwrap(),
            "{group}: {list:#}"
        );
    }
    // Only ImageCaches live under the other groups.
    let err = api_get(&socket, "/apis/eci.alibabacloud.com/v1/disks").unwrap_err();
    assert!(err.contains("not found"), "{err}");

    // The apiVersion survives a restart.
    daemon.stop();
    daemon.spawn();
    assert_eq!(
        daemon.get_json("c-2")["apiVersion"],
        "eks.cloud.tencent.com/v1"
    );
    for name in ["c-0", "c-2"] {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    drop(daemon);
    assert_no_leaks(&root);
}

const USER: &str = "puller";
const PASSWORD: &str = "Pw-0c41-tencent-kettle";

fn image() -> Image {
    let mut base = LayerSpec::new(Compression::Gzip);
    base.dir("etc");
    base.file("etc/os-release", "ID=eks\n");
    Image::new(vec![base.to_layer()], ManifestFormat::Oci)
}

/// What `kubectl get imagecache NAME -o yaml` prints for an ECI ImageCache.
fn eci_kubectl_yaml(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: eci.alibabacloud.com/v1
kind: ImageCache
metadata:
  annotations:
    k8s.aliyun.com/eci-image-cache-description: "team images"
    kubectl.kubernetes.io/last-applied-configuration: |
      {{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache","metadata":{{"annotations":{{}},"name":"{name}"}},"spec":{{"images":["{image}"]}}}}
  creationTimestamp: "2024-05-21T08:12:45Z"
  generation: 1
  name: {name}
  resourceVersion: "318264551"
  selfLink: /apis/eci.alibabacloud.com/v1/imagecaches/{name}
  uid: 2c0a4c9e-8a7b-4c43-9c8e-8c2b0f4d5e61
spec:
  imageCacheSize: 20
  imagePullSecrets:
  - imc-operator-system/qcloudregistrykey
  images:
  - {image}
  retentionDays: 7
status:
  events:
    imageCacheCreated:
      startTime: "2024-05-21T08:12:47Z"
      status: Success
    imagePulling:
      "{image}":
        startTime: "2024-05-21T08:12:48Z"
        status: Success
  expireDateTime: "2024-05-28T08:12:47Z"
  imageCacheId: imc-2zeditzeoemfhqor8b2a
  lastUpdatedTime: "2024-05-21T08:13:10Z"
  phase: Ready
  progress: 100%
  snapshotId: s-2ze6xmkhd9a4xpbq7tyw
  startTime: "2024-05-21T08:12:47Z"
"#
    )
}

#[test]
fn get_yaml_and_kubectl_yaml_round_trip_with_a_namespace_slash_name_secret() {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let reg = TestRegistry::start_with_htpasswd(USER, PASSWORD);
    let addr = reg.addr();
    push_image(&addr, "tke/app", "v1", &image(), reg.credentials());
    let reference = format!("{addr}/tke/app:v1");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let socket = daemon.socket.clone();
    // The Tencent form of the secret reference, `namespace/name`, on disk as any other.
    daemon.write_pull_secret(
        "imc-operator-system",
        "qcloudregistrykey",
        &addr,
        USER,
        PASSWORD,
    );

    // An ECI `kubectl get -o yaml`, read-only metadata, foreign status and all, is accepted.
    let name = "eci-web";
    let created = api_post_yaml(
        &socket,
        "/apis/eci.alibabacloud.com/v1/imagecaches",
        &eci_kubectl_yaml(name, &reference),
    )
    .unwrap_or_else(|e| panic!("kubectl yaml refused: {e}\n{}", daemon.log()));
    assert_eq!(created["apiVersion"], "eci.alibabacloud.com/v1");
    assert_eq!(created["status"]["phase"], "Pending", "{created:#}");
    let meta = &created["metadata"];
    assert_ne!(meta["uid"], "2c0a4c9e-8a7b-4c43-9c8e-8c2b0f4d5e61");
    assert_ne!(meta["creationTimestamp"], "2024-05-21T08:12:45Z");
    assert_ne!(meta["resourceVersion"], "318264551");
    assert_eq!(meta["generation"], 1);
    assert!(meta.get("selfLink").is_none(), "{created:#}");
    assert_eq!(
        meta["annotations"]["k8s.aliyun.com/eci-image-cache-description"],
        "team images"
    );
    let first_rv = rv(&created);

    // The secret named `namespace/name` authenticates the pull: the cache becomes Ready.
    let ready = daemon.wait_until(name, Duration::from_secs(120), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(
        ready["status"]["phase"],
        "Ready",
        "{ready:#}\n--- daemon log ---\n{}",
        daemon.log()
    );
    assert_eq!(
        ready["spec"]["imagePullSecrets"],
        serde_json::json!(["imc-operator-system/qcloudregistrykey"])
    );
    assert!(
        rv(&ready) > first_rv,
        "every stored change moves resourceVersion"
    );
    assert_eq!(ready["metadata"]["generation"], 1);

    // `get -o yaml`, deleted and fed back to `create -f`, is accepted and builds again.
    let yaml = daemon.cli_ok(&["get", name, "-o", "yaml"]);
    assert!(yaml.contains("resourceVersion"), "{yaml}");
    assert!(yaml.contains("status:"), "{yaml}");
    let ready_uid = ready["metadata"]["uid"].clone();
    daemon.cli_ok(&["delete", name]);
    let out = daemon.create_file("round-trip.yaml", &yaml, true);
    assert!(
        out.status.success(),
        "get -o yaml fed back: {}\n{yaml}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let again = daemon.get_json(name);
    assert_eq!(again["status"]["phase"], "Ready", "{again:#}");
    assert_eq!(again["apiVersion"], "eci.alibabacloud.com/v1");
    assert_ne!(again["metadata"]["uid"], ready_uid);
    assert_eq!(again["spec"], ready["spec"]);

    // A typo in spec is still refused, even alongside fields that are dropped.
    daemon.cli_ok(&["delete", name]);
    let typo = yaml.replace("spec:\n", "spec:\n  imageCacheSise: 25\n");
    assert_ne!(typo, yaml);
    let out = daemon.create_file("typo.yaml", &typo, false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imageCacheSise"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    daemon.stop();
    drop(daemon);
    assert_no_leaks(&root);
}
