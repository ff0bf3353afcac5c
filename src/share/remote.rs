//! Talking to the share registry: blobs and manifests of one repository, pushed to the
//! registry itself and pulled through its mirrors first, each bounded in time and size and
//! checked against its digest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use super::artifact::{parse_manifest, ChunkBlob, ShareConfig, MANIFEST_MEDIA_TYPE, MAX_METADATA};
use super::error::ShareError;
use crate::block_snapshot::sha256_digest as sha256;
use crate::registry::bounded::{self, ReadError};
use crate::registry::Keyring;

/// `host[:port]/repository` of the share registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareTarget {
    pub registry: String,
    pub repository: String,
}

impl ShareTarget {
    pub fn parse(s: &str) -> Result<ShareTarget, String> {
        let (registry, repository) = s.split_once('/').ok_or(
            "expected host[:port]/repository, e.g. \"registry.local:5000/imagecache/snapshots\"",
        )?;
        let ok_host = !registry.is_empty()
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !ok_host {
            return Err(format!("{registry:?} is not a registry host[:port]"));
        }
        let ok_repo = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            });
        if !ok_repo {
            return Err(format!(
                "{repository:?} is not a repository name (lowercase letters, digits, '.', '_', '-', parts separated by '/')"
            ));
        }
        Ok(ShareTarget {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
        })
    }

    fn reference(&self, host: &str, tag_or_digest: &str) -> Reference {
        match tag_or_digest.starts_with("sha256:") {
            true => Reference::with_digest(
                host.to_owned(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            ),
            false => Reference::with_tag(
                host.to_owned(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            ),
        }
    }
}

impl std::fmt::Display for ShareTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// A shared snapshot's artifact as read from a registry.
#[derive(Debug)]
pub struct Artifact {
    pub manifest_digest: String,
    pub config: ShareConfig,
    /// The chunks' blobs, in the chunk manifest's order.
    pub chunks: Vec<ChunkBlob>,
}

/// One endpoint: a mirror (pulls only) or the registry itself.
struct Endpoint {
    host: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    scheme: &'static str,
    /// The pull token chunks are fetched with, and when it was got (see `pull_token`).
    token: tokio::sync::Mutex<Option<(Option<String>, Instant)>>,
}

/// How long a pull token is used before another is asked for: registries issue them for
/// minutes (distribution's default is 5), and one that expires sooner is renewed on its 401.
const TOKEN_KEPT: Duration = Duration::from_secs(60);

/// The share registry, with the node's registry settings.
pub struct ShareRemote {
    pub target: ShareTarget,
    /// Mirrors first, the registry itself last.
    endpoints: Vec<Endpoint>,
    timeout: Duration,
    /// For chunk blobs, fetched without oci-client's digest check (see `pull_blob_unchecked`).
    http: reqwest::Client,
}

impl std::fmt::Debug for ShareRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareRemote")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        _ => false,
    }
}

