//! What a build writes on its cache's status as it goes: phase, images, Ready, Failed.

use super::plan::Plan;
use super::{BuildError, BuildSpec};
use crate::block_snapshot::Snapshot;
use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::owner::Owner;
use crate::daemon::share::import::Imported;
use crate::daemon::{clock, record, Daemon};
use crate::objects::{CachedImage, Phase};

pub(super) fn set_phase(
    d: &Daemon,
    name: &str,
    phase: Phase,
    progress: Option<String>,
) -> Result<(), BuildError> {
    let now = clock::now_string();
    d.inner.store.update_cache(name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = phase;
            if s.start_time.is_none() {
                s.start_time = Some(now.clone());
            }
            if let Some(p) = progress {
                s.progress = p;
            }
            s.last_updated_time = now.clone();
        }
    })?;
    Ok(())
}

/// The images the cache now holds, with their digests and layer chain IDs.
/// `needed_credentials` by reference, as `image_access::needed_credentials` found it.
pub(super) fn record_images(
    d: &Daemon,
    name: &str,
    plan: &Plan,
    needed_credentials: &std::collections::HashMap<String, bool>,
) -> Result<(), BuildError> {
    d.inner.store.update_cache(name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.images = plan
                .images
                .iter()
                .map(|i| CachedImage {
                    image: i.resolved.reference.to_string(),
                    digest: i.resolved.manifest.digest.clone(),
                    resolved_digest: i.resolved.index.as_ref().map(|x| x.digest.clone()),
                    chain_ids: i.chain_ids.clone(),
                    size_bytes: i.size_bytes,
                    credentials_required: needed_credentials
                        .get(&i.resolved.reference.to_string())
                        .copied()
                        .unwrap_or(true),
                })
                .collect();
        }
    })?;
    Ok(())
}

/// Ready, with the snapshot and what it holds; `data_bytes` as `freeze::adopt` measured.
pub(super) fn mark_ready(
    d: &Daemon,
    spec: &BuildSpec,
    snapshot: &Snapshot,
    data_bytes: u64,
    secs: f64,
) -> Result<(), BuildError> {
    let message = format!(
        "Froze snapshot {} ({} of {} GiB) in {:.1}s",
        snapshot.digest,
        clock::human_bytes(data_bytes),
        spec.size_gib,
        secs
    );
    record_ready(
        d,
        spec,
        snapshot,
        data_bytes,
        SOURCE_BUILT,
        ("Frozen", message),
    )
}

/// Ready with a snapshot imported from `share_registry` (daemon/share/import.rs).
pub(super) fn mark_imported(
    d: &Daemon,
    spec: &BuildSpec,
    imported: &Imported,
    data_bytes: u64,
) -> Result<(), BuildError> {
    let message = format!(
        "Imported snapshot {} from {} in {:.1}s: {} chunk(s) fetched ({}), {} taken from snapshots on this node, {} from an interrupted import",
        imported.snapshot.digest,
        imported.from,
        imported.secs,
        imported.chunks,
        clock::human_bytes(imported.fetched_bytes),
        imported.reused,
        imported.resumed
    );
    record_ready(
        d,
        spec,
        &imported.snapshot,
        data_bytes,
        SOURCE_IMPORTED,
        ("Imported", message),
    )
}

pub(super) const SOURCE_BUILT: &str = "built";
pub(super) const SOURCE_IMPORTED: &str = "imported";

fn record_ready(
    d: &Daemon,
    spec: &BuildSpec,
    snapshot: &Snapshot,
    data_bytes: u64,
    source: &str,
    (reason, message): (&str, String),
) -> Result<(), BuildError> {
    let now = clock::now_string();
    d.inner.store.update_cache(&spec.name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = Phase::Ready;
            s.progress = "100%".into();
            s.snapshot_digest = Some(snapshot.digest.clone());
            s.data_size_bytes = Some(data_bytes);
            s.data_size = Some(clock::human_bytes(data_bytes));
            s.source = Some(source.to_owned());
            s.last_updated_time = now.clone();
            events::record(&mut s.events, NORMAL, reason, message, &now);
        }
    })?;
    Ok(())
}

/// Marks the cache Failed with the cause; a failed cache expires 24 h after failing. The
/// build is over and nobody waits on it, so a write that fails is logged.
pub(super) fn fail(d: &Daemon, spec: &BuildSpec, error: &BuildError) {
    d.inner.metrics.error(error.reason());
    let now = clock::now();
    let now_s = clock::format(now);
    let expire = clock::format(now + time::Duration::hours(24));
    let written = d.inner.store.update_cache(&spec.name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = Phase::Failed;
            s.message = Some(error.to_string());
            s.expire_date_time = Some(expire);
            s.last_updated_time = now_s.clone();
            events::record(
                &mut s.events,
                WARNING,
                error.reason(),
                error.to_string(),
                &now_s,
            );
        }
    });
    record::or_log(
        d,
        written,
        &Owner::Cache(spec.name.clone()),
        "the build's failure",
    );
}
