//! Step 3 of a disk create that matched no cache: a cache of the disk's images, built in the
//! background, so the next pod with them gets a clone. Bounded: sized from its images (the
//! build raises the floor set here, build/auto_size.rs), expiring `auto_cache_retention_days`
//! after its last use, and counted against the node's budget of them (auto_budget.rs). A Failed one
//! is built again by the first pod that wants it once the failure is
//! `auto_cache_retry_after_secs` old; until then pods go without, and their events say why.

use std::collections::BTreeMap;

use sha2::Digest;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::auto_budget;
use super::select::Plan;
use crate::daemon::build::{AUTO_CREATED_ANNOTATION, REUSE_ANNOTATION, REUSE_FROM_ANNOTATION};
use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::{clock, handlers, Daemon, DaemonError};
use crate::objects::*;

/// Decisions on auto-created caches (create, retry, evict) are made one at a time, so two
/// pods cannot both retry a failure or both evict for the same budget.
pub(super) static DECIDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An event for the disk whose create made a decision about an auto-created cache.
#[derive(Debug)]
pub(crate) struct Note {
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What a disk create does about auto-created caches once its disk exists: renew the one it
/// was cloned from, create (or retry) one when nothing matched, and keep them all within the
/// node's budget. Returns the cache being built for the disk's images, and the events.
pub(super) async fn on_create(
    d: &Daemon,
    req: &ValidDisk,
    plan: &Plan,
) -> (Option<String>, Vec<Note>) {
    let mut notes = Vec::new();
    let cloned = plan.cache.as_ref().map(|c| c.id.as_str());
    if let Some(id) = cloned {
        auto_budget::renew(d, id);
    }
    let auto_created = match plan.auto_create {
        true => {
            let floor = plan.size_gib;
            let (images, secrets) = (&req.images, &req.pull_secrets);
            ensure_cache_of(d, images, secrets, None, floor, Reuse::No, &mut notes).await
        }
        false => None,
    };
    notes.extend(auto_budget::enforce(d, cloned).await);
    (auto_created, notes)
}

/// Where a new auto-created cache starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// An empty filesystem.
    No,
    /// A clone of the Ready cache holding most of its images (`imc-enable-reuse`).
    Matching,
    /// A clone of this Ready cache (`imagecache.io/reuse-from`), else as `Matching`.
    From(String),
}

impl Reuse {
    fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([(AUTO_CREATED_ANNOTATION.to_owned(), "true".to_owned())]);
        if *self != Reuse::No {
            a.insert(REUSE_ANNOTATION.to_owned(), "true".to_owned());
        }
        if let Reuse::From(name) = self {
            a.insert(REUSE_FROM_ANNOTATION.to_owned(), name.clone());
        }
        a
    }
}

/// Adds `notes` to the disk's events, after those of its creation.
pub(super) fn add_notes(disk: &mut Disk, notes: Vec<Note>, now: &str) {
    if let Some(s) = disk.status.as_mut() {
        for n in notes {
            events::record(&mut s.events, n.type_, n.reason, n.message, now);
        }
    }
}

/// The cache's name, made from the images so pods with the same images share one; `None`
/// when there is none being built for them (logged and noted: the disk itself is fine
/// without it). `disk_gib` is the size of the disk that asked: the cache is never smaller.
/// The containerd snapshotter's cold pulls (daemon/ctr_snapshots/cold_pull.rs) come here too,
/// with `reuse`, so the layers other caches hold are cloned rather than fetched again, and
/// with `pulled_with`, the credentials of the CRI pull, which only a build it starts gets.
pub(crate) async fn ensure_cache_of(
    d: &Daemon,
    images: &[crate::registry::ImageReference],
    pull_secrets: &[String],
    pulled_with: Option<std::sync::Arc<crate::daemon::pull_auth::PullCredentials>>,
    disk_gib: u32,
    reuse: Reuse,
    notes: &mut Vec<Note>,
) -> Option<String> {
    let mut names: Vec<String> = images.iter().map(|r| r.to_string()).collect();
    names.sort();
    let digest = hex::encode(sha2::Sha256::digest(names.join("\n").as_bytes()));
    let name = format!("auto-{}", &digest[..16]);
    let _deciding = DECIDING.lock().await;
    let existing = match d.inner.store.get_cache(&name) {
        Ok(existing) => existing,
        // Unknown whether one exists: creating another could clash with it, so this pod goes
        // without, and says why.
        Err(e) => {
            warn!(cache = %name, error = %e, "could not read the auto-created cache of these images");
            notes.push(Note {
                type_: WARNING,
                reason: "AutoCacheFailed",
                message: format!("Could not read image cache {name} of these images from the state database ({e}); no cache is built for them this time"),
            });
            return None;
        }
    };
    if let Some(status) = existing.and_then(|c| c.status) {
        if status.phase != Phase::Failed {
            return Some(name);
        }
        let retry_after = time::Duration::seconds(
            i64::try_from(d.inner.config.auto_cache_retry_after_secs).unwrap_or(i64::MAX),
        );
        let failed_at =
            clock::parse(&status.last_updated_time).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let cause = status.message.unwrap_or_else(|| "no cause recorded".into());
        let retry_at = failed_at + retry_after;
        if clock::now() < retry_at {
            notes.push(Note {
                type_: WARNING,
                reason: "AutoCacheFailed",
                message: format!(
                    "Image cache {name} of these images failed at {} ({cause}); the first pod with them from {} on builds it again",
                    status.last_updated_time,
                    clock::format(retry_at)
                ),
            });
            return None;
        }
        if let Err(e) = handlers::delete_cache(d, &name).await {
            warn!(cache = %name, error = %e, "could not delete a failed auto-created cache to retry it");
            notes.push(Note {
                type_: WARNING,
                reason: "AutoCacheFailed",
                message: format!("Image cache {name} of these images failed at {} ({cause}) and could not be removed to build it again: {e}", status.last_updated_time),
            });
            return None;
        }
        info!(cache = %name, failed_at = %status.last_updated_time, "retrying a failed auto-created cache");
        notes.push(Note {
            type_: NORMAL,
            reason: "AutoCacheRetried",
            message: format!(
                "Image cache {name} of these images failed at {} ({cause}); building it again",
                status.last_updated_time
            ),
        });
    }
    // The floor: the node's default, and never smaller than the disk that asked for it
    // (a disk is never smaller than its cache, so this pod's size can clone it). The build
    // raises it to what the images need.
    let size_gib = d.inner.config.default_cache_size_gib.max(disk_gib);
    let object = ImageCache {
        api_version: API_VERSION.into(),
        kind: KIND_IMAGE_CACHE.into(),
        metadata: ObjectMeta {
            name: name.clone(),
            annotations: reuse.annotations(),
            ..Default::default()
        },
        spec: ImageCacheSpec {
            images: names,
            image_pull_secrets: pull_secrets.to_vec(),
            image_cache_size: Some(size_gib),
            retention_days: Some(d.inner.config.auto_cache_retention_days),
        },
        status: None,
    };
    let valid = ValidImageCache {
        object,
        images: images.to_vec(),
        size_gib,
    };
    match handlers::create_cache(d, valid, pulled_with) {
        Ok(_) => Some(name),
        Err(DaemonError::AlreadyExists { .. }) => Some(name),
        // A full build queue among them: the pod goes without, as while a cache builds.
        Err(e) => {
            warn!(error = %e, "could not auto-create a cache");
            notes.push(Note {
                type_: WARNING,
                reason: "AutoCacheFailed",
                message: format!("No image cache of these images is built this time: {e}"),
            });
            None
        }
    }
}
