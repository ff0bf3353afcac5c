//! Step 6 of a disk create that lacks images: pull them into the disk in the background, and
//! record the outcome on the disk.

use crate::failure::Failure;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::daemon::build::{fill::fill, keyring_for, BuildError};
use crate::daemon::events::{self, NORMAL, WARNING};
use crate::daemon::owner::Owner;
use crate::daemon::{clock, record, Daemon};
use crate::objects::DiskPhase;
use crate::registry::ImageReference;

/// What to pull into which disk.
pub(super) struct PullJob {
    pub id: String,
    pub images: Vec<ImageReference>,
    pub pull_secrets: Vec<String>,
    pub size_gib: u32,
    pub device: PathBuf,
    /// None: the disk is attached only, and mounted just for the pull.
    pub mountpoint: Option<PathBuf>,
}

pub(super) fn spawn(d: &Daemon, job: PullJob) {
    let cancel = d.inner.shutdown.child_token();
    let running = d
        .inner
        .jobs
        .start(Owner::Disk(job.id.clone()), cancel.clone());
    let d2 = d.clone();
    d.inner.tasks.spawn(async move {
        // Leaves the running jobs however the task ends, a panic included.
        let _running = running;
        let started = Instant::now();
        let result = pull(&d2, &job, started, &cancel).await;
        record_outcome(&d2, &job, &result, started.elapsed().as_secs_f64() * 1e3);
    });
}

/// Ready with the pulled images, or Failed with the cause, on the disk's status.
fn record_outcome(d: &Daemon, job: &PullJob, result: &Result<(), BuildError>, ms: f64) {
    let now = clock::now_string();
    let recorded = d.inner.store.update_disk(&job.id, |disk| {
        if let Some(s) = disk.status.as_mut() {
            s.timings.pull_ms = ms;
            match result {
                Ok(()) => {
                    s.phase = DiskPhase::Ready;
                    s.pulled_images = job.images.iter().map(|r| r.to_string()).collect();
                    events::record(
                        &mut s.events,
                        NORMAL,
                        "Pulled",
                        format!(
                            "Pulled {} image(s) into the disk in {:.1}s",
                            job.images.len(),
                            ms / 1e3
                        ),
                        &now,
                    );
                }
                Err(e) => {
                    s.phase = DiskPhase::Failed;
                    s.message = Some(e.to_string());
                    events::record(&mut s.events, WARNING, e.reason(), e.to_string(), &now);
                }
            }
        }
    });
    record::or_log(
        d,
        recorded,
        &Owner::Disk(job.id.clone()),
        "the outcome of the pull",
    );
}

async fn pull(
    d: &Daemon,
    job: &PullJob,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<(), BuildError> {
    let keyring = keyring_for(d, &job.pull_secrets)?;
    let resolved = crate::daemon::build::plan::resolve_all(d, &job.images, &keyring).await?;
    let device = &job.device;
    // An attach-only disk is mounted just for the pull.
    let temp_mount = match &job.mountpoint {
        Some(_) => None,
        None => {
            let at = d.work_root().join(format!(
                "fill-{}",
                device.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::create_dir_all(&at).map_err(|e| BuildError::io("create", &at, e))?;
            // A mount can take 100+ ms while builds write: off the API's workers.
            tokio::task::block_in_place(|| {
                d.inner
                    .sys
                    .mount(device, &at, "ext4", Default::default(), "")
            })
            .map_err(|e| {
                BuildError::Internal(Failure::new(
                    format!("mount {} for the pull", device.display()),
                    e,
                ))
            })?;
            Some(at)
        }
    };
    let root = job
        .mountpoint
        .clone()
        .or_else(|| temp_mount.clone())
        .expect("one of the two is set");
    let owner = Owner::Disk(job.id.clone());
    let filled = fill(
        d,
        &owner,
        resolved,
        &keyring,
        &root,
        job.size_gib,
        started,
        cancel,
    )
    .await;
    let synced = tokio::task::block_in_place(|| d.inner.sys.syncfs(&root));
    if let Some(at) = &temp_mount {
        unmount_temp(d, at);
    }
    filled?;
    synced.map_err(|e| BuildError::Internal(Failure::new("sync the disk", e)))
}

/// Best effort: the pull's outcome stands either way, but a mount left behind is worth a line.
fn unmount_temp(d: &Daemon, at: &Path) {
    if let Err(e) =
        tokio::task::block_in_place(|| crate::sys::unmount_settled(d.inner.sys.as_ref(), at))
    {
        warn!(mountpoint = %at.display(), error = %e, "could not unmount the disk after its pull");
    }
    let _ = std::fs::remove_dir(at);
}
