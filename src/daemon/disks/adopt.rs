//! At start: every disk the store knows is found attached and mounted as it was made, put
//! back so, or marked Failed with an event saying why. None is dropped silently.
//!
//! The daemon serves while this runs: `begin` marks every disk as waiting (adoption.rs)
//! before the sockets open, and `spawn` adopts them on a thread of their own, against one
//! reading of the kernel's loop devices and mounts (disk_image::Attachments): linear in the disks.

use std::time::Instant;

use tracing::{error, info, warn};

use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::{clock, Daemon, DaemonError};
use crate::disk_image::{self, Attachments, Reattached};
use crate::objects::DiskPhase;

/// Every stored disk waits for adoption from now on; returns their ids, in the store's order.
pub fn begin(d: &Daemon) -> Result<Vec<String>, DaemonError> {
    let ids: Vec<String> = d
        .inner
        .store
        .list_disks()?
        .into_iter()
        .filter(|disk| disk.status.is_some())
        .map(|disk| disk.metadata.name)
        .collect();
    d.inner.adoption.begin(ids.iter().cloned());
    Ok(ids)
}

/// Adopts `ids` on a thread of its own (at the disk operations' priority, below the API's
/// workers). A daemon without a thread to spare adopts them here and now.
pub fn spawn(d: &Daemon, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let daemon = d.clone();
    let started = std::thread::Builder::new()
        .name("imagecached-adopt".into())
        .spawn(move || {
            crate::daemon::background::lower_priority(crate::daemon::background::DISK_NICE);
            adopt_logged(&daemon, &ids);
        });
    if let Err(e) = started {
        warn!(error = %e, "no thread for adopting disks: adopting them before serving");
        // The closure went with the failed spawn: adopt what is still waiting.
        let ids: Vec<String> = begin(d).unwrap_or_default();
        adopt_logged(d, &ids);
    }
}

fn adopt_logged(d: &Daemon, ids: &[String]) {
    let t = Instant::now();
    match adopt_all(d, ids) {
        Ok(again) => info!(
            disks = ids.len(),
            again,
            ms = t.elapsed().as_millis() as u64,
            "every disk adopted after the restart"
        ),
        Err(e) => {
            // Nothing is known of the rest: they fail, as one that could not be checked
            // would, rather than wait for ever.
            error!(error = %e, "adopting disks stopped");
            for id in ids.iter().filter(|id| d.inner.adoption.is_pending(id)) {
                mark_failed(d, id, &format!("it could not be checked: {e}"));
                d.inner.adoption.done(id);
            }
        }
    }
}

/// Checks every disk in `ids`, Failed ones too (a disk whose pull was interrupted keeps its
/// data and its pod); returns how many were attached or mounted again. Each one is done
/// (may be acted on) as soon as its outcome is recorded.
pub fn adopt_all(d: &Daemon, ids: &[String]) -> Result<usize, DaemonError> {
    let kernel = Attachments::read(d.inner.sys.as_ref())?;
    let roots = super::mount_roots(d);
    let roots: Vec<&std::path::Path> = roots.iter().map(|r| r.as_path()).collect();
    let mut again = 0;
    for id in ids {
        crate::fault::delay("disk.adopt");
        let Some(stored) = d.inner.store.get_disk(id)? else {
            d.inner.adoption.done(id);
            continue;
        };
        let Some(status) = stored.status else {
            d.inner.adoption.done(id);
            continue;
        };
        let image = super::image_path(d, id);
        let mountpoint = status.mountpoint.as_ref().map(std::path::PathBuf::from);
        let outcome = if image.exists() {
            disk_image::reattach(
                d.inner.sys.as_ref(),
                &kernel,
                &image,
                mountpoint.as_deref(),
                &roots,
            )
            .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "its image file {} is gone: the pod's data is lost; delete the disk",
                image.display()
            ))
        };
        let now = clock::now_string();
        match outcome {
            Ok(Reattached::AsItWas { device }) => {
                tracing::debug!(disk = %id, device = %device.display(), "disk adopted as it was");
            }
            Ok(Reattached::Again { device }) => {
                again += 1;
                let message = match &mountpoint {
                    Some(m) => format!(
                        "the disk was not mounted after the restart: attached to {} and mounted at {} again",
                        device.display(),
                        m.display()
                    ),
                    None => format!(
                        "the disk was not attached after the restart: attached to {} again",
                        device.display()
                    ),
                };
                info!(disk = %id, %message);
                d.inner.store.update_disk(id, |disk| {
                    if let Some(s) = disk.status.as_mut() {
                        s.device = Some(device.to_string_lossy().into_owned());
                        events::record(&mut s.events, NORMAL, "DiskReattached", message, &now);
                    }
                })?;
            }
            Err(reason) => mark_failed(d, id, &reason),
        }
        d.inner.adoption.done(id);
    }
    Ok(again)
}

fn mark_failed(d: &Daemon, id: &str, reason: &str) {
    warn!(disk = %id, %reason, "disk could not be put back after the restart");
    let message = format!("the disk could not be put back after the restart: {reason}");
    let now = clock::now_string();
    let written = d.inner.store.update_disk(id, |disk| {
        if let Some(s) = disk.status.as_mut() {
            s.phase = DiskPhase::Failed;
            s.message = Some(message.clone());
            events::record(&mut s.events, WARNING, "DiskBroken", message, &now);
        }
    });
    if let Err(e) = written {
        error!(disk = %id, error = %e, "cannot record that a disk could not be put back");
    }
}
