//! Step 4 of a disk create: the Disk object as it is stored and answered, with the events
//! that tell how it was made.

use super::select::Plan;
use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::Daemon;
use crate::disk_image::{self, CloneMode};
use crate::objects::*;

/// Everything the create learnt, for the object.
pub(super) struct Made<'a> {
    pub id: &'a str,
    pub req: &'a ValidDisk,
    pub plan: &'a Plan,
    pub created: &'a disk_image::Disk,
    /// The cache created in the background for the next pod with these images.
    pub auto_created: Option<String>,
    pub now: &'a str,
}

pub(super) fn disk_object(d: &Daemon, made: Made<'_>) -> Disk {
    let Made {
        id,
        req,
        plan,
        created,
        auto_created,
        now,
    } = made;
    Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: ObjectMeta {
            name: id.to_owned(),
            creation_timestamp: Some(now.to_owned()),
            labels: req.labels.clone(),
            ..Default::default()
        },
        spec: req.spec.clone(),
        status: Some(DiskStatus {
            phase: if plan.pull_needed() {
                DiskPhase::Pulling
            } else {
                DiskPhase::Ready
            },
            cache_id: plan.cache.as_ref().map(|c| c.id.clone()),
            snapshot_digest: plan.cache.as_ref().map(|c| c.snapshot_digest.clone()),
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
            events: creation_events(d, plan, created, auto_created.as_deref(), now),
            auto_created_cache: auto_created,
            message: None,
            creation_time: now.to_owned(),
            // Added to the create's answer only, after the object is stored (create.rs).
            bind_token: None,
        }),
    }
}

/// Where the disk came from, what it cost, and what happens next.
fn creation_events(
    d: &Daemon,
    plan: &Plan,
    created: &disk_image::Disk,
    auto_created: Option<&str>,
    now: &str,
) -> Vec<Event> {
    let mut list = Vec::new();
    if let Some(why) = &plan.refused {
        events::record(
            &mut list,
            WARNING,
            "CredentialsRequired",
            format!("Not served from a cache: {why}; pulling every image with this pod's own credentials"),
            now,
        );
    }
    match &plan.cache {
        Some(cache) => events::record(
            &mut list,
            NORMAL,
            "Cloned",
            format!(
                "Cloned cache {} (snapshot {}) in {:.1} ms: {}",
                cache.id,
                cache.snapshot_digest,
                created.timings.total_ms(),
                plan.reason
            ),
            now,
        ),
        None => events::record(
            &mut list,
            NORMAL,
            "NoCacheMatched",
            format!(
                "{}; created an empty {} GiB disk and pulling every image into it",
                plan.reason, plan.size_gib
            ),
            now,
        ),
    }
    if d.inner.clone_mode == CloneMode::SparseCopy && plan.cache.is_some() {
        events::record(
            &mut list,
            WARNING,
            "SparseCopy",
            "the state root cannot share extents (no reflink): the snapshot was copied, which costs time and space; set backing_image in the config or put the state root on XFS".into(),
            now,
        );
    }
    if plan.pull_needed() && plan.cache.is_some() {
        let names: Vec<String> = plan.missing.iter().map(|r| r.to_string()).collect();
        events::record(
            &mut list,
            NORMAL,
            "PullingMissing",
            format!(
                "Cache lacks {}: pulling them into the disk",
                names.join(", ")
            ),
            now,
        );
    }
    if let Some(name) = auto_created {
        events::record(
            &mut list,
            NORMAL,
            "AutoCreatedCache",
            format!("Creating image cache {name} of these images in the background, so the next pod with them gets a clone"),
            now,
        );
    }
    list
}
