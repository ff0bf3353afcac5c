//! `imagecache pull REF [--name NAME]`: a cache made from a shared snapshot named by
//! reference, not by this node's content key. The artifact is read first (its images, size
//! and platform); a cache of those images is created whose [`IMPORT_ANNOTATION`] pins the
//! manifest digest just read, and its build imports that snapshot, checked like every import
//! against what this node resolves, or builds the images itself when it cannot be used.

use std::collections::BTreeMap;
use std::str::FromStr as _;

use crate::daemon::build::IMPORT_ANNOTATION;
use crate::daemon::{handlers, Daemon, DaemonError, Reply};
use crate::objects::{
    ImageCache, ImageCacheSpec, ObjectMeta, SnapshotPull, ValidImageCache, API_VERSION,
    KIND_IMAGE_CACHE, MAX_CACHE_SIZE_GIB, MIN_CACHE_SIZE_GIB,
};
use crate::registry::ImageReference;
use crate::share::{ShareError, SnapshotRef};

/// What a pull of no explicit name is called: one name per snapshot, whichever reference
/// named it.
fn default_name(manifest_digest: &str) -> String {
    let hex = manifest_digest.trim_start_matches("sha256:");
    format!("shared-{}", &hex[..hex.len().min(12)])
}

pub(crate) async fn pull(d: &Daemon, request: SnapshotPull) -> Result<Reply, DaemonError> {
    let label = request.name.clone().unwrap_or_default();
    let invalid = |message: String| {
        DaemonError::invalid_field(KIND_IMAGE_CACHE, &label, "reference", message)
    };
    let share = d.inner.share.as_deref().map(|r| &r.target);
    let named = SnapshotRef::parse(&request.reference, share).map_err(&invalid)?;
    let remote = super::remote_of(&d.inner.config, named.target.clone());
    let artifact = match remote.pull_artifact(&named.tag_or_digest).await {
        Ok(Some(artifact)) => artifact,
        Ok(None) => {
            return Err(DaemonError::not_found(
                "shared snapshot",
                &named.to_string(),
            ))
        }
        Err(e @ ShareError::Invalid(_)) => {
            return Err(invalid(format!(
                "{named} is not an imagecache snapshot: {e}"
            )))
        }
        Err(e) => {
            return Err(DaemonError::Unavailable(format!(
                "cannot read {named}: {e}; check the registry and the node's credentials for it"
            )))
        }
    };
    let config = artifact.config;
    let platform = d.inner.registry.platform().to_string();
    if config.platform != platform {
        return Err(invalid(format!(
            "{named} was built for {}; this node runs {platform}",
            config.platform
        )));
    }
    if !(MIN_CACHE_SIZE_GIB..=MAX_CACHE_SIZE_GIB).contains(&config.size_gib) {
        return Err(invalid(format!(
            "{named} records a cache of {} GiB; caches are {MIN_CACHE_SIZE_GIB} to {MAX_CACHE_SIZE_GIB} GiB",
            config.size_gib
        )));
    }
    let images = config
        .images
        .iter()
        .map(|i| {
            ImageReference::from_str(&i.image)
                .map_err(|e| invalid(format!("{named} records {:?}: {e}", i.image)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pinned = named.pinned(&artifact.manifest_digest);
    let name = request
        .name
        .unwrap_or_else(|| default_name(&artifact.manifest_digest));
    let object = ImageCache {
        api_version: API_VERSION.into(),
        kind: KIND_IMAGE_CACHE.into(),
        metadata: ObjectMeta {
            name,
            annotations: BTreeMap::from([(IMPORT_ANNOTATION.to_owned(), pinned.to_string())]),
            ..Default::default()
        },
        spec: ImageCacheSpec {
            images: images.iter().map(ToString::to_string).collect(),
            image_cache_size: Some(config.size_gib),
            ..Default::default()
        },
        status: None,
    };
    tracing::info!(cache = %object.metadata.name, snapshot = %pinned, "pulling a shared snapshot");
    handlers::create_cache(
        d,
        ValidImageCache {
            object,
            images,
            size_gib: config.size_gib,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_default_name_is_a_dns_label_of_the_digest() {
        let name = super::default_name(
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        assert_eq!(name, "shared-0123456789ab");
        crate::api::validate::check_name(&name).unwrap();
    }
}
