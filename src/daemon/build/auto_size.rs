//! The size of an auto-created cache, from its images' manifests: nobody chose it, so it is
//! made big enough for what it holds (and never below the size it was created with: the
//! node's default and the size of the disk that asked for it).
//!
//! The estimate: each distinct layer's compressed size (from the manifests the build resolves
//! anyway), times [`UNPACK_RATIO`] for what it unpacks to, plus [`FS_OVERHEAD`] for ext4's
//! metadata and the OCI layout. Registries do not say how big a layer is unpacked, so this is
//! a guess that errs large: a cache too small fails its build, while a large one costs only
//! metadata (the image is a sparse file and the frozen snapshot keeps only written blocks).

use std::collections::BTreeSet;

use super::BuildError;
use crate::daemon::events::NORMAL;
use crate::daemon::{clock, events, Daemon};
use crate::objects::MAX_CACHE_SIZE_GIB;
use crate::registry::ResolvedImage;

/// Unpacked bytes per compressed byte: gzip of the text and binaries images hold rarely does
/// better than 4:1.
const UNPACK_RATIO: u64 = 4;
/// ext4 metadata, the journal and the layout's blobs, as a fraction of the data (1/4).
const FS_OVERHEAD_DIV: u64 = 4;
pub(super) const FS_OVERHEAD: &str = "25%";

/// The GiB the images need by the estimate above, at least `floor_gib`.
pub(super) fn size_for(resolved: &[ResolvedImage], floor_gib: u32) -> u32 {
    let mut seen = BTreeSet::new();
    let compressed: u64 = resolved
        .iter()
        .flat_map(|i| &i.layers)
        .filter(|l| seen.insert(l.digest.as_str()))
        .map(|l| l.size)
        .sum();
    let unpacked = compressed.saturating_mul(UNPACK_RATIO);
    let needed = unpacked.saturating_add(unpacked / FS_OVERHEAD_DIV);
    let gib = needed.div_ceil(1 << 30).min(u64::from(MAX_CACHE_SIZE_GIB)) as u32;
    gib.max(floor_gib)
}

/// Sizes the cache `name` for `resolved`: records the size on its spec (so matching and the
/// disks cloned from it see it) with a `Sized` event; returns it.
pub(super) fn record(
    d: &Daemon,
    name: &str,
    resolved: &[ResolvedImage],
    floor_gib: u32,
) -> Result<u32, BuildError> {
    let size = size_for(resolved, floor_gib);
    let now = clock::now_string();
    let message = format!(
        "Sized to {size} GiB for {} image(s): their layers unpacked, estimated at {UNPACK_RATIO}x \
         their compressed size plus {FS_OVERHEAD} for the filesystem, and at least {floor_gib} GiB",
        resolved.len()
    );
    d.inner.store.update_cache(name, |c| {
        c.spec.image_cache_size = Some(size);
        if let Some(s) = c.status.as_mut() {
            events::record(&mut s.events, NORMAL, "Sized", message, &now);
        }
    })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{LayerDescriptor, RawBlob, RawManifest};

    fn image(layers: &[(&str, u64)]) -> ResolvedImage {
        ResolvedImage {
            reference: "example.com/a:1".parse().unwrap(),
            index: None,
            manifest: RawManifest {
                media_type: String::new(),
                digest: String::new(),
                bytes: Vec::new(),
            },
            config: RawBlob {
                digest: String::new(),
                media_type: String::new(),
                bytes: Vec::new(),
            },
            layers: layers
                .iter()
                .map(|(digest, size)| LayerDescriptor {
                    digest: (*digest).into(),
                    size: *size,
                    media_type: String::new(),
                    diff_id: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn small_images_keep_the_floor_and_large_ones_grow_it() {
        assert_eq!(size_for(&[image(&[("a", 100 << 20)])], 20), 20);
        // 10 GiB compressed: 40 GiB unpacked, 50 GiB with the filesystem.
        assert_eq!(size_for(&[image(&[("a", 10 << 30)])], 20), 50);
        // A layer shared by two images counts once.
        let two = [image(&[("a", 10 << 30)]), image(&[("a", 10 << 30)])];
        assert_eq!(size_for(&two, 20), 50);
        assert_eq!(
            size_for(&[image(&[("a", 1 << 50)])], 20),
            MAX_CACHE_SIZE_GIB
        );
    }
}
