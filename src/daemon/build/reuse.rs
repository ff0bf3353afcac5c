//! Building a cache from a clone of an existing one (`k8s.aliyun.com/imc-enable-reuse`):
//! the parent's frozen image is reflinked into the work directory, so the new snapshot shares
//! every block the new images do not change, and only the images the parent lacks are pulled.

use std::path::{Path, PathBuf};

use super::{BuildError, BuildSpec};
use crate::daemon::Daemon;
use crate::disk::CloneMode;
use crate::matching::{self, Candidate, DiskRequest, Selection};
use crate::sys::Sys;

pub struct Parent {
    pub image: PathBuf,
    /// What the Reusing event says.
    pub message: String,
}

/// The best-matching Ready cache no larger than the new one, if reflinks make reuse cheap.
pub fn parent(d: &Daemon, spec: &BuildSpec) -> Option<Parent> {
    if d.inner.clone_mode != CloneMode::Reflink {
        tracing::warn!(cache = %spec.name, "reuse asked for, but the state root cannot reflink: building from scratch");
        return None;
    }
    let caches = d.inner.store.list_caches().ok()?;
    let candidates: Vec<Candidate> = caches
        .iter()
        .filter(|c| c.metadata.name != spec.name)
        .filter(|c| c.spec.image_cache_size.unwrap_or(u32::MAX) <= spec.size_gib)
        .filter_map(Candidate::from_cache)
        .collect();
    let annotations = Default::default();
    let request = DiskRequest {
        images: spec.images.clone(),
        annotations: &annotations,
        explicit_cache: None,
    };
    match matching::select(&request, &candidates).ok()? {
        Selection::Clone {
            cache_id,
            matched,
            missing,
            ..
        } => {
            let cache = caches.iter().find(|c| {
                c.status.as_ref().map(|s| s.image_cache_id.as_str()) == Some(&cache_id)
            })?;
            let digest = cache.status.as_ref()?.snapshot_digest.clone()?;
            let image = d.inner.snapshots.image_path(&digest).ok()?;
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
        Selection::Cold { .. } => None,
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
        .map_err(|e| BuildError::Internal(format!("reflink the parent cache's image: {e}")))?;
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
