//! Freezing a built image into a read-only, content-addressed block snapshot (design §6):
//! the frozen file caches are built into and disks are cloned from. containerd's snapshots
//! (layer directories chained by parent) are another thing: `daemon::ctr_snapshots`.
//!
//! The image file is split into fixed-size chunks on a grid of file offsets; only chunks that
//! overlap data extents (SEEK_DATA/SEEK_HOLE) are read, so a 20 GiB image with 500 MB of
//! content costs 500 MB of hashing. Each chunk's sha256 goes into a `ChunkManifest`, and the
//! snapshot's digest is the sha256 of the manifest's canonical bytes, which are exactly what
//! `manifest.json` holds (so `sha256sum manifest.json` prints the digest).
//!
//! Chunks whose content is all zeros are left out, as holes are: whether the filesystem
//! allocated zeros or left a hole is an accident of how the file was written or copied, not
//! content, and the digest should not depend on it.

mod error;
mod grown;
mod hash;
mod manifest;
mod store;
mod verify;

pub use error::{Result, SnapshotError};
pub use grown::{Grown, GrownImages, KEEP_PER_SNAPSHOT};
pub use hash::{hash_file, hash_file_beside, hash_file_with, DEFAULT_CHUNK_SIZE};
pub(crate) use manifest::sha256_digest;
pub use manifest::{parse_digest, Chunk, ChunkManifest, MANIFEST_VERSION};
pub use store::{Snapshot, SnapshotStore};
pub use verify::{compare, verify_file, ChunkMismatch, SizeChange, VerifyReport};
