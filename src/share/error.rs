/// Why a push or an import did not happen. Each says what was wrong; an import that fails
/// any way falls back to building.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("the shared snapshot is not usable: {0}")]
    Invalid(String),
    #[error("chunk {index} at offset {offset} ({blob}): {detail}")]
    Chunk {
        index: usize,
        offset: u64,
        blob: String,
        detail: String,
    },
    #[error("it was built from other images than this node resolved: {0}")]
    OtherImages(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Snapshot(#[from] crate::block_snapshot::SnapshotError),
    #[error("share registry {registry}: no answer within {secs} s (registry_timeout_secs)")]
    Timeout { registry: String, secs: u64 },
    #[error("cancelled")]
    Cancelled,
}
