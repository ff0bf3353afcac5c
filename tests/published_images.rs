//! Images present before the kubelet asks (issue "Every pull on the node goes through
//! imagecache", item 3): a Ready cache's images are published into containerd's image store,
//! so CRI lists them, and a pod started as the kubelet starts one with `IfNotPresent`
//! (RunPodSandbox, CreateContainer, StartContainer: no PullImage) runs from the cache without
//! containerd asking the registry for anything. Removing the image through CRI leaves the
//! cache Ready and verified; deleting the cache removes what it published.

mod snapshotter_util;
mod support;

use std::time::Duration;

use snapshotter_util::*;
use support::containerd::{ContainerdOptions, TestContainerd};
use support::daemon::{cache_yaml, events};

fn listed(cri: &support::cri::Cri) -> Vec<String> {
    cri.list_images()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect()
}

#[test]
fn a_ready_caches_images_are_present_in_containerd_and_a_pod_runs_without_a_pull() {
    let image = layered_image();
    let mut node = node_with_cache(&[]);
    support::oci::push_image(&node.addr(), "published", "v1", &image, None);
    let (app, pause) = (node.image_ref("published"), node.image_ref("pause"));
    let dir = node.scratch.path().join("containerd");
    // The daemon knows containerd's socket; containerd is up before the cache is made.
    node.daemon.reconfigure(&format!(
        "containerd_socket = {:?}",
        dir.join("containerd.sock")
    ));
    let containerd = TestContainerd::start(
        &dir,
        &ContainerdOptions {
            registry: node.addr(),
            sandbox_image: pause.clone(),
            proxy_snapshotter: Some(node.daemon.snapshotter_socket()),
        },
    );
    let cri = containerd.cri();
    assert!(!listed(&cri).contains(&app), "{:?}", listed(&cri));

    let out = node.daemon.create(
        &cache_yaml("present", &[pause.clone(), app.clone()], ""),
        true,
    );
    assert!(out.status.success(), "{}", node.daemon.log());
    node.daemon
        .wait_until("present", Duration::from_secs(60), |c| {
            c["status"]["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["reason"] == "Published" || e["reason"] == "PublishFailed")
            })
        });
    let published = events(&node.daemon.get_json("present"), "Published");
    assert_eq!(published.len(), 1, "{}", node.daemon.log());
    // CRI's image list follows containerd's image events, a moment after the records exist.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let images = listed(&cri);
        if images.contains(&app) && images.contains(&pause) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRI lists {images:?}\n--- containerd ---\n{}\n--- daemon ---\n{}",
            containerd.log(),
            node.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The kubelet with IfNotPresent: ImageStatus says present, so no PullImage.
    let mark = node.registry.log_mark();
    let pod_config = cri.pod_config("present", "uid-present", "default");
    let pod = cri.run_pod_sandbox_with(&pod_config);
    let lines = run(
        &cri,
        &pod,
        &pod_config,
        "reader",
        &app,
        "cat /etc/greeting /etc/top",
        &[],
    );
    assert_eq!(lines, vec!["hello from layer 2", "from the top layer"]);
    let asked: Vec<_> = node
        .registry
        .requests_since(mark)
        .into_iter()
        .filter(|(_, path, _)| path != "/v2/")
        .collect();
    assert!(asked.is_empty(), "containerd asked the registry: {asked:?}");

    // kubelet image GC: RemoveImage, then the pod goes; the cache is untouched.
    cri.remove_image(&app);
    wait_for("CRI to drop the app image", Duration::from_secs(10), || {
        !listed(&cri).contains(&app)
    });
    cri.stop_pod_sandbox(&pod);
    cri.remove_pod_sandbox(&pod);
    let cache = node.daemon.get_json("present");
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    assert!(node
        .daemon
        .cli_ok(&["verify", "present"])
        .contains("verified"));

    // Deleting the cache removes what it published (the pause image's records).
    assert!(listed(&cri).contains(&pause));
    node.daemon.cli_ok(&["delete", "present"]);
    wait_for(
        "CRI to drop the pause image",
        Duration::from_secs(10),
        || !listed(&cri).contains(&pause),
    );
    wait_for(
        "containerd to remove every snapshot",
        Duration::from_secs(30),
        || snapshot_names(&containerd).is_empty(),
    );
    drop(cri);
    drop(containerd);
    assert_node_clean(node);
}
