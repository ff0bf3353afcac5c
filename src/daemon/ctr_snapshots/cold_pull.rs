//! Cold pulls through the snapshotter: the remote-snapshot handshake stargz and SOCI use,
//! with the daemon's own parallel, verified puller behind it.
//!
//! With `disable_snapshot_annotations = false`, containerd's CRI pull labels each layer's
//! Prepare with the image it belongs to (`cri.image-ref`, `cri.manifest-digest`). When such a
//! Prepare names a layer no Ready cache holds, the daemon first gets the whole image into an
//! auto-created cache (imported from `share_registry` when one is shared, built otherwise:
//! bounded, retained and budgeted as every auto-created cache is), and only then lets the
//! Prepare go on; it then finds the layer in that cache and answers it already present, as it
//! does every later layer of the image, so containerd fetches no layer blob. Concurrent pulls
//! of one image wait on one cache. Whatever it cannot do (`snapshotter_pulls = false`, a
//! reference it cannot read, a build that fails) leaves the Prepare to go on as if it had not
//! been asked: containerd then pulls the layers itself, and the reason is logged and counted.
//!
//! The wait happens before the snapshotter's lock is taken, so other requests go on meanwhile.
//!
//! The build pulls with the node's credentials and, when the kubelet's PullImage came through
//! the CRI image service (src/cri), with that pull's own, which the service holds in memory
//! while the call runs (daemon/pull_auth.rs): the Prepare happens inside that call.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::LABEL_TARGET;
use crate::daemon::disks::auto_budget;
use crate::daemon::disks::auto_cache::{self, Reuse};
use crate::daemon::image_access::CRI_MANIFEST_DIGEST_LABEL;
use crate::daemon::Daemon;
use crate::objects::Phase;
use crate::registry::ImageReference;

/// The image reference CRI pulls, on each layer's Prepare.
pub const CRI_IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";

/// How often the wait looks at the cache's phase.
const POLL: Duration = Duration::from_millis(20);
/// A cache that is neither Ready nor Failed after this long is left to build on its own,
/// and containerd pulls this image itself.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How a cold pull ended, as `imagecache_snapshotter_pulls_total{kind}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The image's cache is Ready: containerd finds its layers present.
    Cached,
    /// `snapshotter_pulls = false`.
    Disabled,
    /// The labels do not name an image this daemon can pull.
    BadReference,
    /// No cache is built for it (a recent failure, the state database).
    NotCreated,
    /// The cache failed, was deleted, or did not finish in time.
    BuildFailed,
}

impl Outcome {
    fn kind(self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Disabled => "fallback_disabled",
            Outcome::BadReference => "fallback_bad_reference",
            Outcome::NotCreated => "fallback_not_created",
            Outcome::BuildFailed => "fallback_build_failed",
        }
    }
}

/// Before a Prepare with `labels` takes the snapshotter's lock: when it is CRI's Prepare of a
/// layer no Ready cache holds, gets its image into a cache first (see the module's doc).
pub(crate) async fn before_prepare(d: &Daemon, parent: &str, labels: &BTreeMap<String, String>) {
    let (Some(layer), Some(image), Some(manifest)) = (
        labels.get(LABEL_TARGET),
        labels.get(CRI_IMAGE_REF_LABEL),
        labels.get(CRI_MANIFEST_DIGEST_LABEL),
    ) else {
        return;
    };
    match d.inner.store.caches_with_layer(layer) {
        Ok(held) if held.is_empty() => {}
        // Held already (the Prepare offers it), or unknown: nothing to add.
        Ok(_) => return,
        Err(e) => {
            warn!(%layer, error = %e, "cannot read the layer index: containerd pulls the image itself");
            return;
        }
    }
    let outcome = pull(d, image, manifest, holder_of_parent(d, parent)).await;
    d.metrics().snapshotter_pull(outcome.kind());
}

