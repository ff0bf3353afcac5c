//! An "oversized" layer: one regular file whose tar entry claims `size` bytes of zeros,
//! compressed with zstd so the blob stays tiny. Used to check that a build into a cache
//! smaller than the image fails cleanly instead of filling the host.
//!
//! The tar is streamed through the compressor and the diffID hasher, never held. Hashing
//! 21 GiB still takes a while (~17 s release; ~25 min in a debug build), so the result is
//! cached on disk per size: the first caller pays, later ones read ~700 KB.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::super::oci::{Compression, Image, Layer, LayerWriter, ManifestFormat};
use super::tarw::TarWriter;

pub const GIB: u64 = 1 << 30;

/// Name of the single huge file inside the layer.
pub const OVERSIZED_PATH: &str = "huge/zeros.bin";

/// One place for debug tests and the release `gen-image` example alike, so
/// `cargo run --release --example gen-image -- --kind oversized ...` warms the cache that
/// debug-built tests (which hash ~100x slower) then read.
fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("imagecache-testkit-cache")
}

/// Builds the layer without the cache.
pub fn build_oversized_layer(size: u64) -> Layer {
    let mut tw = TarWriter::new(LayerWriter::with_level(Compression::Zstd, Some(1)));
    tw.dir_header("huge/", 0o755).unwrap();
    tw.file_header(OVERSIZED_PATH, size, 0o644, 0, 0, 1_690_000_000)
        .unwrap();
    let zeros = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        tw.get_mut().write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    tw.pad(size).unwrap();
    tw.finish().unwrap().finish()
}

/// The layer for `size`, from the on-disk cache when a previous run made it.
pub fn oversized_layer(size: u64) -> Layer {
    let dir = cache_dir();
    let blob_path = dir.join(format!("oversized-{size}.tar.zst"));
    let meta_path = dir.join(format!("oversized-{size}.diffid"));
    if let (Ok(blob), Ok(meta)) = (fs::read(&blob_path), fs::read_to_string(&meta_path)) {
        if let Some((diff_id, len)) = meta.trim().split_once(' ') {
            if let Ok(len) = len.parse() {
                return Layer::from_parts(blob, Compression::Zstd, diff_id.to_string(), len);
            }
        }
    }
    let layer = build_oversized_layer(size);
    fs::create_dir_all(&dir).unwrap();
    // Write-then-rename so a concurrent test never reads half a cache entry; blob first,
    // since the meta file is what marks the entry complete.
    let tmp = dir.join(format!("oversized-{size}.{}.tmp", std::process::id()));
    fs::write(&tmp, &layer.blob).unwrap();
    fs::rename(&tmp, &blob_path).unwrap();
    fs::write(
        &tmp,
        format!("{} {}\n", layer.diff_id, layer.uncompressed_size),
    )
    .unwrap();
    fs::rename(&tmp, &meta_path).unwrap();
    layer
}

/// A single-layer OCI image whose layer unpacks to `size` bytes, e.g. `21 * GIB` against a
/// 20 GiB cache.
pub fn oversized_image(size: u64) -> Image {
    Image::new(vec![oversized_layer(size)], ManifestFormat::Oci)
}
