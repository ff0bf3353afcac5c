//! Snapshot chunk manifests (`manifest.json`): the input is one manifest, optionally followed
//! by a NUL byte and a second one. A manifest that loads has a canonical form that loads back
//! to itself, matches itself, and against an empty file of its size reports exactly its
//! chunks as vanished; two manifests on one grid compare clean exactly when they are equal.

use std::io::Write;

use imagecache::block_snapshot::{compare, verify_file, ChunkManifest};

/// Files up to this size are written (sparse) and verified; bigger ones only compared.
const MAX_FILE: u64 = 16 << 20;

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(a) = ChunkManifest::from_slice(first) else {
        return false;
    };
    let canonical = a.canonical_bytes();
    let reloaded = ChunkManifest::from_slice(&canonical).expect("canonical form loads");
    assert_eq!(reloaded, a);
    assert_eq!(reloaded.digest(), a.digest());
    assert!(a.data_bytes() <= a.size);
    assert!(compare(&a, &a).is_ok());

    if a.size <= MAX_FILE {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(a.size).expect("size the file");
        file.flush().unwrap();
        let report = verify_file(file.path(), &a).expect("verify");
        assert_eq!(report.vanished, a.chunks, "{report}");
        assert!(report.mismatched.is_empty() && report.appeared.is_empty());
        assert_eq!(report.size, None);
        assert_eq!(report.is_ok(), a.chunks.is_empty());
    }

    if let Some(Ok(b)) = second.map(ChunkManifest::from_slice) {
        let report = compare(&a, &b);
        if a.chunk_size == b.chunk_size {
            assert_eq!(report.is_ok(), a == b, "{report}");
        }
        let n = report.mismatched.len() + report.vanished.len();
        assert!(n <= a.chunks.len());
        assert!(report.appeared.len() <= b.chunks.len());
        let _ = report.to_string();
    }
    true
}
