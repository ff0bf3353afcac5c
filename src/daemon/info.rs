//! `imagecache info`: what an operator checks first on a node.

use super::Daemon;
use crate::disk_image::CloneMode;

pub fn info(d: &Daemon) -> Result<serde_json::Value, crate::failure::BoxError> {
    let cfg = &d.inner.config;
    let loops = d.inner.sys.loop_devices()?;
    let ours: Vec<serde_json::Value> = loops
        .iter()
        .filter(|l| l.backing_file.starts_with(&cfg.root))
        .map(|l| serde_json::json!({"device": l.device, "backingFile": l.backing_file}))
        .collect();
    let caches = d.inner.store.list_caches()?;
    let disks = d.inner.store.list_disks()?;
    let reflink = d.inner.clone_mode == CloneMode::Reflink;
    let (building, queued) = d.inner.queue.counts();
    Ok(serde_json::json!({
        "apiVersion": crate::objects::API_VERSION,
        "kind": "Info",
        "version": env!("CARGO_PKG_VERSION"),
        "root": cfg.root,
        "rootFilesystem": d.inner.root_fs,
        "reflink": reflink,
        "cloneMode": if reflink { "reflink" } else { "sparse-copy (slow: set backing_image or use XFS)" },
        "backingImage": cfg.backing_image,
        "loopDevicesInUse": ours.len(),
        "maxLoopDevices": cfg.max_loop_devices,
        "buildsRunning": building,
        "buildsQueued": queued,
        "maxConcurrentBuilds": cfg.max_concurrent_builds,
        "maxQueuedBuilds": cfg.max_queued_builds,
        "loopDevices": ours,
        "loopDevicesOnNode": loops.len(),
        "caches": caches.len(),
        "readyCaches": caches.iter().filter(|c| c.status.as_ref().map(|s| s.phase) == Some(crate::objects::Phase::Ready)).count(),
        "disks": disks.len(),
        "snapshots": d.inner.snapshots.list().map(|l| l.len()).unwrap_or(0),
        "snapshotterSocket": cfg.snapshotter(),
        "criImageSocket": cfg.cri_image(),
        "containerdSnapshots": d.snapshot_counts()?,
    }))
}
