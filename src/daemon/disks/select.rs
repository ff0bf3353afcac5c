//! Step 1 of a disk create: choose the cache to clone (matching.rs) and the disk's size.

use super::internal;
use crate::daemon::build::is_auto_created;
use crate::daemon::image_access::{self, CacheAccess};
use crate::daemon::{Daemon, DaemonError};
use crate::matching::{self, Candidate, DiskRequest, MatchError, Selection};
use crate::objects::{ValidDisk, KIND_DISK, KIND_IMAGE_CACHE};
use crate::registry::ImageReference;

/// The Ready cache a disk is cloned from.
#[derive(Debug, Clone)]
pub(super) struct ChosenCache {
    pub id: String,
    pub snapshot_digest: String,
    /// What it holds and was built with, for the credentials check (image_access.rs).
    pub access: CacheAccess,
}

/// What the disk starts from once the selection is made.
#[derive(Debug)]
pub(super) struct Plan {
    /// None: an empty disk, every image pulled into it.
    pub cache: Option<ChosenCache>,
    pub matched: Vec<ImageReference>,
    pub missing: Vec<ImageReference>,
    pub size_gib: u32,
    /// Create a cache of these images in the background for the next pod.
    pub auto_create: bool,
    /// Why this cache (or none), for the disk's first event.
    pub reason: String,
    /// Why the cache that matched was not served: its images need credentials this
    /// request's do not give (a `CredentialsRequired` event).
    pub refused: Option<String>,
}

impl Plan {
    pub fn pull_needed(&self) -> bool {
        !self.missing.is_empty()
    }

    /// The plan of a request that may not be served the cache it matched: what an uncached
    /// pull would give it, every image pulled with its own credentials into an empty disk of
    /// the size it asked for. No cache is auto-created for it: one of its images exists.
    fn refused(self, req: &ValidDisk, default_gib: u32, why: String) -> Plan {
        Plan {
            cache: None,
            matched: Vec::new(),
            missing: req.images.clone(),
            size_gib: req.size_gib.unwrap_or(default_gib),
            auto_create: false,
            reason: format!(
                "cache {} matched, but holds images this pod's credentials may not be served (the CredentialsRequired event says which)",
                self.cache.as_ref().map_or("", |c| c.access.name.as_str())
            ),
            refused: Some(why),
        }
    }
}

/// `plan`, unless the cache it clones holds images that need credentials the request's own
/// do not give: then the plan an uncached pull would have.
pub(super) async fn check_credentials(d: &Daemon, req: &ValidDisk, plan: Plan) -> Plan {
    let Some(cache) = &plan.cache else {
        return plan;
    };
    match image_access::refusal(d, &cache.access, &req.pull_secrets).await {
        None => plan,
        Some(why) => plan.refused(req, d.inner.config.default_cache_size_gib, why),
    }
}

/// A selection that found no cache to use is the request's problem, in one of three ways.
fn match_error(e: MatchError) -> DaemonError {
    match &e {
        _ if e.is_not_found() => DaemonError::NotFound {
            kind: KIND_IMAGE_CACHE.into(),
            name: e.to_string(),
        },
        MatchError::CacheNotReady { .. } | MatchError::ConflictingExplicit { .. } => {
            DaemonError::Conflict(e.to_string())
        }
        _ => DaemonError::invalid_field(KIND_DISK, "", "spec", e.to_string()),
    }
}

pub(super) fn plan(d: &Daemon, req: &ValidDisk) -> Result<Plan, DaemonError> {
    let caches = d.inner.store.list_caches().map_err(internal)?;
    let candidates: Vec<Candidate> = caches.iter().filter_map(Candidate::from_cache).collect();
    let request = DiskRequest {
        images: req.images.clone(),
        annotations: &req.annotations,
        explicit_cache: req.cache.clone(),
    };
    match matching::select_on_node(&request, &candidates, d.inner.config.auto_match)
        .map_err(match_error)?
    {
        Selection::Clone {
            cache_id,
            matched,
            missing,
            reason,
            ..
        } => {
            let cache = caches
                .iter()
                .find(|c| {
                    c.status.as_ref().map(|s| s.image_cache_id.as_str()) == Some(cache_id.as_str())
                })
                .ok_or_else(|| DaemonError::not_found(KIND_IMAGE_CACHE, &cache_id))?;
            let digest = cache
                .status
                .as_ref()
                .and_then(|s| s.snapshot_digest.clone())
                .ok_or_else(|| {
                    DaemonError::Conflict(format!(
                        "cache {cache_id} has no snapshot: it is not Ready"
                    ))
                })?;
            let cache_size = cache
                .spec
                .image_cache_size
                .unwrap_or(d.inner.config.default_cache_size_gib);
            let size_gib = req.size_gib.unwrap_or(cache_size);
            // A cache the daemon sized for its images (or for a larger disk) must not turn a
            // pod that asked for less into an error: that pod goes without it.
            if size_gib < cache_size && is_auto_created(&cache.metadata.annotations) {
                return Ok(Plan {
                    cache: None,
                    matched: Vec::new(),
                    missing: req.images.clone(),
                    size_gib,
                    auto_create: false,
                    refused: None,
                    reason: format!(
                        "auto-created cache {} ({cache_id}) holds these images but is {cache_size} GiB, larger than the {size_gib} GiB disk asked for (a disk is never smaller than its cache)",
                        cache.metadata.name
                    ),
                });
            }
            if size_gib < cache_size {
                return Err(DaemonError::invalid_field(
                    KIND_DISK,
                    "",
                    "spec.sizeGiB",
                    format!(
                        "{size_gib} GiB is smaller than cache {cache_id} ({cache_size} GiB): a disk is never smaller than its cache; ask for at least {cache_size}"
                    ),
                ));
            }
            Ok(Plan {
                cache: Some(ChosenCache {
                    id: cache_id,
                    snapshot_digest: digest,
                    access: CacheAccess {
                        name: cache.metadata.name.clone(),
                        images: cache
                            .status
                            .as_ref()
                            .map(|s| s.images.clone())
                            .unwrap_or_default(),
                        pull_secrets: cache.spec.image_pull_secrets.clone(),
                    },
                }),
                matched,
                missing,
                size_gib,
                auto_create: false,
                reason,
                refused: None,
            })
        }
        Selection::Cold {
            auto_create,
            reason,
        } => Ok(Plan {
            cache: None,
            matched: Vec::new(),
            missing: req.images.clone(),
            size_gib: req
                .size_gib
                .unwrap_or(d.inner.config.default_cache_size_gib),
            auto_create,
            reason,
            refused: None,
        }),
    }
}