/// The Ready cache holding the chain the Prepare stacks its layer on (every layer of the
/// image below it), to clone rather than fetch those again.
fn holder_of_parent(d: &Daemon, parent: &str) -> Option<String> {
    if parent.is_empty() {
        return None;
    }
    let record = d.inner.store.get_ctr_snapshot(parent).ok()??;
    let chain = super::ops::chain_id_of(&record)?;
    let held = d.inner.store.caches_with_layer(chain).ok()?;
    let first = held.first()?;
    Some(
        d.inner
            .store
            .cache_by_id(&first.cache_id)
            .ok()??
            .metadata
            .name,
    )
}

async fn pull(d: &Daemon, image: &str, manifest: &str, parent: Option<String>) -> Outcome {
    if !d.inner.config.snapshotter_pulls {
        debug!(%image, "snapshotter_pulls is off: containerd pulls the image itself");
        return Outcome::Disabled;
    }
    // The manifest CRI resolved, so the cache holds exactly the layers containerd prepares.
    let pinned = match image.split_once('@') {
        Some(_) => image.to_owned(),
        None => format!("{image}@{manifest}"),
    };
    let reference = match ImageReference::from_str(&pinned) {
        Ok(r) if r.digest() == Some(manifest) => r,
        Ok(r) => {
            warn!(%image, %manifest, pinned = %r, "the image reference names another manifest than the pull: containerd pulls it itself");
            return Outcome::BadReference;
        }
        Err(e) => {
            warn!(%image, %manifest, error = %e, "cannot read the pulled image's reference: containerd pulls it itself");
            return Outcome::BadReference;
        }
    };
    // The kubelet's own credentials for this pull, when it came through the CRI image
    // service (src/cri): the build uses them, and records which images needed them.
    let pulled_with = ImageReference::from_str(image)
        .ok()
        .and_then(|unpinned| d.inner.pull_auths.for_image(&unpinned));
    let mut notes = Vec::new();
    let floor = d.inner.config.default_cache_size_gib;
    // The layers other caches hold are cloned, not fetched again.
    let reuse = parent.map_or(Reuse::Matching, Reuse::From);
    let lent = pulled_with.is_some();
    let name =
        auto_cache::ensure_cache_of(d, &[reference], &[], pulled_with, floor, reuse, &mut notes)
            .await;
    for note in &notes {
        info!(%image, reason = note.reason, message = %note.message, "cold pull");
    }
    let Some(name) = name else {
        warn!(%image, "no cache is built for this image now: containerd pulls it itself");
        return Outcome::NotCreated;
    };
    info!(%image, cache = %name, with_pull_credentials = lent, "cold pull: the image goes into an auto-created cache first");
    let outcome = wait_ready(d, &name).await;
    if outcome == Outcome::Cached {
        for note in auto_budget::enforce(d, None).await {
            info!(reason = note.reason, message = %note.message, "auto-created caches");
        }
    }
    outcome
}

/// Waits until cache `name` is Ready (Cached) or cannot be (BuildFailed).
async fn wait_ready(d: &Daemon, name: &str) -> Outcome {
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let phase = match d.inner.store.get_cache(name) {
            Ok(Some(cache)) => cache.status.map(|s| (s.phase, s.message)),
            Ok(None) => None,
            Err(e) => {
                warn!(cache = %name, error = %e, "cannot read the cache a cold pull waits on: containerd pulls the image itself");
                return Outcome::BuildFailed;
            }
        };
        match phase {
            Some((Phase::Ready, _)) => return Outcome::Cached,
            Some((Phase::Failed, message)) => {
                warn!(cache = %name, reason = message.as_deref().unwrap_or("none recorded"), "the cold pull's cache failed: containerd pulls the image itself");
                return Outcome::BuildFailed;
            }
            None => {
                warn!(cache = %name, "the cold pull's cache was deleted: containerd pulls the image itself");
                return Outcome::BuildFailed;
            }
            Some(_) => {}
        }
        if tokio::time::Instant::now() > deadline {
            warn!(cache = %name, "the cold pull's cache is not Ready after an hour: containerd pulls the image itself");
            return Outcome::BuildFailed;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = d.inner.shutdown.cancelled() => return Outcome::BuildFailed,
        }
    }
}
