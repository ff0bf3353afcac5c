//! The CRI image service (issue "Every pull on the node goes through imagecache", item 2):
//! the kubelet's image calls on `cri_image_socket`, forwarded to containerd 1.6's own CRI,
//! with each PullImage's credentials lent to the snapshotter's cold pull of that image.
//! Real containerd on imagecache's snapshotter, a real registry behind htpasswd, a real
//! daemon whose `containerd_socket` is that containerd's:
//!
//! - a private image pulled through the service with the pod's AuthConfig: the daemon
//!   fetches every layer and containerd none (the registry's access log, by User-Agent), its
//!   auto-created cache is Ready and records that the image needed credentials, and a
//!   container of it runs;
//! - the credentials appear in no daemon log (at debug level), no event or object, not in
//!   state.db's bytes and not in `/metrics`;
//! - the same pull without AuthConfig fails through the service with the very status
//!   (code and message) containerd's own socket gives, and builds nothing;
//! - ListImages, ImageStatus, ImageFsInfo and RemoveImage through the service agree with
//!   containerd's own answers.

mod snapshotter_util;
mod support;

use std::path::Path;

use base64::Engine as _;
use snapshotter_util::*;
use support::busybox::{busybox_layer, files_layer, image_with_cmd, pause_image};
use support::containerd::{ContainerdOptions, TestContainerd};
use support::cri::Cri;
use support::daemon::TestDaemon;
use support::oci::{push_image, Image};
use support::registry::{LogMark, TestRegistry};
use support::scratch::{assert_no_leaks, ScratchXfs};

const USER: &str = "pod-user-5d1e";
const PASS: &str = "Pw-b7c4-amber-heron-quiet";

/// Who fetched each of `image`'s layer blobs since `mark`: (daemon, containerd) counts.
fn layer_fetches(registry: &TestRegistry, mark: LogMark, image: &Image) -> (usize, usize) {
    let layers = layer_digests(&[image]);
    let by = registry.blobs_fetched_by_since(mark);
    let count = |agent: &str| {
        by.iter()
            .filter(|(digest, who)| layers.contains(digest) && who.starts_with(agent))
            .count()
    };
    (count("imagecache/"), count("containerd/"))
}

/// Every file of the state root whose name starts with `state.db` (the WAL included).
fn state_db_bytes(root: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("state.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    assert!(!bytes.is_empty(), "no state.db under {}", root.display());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn auto_caches(daemon: &TestDaemon) -> Vec<serde_json::Value> {
    let caches: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["get", "-o", "json"])).unwrap();
    caches["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["annotations"]["imagecache.io/auto-created"] == "true")
        .cloned()
        .collect()
}

