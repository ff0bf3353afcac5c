//! Why a layer could not be applied, phrased for the operator who has to act on it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tried to write outside its directory, or is malformed in a way that would.
    #[error("layer entry `{entry}` {reason}: the layer is unsafe and was refused")]
    Unsafe { entry: String, reason: String },

    /// A filesystem operation for one entry failed for a reason other than space.
    #[error("layer entry `{entry}`: could not {action}: {source}")]
    Entry {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// A header or extension header (PAX, GNU long name, sparse map) cannot be parsed.
    #[error(
        "layer entry `{entry}` {reason}: the layer's tar stream is malformed; if pulling the \
         layer again gives the same error, rebuild the image with a standard tool (docker, \
         buildkit)"
    )]
    Malformed { entry: String, reason: String },

    /// A tar entry type that has no meaning in an OCI layer.
    #[error(
        "layer entry `{entry}` has tar type {type_byte:#04x}, which OCI layers do not use: \
         the layer was built by an incompatible tool"
    )]
    UnsupportedType { entry: String, type_byte: u8 },

    /// The compressed or tar stream ended early or is corrupt.
    #[error(
        "reading the layer stream failed: {source}; the download is truncated or corrupt, \
         pull the layer again"
    )]
    Stream {
        #[source]
        source: io::Error,
    },

    /// The whole uncompressed stream does not hash to the diffID the image config lists.
    #[error(
        "layer content has digest {actual} but the image config lists diffID {expected}: \
         the blob does not belong to this image, pull it again or rebuild the image"
    )]
    DiffIdMismatch { expected: String, actual: String },

    #[error(
        "diffID `{0}` is not a sha256 digest (`sha256:` and 64 hex digits): the image \
         config is malformed"
    )]
    BadDiffId(String),

    /// The filesystem filled up. The rest of the layer was still read so that
    /// `needed_bytes` covers every file in it.
    #[error(
        "no space left on the cache filesystem at layer entry `{entry}`: this layer's files \
         need {needed_bytes} bytes and {available_bytes} were free; build the cache with a \
         larger size"
    )]
    NoSpace {
        entry: String,
        /// Total apparent size of the layer's regular files.
        needed_bytes: u64,
        /// Free bytes on the filesystem when space ran out.
        available_bytes: u64,
    },

    #[error("cannot open layer directory {}: {source}", path.display())]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Render a raw tar path for a message; tar names are bytes, not necessarily UTF-8.
pub(crate) fn entry_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

pub(crate) fn unsafe_entry(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: entry_name(raw),
        reason: reason.into(),
    }
}

pub(crate) fn entry_io(raw: &[u8], action: &'static str, err: impl Into<io::Error>) -> UnpackError {
    UnpackError::Entry {
        entry: entry_name(raw),
        action,
        source: err.into(),
    }
}
