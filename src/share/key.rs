//! The content key a shared snapshot is tagged by: what a node knows before it builds
//! (the images as resolved, the platform, the cache's size, the format), so two nodes
//! about to build the same cache compute the same key.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::artifact::FORMAT_VERSION;

/// One image of a cache as the key sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyedImage {
    /// The normalised reference as the cache names it.
    pub image: String,
    /// The digest the reference resolved to (the index's when it named one).
    pub digest: String,
}

#[derive(Serialize)]
struct KeyInput<'a> {
    format: u32,
    platform: &'a str,
    size_gib: u32,
    images: &'a [KeyedImage],
}

/// "sha256:<hex>" over the canonical JSON of format, platform, size and images, in the
/// cache's order (the order decides the snapshot's layout, so it is part of the content).
pub fn content_key(platform: &str, size_gib: u32, images: &[KeyedImage]) -> String {
    let input = KeyInput {
        format: FORMAT_VERSION,
        platform,
        size_gib,
        images,
    };
    let bytes = serde_json::to_vec(&input).expect("plain strings and integers serialise");
    crate::block_snapshot::sha256_digest(&bytes)
}

/// The tag a key is pushed under: a tag may not hold ':'.
pub fn tag_for_key(key: &str) -> String {
    key.replace(':', "-")
}

/// The tag that points a single image (its resolved digest, on `platform`) at a shared
/// snapshot holding it, so a node that wants that one image can find one.
pub fn tag_for_image(platform: &str, digest: &str) -> String {
    let mut h = Sha256::new();
    for part in [&FORMAT_VERSION.to_string(), platform, digest] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("image-{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(digest: &str) -> KeyedImage {
        KeyedImage {
            image: "127.0.0.1:5000/a:1".into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn the_key_changes_with_every_input_and_only_with_them() {
        let base = content_key("linux/amd64", 20, &[image("sha256:1")]);
        assert_eq!(base, content_key("linux/amd64", 20, &[image("sha256:1")]));
        for other in [
            content_key("linux/arm64", 20, &[image("sha256:1")]),
            content_key("linux/amd64", 21, &[image("sha256:1")]),
            content_key("linux/amd64", 20, &[image("sha256:2")]),
            content_key("linux/amd64", 20, &[image("sha256:1"), image("sha256:2")]),
        ] {
            assert_ne!(base, other);
        }
        let tag = tag_for_key(&base);
        assert!(tag.starts_with("sha256-") && tag.len() == 71, "{tag}");
        let image_tag = tag_for_image("linux/amd64", "sha256:1");
        assert!(
            image_tag.starts_with("image-") && image_tag.len() == 70,
            "{image_tag}"
        );
        assert_ne!(image_tag, tag_for_image("linux/arm64", "sha256:1"));
        assert_ne!(image_tag, tag_for_image("linux/amd64", "sha256:2"));
    }
}
