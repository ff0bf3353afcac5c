//! Per-pod disks: pick a cache (matching.rs), clone its snapshot into a disk of the pod's
//! own, and pull what the cache lacked into the disk in the background.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::Digest;
use tracing::{info, warn};

use super::build::{fill::fill, BuildError};
use super::events::{NORMAL, WARNING};
use super::owner::Owner;
use super::{clock, ids, Daemon, DaemonError, Reply};
use crate::disk::{self, CloneMode, DiskOptions, DiskSource};
use crate::matching::{self, Candidate, DiskRequest, MatchError, Selection};
use crate::objects::*;
use crate::registry::{ImageReference, Keyring};

/// Where a disk's file lives.
pub fn image_path(d: &Daemon, id: &str) -> PathBuf {
    d.inner.config.root.join("disks").join(format!("{id}.img"))
}

fn internal(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::internal(e)
}

/// A selection that found no cache to use is the request's problem, in one of three ways.
fn match_error(e: MatchError) -> DaemonError {
    match &e {
        _ if e.is_not_found() => DaemonError::NotFound {
            kind: KIND_IMAGE_CACHE.into(),
            name: e.to_string(),
        },
        MatchError::CacheNotReady { .. } | MatchError::ConflictingExplicit { .. } => {
            DaemonError::Conflict(e.to_string())
        }
        _ => DaemonError::invalid_field(KIND_DISK, "", "spec", e.to_string()),
    }
}

/// What the disk starts from once the selection is made.
struct Plan {
    cache: Option<(String, String)>, // (cache id, snapshot digest)
    matched: Vec<ImageReference>,
    missing: Vec<ImageReference>,
    size_gib: u32,
    auto_create: bool,
    reason: String,
}

fn plan(d: &Daemon, req: &ValidDisk) -> Result<Plan, DaemonError> {
    let caches = d.inner.store.list_caches().map_err(internal)?;
    let candidates: Vec<Candidate> = caches.iter().filter_map(Candidate::from_cache).collect();
    let request = DiskRequest {
        images: req.images.clone(),
        annotations: &req.annotations,
        explicit_cache: req.cache.clone(),
    };
    match matching::select(&request, &candidates).map_err(match_error)? {
        Selection::Clone {
            cache_id,
            matched,
            missing,
            reason,
            ..
        } => {
            let cache = caches
                .iter()
                .find(|c| {
                    c.status.as_ref().map(|s| s.image_cache_id.as_str()) == Some(cache_id.as_str())
                })
                .ok_or_else(|| DaemonError::not_found(KIND_IMAGE_CACHE, &cache_id))?;
            let digest = cache
                .status
                .as_ref()
                .and_then(|s| s.snapshot_digest.clone())
                .ok_or_else(|| {
                    DaemonError::Conflict(format!(
                        "cache {cache_id} has no snapshot: it is not Ready"
                    ))
                })?;
            let cache_size = cache
                .spec
                .image_cache_size
                .unwrap_or(d.inner.config.default_cache_size_gib);
            let size_gib = req.size_gib.unwrap_or(cache_size);
            if size_gib < cache_size {
                return Err(DaemonError::invalid_field(
                    KIND_DISK,
                    "",
                    "spec.sizeGiB",
                    format!(
                        "{size_gib} GiB is smaller than cache {cache_id} ({cache_size} GiB): a disk is never smaller than its cache; ask for at least {cache_size}"
                    ),
                ));
            }
            Ok(Plan {
                cache: Some((cache_id, digest)),
                matched,
                missing,
                size_gib,
                auto_create: false,
                reason,
            })
        }
        Selection::Cold {
            auto_create,
            reason,
        } => Ok(Plan {
            cache: None,
            matched: Vec::new(),
            missing: req.images.clone(),
            size_gib: req
                .size_gib
                .unwrap_or(d.inner.config.default_cache_size_gib),
            auto_create,
            reason,
        }),
    }
}

