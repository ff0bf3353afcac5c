//! One handler per action.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::build::{self, BuildSpec};
use super::events::NORMAL;
use super::pull_auth::PullCredentials;
use super::{clock, ids, Action, Daemon, DaemonError, Reply};
use crate::objects::*;
use crate::store::StoreError;

/// How long a delete waits for a cancelled build to release its loop device and mount.
pub(super) const CANCEL_WAIT: Duration = Duration::from_secs(60);

pub async fn dispatch(d: &Daemon, action: Action) -> Result<Reply, DaemonError> {
    match action {
        Action::CreateImageCache(valid) => create_cache(d, *valid, None),
        Action::GetImageCache(name) => Ok(Reply::ImageCache(Box::new(get(d, &name)?))),
        Action::ListImageCaches => Ok(Reply::ImageCacheList(ImageCacheList {
            api_version: API_VERSION.into(),
            kind: KIND_IMAGE_CACHE_LIST.into(),
            // Read before the items, so the list is at least as new as its version says.
            metadata: ListMeta {
                resource_version: Some(d.inner.store.resource_version()),
            },
            items: d.inner.store.list_caches().map_err(internal)?,
        })),
        Action::DeleteImageCache(name) => delete_cache(d, &name).await,
        Action::VerifyImageCache(name) => verify(d, &name).await,
        Action::PushImageCache(name) => push(d, &name).await,
        Action::PullSnapshot(request) => super::share::pull::pull(d, request).await,
        Action::CreateDisk(req) => super::disks::create(d, *req).await,
        Action::GetDisk(id) => Ok(Reply::Disk(Box::new(super::disks::shown(
            d,
            super::disks::get(d, &id)?,
        )))),
        Action::ListDisks => super::disks::list(d),
        Action::DeleteDisk(id) => super::disks::delete(d, &id).await,
        Action::Info => Ok(Reply::Info(super::info::info(d).map_err(internal)?)),
        Action::Snapshot(request) => Ok(Reply::Snapshot(d.snapshot(request).await?)),
    }
}

fn internal(e: impl Into<crate::failure::BoxError>) -> DaemonError {
    DaemonError::internal(e)
}

fn get(d: &Daemon, name: &str) -> Result<ImageCache, DaemonError> {
    d.inner
        .store
        .get_cache(name)
        .map_err(internal)?
        .ok_or_else(|| DaemonError::not_found(KIND_IMAGE_CACHE, name))
}

