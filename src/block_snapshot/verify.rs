//! Comparing an image file with the manifest it was frozen with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::error::Result;
use super::hash::hash_file_with;
use super::manifest::{Chunk, ChunkManifest};

/// What differs between a manifest and a file. Empty means the file is what was frozen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks present in both whose content differs.
    pub mismatched: Vec<ChunkMismatch>,
    /// Chunks with content now where the manifest has none (a hole or zeros).
    pub appeared: Vec<Chunk>,
    /// Chunks the manifest has that are now holes or zeros.
    pub vanished: Vec<Chunk>,
    pub size: Option<SizeChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMismatch {
    pub offset: u64,
    pub length: u64,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeChange {
    pub expected: u64,
    pub actual: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.mismatched.is_empty()
            && self.appeared.is_empty()
            && self.vanished.is_empty()
            && self.size.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return f.write_str("matches its manifest");
        }
        let mut parts = Vec::new();
        if let Some(s) = self.size {
            parts.push(format!("size {} instead of {}", s.actual, s.expected));
        }
        for m in &self.mismatched {
            parts.push(format!("chunk at {} differs", m.offset));
        }
        for c in &self.appeared {
            parts.push(format!("data appeared at {}", c.offset));
        }
        for c in &self.vanished {
            parts.push(format!("data vanished at {}", c.offset));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// Re-hash `path` on the manifest's chunk grid and compare.
pub fn verify_file(path: &Path, manifest: &ChunkManifest) -> Result<VerifyReport> {
    let actual = hash_file_with(path, manifest.chunk_size)?;
    Ok(compare(manifest, &actual))
}

/// Compare two manifests on the same chunk grid.
pub fn compare(expected: &ChunkManifest, actual: &ChunkManifest) -> VerifyReport {
    let mut report = VerifyReport::default();
    if expected.size != actual.size {
        report.size = Some(SizeChange {
            expected: expected.size,
            actual: actual.size,
        });
    }
    let mut now: BTreeMap<u64, &Chunk> = actual.chunks.iter().map(|c| (c.offset, c)).collect();
    for want in &expected.chunks {
        match now.remove(&want.offset) {
            None => report.vanished.push(want.clone()),
            Some(got) if got.digest != want.digest || got.length != want.length => {
                report.mismatched.push(ChunkMismatch {
                    offset: want.offset,
                    length: want.length,
                    expected: want.digest.clone(),
                    actual: got.digest.clone(),
                })
            }
            Some(_) => {}
        }
    }
    report.appeared = now.into_values().cloned().collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn reports_exactly_the_flipped_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(32 << 20).unwrap();
        for i in 0..8u64 {
            f.write_all_at(&[i as u8 + 1; 4096], i * (4 << 20) + 4096)
                .unwrap();
        }
        let manifest = super::super::hash::hash_file(&path).unwrap();
        assert!(verify_file(&path, &manifest).unwrap().is_ok());

        f.write_all_at(&[0xff], (12 << 20) + 4096 + 17).unwrap(); // flip inside chunk 3
        f.write_all_at(&[0; 4096], (20 << 20) + 4096).unwrap(); // chunk 5 now zeros
        let report = verify_file(&path, &manifest).unwrap();
        assert_eq!(report.mismatched.len(), 1);
        assert_eq!(report.mismatched[0].offset, 12 << 20);
        assert_eq!(report.mismatched[0].expected, manifest.chunks[3].digest);
        assert_eq!(report.vanished.len(), 1);
        assert_eq!(report.vanished[0].offset, 20 << 20);
        assert!(report.appeared.is_empty() && report.size.is_none());

        f.set_len(36 << 20).unwrap();
        f.write_all_at(b"new", 33 << 20).unwrap();
        let report = verify_file(&path, &manifest).unwrap();
        assert_eq!(report.appeared.len(), 1);
        assert_eq!(report.appeared[0].offset, 32 << 20);
        assert_eq!(
            report.size,
            Some(SizeChange {
                expected: 32 << 20,
                actual: 36 << 20
            })
        );
        assert!(report.to_string().contains("data appeared at 33554432"));
    }
}
