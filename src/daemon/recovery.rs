//! Start-up recovery: builds a previous run left unfinished (or queued) are marked Failed
//! (with an event saying why) and their work files, loop devices and mounts removed, so nothing leaks across
//! a crash or a kill -9.

use tracing::{info, warn};

use super::build::{clean_work_dir, BuildError};
use super::events::WARNING;
use super::{clock, Daemon, DaemonError};

/// Returns the disks to adopt: each reads `Adopting` until `disks::adopt::spawn` has checked
/// it, which the caller starts once the rest of the daemon is up.
pub fn recover(d: &Daemon) -> Result<Vec<String>, DaemonError> {
    let store = &d.inner.store;
    let sys = d.inner.sys.as_ref();
    for build in store.list_builds()? {
        info!(build = %build.id, cache = %build.cache_name, "cleaning up an interrupted build");
        clean_work_dir(sys, std::path::Path::new(&build.work_dir))?;
        store.delete_build(&build.id)?;
    }
    // Anything else under work/ (a crash before the build was recorded) goes too.
    let work = d.work_root();
    if let Ok(entries) = std::fs::read_dir(&work) {
        for entry in entries.flatten() {
            clean_work_dir(sys, &entry.path())?;
        }
    }
    for cache in store.list_caches()? {
        let Some(status) = &cache.status else {
            continue;
        };
        if status.phase.is_terminal() {
            continue;
        }
        warn!(cache = %cache.metadata.name, phase = %status.phase, "build interrupted by a restart: marking it Failed");
        // A queued build never started: its cache says it waited, with the same remedy.
        let why = match status.phase {
            crate::objects::Phase::Queued => BuildError::InterruptedInQueue,
            _ => BuildError::Interrupted,
        };
        let now = clock::now();
        let now_s = clock::format(now);
        store.update_cache(&cache.metadata.name, |c| {
            if let Some(s) = c.status.as_mut() {
                s.phase = crate::objects::Phase::Failed;
                s.message = Some(why.to_string());
                s.expire_date_time = Some(clock::format(now + time::Duration::hours(24)));
                s.last_updated_time = now_s.clone();
                super::events::record(
                    &mut s.events,
                    WARNING,
                    why.reason(),
                    why.to_string(),
                    &now_s,
                );
            }
        })?;
    }
    // A disk whose missing images were still being pulled keeps its data and stays mounted
    // (a pod may be using it), but lacks those images: say so.
    for disk in store.disks_in_phase(crate::objects::DiskPhase::Pulling)? {
        let message = "the daemon stopped while images were being pulled into this disk; delete it and create it again".to_string();
        let now_s = clock::now_string();
        store.update_disk(&disk.metadata.name, |disk| {
            if let Some(s) = disk.status.as_mut() {
                s.phase = crate::objects::DiskPhase::Failed;
                s.message = Some(message.clone());
                super::events::record(&mut s.events, WARNING, "PullInterrupted", message, &now_s);
            }
        })?;
    }
    let orphans = super::disks::remove_orphans(d)?;
    if orphans > 0 {
        warn!(disks = orphans, "removed disks made but never recorded");
    }
    let to_adopt = super::disks::adopt::begin(d)?;
    recount_snapshot_refs(d)?;
    match d.inner.snapshots.clean_staging() {
        Ok(0) => {}
        Ok(n) => warn!(
            entries = n,
            "removed snapshot commits and removals a stop interrupted"
        ),
        Err(e) => warn!(error = %e, "could not remove interrupted snapshot commits"),
    }
    remove_orphan_snapshots(d);
    remove_stale_grown_images(d);
    Ok(to_adopt)
}

/// A stop between taking a snapshot reference and recording its holder (or the other way
/// round) leaves a count no cache, disk or container explains: put each back to its holders.
fn recount_snapshot_refs(d: &Daemon) -> Result<(), DaemonError> {
    for (digest, old, new) in d.inner.store.recount_snapshot_refs()? {
        warn!(%digest, old, new, "snapshot reference count corrected to its holders");
    }
    Ok(())
}

/// Grown images half-made when the daemon stopped, or left by a snapshot that is gone.
fn remove_stale_grown_images(d: &Daemon) {
    let snapshots = &d.inner.snapshots;
    let exists = |digest: &str| snapshots.image_path(digest).is_ok_and(|p| p.exists());
    match snapshots.grown().clean(exists) {
        Ok(removed) => {
            for path in removed {
                warn!(path = %path.display(), "removed a stale grown image");
            }
        }
        Err(e) => warn!(error = %e, "could not look for stale grown images"),
    }
}

/// A snapshot committed just before a crash, whose cache never recorded it, is unreachable:
/// remove it so its space comes back.
fn remove_orphan_snapshots(d: &Daemon) {
    let Ok(listed) = d.inner.snapshots.list() else {
        return;
    };
    for digest in listed.into_iter().map(|s| s.digest) {
        if d.inner.store.snapshot_refs(&digest).unwrap_or(1) == 0 {
            warn!(%digest, "removing a snapshot no cache references");
            match d.inner.snapshots.remove(&digest) {
                Ok(()) => {
                    if let Err(e) = d.inner.store.forget_snapshot(&digest) {
                        warn!(%digest, error = %e, "could not forget a removed snapshot");
                    }
                }
                Err(e) => warn!(%digest, error = %e, "could not remove an orphaned snapshot"),
            }
        }
    }
}