pub async fn create(d: &Daemon, req: ValidDisk) -> Result<Reply, DaemonError> {
    let plan = plan(d, &req)?;
    let id = ids::new_disk_id();
    let image = image_path(d, &id);
    let mountpoint = req
        .mountpoint
        .clone()
        .map(|p| p.unwrap_or_else(|| d.inner.config.root.join("disks").join(&id).join("mnt")));
    // The reference is taken before cloning, so a concurrent delete of the cache cannot
    // remove the snapshot file from under the clone.
    let source = match &plan.cache {
        Some((_, digest)) => {
            d.inner.store.snapshot_ref(digest).map_err(internal)?;
            Some(d.inner.snapshots.image_path(digest).map_err(internal)?)
        }
        None => None,
    };
    let opts = DiskOptions {
        size_bytes: u64::from(plan.size_gib) << 30,
        mountpoint: mountpoint.clone(),
        clone_mode: d.inner.clone_mode,
    };
    let sys = d.inner.sys.clone();
    let (image2, source2) = (image.clone(), source.clone());
    let created = tokio::task::spawn_blocking(move || {
        let src = match &source2 {
            Some(p) => DiskSource::Snapshot(p),
            None => DiskSource::Empty,
        };
        disk::create(sys.as_ref(), &image2, src, &opts)
    })
    .await
    .map_err(internal)?;
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            if let Some((_, digest)) = &plan.cache {
                let _ = super::handlers::release_snapshot(d, digest);
            }
            warn!(disk = %id, error = %e, "disk creation failed");
            return Err(DaemonError::Internal(format!(
                "cannot create the disk: {e}"
            )));
        }
    };

    let now = clock::now_string();
    let mut events = Vec::new();
    let pull_needed = !plan.missing.is_empty();
    match &plan.cache {
        Some((cache_id, digest)) => super::events::record(
            &mut events,
            NORMAL,
            "Cloned",
            format!(
                "Cloned cache {cache_id} (snapshot {digest}) in {:.1} ms: {}",
                created.timings.total_ms(),
                plan.reason
            ),
            &now,
        ),
        None => super::events::record(
            &mut events,
            NORMAL,
            "NoCacheMatched",
            format!(
                "{}; created an empty {} GiB disk and pulling every image into it",
                plan.reason, plan.size_gib
            ),
            &now,
        ),
    }
    if d.inner.clone_mode == CloneMode::SparseCopy && plan.cache.is_some() {
        super::events::record(
            &mut events,
            WARNING,
            "SparseCopy",
            "the state root cannot share extents (no reflink): the snapshot was copied, which costs time and space; set backing_image in the config or put the state root on XFS".into(),
            &now,
        );
    }
    if pull_needed && plan.cache.is_some() {
        let names: Vec<String> = plan.missing.iter().map(|r| r.to_string()).collect();
        super::events::record(
            &mut events,
            NORMAL,
            "PullingMissing",
            format!(
                "Cache lacks {}: pulling them into the disk",
                names.join(", ")
            ),
            &now,
        );
    }
    let auto_created = if plan.auto_create {
        auto_create_cache(d, &req)
    } else {
        None
    };
    if let Some(name) = &auto_created {
        super::events::record(
            &mut events,
            NORMAL,
            "AutoCreatedCache",
            format!("Creating image cache {name} of these images in the background, so the next pod with them gets a clone"),
            &now,
        );
    }
    let object = Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: ObjectMeta {
            name: id.clone(),
            creation_timestamp: Some(now.clone()),
            labels: req.labels.clone(),
            ..Default::default()
        },
        spec: req.spec.clone(),
        status: Some(DiskStatus {
            phase: if pull_needed {
                DiskPhase::Pulling
            } else {
                DiskPhase::Ready
            },
            cache_id: plan.cache.as_ref().map(|(c, _)| c.clone()),
            snapshot_digest: plan.cache.as_ref().map(|(_, s)| s.clone()),
            matched_images: plan.matched.iter().map(|r| r.to_string()).collect(),
            missing_images: plan.missing.iter().map(|r| r.to_string()).collect(),
            pulled_images: Vec::new(),
            device: Some(created.device.to_string_lossy().into_owned()),
            mountpoint: created
                .mountpoint
                .as_ref()
                .map(|m| m.to_string_lossy().into_owned()),
            size_gib: plan.size_gib,
            timings: DiskTimings {
                clone_ms: created.timings.clone_ms,
                grow_ms: created.timings.grow_ms,
                attach_ms: created.timings.attach_ms,
                mount_ms: created.timings.mount_ms,
                pull_ms: 0.0,
            },
            auto_created_cache: auto_created,
            message: None,
            creation_time: now,
            events,
        }),
    };
    d.inner.store.insert_disk(&object).map_err(internal)?;
    info!(disk = %id, cache = ?plan.cache, ms = created.timings.total_ms(), missing = plan.missing.len(), "disk created");
    if pull_needed {
        spawn_pull(
            d,
            &id,
            plan.missing,
            req.pull_secrets.clone(),
            plan.size_gib,
            created.device.clone(),
            created.mountpoint.clone(),
        );
    }
    Ok(Reply::Disk(Box::new(object)))
}