impl ShareRemote {
    /// `insecure` registries are spoken to over plain HTTP; `mirrors` maps a registry host to
    /// mirrors tried first for pulls; credentials come from `docker_config`.
    pub fn new(
        target: ShareTarget,
        insecure: &[String],
        mirrors: &BTreeMap<String, Vec<String>>,
        docker_config: Option<&Path>,
        timeout: Duration,
    ) -> ShareRemote {
        let keyring =
            docker_config
                .map(|p| {
                    Keyring::default().with_docker_config(p).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "share registry: ignoring the docker config");
                    Keyring::default()
                })
                })
                .unwrap_or_default();
        let endpoint = |host: &str| Endpoint {
            host: host.to_owned(),
            client: oci_client::Client::new(oci_client::client::ClientConfig {
                protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure.to_vec()),
                connect_timeout: Some(timeout.min(Duration::from_secs(10))),
                read_timeout: Some(timeout),
                use_monolithic_push: true,
                ..Default::default()
            }),
            auth: keyring.credentials_for(host).to_oci(),
            scheme: match insecure.iter().any(|h| h == host) {
                true => "http",
                false => "https",
            },
            token: tokio::sync::Mutex::new(None),
        };
        let mut endpoints: Vec<Endpoint> = mirrors
            .get(&target.registry)
            .into_iter()
            .flatten()
            .map(|m| endpoint(m))
            .collect();
        endpoints.push(endpoint(&target.registry));
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .read_timeout(timeout)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot build the share registry's HTTP client as configured; using defaults");
                reqwest::Client::new()
            });
        ShareRemote {
            target,
            endpoints,
            timeout,
            http,
        }
    }

    fn origin(&self) -> &Endpoint {
        self.endpoints
            .last()
            .expect("the registry itself is always an endpoint")
    }

    /// What went wrong talking to `host`: a timeout anywhere in the chain names the bound;
    /// anything else says what failed and its root cause.
    fn registry_error(&self, host: &str, e: &(dyn std::error::Error + 'static)) -> ShareError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut root = e;
        while let Some(c) = cause {
            // reqwest marks its own timeouts; a read timeout inside hyper reaches here as a
            // private error type whose only trace is its text.
            let timed_out = c
                .downcast_ref::<reqwest::Error>()
                .is_some_and(|r| r.is_timeout())
                || c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                || (c.source().is_none() && c.to_string().contains("timed out"));
            if timed_out {
                return ShareError::Timeout {
                    registry: host.to_owned(),
                    secs: self.timeout.as_secs(),
                };
            }
            root = c;
            cause = c.source();
        }
        let (top, root) = (e.to_string(), root.to_string());
        ShareError::Registry {
            registry: host.to_owned(),
            detail: match top.contains(&root) {
                true => top,
                false => format!("{top}: {root}"),
            },
        }
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ShareError>>,
    ) -> Result<T, ShareError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(ShareError::Timeout {
                registry: self.target.registry.clone(),
                secs: self.timeout.as_secs(),
            }))
    }

    /// Whether the registry itself holds `digest` in the repository.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, ShareError> {
        let o = self.origin();
        let reference = self.target.reference(&o.host, digest);
        self.bounded(async {
            o.client.store_auth_if_needed(&o.host, &o.auth).await;
            o.client
                .blob_exists(&reference, digest)
                .await
                .map_err(|e| self.registry_error(&o.host, &e))
        })
        .await
    }

    /// Mounts the blob `digest` into the repository from `from`, another repository of the
    /// same registry, without uploading it; false when the registry did not (one that does
    /// not mount, or will not for these credentials, answers with an upload session).
    pub async fn mount_blob(&self, digest: &str, from: &str) -> Result<bool, ShareError> {
        let o = self.origin();
        let reference = self.target.reference(&o.host, digest);
        let source = Reference::with_digest(o.host.clone(), from.to_owned(), digest.to_owned());
        self.bounded(async {
            o.client.store_auth_if_needed(&o.host, &o.auth).await;
            Ok(o.client
                .mount_blob(&reference, &source, digest)
                .await
                .is_ok())
        })
        .await
    }

    /// Uploads `bytes` as the blob `digest`.
    pub async fn push_blob(&self, bytes: Vec<u8>, digest: &str) -> Result<(), ShareError> {
        let o = self.origin();
        let reference = self.target.reference(&o.host, digest);
        self.bounded(async {
            o.client.store_auth_if_needed(&o.host, &o.auth).await;
            o.client
                .push_blob(&reference, bytes, digest)
                .await
                .map(drop)
                .map_err(|e| self.registry_error(&o.host, &e))
        })
        .await
    }

    /// Puts the manifest `bytes` under `tag`; returns its digest.
    pub async fn push_manifest(&self, tag: &str, bytes: Vec<u8>) -> Result<String, ShareError> {
        let o = self.origin();
        let reference = self.target.reference(&o.host, tag);
        let digest = sha256(&bytes);
        let content_type = MANIFEST_MEDIA_TYPE.parse().expect("a valid header value");
        self.bounded(async {
            o.client.store_auth_if_needed(&o.host, &o.auth).await;
            o.client
                .push_manifest_raw(&reference, bytes, content_type)
                .await
                .map_err(|e| self.registry_error(&o.host, &e))
        })
        .await?;
        Ok(digest)
    }

    /// The manifest tagged `tag` and its digest, through the mirrors first; `None` when the
    /// registry itself has no such tag.
    pub async fn pull_manifest(&self, tag: &str) -> Result<Option<(Vec<u8>, String)>, ShareError> {
        let last = self.endpoints.len() - 1;
        for (i, e) in self.endpoints.iter().enumerate() {
            let reference = self.target.reference(&e.host, tag);
            let result = self
                .bounded(async {
                    e.client
                        .pull_manifest_raw(&reference, &e.auth, &[MANIFEST_MEDIA_TYPE])
                        .await
                        .map_err(|err| match is_not_found(&err) {
                            true => None,
                            false => Some(self.registry_error(&e.host, &err)),
                        })
                        .map_or_else(
                            |err| match err {
                                None => Ok(None),
                                Some(err) => Err(err),
                            },
                            |(bytes, digest)| Ok(Some((bytes.to_vec(), digest))),
                        )
                })
                .await;
            match result {
                Ok(Some((bytes, _))) if bytes.len() > MAX_METADATA => {
                    return Err(ShareError::Invalid(format!(
                        "manifest of {} bytes (at most {MAX_METADATA})",
                        bytes.len()
                    )))
                }
                Ok(Some((bytes, digest)))
                    if sha256(&bytes) != digest
                        || (tag.starts_with("sha256:") && digest != tag) =>
                {
                    return Err(ShareError::Invalid(format!(
                        "manifest served as {digest} hashes to {}",
                        sha256(&bytes)
                    )))
                }
                Ok(None) if i < last => {}
                Err(err) if i < last => {
                    tracing::warn!(mirror = %e.host, error = %err, "share mirror failed; trying the next source");
                }
                other => return other,
            }
        }
        unreachable!("the registry itself is always the last endpoint")
    }

    /// The shared snapshot tagged (or of digest) `tag_or_digest`: its manifest's digest, its
    /// config and its chunks' blobs, each checked to be of this format; `None` when the
    /// registry has no such tag.
    pub async fn pull_artifact(&self, tag_or_digest: &str) -> Result<Option<Artifact>, ShareError> {
        let Some((manifest, manifest_digest)) = self.pull_manifest(tag_or_digest).await? else {
            return Ok(None);
        };
        let (config_blob, chunks) = parse_manifest(&manifest)?;
        let config = ShareConfig::from_bytes(
            &self
                .pull_blob(
                    &config_blob.digest,
                    config_blob.size.min(MAX_METADATA as u64),
                )
                .await?,
        )?;
        Ok(Some(Artifact {
            manifest_digest,
            config,
            chunks,
        }))
    }

    /// The blob `digest` of at most `size` bytes, checked against its digest, through the
    /// mirrors first.
    pub async fn pull_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, ShareError> {
        self.pull_blob_with(digest, size, true).await
    }

    /// The blob `digest` of at most `size` bytes, through the mirrors first, unchecked: for
    /// a caller that checks what it decodes from it against a digest of its own (a chunk's
    /// content), so its bytes are not hashed twice.
    pub async fn pull_blob_unchecked(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, ShareError> {
        self.pull_blob_with(digest, size, false).await
    }

    async fn pull_blob_with(
        &self,
        digest: &str,
        size: u64,
        check: bool,
    ) -> Result<Vec<u8>, ShareError> {
        let last = self.endpoints.len() - 1;
        for (i, e) in self.endpoints.iter().enumerate() {
            let reference = self.target.reference(&e.host, digest);
            let result = self
                .bounded(async {
                    if !check {
                        return self.raw_blob(e, &reference, digest, size).await;
                    }
                    e.client.store_auth_if_needed(&e.host, &e.auth).await;
                    let stream = e
                        .client
                        .pull_blob_stream(&reference, digest)
                        .await
                        .map_err(|err| self.registry_error(&e.host, &err))?;
                    // The descriptor's size is the artifact's word, not a promise: the
                    // buffer grows with what really arrives.
                    let mut bytes =
                        Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
                    let mut stream = stream.stream;
                    while let Some(piece) = stream
                        .try_next()
                        .await
                        .map_err(|err| self.registry_error(&e.host, &err))?
                    {
                        if (bytes.len() + piece.len()) as u64 > size {
                            return Err(ShareError::Invalid(format!(
                                "blob {digest} is longer than its descriptor's {size} bytes"
                            )));
                        }
                        bytes.extend_from_slice(&piece);
                    }
                    if check && sha256(&bytes) != digest {
                        return Err(ShareError::Invalid(format!(
                            "blob {digest} hashes to {}",
                            sha256(&bytes)
                        )));
                    }
                    Ok(bytes)
                })
                .await;
            match result {
                Err(err) if i < last => {
                    tracing::warn!(mirror = %e.host, blob = %digest, error = %err, "share mirror failed; trying the next source");
                }
                other => return other,
            }
        }
        unreachable!("the registry itself is always the last endpoint")
    }

    /// A pull token for `e` (`None`: it wants Basic credentials or nothing), the one got
    /// within `TOKEN_KEPT` unless `fresh`.
    async fn pull_token(
        &self,
        e: &Endpoint,
        reference: &Reference,
        fresh: bool,
    ) -> Result<Option<String>, ShareError> {
        let mut held = e.token.lock().await;
        if let Some((token, got)) = held.as_ref() {
            if !fresh && got.elapsed() < TOKEN_KEPT {
                return Ok(token.clone());
            }
        }
        let token = e
            .client
            .auth(reference, &e.auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|err| self.registry_error(&e.host, &err))?;
        *held = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// The blob `digest` from `e` with a plain GET, at most `size` bytes, not hashed: oci-client
    /// hashes every blob it streams, and a chunk is hashed after decompression anyway.
    async fn raw_blob(
        &self,
        e: &Endpoint,
        reference: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, ShareError> {
        let url = format!(
            "{}://{}/v2/{}/blobs/{digest}",
            e.scheme, e.host, self.target.repository
        );
        let limit = usize::try_from(size).unwrap_or(usize::MAX);
        for attempt in 0..2 {
            let token = self.pull_token(e, reference, attempt > 0).await?;
            let mut request = self.http.get(&url);
            request = match (&token, &e.auth) {
                (Some(token), _) => request.bearer_auth(token),
                (None, RegistryAuth::Basic(user, password)) => {
                    request.basic_auth(user, Some(password))
                }
                (None, _) => request,
            };
            let answer = bounded::get(request, limit)
                .await
                .map_err(|err| match err {
                    ReadError::TooLarge { .. } => ShareError::Invalid(format!(
                        "blob {digest} is longer than its descriptor's {size} bytes"
                    )),
                    ReadError::Http(err) => self.registry_error(&e.host, &err),
                })?;
            match answer.status.as_u16() {
                200 => return Ok(answer.body),
                // A token that expired early: once more with a new one.
                401 if attempt == 0 => continue,
                status => {
                    return Err(ShareError::Registry {
                        registry: e.host.clone(),
                        detail: format!(
                            "HTTP {status} for blob {digest}: {}",
                            String::from_utf8_lossy(&answer.body)
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ),
                    })
                }
            }
        }
        unreachable!("the second attempt always returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_is_wrong() {
        let t = ShareTarget::parse("127.0.0.1:5000/imagecache/snapshots").unwrap();
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert_eq!(t.repository, "imagecache/snapshots");
        assert_eq!(t.to_string(), "127.0.0.1:5000/imagecache/snapshots");
        for bad in [
            "registry",
            "/repo",
            "host/",
            "host/Repo",
            "host//x",
            "ho st/x",
        ] {
            assert!(ShareTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
