//! Step 3 of a disk create that matched no cache: a cache of the disk's images, built in the
//! background, so the next pod with them gets a clone.

use std::collections::BTreeMap;

use sha2::Digest;
use tracing::warn;

use crate::daemon::{handlers, Daemon, DaemonError};
use crate::objects::*;

/// The cache's name, made from the images so pods with the same images share one; `None`
/// when it could not be created (logged: the disk itself is fine without it).
pub(super) fn ensure_cache_of(d: &Daemon, req: &ValidDisk) -> Option<String> {
    let mut names: Vec<String> = req.images.iter().map(|r| r.to_string()).collect();
    names.sort();
    let digest = hex::encode(sha2::Sha256::digest(names.join("\n").as_bytes()));
    let name = format!("auto-{}", &digest[..16]);
    if d.inner.store.get_cache(&name).ok().flatten().is_some() {
        return Some(name);
    }
    let object = ImageCache {
        api_version: API_VERSION.into(),
        kind: KIND_IMAGE_CACHE.into(),
        metadata: ObjectMeta {
            name: name.clone(),
            annotations: BTreeMap::from([(
                "imagecache.io/auto-created".to_owned(),
                "true".to_owned(),
            )]),
            ..Default::default()
        },
        spec: ImageCacheSpec {
            images: names,
            image_pull_secrets: req.pull_secrets.clone(),
            image_cache_size: Some(d.inner.config.default_cache_size_gib),
            retention_days: None,
        },
        status: None,
    };
    let valid = ValidImageCache {
        object,
        images: req.images.clone(),
        size_gib: d.inner.config.default_cache_size_gib,
    };
    match handlers::create_cache(d, valid) {
        Ok(_) => Some(name),
        Err(DaemonError::AlreadyExists { .. }) => Some(name),
        Err(e) => {
            warn!(error = %e, "could not auto-create a cache");
            None
        }
    }
}
