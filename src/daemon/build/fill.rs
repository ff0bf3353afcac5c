//! Filling a mounted cache filesystem with images: what a cache build, a reused cache and a
//! disk's missing images all do. Layers the filesystem already holds are not fetched again.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::{layers, writeback, BuildError};
use crate::daemon::owner::Owner;
use crate::daemon::progress::Progress;
use crate::daemon::Daemon;
use crate::layout;
use crate::registry::{Keyring, ResolvedImage};

#[allow(clippy::too_many_arguments)]
pub async fn fill(
    d: &Daemon,
    owner: &Owner,
    resolved: Vec<ResolvedImage>,
    keyring: &Arc<Keyring>,
    root: &Path,
    size_gib: u32,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<Plan, BuildError> {
    let existing = match layout::read_snapshots(root) {
        Ok(held) => held,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(BuildError::io("read snapshots.json in", root, e)),
    };
    let plan = Plan::new(resolved, existing)?;
    plan.write_layout(root)?;
    let progress = Arc::new(Progress::default());
    progress
        .total
        .store(plan.total_bytes(), std::sync::atomic::Ordering::Relaxed);
    let flusher = writeback::start(d.inner.sys.clone(), root.to_owned());
    let pulled = layers::pull_all(
        d, owner, size_gib, &plan, keyring, root, progress, started, cancel,
    )
    .await;
    flusher.stop().await;
    let stats = pulled?;
    layers::inherit_implicit_dirs(&plan, &stats, root).await?;
    plan.write_snapshots(root, &stats)?;
    Ok(plan)
}