/// A cache of the disk's images, named after them so pods with the same images share one.
fn auto_create_cache(d: &Daemon, req: &ValidDisk) -> Option<String> {
    let mut names: Vec<String> = req.images.iter().map(|r| r.to_string()).collect();
    names.sort();
    let digest = hex::encode(sha2::Sha256::digest(names.join("\n").as_bytes()));
    let name = format!("auto-{}", &digest[..16]);
    if d.inner.store.get_cache(&name).ok().flatten().is_some() {
        return Some(name);
    }
    let object = ImageCache {
        api_version: API_VERSION.into(),
        kind: KIND_IMAGE_CACHE.into(),
        metadata: ObjectMeta {
            name: name.clone(),
            annotations: BTreeMap::from([(
                "imagecache.io/auto-created".to_owned(),
                "true".to_owned(),
            )]),
            ..Default::default()
        },
        spec: ImageCacheSpec {
            images: names,
            image_pull_secrets: req.pull_secrets.clone(),
            image_cache_size: Some(d.inner.config.default_cache_size_gib),
            retention_days: None,
        },
        status: None,
    };
    let valid = ValidImageCache {
        object,
        images: req.images.clone(),
        size_gib: d.inner.config.default_cache_size_gib,
    };
    match super::handlers::create_cache(d, valid) {
        Ok(_) => Some(name),
        Err(DaemonError::AlreadyExists { .. }) => Some(name),
        Err(e) => {
            warn!(error = %e, "could not auto-create a cache");
            None
        }
    }
}

fn spawn_pull(
    d: &Daemon,
    id: &str,
    images: Vec<ImageReference>,
    pull_secrets: Vec<String>,
    size_gib: u32,
    device: PathBuf,
    mountpoint: Option<PathBuf>,
) {
    let cancel = d.inner.shutdown.child_token();
    let key = format!("disk/{id}");
    d.inner
        .builds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), cancel.clone());
    let (d2, id) = (d.clone(), id.to_owned());
    d.inner.tasks.spawn(async move {
        let started = Instant::now();
        let owner = Owner::Disk(id.clone());
        let result = pull(
            &d2,
            &owner,
            &images,
            &pull_secrets,
            size_gib,
            &device,
            mountpoint.as_deref(),
            started,
            &cancel,
        )
        .await;
        let now = clock::now_string();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let _ = d2.inner.store.update_disk(&id, |disk| {
            if let Some(s) = disk.status.as_mut() {
                s.timings.pull_ms = ms;
                match &result {
                    Ok(()) => {
                        s.phase = DiskPhase::Ready;
                        s.pulled_images = images.iter().map(|r| r.to_string()).collect();
                        super::events::record(
                            &mut s.events,
                            NORMAL,
                            "Pulled",
                            format!(
                                "Pulled {} image(s) into the disk in {:.1}s",
                                images.len(),
                                ms / 1e3
                            ),
                            &now,
                        );
                    }
                    Err(e) => {
                        s.phase = DiskPhase::Failed;
                        s.message = Some(e.to_string());
                        super::events::record(
                            &mut s.events,
                            WARNING,
                            e.reason(),
                            e.to_string(),
                            &now,
                        );
                    }
                }
            }
        });
        d2.inner
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    });
}