/// Creates an ImageCache and queues its build; `pulled_with`, the credentials of the CRI pull
/// a cold pull creates it for, go to the build alone (see `BuildSpec::pulled_with`).
pub(super) fn create_cache(
    d: &Daemon,
    valid: ValidImageCache,
    pulled_with: Option<Arc<PullCredentials>>,
) -> Result<Reply, DaemonError> {
    let ValidImageCache {
        mut object,
        mut images,
        size_gib,
    } = valid;
    // The node's pause image rides along in every cache, as ECI's caches hold it.
    if let Some(pause) = d.inner.config.sandbox_image.as_deref() {
        match pause.parse::<crate::registry::ImageReference>() {
            Ok(pause) if !images.contains(&pause) => images.push(pause),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sandbox_image is not an image reference: left out"),
        }
    }
    let reuse = super::build::reuse_asked(&object.metadata.annotations).map_err(|e| {
        DaemonError::invalid_field(
            KIND_IMAGE_CACHE,
            &object.metadata.name,
            &format!("metadata.annotations[{}]", super::build::REUSE_ANNOTATION),
            e.to_string(),
        )
    })?;
    let share = d.inner.share.as_deref().map(|r| &r.target);
    let import_from =
        super::build::import_asked(&object.metadata.annotations, share).map_err(|e| {
            DaemonError::invalid_field(
                KIND_IMAGE_CACHE,
                &object.metadata.name,
                &format!("metadata.annotations[{}]", super::build::IMPORT_ANNOTATION),
                e,
            )
        })?;
    let now = clock::now();
    let now_s = clock::format(now);
    object.metadata.uid = Some(uuid_like());
    object.metadata.creation_timestamp = Some(now_s.clone());
    object.metadata.resource_version = Some(d.inner.store.next_resource_version());
    // The spec cannot change after create, so the generation stays 1.
    object.metadata.generation = Some(1);
    let mut events = Vec::new();
    let cache_id = ids::new_cache_id();
    super::events::record(
        &mut events,
        NORMAL,
        "Created",
        format!(
            "Created image cache {cache_id} of {} image(s), {size_gib} GiB",
            images.len()
        ),
        &now_s,
    );
    object.status = Some(ImageCacheStatus {
        phase: Phase::Pending,
        progress: "0%".into(),
        image_cache_id: cache_id,
        snapshot_digest: None,
        start_time: None,
        last_updated_time: now_s.clone(),
        expire_date_time: object
            .spec
            .retention_days
            .map(|days| clock::format(now + time::Duration::days(i64::from(days)))),
        data_size_bytes: None,
        data_size: None,
        message: None,
        source: None,
        shared_as: None,
        images: Vec::new(),
        events,
    });
    let spec = BuildSpec {
        name: object.metadata.name.clone(),
        images,
        pull_secrets: object.spec.image_pull_secrets.clone(),
        pulled_with,
        size_gib,
        reuse,
        reuse_from: object
            .metadata
            .annotations
            .get(super::build::REUSE_FROM_ANNOTATION)
            .cloned(),
        size_from_images: super::build::is_auto_created(&object.metadata.annotations),
        import_from,
    };
    let image_count = spec.images.len();
    // Recorded under the queue's lock, with the phase the queue decides: a full queue
    // refuses the create before anything is written.
    build::queue::submit(d, spec, |admission| {
        if let Some(status) = object.status.as_mut() {
            status.phase = admission.phase();
            if let Some((reason, message)) = admission.event() {
                super::events::record(&mut status.events, NORMAL, reason, message, &now_s);
            }
        }
        match d.inner.store.insert_cache(&object) {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => Err(DaemonError::AlreadyExists {
                kind: KIND_IMAGE_CACHE.into(),
                name: object.metadata.name.clone(),
            }),
            Err(e) => Err(internal(e)),
        }
    })?;
    info!(cache = %object.metadata.name, images = image_count, size_gib, "image cache created");
    Ok(Reply::ImageCache(Box::new(object)))
}

pub(super) async fn delete_cache(d: &Daemon, name: &str) -> Result<Reply, DaemonError> {
    let cache = get(d, name)?;
    // A queued build is taken out of the queue first: one not found there has started and is
    // in the running builds, which the cancel below finds.
    if d.inner.queue.remove(name) {
        info!(cache = %name, "queued build dropped: its cache is being deleted");
    }
    // The build cleans its loop device, mount and work files; the record goes after that.
    super::stop_wait::cancel_and_wait(
        d,
        &super::owner::Owner::Cache(name.to_owned()),
        &format!("the build of ImageCache {name:?}"),
        CANCEL_WAIT,
    )
    .await?;
    d.inner.store.delete_cache(name).map_err(internal)?;
    super::publish::unpublish(d, name).await;
    d.unrecorded()
        .forget(&super::owner::Owner::Cache(name.to_owned()));
    crate::fault::point("cache.delete");
    if let Some(digest) = cache.status.and_then(|s| s.snapshot_digest) {
        release_snapshot(d, &digest).map_err(internal)?;
    }
    info!(cache = %name, "image cache deleted");
    Ok(Reply::Deleted(format!("ImageCache {name:?} deleted")))
}

/// Drops one reference; the files go with the last one.
pub(super) fn release_snapshot(d: &Daemon, digest: &str) -> Result<(), crate::failure::BoxError> {
    if d.inner.store.snapshot_unref(digest)? == 0 {
        d.inner.snapshots.remove(digest)?;
        d.inner.store.forget_snapshot(digest)?;
        info!(%digest, "snapshot removed: no cache or disk uses it");
    }
    Ok(())
}

