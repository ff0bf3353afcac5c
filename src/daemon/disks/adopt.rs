//! At start: every disk the store knows is found attached and mounted as it was made, put
//! back so, or marked Failed with an event saying why. None is dropped silently.

use tracing::{info, warn};

use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::{clock, Daemon, DaemonError};
use crate::disk::{self, Reattached};
use crate::objects::DiskPhase;

/// Checks every disk, Failed ones too (a disk whose pull was interrupted keeps its data and
/// its pod); returns how many were attached or mounted again.
pub fn adopt_all(d: &Daemon) -> Result<usize, DaemonError> {
    let mut again = 0;
    for disk in d.inner.store.list_disks()? {
        let id = disk.metadata.name.clone();
        let Some(status) = disk.status else { continue };
        let image = super::image_path(d, &id);
        let mountpoint = status.mountpoint.as_ref().map(std::path::PathBuf::from);
        let outcome = if image.exists() {
            let roots = super::mount_roots(d);
            let roots: Vec<&std::path::Path> = roots.iter().map(|r| r.as_path()).collect();
            disk::reattach(d.inner.sys.as_ref(), &image, mountpoint.as_deref(), &roots)
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
                info!(disk = %id, device = %device.display(), "disk adopted as it was");
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
                d.inner.store.update_disk(&id, |disk| {
                    if let Some(s) = disk.status.as_mut() {
                        s.device = Some(device.to_string_lossy().into_owned());
                        events::record(&mut s.events, NORMAL, "DiskReattached", message, &now);
                    }
                })?;
            }
            Err(reason) => {
                warn!(disk = %id, %reason, "disk could not be put back after the restart");
                let message = format!("the disk could not be put back after the restart: {reason}");
                d.inner.store.update_disk(&id, |disk| {
                    if let Some(s) = disk.status.as_mut() {
                        s.phase = DiskPhase::Failed;
                        s.message = Some(message.clone());
                        events::record(&mut s.events, WARNING, "DiskBroken", message, &now);
                    }
                })?;
            }
        }
    }
    Ok(again)
}
