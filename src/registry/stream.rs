//! Layer streams that check what they pass on.
//!
//! Bytes are handed to the caller as they arrive (layers are never buffered whole), so the
//! verdict can only come at the end: a wrong digest or length is reported as the stream's last
//! item, and the caller must discard whatever it already wrote.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::digest::Hasher;
use super::error::RegistryError;

/// A layer blob as it arrives. Ends with `Err` if the blob was interrupted, truncated, longer
/// than declared, or does not match its digest.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

type Inner = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

pub(crate) struct VerifyingStream {
    inner: Inner,
    hasher: Option<Hasher>,
    digest: String,
    expected_size: u64,
    received: u64,
    /// Registry host the bytes come from, for interruption messages.
    source: String,
    done: bool,
}

impl VerifyingStream {
    /// `digest` must use an algorithm [`Hasher`] supports; callers validate descriptors first.
    pub(crate) fn new(
        inner: Inner,
        digest: &str,
        expected_size: u64,
        source: &str,
    ) -> Result<Self, RegistryError> {
        let hasher = Hasher::for_digest(digest).ok_or_else(|| RegistryError::DigestMismatch {
            what: "blob",
            expected: digest.to_string(),
            actual: "(unsupported digest algorithm)".into(),
        })?;
        Ok(VerifyingStream {
            inner,
            hasher: Some(hasher),
            digest: digest.to_string(),
            expected_size,
            received: 0,
            source: source.to_string(),
            done: false,
        })
    }

    fn finish(&mut self) -> Option<RegistryError> {
        if self.received < self.expected_size {
            return Some(RegistryError::Truncated {
                digest: self.digest.clone(),
                expected: self.expected_size,
                actual: self.received,
            });
        }
        let actual = self.hasher.take()?.finish();
        (actual != self.digest).then(|| RegistryError::DigestMismatch {
            what: "blob",
            expected: self.digest.clone(),
            actual,
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
                if let Some(hasher) = this.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                // oci-client verifies the digest too and reports a mismatch as an io::Error at
                // the end; our own check gives the better message (expected vs actual, or
                // truncation), so prefer it when it has something to say.
                if is_digest_error(&e) {
                    if let Some(error) = this.finish() {
                        return this.fail(error);
                    }
                }
                let error = RegistryError::Interrupted {
                    digest: this.digest.clone(),
                    registry: this.source.clone(),
                    detail: super::client::root_cause(&e),
                };
                this.fail(error)
            }
            Poll::Ready(None) => match this.finish() {
                Some(error) => this.fail(error),
                None => {
                    this.done = true;
                    Poll::Ready(None)
                }
            },
        }
    }
}

fn is_digest_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
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
        let mut s = VerifyingStream::new(Box::pin(stream::iter(chunks)), d, size, "reg").unwrap();
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

    #[tokio::test]
    async fn tampered_blob_fails_at_the_end() {
        let d = digest(b"hello world");
        let (out, err) = run(vec![ok(b"hello "), ok(b"wOrld")], &d, 11).await;
        assert_eq!(out.len(), 11);
        let err = err.unwrap();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&d) && msg.contains(&digest(b"hello wOrld")),
            "{msg}"
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
