//! Building a cache from a clone of an existing one (`k8s.aliyun.com/imc-enable-reuse`):
//! the parent's frozen image is reflinked into the work directory, so the new snapshot shares
//! every block the new images do not change, and only the images the parent lacks are pulled.

use crate::failure::Failure;
use std::path::{Path, PathBuf};

use super::{BuildError, BuildSpec, REUSE_ANNOTATION};
use crate::daemon::events::{NORMAL, WARNING};
use crate::daemon::owner::Owner;
use crate::daemon::Daemon;
use crate::disk_image::CloneMode;
use crate::matching::{self, Candidate, DiskRequest, Selection};
use crate::sys::Sys;

pub struct Parent {
    pub image: PathBuf,
    /// What the Reusing event says.
    pub message: String,
}

/// The best-matching Ready cache no larger than the new one, if reflinks make reuse cheap.
pub fn parent(d: &Daemon, spec: &BuildSpec) -> Option<Parent> {
    let owner = Owner::Cache(spec.name.clone());
    if d.inner.clone_mode != CloneMode::Reflink {
        tracing::warn!(cache = %spec.name, "reuse asked for, but the state root cannot reflink: building from scratch");
        owner.event(
            d,
            WARNING,
            "ReuseUnavailable",
            format!(
                "{REUSE_ANNOTATION} is \"true\" but the state root ({}) cannot reflink, so a \
                 clone of another cache would be a full copy: building from scratch (put the \
                 state root on XFS with reflink=1, or set backing_image)",
                d.inner.config.root.display()
            ),
        );
        return None;
    }
    let caches = match d.inner.store.list_caches() {
        Ok(caches) => caches,
        Err(e) => {
            owner.event(
                d,
                WARNING,
                "ReuseUnavailable",
                format!("could not list the caches to reuse one ({e}): building from scratch"),
            );
            return None;
        }
    };
    let candidates: Vec<Candidate> = caches
        .iter()
        .filter(|c| c.metadata.name != spec.name)
        .filter(|c| c.spec.image_cache_size.unwrap_or(u32::MAX) <= spec.size_gib)
        // The new snapshot holds all of its parent's files, while its status lists only its
        // own images, which is what decides who may be served it (image_access.rs): a parent
        // holding an image that needed credentials would hand that image to anyone.
        .filter(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.images.iter().all(|i| !i.credentials_required))
        })
        .filter_map(Candidate::from_cache)
        .collect();
    if let Some(named) = spec.reuse_from.as_deref() {
        // Eligible as any candidate is: no larger, no image that needed credentials, Ready.
        let eligible = candidates
            .iter()
            .find(|k| k.name == named && k.phase == crate::objects::Phase::Ready)
            .and_then(|_| caches.iter().find(|c| c.metadata.name == named));
        let snapshot = eligible
            .and_then(|c| c.status.as_ref()?.snapshot_digest.as_deref())
            .and_then(|digest| d.inner.snapshots.image_path(digest).ok());
        match (eligible, snapshot) {
            (Some(_), Some(image)) => {
                return Some(Parent {
                    image,
                    message: format!(
                        "Reusing cache {named}: it holds the layers below the first one no cache holds"
                    ),
                });
            }
            _ => {
                tracing::info!(cache = %spec.name, parent = %named, "the cache to reuse is not eligible (gone, not Ready, larger, or holding an image that needed credentials): matching by images")
            }
        }
    }
    let annotations = Default::default();
    let request = DiskRequest {
        images: spec.images.clone(),
        annotations: &annotations,
        explicit_cache: None,
    };
    let no_candidate = |why: String| {
        owner.event(
            d,
            NORMAL,
            "NoReuseCandidate",
            format!("{REUSE_ANNOTATION} is \"true\" but {why}: building from scratch"),
        );
        None
    };
    let selection = match matching::select(&request, &candidates) {
        Ok(s) => s,
        Err(e) => return no_candidate(e.to_string()),
    };
    match selection {
        Selection::Clone {
            cache_id,
            matched,
            missing,
            ..
        } => {
            let cache = caches.iter().find(|c| {
                c.status.as_ref().map(|s| s.image_cache_id.as_str()) == Some(&cache_id)
            })?;
            let Some(digest) = cache.status.as_ref()?.snapshot_digest.clone() else {
                return no_candidate(format!("cache {cache_id} has no snapshot"));
            };
            let image = match d.inner.snapshots.image_path(&digest) {
                Ok(image) => image,
                Err(e) => {
                    return no_candidate(format!("the image of cache {cache_id} is unusable ({e})"))
                }
            };
            Some(Parent {
                image,
                message: format!(
                    "Reusing cache {cache_id} ({}): it holds {} of {} image(s); pulling only {}",
                    cache.metadata.name,
                    matched.len(),
                    spec.images.len(),
                    if missing.is_empty() {
                        "nothing".to_string()
                    } else {
                        missing
                            .iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            })
        }
        Selection::Cold { .. } => no_candidate(format!(
            "no Ready cache of at most {} GiB holds any of its images",
            spec.size_gib
        )),
    }
}

/// Reflinks the parent's image to `image` (writable) and grows it to `size_bytes`.
pub fn clone_parent(
    sys: &dyn Sys,
    parent: &Path,
    image: &Path,
    size_bytes: u64,
) -> Result<(), BuildError> {
    sys.reflink(parent, image)
        .map_err(|e| BuildError::Internal(Failure::new("reflink the parent cache's image", e)))?;
    // The frozen parent is read-only; this copy is the new build's to write.
    std::fs::set_permissions(image, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| BuildError::io("make writable", image, e))?;
    let current = std::fs::metadata(image)
        .map_err(|e| BuildError::io("stat", image, e))?
        .len();
    if size_bytes > current {
        crate::image::grow(image, size_bytes)?;
    }
    Ok(())
}