#[allow(clippy::too_many_arguments)]
async fn pull(
    d: &Daemon,
    owner: &Owner,
    images: &[ImageReference],
    pull_secrets: &[String],
    size_gib: u32,
    device: &Path,
    mountpoint: Option<&Path>,
    started: Instant,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), BuildError> {
    let cfg = &d.inner.config;
    let mut keyring = Keyring::from_pull_secrets(&cfg.secrets_dir, pull_secrets)?;
    if let Some(path) = &cfg.docker_config {
        keyring = keyring.with_docker_config(path)?;
    }
    let keyring = Arc::new(keyring);
    let resolved = super::build::plan::resolve_all(d, images, &keyring).await?;
    // An attach-only disk is mounted just for the pull.
    let temp_mount = match mountpoint {
        Some(_) => None,
        None => {
            let at = d.work_root().join(format!(
                "fill-{}",
                device.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::create_dir_all(&at).map_err(|e| BuildError::io("create", &at, e))?;
            d.inner
                .sys
                .mount(device, &at, "ext4", Default::default(), "")
                .map_err(|e| {
                    BuildError::Internal(format!("mount {} for the pull: {e}", device.display()))
                })?;
            Some(at)
        }
    };
    let root = mountpoint
        .map(Path::to_owned)
        .or_else(|| temp_mount.clone())
        .expect("one of the two is set");
    let filled = fill(
        d, owner, resolved, &keyring, &root, size_gib, started, cancel,
    )
    .await;
    let synced = d.inner.sys.syncfs(&root);
    if let Some(at) = &temp_mount {
        let _ =
            tokio::task::block_in_place(|| crate::sys::unmount_settled(d.inner.sys.as_ref(), at));
        let _ = std::fs::remove_dir(at);
    }
    filled?;
    synced.map_err(|e| BuildError::Internal(format!("sync the disk: {e}")))
}

pub fn get(d: &Daemon, id: &str) -> Result<Disk, DaemonError> {
    d.inner
        .store
        .get_disk(id)
        .map_err(internal)?
        .ok_or_else(|| DaemonError::not_found(KIND_DISK, id))
}

pub fn list(d: &Daemon) -> Result<Reply, DaemonError> {
    Ok(Reply::DiskList(DiskList {
        api_version: API_VERSION.into(),
        kind: KIND_DISK_LIST.into(),
        metadata: ListMeta::default(),
        items: d.inner.store.list_disks().map_err(internal)?,
    }))
}

pub async fn delete(d: &Daemon, id: &str) -> Result<Reply, DaemonError> {
    let disk = get(d, id)?;
    let key = format!("disk/{id}");
    let running = d
        .inner
        .builds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(token) = running {
        token.cancel();
        while d
            .inner
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let status = disk
        .status
        .clone()
        .unwrap_or_else(|| unreachable!("stored disks have a status"));
    let image = image_path(d, id);
    let sys = d.inner.sys.clone();
    let (device, mountpoint) = (
        status.device.clone().map(PathBuf::from),
        status.mountpoint.clone().map(PathBuf::from),
    );
    let deleted = tokio::task::spawn_blocking(move || {
        disk::delete(
            sys.as_ref(),
            &image,
            device.as_deref(),
            mountpoint.as_deref(),
        )
    })
    .await
    .map_err(internal)?;
    match deleted {
        Ok(()) => {}
        Err(e @ crate::disk::DiskError::Busy { .. }) => {
            return Err(DaemonError::Conflict(e.to_string()))
        }
        Err(e) => return Err(internal(e)),
    }
    // The default mountpoint's directory is ours; a caller-given one is left alone.
    let own_dir = d.inner.config.root.join("disks").join(id);
    let _ = std::fs::remove_dir(own_dir.join("mnt"));
    let _ = std::fs::remove_dir(&own_dir);
    d.inner.store.delete_disk(id).map_err(internal)?;
    if let Some(digest) = status.snapshot_digest {
        super::handlers::release_snapshot(d, &digest).map_err(internal)?;
    }
    info!(disk = %id, "disk deleted");
    Ok(Reply::Deleted(format!("Disk {id:?} deleted")))
}