/// `imagecache push NAME`: the Ready cache's snapshot pushed to `share_registry` now.
async fn push(d: &Daemon, name: &str) -> Result<Reply, DaemonError> {
    if d.inner.share.is_none() {
        return Err(DaemonError::Conflict(
            "share_registry is not set in the daemon's config: there is nowhere to push".into(),
        ));
    }
    let cache = get(d, name)?;
    let status = cache
        .status
        .as_ref()
        .unwrap_or_else(|| unreachable!("stored caches always have a status"));
    let digest = match (status.phase, &status.snapshot_digest) {
        (Phase::Ready, Some(digest)) => digest.clone(),
        (phase, _) => {
            return Err(DaemonError::Conflict(format!(
            "ImageCache {name:?} is {phase}, not Ready: only a Ready cache has a snapshot to push"
        )))
        }
    };
    let private = super::share::push::private_images(d, name);
    if !private.is_empty() {
        return Err(DaemonError::Conflict(format!(
            "ImageCache {name:?} holds {}, which its registry serves only with credentials: it is not pushed, so the share registry's readers get no image its own registry would refuse them",
            private.join(", ")
        )));
    }
    let snapshot = d.inner.snapshots.get(&digest).map_err(internal)?;
    let size_gib = cache
        .spec
        .image_cache_size
        .unwrap_or(d.inner.config.default_cache_size_gib);
    let shareable = super::share::Shareable::of_cache(
        &d.inner.registry.platform().to_string(),
        size_gib,
        &status.images,
    );
    super::share::push::push_and_record(d, name, &snapshot, &shareable)
        .await
        .map_err(|e| DaemonError::Unavailable(format!("push of {name:?} failed: {e}")))?;
    Ok(Reply::ImageCache(Box::new(get(d, name)?)))
}

async fn verify(d: &Daemon, name: &str) -> Result<Reply, DaemonError> {
    let cache = get(d, name)?;
    let status = cache
        .status
        .unwrap_or_else(|| unreachable!("stored caches always have a status"));
    let digest = match (status.phase, status.snapshot_digest) {
        (Phase::Ready, Some(digest)) => digest,
        (phase, _) => {
            return Err(DaemonError::Conflict(format!(
                "ImageCache {name:?} is {phase}, not Ready: only a Ready cache has a snapshot to verify"
            )))
        }
    };
    let snapshots = d.inner.snapshots.clone();
    let digest2 = digest.clone();
    let (report, chunks) = tokio::task::spawn_blocking(move || {
        let chunks = snapshots.manifest(&digest2)?.chunks.len() as u64;
        snapshots.verify(&digest2).map(|r| (r, chunks))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Reply::Verify(VerifyResult {
        api_version: API_VERSION.into(),
        kind: "VerifyResult".into(),
        name: name.into(),
        snapshot_digest: digest,
        ok: report.is_ok(),
        chunks_checked: chunks,
        problems: problems(&report),
    }))
}

/// A random UUID (version 4 layout) for metadata.uid, as Kubernetes objects carry.
fn uuid_like() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One line per difference, for people and scripts alike.
fn problems(report: &crate::block_snapshot::VerifyReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(size) = report.size {
        lines.push(format!(
            "image size is {} bytes, the manifest says {}",
            size.actual, size.expected
        ));
    }
    for m in &report.mismatched {
        lines.push(format!(
            "chunk at offset {} ({} bytes) differs: expected {}, found {}",
            m.offset, m.length, m.expected, m.actual
        ));
    }
    for c in &report.appeared {
        lines.push(format!(
            "chunk at offset {} ({} bytes) holds data the manifest does not have",
            c.offset, c.length
        ));
    }
    for c in &report.vanished {
        lines.push(format!(
            "chunk at offset {} ({} bytes) is missing (now a hole or zeros)",
            c.offset, c.length
        ));
    }
    lines
}
