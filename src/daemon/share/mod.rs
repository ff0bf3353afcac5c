//! Sharing frozen snapshots through `share_registry` (src/share): a cache that becomes Ready
//! by building is pushed in the background (push.rs); a cache about to build first looks its
//! content key up and imports what it finds (import.rs), falling back to building on any
//! failure.

pub(crate) mod import;
pub(crate) mod pull;
pub(crate) mod push;

use std::time::Duration;

use crate::config::Config;
use crate::registry::{chain_ids, ResolvedImage};
use crate::share::{content_key, KeyedImage, ShareRemote, ShareTarget, SharedImage};

/// The share registry as the config names it, or `None` when sharing is off.
pub(crate) fn remote(config: &Config) -> Option<ShareRemote> {
    if config.share_registry.is_empty() {
        return None;
    }
    // Checked when the config was read.
    let target = ShareTarget::parse(&config.share_registry).ok()?;
    Some(remote_of(config, target))
}

/// `target` with the node's registry settings: its mirrors, plain HTTP where the config
/// allows it, credentials from `docker_config`, `registry_timeout_secs`.
pub(crate) fn remote_of(config: &Config, target: ShareTarget) -> ShareRemote {
    ShareRemote::new(
        target,
        &config.insecure_registries,
        &config.registry_mirrors,
        config.docker_config.as_deref(),
        Duration::from_secs(config.registry_timeout_secs),
    )
}

/// What a cache of `resolved` at `size_gib` is shared as: its content key and the images as
/// the artifact records them.
#[derive(Debug, Clone)]
pub(crate) struct Shareable {
    pub key: String,
    pub platform: String,
    pub size_gib: u32,
    pub images: Vec<SharedImage>,
}

impl Shareable {
    /// What a stored Ready cache is shared as, from the images it recorded.
    pub fn of_cache(
        platform: &str,
        size_gib: u32,
        images: &[crate::objects::CachedImage],
    ) -> Shareable {
        let images: Vec<SharedImage> = images
            .iter()
            .map(|i| SharedImage {
                image: i.image.clone(),
                digest: i
                    .resolved_digest
                    .clone()
                    .unwrap_or_else(|| i.digest.clone()),
                chain_ids: i.chain_ids.clone(),
            })
            .collect();
        Self::keyed(platform, size_gib, images)
    }

    pub fn of(platform: &str, size_gib: u32, resolved: &[ResolvedImage]) -> Shareable {
        let images: Vec<SharedImage> = resolved
            .iter()
            .map(|r| SharedImage {
                image: r.reference.to_string(),
                digest: r.pinned_reference().digest().unwrap_or_default().to_owned(),
                chain_ids: chain_ids(&r.diff_ids()),
            })
            .collect();
        Self::keyed(platform, size_gib, images)
    }

    fn keyed(platform: &str, size_gib: u32, images: Vec<SharedImage>) -> Shareable {
        let keyed: Vec<KeyedImage> = images
            .iter()
            .map(|i| KeyedImage {
                image: i.image.clone(),
                digest: i.digest.clone(),
            })
            .collect();
        Shareable {
            key: content_key(platform, size_gib, &keyed),
            platform: platform.to_owned(),
            size_gib,
            images,
        }
    }
}
