//! Frozen snapshots shared through an OCI registry (`share_registry`): a node that built a
//! cache pushes its snapshot as an OCI artifact; a node about to build the same cache (the
//! same images at the same digests, platform, size and format) imports it instead. The
//! artifact's layers are the snapshot's data chunks, zstd-compressed, holes omitted; its
//! config is the chunk manifest and what the snapshot was built from. Nothing but a registry
//! (and whatever mirrors a cluster puts in front of it) goes between nodes.

mod artifact;
mod error;
mod key;
mod reference;
mod remote;

pub(crate) use artifact::manifest_bytes;
pub use artifact::{
    ChunkBlob, ShareConfig, SharedImage, ARTIFACT_TYPE, CHUNK_MEDIA_TYPE, CONFIG_MEDIA_TYPE,
    FORMAT_VERSION,
};
pub use error::ShareError;
pub use key::{content_key, tag_for_image, tag_for_key, KeyedImage};
pub use reference::SnapshotRef;
pub use remote::{Artifact, ShareRemote, ShareTarget};