#[test]
fn a_private_image_pulled_with_the_pods_credentials_is_served_by_the_cold_path() {
    let scratch = ScratchXfs::new(16 << 30);
    let registry = TestRegistry::start_with_htpasswd(USER, PASS);
    let addr = registry.addr();
    let own = files_layer(&[("etc/private", "from the private image\n")]).to_layer();
    let image = image_with_cmd(vec![busybox_layer().to_layer(), own], &["/bin/sh"]);
    push_image(&addr, "team/app", "v1", &image, Some((USER, PASS)));
    push_image(&addr, "pause", "v1", &pause_image(), Some((USER, PASS)));
    let image_ref = format!("{addr}/team/app:v1");
    let pause_ref = format!("{addr}/pause:v1");

    // containerd's socket is known before it starts, so the daemon starts once with it.
    let ctrd_dir = scratch.path().join("containerd");
    std::fs::create_dir_all(&ctrd_dir).unwrap();
    let ctrd_dir = ctrd_dir.canonicalize().unwrap();
    let root = scratch.path().join("state");
    let daemon = TestDaemon::start_with_config(
        &root,
        &[&addr],
        &format!(
            "containerd_socket = {:?}\n",
            ctrd_dir.join("containerd.sock")
        ),
    );
    {
        let containerd = TestContainerd::start(
            &ctrd_dir,
            &ContainerdOptions {
                registry: addr.clone(),
                sandbox_image: pause_ref.clone(),
                proxy_snapshotter: Some(daemon.snapshotter_socket()),
            },
        );
        // The kubelet's two clients: images through imagecache, the runtime to containerd.
        let kubelet_images = Cri::connect(&daemon.cri_image_socket(), &containerd.dir.join("pods"));
        let direct = containerd.cri();

        // (3) Without credentials: the very failure containerd's own socket gives, and no
        // cache is made for it.
        let through = kubelet_images
            .try_pull_image(&image_ref)
            .expect_err("an anonymous pull of a private image succeeded through the service");
        let alone = direct
            .try_pull_image(&image_ref)
            .expect_err("an anonymous pull of a private image succeeded");
        assert_eq!(
            (through.code(), through.message()),
            (alone.code(), alone.message()),
            "the service changed containerd's answer"
        );
        assert!(
            auto_caches(&daemon).is_empty(),
            "{:#?}",
            auto_caches(&daemon)
        );

        // (1) With the pod's credentials: served by the cold path.
        let mark = registry.log_mark();
        kubelet_images
            .try_pull_image_as(&image_ref, Some((USER, PASS)))
            .unwrap_or_else(|e| panic!("PullImage with credentials: {e}\n{}", daemon.log()));
        assert_eq!(
            layer_fetches(&registry, mark, &image),
            (image.layers.len(), 0),
            "the daemon fetches every layer, containerd none\n{}",
            daemon.log()
        );
        let auto = auto_caches(&daemon);
        assert_eq!(auto.len(), 1, "{auto:#?}");
        assert_eq!(auto[0]["status"]["phase"], "Ready", "{:#}", auto[0]);
        let images = auto[0]["status"]["images"].as_array().unwrap();
        let recorded = images
            .iter()
            .find(|i| i["image"].as_str().unwrap().starts_with(&image_ref))
            .unwrap_or_else(|| panic!("{:#}", auto[0]));
        assert_eq!(
            recorded["credentialsRequired"], true,
            "a cache built with a pod's credentials is served only to pods whose own read it: {:#}",
            auto[0]
        );

        // (4) Every other call is containerd's own answer.
        let names = |cri: &Cri| {
            let mut ids: Vec<(String, Vec<String>)> = cri
                .list_images()
                .into_iter()
                .map(|i| (i.id, i.repo_tags))
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(names(&kubelet_images), names(&direct));
        assert!(names(&direct)
            .iter()
            .any(|(_, tags)| tags.contains(&image_ref)));
        let status = kubelet_images.try_image_status(&image_ref).unwrap();
        assert!(status.is_some());
        assert_eq!(status, direct.try_image_status(&image_ref).unwrap());
        assert_eq!(
            kubelet_images
                .try_image_status("127.0.0.1:1/absent:v1")
                .unwrap(),
            None
        );
        assert_eq!(
            kubelet_images.image_fs_mountpoints(),
            direct.image_fs_mountpoints()
        );

        // The sandbox image, pulled as the kubelet would, then a container of the image runs.
        kubelet_images
            .try_pull_image_as(&pause_ref, Some((USER, PASS)))
            .unwrap_or_else(|e| panic!("PullImage of the sandbox image: {e}"));
        let pod_config = direct.pod_config("private", "uid-private", "default");
        let pod = direct.run_pod_sandbox_with(&pod_config);
        let lines = run(
            &direct,
            &pod,
            &pod_config,
            "runs",
            &image_ref,
            "cat /etc/private",
            &[],
        );
        assert_eq!(lines, vec!["from the private image"]);
        direct.stop_pod_sandbox(&pod);
        direct.remove_pod_sandbox(&pod);

        // RemoveImage through the service removes it from containerd.
        kubelet_images.try_remove_image(&image_ref).unwrap();
        assert_eq!(direct.try_image_status(&image_ref).unwrap(), None);
        kubelet_images.try_remove_image(&pause_ref).unwrap();
        assert_eq!(names(&kubelet_images), names(&direct));
        wait_for(
            "containerd to remove every snapshot",
            std::time::Duration::from_secs(30),
            || snapshot_names(&containerd).is_empty(),
        );

        // (2) The credentials are nowhere the daemon writes.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
        let log = daemon.log();
        let objects = daemon.cli_ok(&["get", "-o", "json"]);
        let metrics = daemon.metrics();
        let db = state_db_bytes(&root);
        for secret in [PASS, basic.as_str(), USER] {
            assert!(!log.contains(secret), "the daemon's log holds {secret:?}");
            assert!(
                !objects.contains(secret),
                "an object or event holds {secret:?}"
            );
            assert!(!metrics.contains(secret), "/metrics holds {secret:?}");
            assert!(!contains(&db, secret), "state.db holds {secret:?}");
        }
        let lent = log.lines().any(|l| {
            l.contains("cold pull: the image goes into an auto-created cache first")
                && l.contains(&image_ref)
                && l.contains("with_pull_credentials")
                && l.contains("true")
        });
        assert!(
            lent,
            "the cold pull did not get the pull's credentials:\n{log}"
        );
    }
    drop(daemon);
    for sub in ["state", "containerd"] {
        assert_no_leaks(&scratch.path().join(sub));
    }
}
