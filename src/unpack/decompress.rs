//! From the compressed blob to the uncompressed tar stream, hashed on the way through.

use std::io::{self, BufReader, Read};

use sha2::{Digest, Sha256};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or `None` for a media type that is not a
    /// layer we can apply. Covers OCI (incl. non-distributable) and Docker schema 2 types.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        // Parameters (`; foo=bar`) do not change the encoding.
        let mt = mt.split(';').next().unwrap_or("").trim();
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// What the first bytes of a stream say it is. Plain tar has no magic at offset 0.
    fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Compressed bytes are read in large chunks: the source is usually a network stream or a
/// staged blob file, and few large reads keep the decoder busy.
const COMPRESSED_BUF: usize = 256 * 1024;

/// Wrap `compressed` in the decoder its magic bytes call for. The magic wins over the media
/// type so a mislabelled layer still applies; a disagreement is logged.
pub(crate) fn decoder<'a, R: Read + 'a>(
    mut compressed: R,
    declared: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    // A network reader may hand out fewer bytes than asked; fill the magic window first.
    while got < head.len() {
        match compressed.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let actual = Compression::sniff(&head[..got]);
    if actual != declared {
        tracing::warn!(
            ?declared,
            ?actual,
            "layer media type does not match its content; decoding by content"
        );
    }
    let stream = BufReader::with_capacity(
        COMPRESSED_BUF,
        io::Cursor::new(head).take(got as u64).chain(compressed),
    );
    Ok(match actual {
        // Multi-member: concatenated gzip members are one valid stream (pigz, some builders).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(stream)?),
        Compression::None => Box::new(stream),
    })
}

/// Hashes and counts every byte read through it: the diffID is the sha256 of exactly the
/// uncompressed stream, so hashing happens here rather than on anything tar reinterprets.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far and the `sha256:<hex>` digest of them.
    pub(crate) fn finish(self) -> (u64, String) {
        let digest = self.hasher.finalize();
        (self.count, format!("sha256:{}", hex::encode(digest)))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Parse `sha256:<64 hex>` into its lowercase canonical form.
pub(crate) fn parse_diff_id(s: &str) -> Option<String> {
    let hex_part = s.strip_prefix("sha256:")?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
    }

    #[test]
    fn diff_ids() {
        let ok = format!("sha256:{}", "A".repeat(64));
        assert_eq!(
            parse_diff_id(&ok).unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
        assert!(parse_diff_id("sha512:abcd").is_none());
        assert!(parse_diff_id(&format!("sha256:{}", "g".repeat(64))).is_none());
    }

    #[test]
    fn sniffing_beats_the_label() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"hello").unwrap();
        let gz = gz.finish().unwrap();
        // A one-byte-at-a-time reader exercises the magic window fill.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut out = String::new();
        decoder(Trickle(&gz), Compression::None)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello");
    }
}
