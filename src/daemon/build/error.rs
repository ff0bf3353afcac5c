//! Why a build failed, in words an operator can act on. The message becomes the cache's
//! `status.message` and a Warning event.

use std::path::{Path, PathBuf};

use crate::registry::RegistryError;
use crate::unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("pull secrets: {0}")]
    Secrets(Box<RegistryError>),
    #[error("failed to resolve image {image}: {source}")]
    Resolve {
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("failed to fetch layer {digest} of image {image}: {source}")]
    Fetch {
        image: String,
        digest: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("layer {digest} of image {image} was refused: {source}")]
    Layer {
        image: String,
        digest: String,
        #[source]
        source: Box<UnpackError>,
    },
    #[error(
        "the images do not fit in imageCacheSize {size_gib} GiB: their layers hold {} of files; \
         create the cache again with imageCacheSize of at least {} GiB",
        crate::daemon::clock::human_bytes(*needed_bytes),
        suggested_gib(*needed_bytes)
    )]
    NoSpace { needed_bytes: u64, size_gib: u32 },
    #[error(
        "the host filesystem holding the state root {} is full ({} free of {}): the cache \
         image could not be written; free space there or give the state root a larger \
         filesystem (the build stopped at: {cause})",
        root.display(),
        crate::daemon::clock::human_bytes(*free),
        crate::daemon::clock::human_bytes(*total)
    )]
    HostFull {
        root: PathBuf,
        free: u64,
        total: u64,
        cause: Box<BuildError>,
    },
    #[error("cache image: {0}")]
    Image(Box<crate::image::ImageError>),
    #[error("snapshot: {0}")]
    Snapshot(Box<crate::block_snapshot::SnapshotError>),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("build cancelled")]
    Cancelled,
    #[error("the daemon stopped while this cache was being built; delete the cache and create it again to rebuild it")]
    Interrupted,
    #[error("the daemon stopped while this cache waited in the build queue; delete the cache and create it again to build it")]
    InterruptedInQueue,
    #[error("internal error: {0}")]
    Internal(#[source] crate::failure::Failure),
}

/// The size to ask for: the files plus room for ext4's metadata and journal, rounded up to
/// whole GiB and never below the API's minimum.
pub fn suggested_gib(needed_bytes: u64) -> u64 {
    let with_overhead = needed_bytes + needed_bytes / 10 + (512 << 20);
    with_overhead
        .div_ceil(1 << 30)
        .max(u64::from(crate::objects::MIN_CACHE_SIZE_GIB))
}

impl From<RegistryError> for BuildError {
    fn from(e: RegistryError) -> Self {
        BuildError::Secrets(Box::new(e))
    }
}

impl From<crate::image::ImageError> for BuildError {
    fn from(e: crate::image::ImageError) -> Self {
        BuildError::Image(Box::new(e))
    }
}

impl From<crate::block_snapshot::SnapshotError> for BuildError {
    fn from(e: crate::block_snapshot::SnapshotError) -> Self {
        BuildError::Snapshot(Box::new(e))
    }
}

impl BuildError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether another attempt is worth it, as [`crate::retry`] asks: a transient fetch
    /// failure (the network or the registry may do better next time), after the registry's
    /// Retry-After when it sent one; nothing else.
    pub fn retry_verdict(&self) -> crate::retry::Verdict {
        match self {
            BuildError::Fetch { source, .. } => source.retry_verdict(),
            _ => crate::retry::Verdict::Permanent,
        }
    }

    /// The reason of the Warning event.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Secrets(_) => "FailedPullSecret",
            BuildError::Resolve { .. } | BuildError::Fetch { .. } => "FailedPull",
            BuildError::Layer { .. } => "FailedUnpack",
            BuildError::NoSpace { .. } => "InsufficientSize",
            BuildError::HostFull { .. } => "HostFilesystemFull",
            BuildError::Image(e) if e.is_loop_shortage() => "NoLoopDevice",
            BuildError::Image(_) | BuildError::Snapshot(_) => "FailedFreeze",
            BuildError::Interrupted | BuildError::InterruptedInQueue => "BuildInterrupted",
            _ => "Failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_says_what_size_to_use() {
        let e = BuildError::NoSpace {
            needed_bytes: 21 << 30,
            size_gib: 20,
        };
        let text = e.to_string();
        assert!(text.contains("imageCacheSize 20 GiB"), "{text}");
        assert!(text.contains("at least 24 GiB"), "{text}");
        assert_eq!(suggested_gib(1 << 20), 20);
    }
}
