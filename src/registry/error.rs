//! Registry errors, worded for the operator who has to fix them.
//!
//! No variant carries credentials: messages name hosts, images and digests only, and details
//! taken from lower layers are transport causes (never request headers or secret contents).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("invalid image reference `{input}`: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("image `{image}` not found in registry {registry} (check the name and tag)")]
    NotFound { image: String, registry: String },

    #[error(
        "blob {digest} of image `{image}` not found in registry {registry} \
         (the registry lost data or the manifest is broken; re-push the image)"
    )]
    BlobNotFound {
        image: String,
        registry: String,
        digest: String,
    },

    #[error(
        "registry {registry} refused blob {digest} of image `{image}` (HTTP {status}) although \
         it served the manifest: check the registry's access rules and storage for this blob"
    )]
    BlobRefused {
        image: String,
        registry: String,
        digest: String,
        status: u16,
    },

    #[error(
        "registry {registry} requires authentication for `{image}`: \
         add an imagePullSecret with credentials for {registry}"
    )]
    AuthenticationRequired { image: String, registry: String },

    #[error(
        "registry {registry} refused the credentials for `{image}`: check the image pull \
         secret (or docker config) for {registry} and that the account may pull this repository"
    )]
    CredentialsRefused { image: String, registry: String },

    #[error("cannot connect to registry {registry} over {scheme} ({detail}): {hint}")]
    Connect {
        registry: String,
        scheme: &'static str,
        detail: String,
        hint: String,
    },

    #[error("registry {registry} did not answer in time ({detail}): check the network and the registry's health")]
    Timeout { registry: String, detail: String },

    #[error("request to registry {registry} failed ({detail}): check the network and the registry's health")]
    Transport { registry: String, detail: String },

    #[error("registry {registry} is rate limiting pulls of `{image}` (HTTP 429): wait, or use a mirror or authenticated pulls")]
    RateLimited {
        image: String,
        registry: String,
        /// The registry's Retry-After, when it sent one in seconds.
        retry_after: Option<std::time::Duration>,
    },

    #[error(
        "registry {registry} did not finish {what} within {timeout_secs} s \
         (registry_timeout_secs, every retry included): check the network and the registry's \
         health, or raise registry_timeout_secs"
    )]
    DeadlineExceeded {
        registry: String,
        what: String,
        timeout_secs: u64,
    },

    #[error(
        "the {what} of `{image}` from registry {registry} is {size}, over the {limit}-byte \
         limit for a {what} (real ones are a few KiB; the registry is broken or hostile)"
    )]
    TooLarge {
        what: &'static str,
        image: String,
        registry: String,
        /// "N bytes" when announced, "more than N bytes" when found out while reading.
        size: String,
        limit: u64,
    },

    #[error("registry {registry} failed with HTTP {status} for `{image}`: {detail}")]
    Server {
        image: String,
        registry: String,
        status: u16,
        detail: String,
    },

    #[error("registry {registry} answered `{image}` unexpectedly: {detail}")]
    Protocol {
        image: String,
        registry: String,
        detail: String,
    },

    #[error(
        "image `{image}` uses Docker manifest schema 1, which is deprecated and unsupported: \
         re-push it with a current docker, buildah or skopeo (schema 2 or OCI)"
    )]
    Schema1 { image: String },

    #[error("image `{image}` is not a container image imagecache can use: {reason}")]
    Unsupported { image: String, reason: String },

    #[error(
        "image `{image}` has no manifest for {platform} (available: {available}): \
         use an image built for this platform"
    )]
    NoMatchingPlatform {
        image: String,
        platform: String,
        available: String,
    },

    #[error("invalid {what} for image `{image}`: {reason}")]
    Invalid {
        image: String,
        what: &'static str,
        reason: String,
    },

    #[error(
        "digest mismatch for {what} {expected}: the registry served content hashing to {actual} \
         (corrupted or tampered data; discard it and retry, or fix the registry)"
    )]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },

    #[error(
        "blob {digest} was truncated: got {actual} of {expected} bytes \
         (discard it and retry; the registry's copy may be damaged)"
    )]
    Truncated {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "blob {digest} is larger than the {expected} bytes its descriptor declares \
         (the registry served the wrong content; discard it)"
    )]
    Oversized { digest: String, expected: u64 },

    #[error(
        "download of blob {digest} from {registry} was interrupted ({detail}); retry the layer"
    )]
    Interrupted {
        digest: String,
        registry: String,
        detail: String,
    },

    #[error("image pull secret `{secret}` ({path}): {reason}")]
    PullSecret {
        secret: String,
        path: String,
        reason: String,
    },

    #[error("docker config {path}: {reason}")]
    DockerConfig { path: String, reason: String },
}

impl RegistryError {
    /// How long the registry asked us to wait before asking again, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// How [`crate::retry`] treats this error: transient ones again, after the registry's
    /// Retry-After when it sent one.
    pub fn retry_verdict(&self) -> crate::retry::Verdict {
        use crate::retry::Verdict;
        match self.retry_after() {
            _ if !self.is_transient() => Verdict::Permanent,
            Some(after) => Verdict::RetryAfter(after),
            None => Verdict::Retry,
        }
    }

    /// Whether trying again may succeed without anyone changing anything.
    ///
    /// Connect errors count: a registry restarting or a node's network coming up is the common
    /// cause, and the retry budget is small. Auth, not-found and integrity errors do not, nor
    /// a spent deadline: it already covered every retry.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Transport { .. }
            | RegistryError::RateLimited { .. }
            | RegistryError::Interrupted { .. } => true,
            RegistryError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Verdict;
    use std::time::Duration;

    fn server(status: u16) -> RegistryError {
        RegistryError::Server {
            image: "i".into(),
            registry: "r".into(),
            status,
            detail: String::new(),
        }
    }

    #[test]
    fn only_failures_that_may_pass_are_retried_and_a_hint_is_kept() {
        assert_eq!(server(503).retry_verdict(), Verdict::Retry);
        assert_eq!(server(400).retry_verdict(), Verdict::Permanent);
        let limited = |retry_after| RegistryError::RateLimited {
            image: "i".into(),
            registry: "r".into(),
            retry_after,
        };
        assert_eq!(
            limited(Some(Duration::from_secs(3))).retry_verdict(),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(limited(None).retry_verdict(), Verdict::Retry);
        let not_found = RegistryError::NotFound {
            image: "i".into(),
            registry: "r".into(),
        };
        assert_eq!(not_found.retry_verdict(), Verdict::Permanent);
        let mismatch = RegistryError::DigestMismatch {
            what: "blob",
            expected: "sha256:a".into(),
            actual: "sha256:b".into(),
        };
        assert_eq!(mismatch.retry_verdict(), Verdict::Permanent);
        // The deadline already covered every retry.
        let spent = RegistryError::DeadlineExceeded {
            registry: "r".into(),
            what: "resolving".into(),
            timeout_secs: 3,
        };
        assert_eq!(spent.retry_verdict(), Verdict::Permanent);
    }
}
