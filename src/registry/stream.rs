//! Layer streams that check what they pass on.
//!
//! Bytes are handed to the caller as they arrive (layers are never buffered whole), so the
//! verdict can only come at the end: a wrong digest or length is reported as the stream's last
//! item, and the caller must discard whatever it already wrote.
//!
//! The digest is computed once, by the stream beneath: oci-client's `pull_blob_stream` hashes
//! every byte and ends with a `DigestError` when the blob (or the registry's
//! `Docker-Content-Digest`) does not match. Hashing again here doubled the CPU a cold pull
//! spends on SHA-256. This stream bounds the length by the descriptor's size, which
//! oci-client does not, and turns oci-client's errors into ours. `tests/hostile_registry.rs`
//! serves tampered, truncated and oversized blobs through a real registry to keep that
//! division of work honest.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::error::RegistryError;

/// A layer blob as it arrives. Ends with `Err` if the blob was interrupted, truncated, longer
/// than declared, or does not match its digest.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

type Inner = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

pub(crate) struct VerifyingStream {
    /// oci-client's digest-verifying blob stream.
    inner: Inner,
    digest: String,
    expected_size: u64,
    received: u64,
    /// Registry host the bytes come from, for interruption messages.
    source: String,
    done: bool,
}

impl VerifyingStream {
    /// `inner` must verify `digest` itself, as oci-client's `pull_blob_stream` does.
    pub(crate) fn new(inner: Inner, digest: &str, expected_size: u64, source: &str) -> Self {
        VerifyingStream {
            inner,
            digest: digest.to_string(),
            expected_size,
            received: 0,
            source: source.to_string(),
            done: false,
        }
    }

    /// A short blob is reported as such, whatever the digest check beneath said of it.
    fn truncation(&self) -> Option<RegistryError> {
        (self.received < self.expected_size).then(|| RegistryError::Truncated {
            digest: self.digest.clone(),
            expected: self.expected_size,
            actual: self.received,
        })
    }

    fn fail(&mut self, error: RegistryError) -> Poll<Option<Result<Bytes, RegistryError>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for VerifyingStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                // Stop a registry that keeps sending: the descriptor's size is authoritative.
                if this.received > this.expected_size {
                    let digest = this.digest.clone();
                    return this.fail(RegistryError::Oversized {
                        digest,
                        expected: this.expected_size,
                    });
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some((expected, actual)) = digest_mismatch(&e) {
                    // The blob ended: short is the better message than a digest of half a blob.
                    let error = this.truncation().unwrap_or(RegistryError::DigestMismatch {
                        what: "blob",
                        expected,
                        actual,
                    });
                    return this.fail(error);
                }
                let error = RegistryError::Interrupted {
                    digest: this.digest.clone(),
                    registry: this.source.clone(),
                    detail: super::client::root_cause(&e),
                };
                this.fail(error)
            }
            Poll::Ready(None) => match this.truncation() {
                Some(error) => this.fail(error),
                None => {
                    this.done = true;
                    Poll::Ready(None)
                }
            },
        }
    }
}

/// Expected and actual digest, when `e` is oci-client's verdict that the blob differs.
fn digest_mismatch(e: &std::io::Error) -> Option<(String, String)> {
    use oci_client::errors::DigestError;
    match e.get_ref()?.downcast_ref::<DigestError>()? {
        DigestError::VerificationError { expected, actual } => {
            Some((expected.clone(), actual.clone()))
        }
        other => Some(("a supported digest".into(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    fn digest(data: &[u8]) -> String {
        super::super::manifest::sha256_digest(data)
    }

    async fn run(
        chunks: Vec<Result<Bytes, std::io::Error>>,
        d: &str,
        size: u64,
    ) -> (Vec<u8>, Option<RegistryError>) {
        let mut s = VerifyingStream::new(Box::pin(stream::iter(chunks)), d, size, "reg");
        let mut out = Vec::new();
        let mut error = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => {
                    assert!(error.is_none(), "error must be the last item");
                    error = Some(e)
                }
            }
        }
        (out, error)
    }

    fn ok(b: &'static [u8]) -> Result<Bytes, std::io::Error> {
        Ok(Bytes::from_static(b))
    }

    #[tokio::test]
    async fn good_blob_passes_through() {
        let d = digest(b"hello world");
        let (out, err) = run(vec![ok(b"hello "), ok(b"world")], &d, 11).await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
    }

    /// What oci-client's stream ends a blob with when its bytes hash to something else.
    fn oci_mismatch(expected: &str, actual: &str) -> Result<Bytes, std::io::Error> {
        Err(std::io::Error::other(
            oci_client::errors::DigestError::VerificationError {
                expected: expected.into(),
                actual: actual.into(),
            },
        ))
    }

    #[tokio::test]
    async fn tampered_blob_fails_at_the_end() {
        let d = digest(b"hello world");
        let tampered = digest(b"hello wOrld");
        let (out, err) = run(
            vec![ok(b"hello "), ok(b"wOrld"), oci_mismatch(&d, &tampered)],
            &d,
            11,
        )
        .await;
        assert_eq!(out.len(), 11);
        let err = err.unwrap();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&d) && msg.contains(&tampered), "{msg}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn short_blob_is_truncated_whatever_the_digest_check_says() {
        let d = digest(b"hello world");
        let (_, err) = run(
            vec![ok(b"hello "), oci_mismatch(&d, &digest(b"hello "))],
            &d,
            11,
        )
        .await;
        assert!(
            matches!(
                err,
                Some(RegistryError::Truncated {
                    expected: 11,
                    actual: 6,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn short_blob_is_truncated() {
        let d = digest(b"hello world");
        let (_, err) = run(vec![ok(b"hello ")], &d, 11).await;
        assert!(matches!(
            err,
            Some(RegistryError::Truncated {
                expected: 11,
                actual: 6,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn long_blob_is_cut_off() {
        let d = digest(b"hello");
        let (out, err) = run(vec![ok(b"hel"), ok(b"lo!"), ok(b"more")], &d, 5).await;
        assert_eq!(out, b"hel");
        assert!(matches!(err, Some(RegistryError::Oversized { .. })));
    }

    #[tokio::test]
    async fn transport_error_is_an_interruption() {
        let d = digest(b"hello");
        let broken = Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        let (_, err) = run(vec![ok(b"he"), broken, ok(b"llo")], &d, 5).await;
        let err = err.unwrap();
        assert!(matches!(err, RegistryError::Interrupted { .. }), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn oci_client_digest_error_becomes_our_mismatch() {
        let d = digest(b"hello");
        let theirs = Err(std::io::Error::other(
            oci_client::errors::DigestError::VerificationError {
                expected: d.clone(),
                actual: "sha256:x".into(),
            },
        ));
        let (_, err) = run(vec![ok(b"hellO"), theirs], &d, 5).await;
        assert!(matches!(err, Some(RegistryError::DigestMismatch { .. })));
    }
}
