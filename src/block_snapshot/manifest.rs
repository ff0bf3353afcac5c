//! The chunk manifest and its canonical form.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::{Result, SnapshotError};

pub const MANIFEST_VERSION: u32 = 1;

/// What a frozen image contains: its length and the digest of every non-zero chunk.
///
/// Field order is part of the format: the canonical bytes are serde_json's compact output,
/// which follows declaration order. Never reorder or rename fields; add a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkManifest {
    pub version: u32,
    /// Length of the image file in bytes, holes included.
    pub size: u64,
    pub chunk_size: u64,
    /// Sorted by offset; offsets are multiples of `chunk_size`.
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub offset: u64,
    /// `chunk_size`, except for a last chunk cut short by the end of the file.
    pub length: u64,
    /// "sha256:" + lowercase hex.
    pub digest: String,
}

impl ChunkManifest {
    /// The exact bytes `manifest.json` holds and the snapshot digest is computed over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain integers, strings and vectors cannot fail.
        serde_json::to_vec(self).expect("manifest serialises")
    }

    /// The snapshot's identity: "sha256:" + sha256 of the canonical bytes.
    pub fn digest(&self) -> String {
        sha256_digest(&self.canonical_bytes())
    }

    /// Bytes of content the snapshot holds (the sum of chunk lengths).
    pub fn data_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.length).sum()
    }

    /// Parse and check a manifest: known version, sane chunk grid, valid digests.
    pub fn from_slice(bytes: &[u8]) -> std::result::Result<Self, String> {
        let m: ChunkManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.version != MANIFEST_VERSION {
            return Err(format!("unsupported manifest version {}", m.version));
        }
        if m.chunk_size == 0 || !m.chunk_size.is_multiple_of(4096) {
            return Err(format!("bad chunk size {}", m.chunk_size));
        }
        let mut next_free = 0;
        for c in &m.chunks {
            let in_grid = c.offset % m.chunk_size == 0 && c.offset >= next_free;
            let fits = c.length > 0
                && c.length <= m.chunk_size
                && c.offset
                    .checked_add(c.length)
                    .is_some_and(|end| end <= m.size);
            if !in_grid || !fits {
                return Err(format!("chunk at {} does not fit the grid", c.offset));
            }
            parse_digest(&c.digest).map_err(|e| e.to_string())?;
            next_free = c.offset + c.length;
        }
        Ok(m)
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a "sha256:<64 lowercase hex>" digest. Anything else is refused, which
/// also keeps digests safe to use as directory names.
pub fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| SnapshotError::InvalidDigest(digest.to_owned()))?;
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkManifest {
        ChunkManifest {
            version: MANIFEST_VERSION,
            size: 10 << 20,
            chunk_size: 4 << 20,
            chunks: vec![
                Chunk {
                    offset: 0,
                    length: 4 << 20,
                    digest: sha256_digest(b"a"),
                },
                Chunk {
                    offset: 8 << 20,
                    length: 2 << 20,
                    digest: sha256_digest(b"b"),
                },
            ],
        }
    }

    #[test]
    fn canonical_form_is_compact_and_ordered() {
        let text = String::from_utf8(sample().canonical_bytes()).unwrap();
        assert!(text.starts_with(r#"{"version":1,"size":10485760,"chunk_size":4194304,"chunks":[{"offset":0,"length":4194304,"digest":"sha256:"#));
        assert!(!text.contains(' '));
        assert_eq!(sample().digest(), sha256_digest(text.as_bytes()));
        assert_eq!(sample().data_bytes(), 6 << 20);
    }

    #[test]
    fn round_trips_and_rejects_nonsense() {
        let m = sample();
        assert_eq!(ChunkManifest::from_slice(&m.canonical_bytes()).unwrap(), m);
        let mut off_grid = sample();
        off_grid.chunks[1].offset = 5 << 20;
        assert!(ChunkManifest::from_slice(&off_grid.canonical_bytes()).is_err());
        let mut past_end = sample();
        past_end.chunks[1].length = 4 << 20;
        assert!(ChunkManifest::from_slice(&past_end.canonical_bytes()).is_err());
        assert!(ChunkManifest::from_slice(
            br#"{"version":1,"size":0,"chunk_size":4096,"chunks":[],"x":1}"#
        )
        .is_err());
    }

    #[test]
    fn digests_are_validated() {
        let good = sha256_digest(b"x");
        assert_eq!(parse_digest(&good).unwrap(), &good[7..]);
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:../../etc",
            &good.to_uppercase(),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
    }
}
