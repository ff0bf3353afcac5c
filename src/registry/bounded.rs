//! Reading a registry's answer whole, but never more than a limit. Manifests and error bodies
//! come from a server we do not trust: a broken or hostile one can send gigabytes, and the
//! answer must be refused long before it is buffered.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

/// Error bodies are kept only for their first words (they end up in a message).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whole when the status is a success; at most [`ERROR_BODY_LIMIT`] bytes otherwise.
    pub body: Vec<u8>,
}

pub(crate) enum ReadError {
    /// A successful answer longer than the limit: `declared` is its Content-Length when it
    /// announced one (nothing was read then), `None` when the limit was crossed while reading.
    TooLarge {
        declared: Option<u64>,
    },
    Http(reqwest::Error),
}

/// Sends `request` and reads the answer, refusing a successful body over `limit` bytes.
pub(crate) async fn get(
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Answer, ReadError> {
    let mut response = request.send().await.map_err(ReadError::Http)?;
    let status = response.status();
    let headers = response.headers().clone();
    let success = status.is_success();
    if let Some(declared) = response.content_length() {
        if success && declared > limit as u64 {
            return Err(ReadError::TooLarge {
                declared: Some(declared),
            });
        }
    }
    let cap = if success { limit } else { ERROR_BODY_LIMIT };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > cap {
            if success {
                return Err(ReadError::TooLarge { declared: None });
            }
            body.extend_from_slice(&chunk[..cap - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Retry-After in seconds (RFC 9110 also allows an HTTP date, which registries do not send in
/// practice; it is ignored and the usual backoff applies).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
