//! Talking to registries: resolve a reference to the node's manifest and config, and open
//! verified layer streams, through mirrors first. Resolving retries transient failures; a
//! layer is retried whole by its caller.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::RegistryOperation;
use sha2::{Digest as _, Sha256};

use super::auth::{Credentials, Keyring};
use super::bounded::{self, ReadError};
use super::error::RegistryError;
use super::manifest::{self, LayerDescriptor, Parsed, RawBlob, RawManifest};
use super::platform::{self, Platform};
use super::reference::{normalize_registry_host, ImageReference};
use super::stream::{BlobStream, VerifyingStream};
use crate::retry::{GaveUp, RetryPolicy, Stop};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of [`RegistryConfig::timeout`]: a registry that accepts connections and never
/// answers fails a build well within a minute, retries included, while a slow but working
/// registry (a token server, an index, a manifest and a config in a row) has time to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(45);
/// The distribution registry refuses to store manifests over 4 MiB, so no registry can
/// rightly serve a bigger one; reading stops there.
const MAX_MANIFEST: usize = 4 << 20;
/// Resolving an image and checking access to a manifest at the upstream registry (mirrors get
/// one try each, so a dead mirror costs little). `attempts` and `deadline` come from
/// [`RegistryConfig`]. The waits, 0.1 s to 0.8 s, let a registry restart or a node's network
/// come up without holding a build that will fail anyway for long.
const REGISTRY_RETRY: RetryPolicy = RetryPolicy {
    immediate: 0,
    first: Duration::from_millis(200),
    // Keeps a registry's long Retry-After from turning into minutes of silence.
    max: Duration::from_secs(10),
    attempts: 4,
    deadline: DEFAULT_TIMEOUT,
    log: tracing::Level::WARN,
};
const USER_AGENT: &str = concat!("imagecache/", env!("CARGO_PKG_VERSION"));
/// Registry error bodies can be whole HTML pages.
const MAX_DETAIL: usize = 300;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registry host -> mirror hosts tried first, in order, before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// docker config.json holding credentials for mirrors (pull secrets are never sent to a
    /// mirror: they belong to the upstream registry).
    pub docker_config: Option<PathBuf>,
    /// Retries of transient failures against the upstream registry when resolving an image
    /// or checking access to a manifest. Blobs are not retried here: their caller retries the
    /// whole transfer, a failure mid-stream included, so each try is counted once.
    pub max_retries: u32,
    /// How long resolving an image, or opening one blob, may take in all (every retry and
    /// mirror included), and the longest silence allowed between two reads of a response.
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            mirrors: BTreeMap::new(),
            docker_config: None,
            max_retries: REGISTRY_RETRY.attempts - 1,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Everything the cache stores about one image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as requested.
    pub reference: ImageReference,
    /// The image index, if the reference pointed at one.
    pub index: Option<RawManifest>,
    /// This platform's image manifest.
    pub manifest: RawManifest,
    pub config: RawBlob,
    /// In manifest order, each with its config `diff_id`.
    pub layers: Vec<LayerDescriptor>,
}

impl ResolvedImage {
    /// The reference pinned to what it resolved to (the index if there was one, as
    /// `docker pull` reports), so later pulls get exactly this image.
    pub fn pinned_reference(&self) -> ImageReference {
        let digest = self.index.as_ref().unwrap_or(&self.manifest).digest.clone();
        self.reference.with_digest(digest)
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// A registry client shared by all builds.
pub struct RegistryClient {
    config: RegistryConfig,
    insecure: Vec<String>,
    mirrors: BTreeMap<String, Vec<String>>,
    host_platform: Platform,
    /// One oci-client per set of credentials: oci-client remembers the first credentials it
    /// sees for a registry, so builds with different pull secrets must not share one.
    clients: Mutex<HashMap<ClientKey, oci_client::Client>>,
    /// For manifests, read with a limit (oci-client reads them whole); same timeouts as the
    /// oci-clients. Redirects are followed, and reqwest drops Authorization on a cross-host one.
    http: reqwest::Client,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Anonymous,
    /// A hash, so the map never holds a second copy of the password.
    Basic([u8; 32]),
}

impl ClientKey {
    fn of(creds: &Credentials) -> ClientKey {
        match creds {
            Credentials::Anonymous => ClientKey::Anonymous,
            Credentials::Basic { username, password } => {
                let mut hasher = Sha256::new();
                hasher.update(username.as_bytes());
                hasher.update([0]);
                hasher.update(password.as_bytes());
                ClientKey::Basic(hasher.finalize().into())
            }
        }
    }
}

/// Where one attempt goes: a mirror or the upstream registry.
struct Endpoint {
    /// Host as written in the config or reference, for messages and credentials.
    host: String,
    mirror: bool,
    creds: Credentials,
    /// Tries of one request here, the first included.
    attempts: u32,
}

/// What error messages need to know about an attempt.
struct Context<'a> {
    image: String,
    endpoint: &'a Endpoint,
    scheme: &'static str,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .field("platform", &self.host_platform)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Self {
        let insecure = config
            .insecure_registries
            .iter()
            .map(|h| strip_scheme(h))
            .collect();
        let mirrors = config
            .mirrors
            .iter()
            .map(|(registry, mirrors)| {
                (
                    normalize_registry_host(&strip_scheme(registry)),
                    mirrors.iter().map(|m| strip_scheme(m)).collect(),
                )
            })
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            .read_timeout(config.timeout)
            .user_agent(USER_AGENT)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot build the HTTP client as configured; using defaults");
                reqwest::Client::new()
            });
        RegistryClient {
            config,
            insecure,
            mirrors,
            host_platform: Platform::host(),
            clients: Mutex::new(HashMap::new()),
            http,
        }
    }

    /// The platform index entries are chosen for.
    pub fn platform(&self) -> &Platform {
        &self.host_platform
    }

    /// Resolves `reference` to this platform's manifest and config.
    pub async fn resolve(
        &self,
        reference: &ImageReference,
        creds: &Credentials,
    ) -> Result<ResolvedImage, RegistryError> {
        let what = format!("resolving `{reference}`");
        self.within_deadline(reference, what.clone(), async {
            let endpoints = self.endpoints(reference, creds);
            let last = endpoints.len() - 1;
            for (i, endpoint) in endpoints.iter().enumerate() {
                let result = self
                    .retrying(endpoint, reference, &what, || {
                        self.resolve_at(endpoint, reference)
                    })
                    .await;
                match result {
                    Err(e) if i < last => {
                        tracing::warn!(mirror = %endpoint.host, image = %reference, error = %e, "mirror failed; trying the next source");
                    }
                    result => return result,
                }
            }
            unreachable!("the upstream registry is always the last endpoint")
        })
        .await
    }

    /// Whether `creds` may read the manifest `pinned` (a reference pinned to a digest) from
    /// its registry itself, never a mirror: a mirror may serve anyone what its own
    /// credentials fetched, which says nothing about what the registry lets `creds` read.
    /// `Ok(false)` when the registry refuses (401, 403, or 404 as registries answer for
    /// repositories a caller may not see); any other failure is an error, for the caller to
    /// treat as a refusal or not.
    pub async fn can_read_manifest(
        &self,
        pinned: &ImageReference,
        creds: &Credentials,
    ) -> Result<bool, RegistryError> {
        let Some(digest) = pinned.digest() else {
            return Err(RegistryError::Invalid {
                image: pinned.to_string(),
                what: "reference",
                reason: "a manifest's readability is checked at a digest".into(),
            });
        };
        let what = format!("checking access to `{pinned}`");
        self.within_deadline(pinned, what.clone(), async {
            let endpoint = Endpoint {
                host: pinned.registry().to_string(),
                mirror: false,
                creds: creds.clone(),
                attempts: self.config.max_retries.saturating_add(1),
            };
            let fetched = self
                .retrying(&endpoint, pinned, &what, || {
                    self.fetch_manifest(&endpoint, pinned)
                })
                .await;
            match fetched {
                Ok((_, bytes)) => {
                    manifest::verify("manifest", &bytes, digest, None)?;
                    Ok(true)
                }
                Err(
                    RegistryError::AuthenticationRequired { .. }
                    | RegistryError::CredentialsRefused { .. }
                    | RegistryError::NotFound { .. },
                ) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// `work` bounded by [`RegistryConfig::timeout`]: per-read timeouts alone let a registry
    /// that trickles, or a stall times the retries, hold a build for many minutes.
    async fn within_deadline<T>(
        &self,
        reference: &ImageReference,
        what: String,
        work: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.config.timeout, work).await {
            Err(_) => Err(self.deadline_exceeded(reference, what)),
            // The per-read timeout is registry_timeout_secs too, and races this one on a
            // registry that never answers: once the whole deadline has passed, either means
            // the registry stayed silent that long, so it is said (and not retried) the one
            // way, naming the setting. An earlier one (a connect timeout) stays itself.
            Ok(Err(RegistryError::Timeout { .. })) if started.elapsed() >= self.config.timeout => {
                Err(self.deadline_exceeded(reference, what))
            }
            Ok(result) => result,
        }
    }

    fn deadline_exceeded(&self, reference: &ImageReference, what: String) -> RegistryError {
        RegistryError::DeadlineExceeded {
            registry: reference.registry().to_string(),
            what,
            timeout_secs: self.config.timeout.as_secs(),
        }
    }

    /// `request` at `endpoint`, retried by [`REGISTRY_RETRY`] with this client's attempts and
    /// deadline. Retries cut short by the deadline fail as the deadline does, as they would
    /// had the wait been begun.
    async fn retrying<T, Fut>(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        what: &str,
        request: impl FnMut() -> Fut,
    ) -> Result<T, RegistryError>
    where
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let policy = RetryPolicy {
            attempts: endpoint.attempts,
            deadline: self.config.timeout,
            ..REGISTRY_RETRY
        };
        let at = format!("{what} via {}", endpoint.host);
        policy
            .run(at, None, request, RegistryError::retry_verdict)
            .await
            .map_err(|GaveUp { error, stop, .. }| match stop {
                Stop::Deadline => self.deadline_exceeded(reference, what.to_owned()),
                _ => error,
            })
    }

    /// Opens a verified stream of `layer`, falling back from mirrors to the registry. Nothing
    /// is retried here: a failure before the first byte or mid-stream alike reaches the
    /// caller, which retries the whole layer (retrying here as well would multiply the tries).
    pub async fn open_blob(
        &self,
        reference: &ImageReference,
        layer: &LayerDescriptor,
        creds: &Credentials,
    ) -> Result<BlobStream, RegistryError> {
        let what = format!("opening blob {} of `{reference}`", layer.digest);
        self.within_deadline(reference, what, async {
            let endpoints = self.endpoints(reference, creds);
            let last = endpoints.len() - 1;
            for (i, endpoint) in endpoints.iter().enumerate() {
                let result = self
                    .open_blob_at(endpoint, reference, &layer.digest, layer.size)
                    .await;
                match result {
                    Err(e) if i < last => {
                        tracing::warn!(mirror = %endpoint.host, blob = %layer.digest, error = %e, "mirror failed; trying the next source");
                    }
                    result => return result.map(|s| Box::pin(s) as BlobStream),
                }
            }
            unreachable!("the upstream registry is always the last endpoint")
        })
        .await
    }

    /// Mirrors first (one attempt each, so a dead mirror costs little), then the registry.
    fn endpoints(&self, reference: &ImageReference, creds: &Credentials) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        if let Some(mirrors) = self.mirrors.get(reference.registry()) {
            let keyring = self.mirror_keyring();
            for mirror in mirrors {
                endpoints.push(Endpoint {
                    host: mirror.clone(),
                    mirror: true,
                    creds: keyring.credentials_for(mirror),
                    attempts: 1,
                });
            }
        }
        endpoints.push(Endpoint {
            host: reference.registry().to_string(),
            mirror: false,
            creds: creds.clone(),
            attempts: self.config.max_retries.saturating_add(1),
        });
        endpoints
    }

    fn mirror_keyring(&self) -> Keyring {
        let Some(path) = &self.config.docker_config else {
            return Keyring::default();
        };
        Keyring::default()
            .with_docker_config(path)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring docker config for mirror credentials");
                Keyring::default()
            })
    }

    fn oci_client(&self, creds: &Credentials) -> oci_client::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(ClientKey::of(creds))
            .or_insert_with(|| {
                oci_client::Client::new(oci_client::client::ClientConfig {
                    protocol: oci_client::client::ClientProtocol::HttpsExcept(
                        self.insecure.clone(),
                    ),
                    // Index entries are chosen here, with arm variants considered.
                    platform_resolver: None,
                    connect_timeout: Some(CONNECT_TIMEOUT.min(self.config.timeout)),
                    // Between two reads, not for the whole layer: a stalled registry is
                    // caught without limiting how long a big layer may take.
                    read_timeout: Some(self.config.timeout),
                    user_agent: USER_AGENT,
                    ..Default::default()
                })
            })
            .clone()
    }

    fn oci_reference(endpoint: &Endpoint, reference: &ImageReference) -> oci_client::Reference {
        reference.to_oci(endpoint.mirror.then_some(endpoint.host.as_str()))
    }

    fn context<'a>(&self, endpoint: &'a Endpoint, reference: &ImageReference) -> Context<'a> {
        let contacted = Self::oci_reference(endpoint, reference)
            .resolve_registry()
            .to_string();
        Context {
            image: reference.to_string(),
            endpoint,
            scheme: if self.insecure.contains(&contacted) {
                "HTTP"
            } else {
                "HTTPS"
            },
        }
    }

    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
    ) -> Result<ResolvedImage, RegistryError> {
        let image = reference.to_string();
        let top = self.fetch_manifest(endpoint, reference).await?;
        if let Some(pinned) = reference.digest() {
            manifest::verify("manifest", &top.1, pinned, None)?;
        }

        let (index, manifest_bytes, manifest_digest) = match manifest::parse(&top.1, &image)? {
            Parsed::Image { .. } => (None, top.1, top.0),
            Parsed::Index {
                media_type,
                manifests,
            } => {
                let candidates = manifest::platforms(&manifests);
                let chosen =
                    platform::select(&self.host_platform, candidates.iter().map(|(i, p)| (*i, p)))
                        .ok_or_else(|| RegistryError::NoMatchingPlatform {
                            image: image.clone(),
                            platform: self.host_platform.to_string(),
                            available: available(&candidates),
                        })?;
                let entry = &manifests[chosen];
                super::reference::validate_digest(&entry.digest).map_err(|reason| {
                    RegistryError::Invalid {
                        image: image.clone(),
                        what: "image index",
                        reason,
                    }
                })?;
                let child = reference.with_digest(entry.digest.clone());
                let (digest, bytes) = self.fetch_manifest(endpoint, &child).await?;
                manifest::verify("manifest", &bytes, &entry.digest, Some(entry.size))?;
                let index = RawManifest {
                    digest: top.0,
                    media_type,
                    bytes: top.1,
                };
                (Some(index), bytes, digest)
            }
        };

        let Parsed::Image {
            media_type,
            config,
            layers,
        } = manifest::parse(&manifest_bytes, &image)?
        else {
            return Err(RegistryError::Invalid {
                image,
                what: "image index",
                reason: "the platform's entry is another index (nested indexes are not supported)"
                    .into(),
            });
        };

        let config_bytes = self
            .fetch_small_blob(endpoint, reference, &config.digest, config.size)
            .await?;
        let layers = manifest::layers_with_diff_ids(&config_bytes, &layers, &image)?;
        Ok(ResolvedImage {
            reference: reference.clone(),
            index,
            manifest: RawManifest {
                digest: manifest_digest,
                media_type,
                bytes: manifest_bytes,
            },
            config: RawBlob {
                digest: config.digest,
                media_type: config.media_type,
                bytes: config_bytes,
            },
            layers,
        })
    }

    /// The manifest bytes exactly as served, at most [`MAX_MANIFEST`] of them, and their
    /// sha256 digest (checked against the registry's Docker-Content-Digest header; callers
    /// check a pinned digest).
    async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
    ) -> Result<(String, Vec<u8>), RegistryError> {
        let ctx = self.context(endpoint, reference);
        let client = self.oci_client(&endpoint.creds);
        let oci_reference = Self::oci_reference(endpoint, reference);
        // oci-client speaks the token protocol (and caches the token for the blob requests);
        // `None` means the registry wants Basic credentials or nothing.
        let token = client
            .auth(
                &oci_reference,
                &endpoint.creds.to_oci(),
                RegistryOperation::Pull,
            )
            .await
            .map_err(|e| ctx.map(e, None))?;
        let registry = oci_reference.resolve_registry();
        let scheme = if self.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        let target = oci_reference
            .digest()
            .or(oci_reference.tag())
            .unwrap_or("latest");
        let mut url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{target}",
            oci_reference.repository()
        );
        if let Some(ns) = oci_reference.namespace() {
            url.push_str(&format!("?ns={ns}"));
        }
        let mut request = self.http.get(&url).header(
            reqwest::header::ACCEPT,
            manifest::ACCEPTED_MANIFESTS.join(", "),
        );
        request = match (token, &endpoint.creds) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            (None, Credentials::Anonymous) => request,
        };
        let answer = bounded::get(request, MAX_MANIFEST)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge { declared } => RegistryError::TooLarge {
                    what: "manifest",
                    image: ctx.image.clone(),
                    registry: ctx.registry(),
                    size: match declared {
                        Some(n) => format!("{n} bytes"),
                        None => format!("more than {MAX_MANIFEST} bytes"),
                    },
                    limit: MAX_MANIFEST as u64,
                },
                ReadError::Http(e) => ctx.map(OciDistributionError::RequestError(e), None),
            })?;
        if answer.status != reqwest::StatusCode::OK {
            return Err(ctx.refused(&url, &answer));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&answer.body)));
        let announced = answer
            .headers
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok());
        if let Some(announced) = announced {
            // Only sha256 can be compared here; a pinned reference is verified by the caller.
            if announced.starts_with("sha256:") && announced != digest {
                return Err(RegistryError::DigestMismatch {
                    what: "manifest",
                    expected: announced.to_string(),
                    actual: digest,
                });
            }
        }
        Ok((digest, answer.body))
    }

    async fn fetch_small_blob(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let stream = self.open_blob_at(endpoint, reference, digest, size).await?;
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
        Ok(chunks.concat())
    }

    async fn open_blob_at(
        &self,
        endpoint: &Endpoint,
        reference: &ImageReference,
        digest: &str,
        size: u64,
    ) -> Result<VerifyingStream, RegistryError> {
        let ctx = self.context(endpoint, reference);
        let client = self.oci_client(&endpoint.creds);
        let oci_reference = Self::oci_reference(endpoint, reference);
        // pull_blob_stream, unlike the manifest calls, does not register credentials itself.
        client
            .store_auth_if_needed(oci_reference.resolve_registry(), &endpoint.creds.to_oci())
            .await;
        let sized = client
            .pull_blob_stream(&oci_reference, digest)
            .await
            .map_err(|e| ctx.map(e, Some(digest)))?;
        Ok(VerifyingStream::new(
            sized.stream,
            digest,
            size,
            &endpoint.host,
        ))
    }
}

impl Context<'_> {
    fn registry(&self) -> String {
        self.endpoint.host.clone()
    }

    fn not_found(&self, blob: Option<&str>) -> RegistryError {
        match blob {
            Some(digest) => RegistryError::BlobNotFound {
                image: self.image.clone(),
                registry: self.registry(),
                digest: digest.to_string(),
            },
            None => RegistryError::NotFound {
                image: self.image.clone(),
                registry: self.registry(),
            },
        }
    }

    fn auth(&self) -> RegistryError {
        if self.endpoint.creds.is_anonymous() {
            RegistryError::AuthenticationRequired {
                image: self.image.clone(),
                registry: self.registry(),
            }
        } else {
            RegistryError::CredentialsRefused {
                image: self.image.clone(),
                registry: self.registry(),
            }
        }
    }

    /// A blob refused after its manifest was served: the pull was allowed, so this is the
    /// registry's (or its storage's) rule about this blob, not missing credentials.
    fn blob_refused(&self, blob: Option<&str>, status: u16) -> RegistryError {
        RegistryError::BlobRefused {
            image: self.image.clone(),
            registry: self.registry(),
            digest: blob.unwrap_or_default().to_string(),
            status,
        }
    }

    fn rate_limited(&self, retry_after: Option<Duration>) -> RegistryError {
        RegistryError::RateLimited {
            image: self.image.clone(),
            registry: self.registry(),
            retry_after,
        }
    }

    /// A manifest request answered with something other than 200, worded as oci-client's
    /// errors are (so [`Self::map`] treats both paths alike), with Retry-After kept.
    fn refused(&self, url: &str, answer: &bounded::Answer) -> RegistryError {
        use OciDistributionError as E;
        let status = answer.status;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return self.rate_limited(bounded::retry_after(&answer.headers));
        }
        let message = String::from_utf8_lossy(&answer.body).to_string();
        let error = if status == reqwest::StatusCode::UNAUTHORIZED {
            E::UnauthorizedError {
                url: url.to_string(),
            }
        } else if status.is_success() {
            E::SpecViolationError(format!("expected HTTP status 200, got {status}"))
        } else if status.is_client_error() {
            match serde_json::from_slice::<OciEnvelope>(&answer.body) {
                Ok(envelope) => E::RegistryError {
                    envelope,
                    url: url.to_string(),
                },
                Err(_) => E::ServerError {
                    code: status.as_u16(),
                    url: url.to_string(),
                    message,
                },
            }
        } else {
            E::ServerError {
                code: status.as_u16(),
                url: url.to_string(),
                message,
            }
        };
        self.map(error, None)
    }

    /// Turns an oci-client error into one that says what to do. `blob` is set for blob
    /// requests, so a 404 blames the blob rather than the image name.
    fn map(&self, e: OciDistributionError, blob: Option<&str>) -> RegistryError {
        use OciDistributionError as E;
        match e {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => self.auth(),
            E::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let has = |wanted: &[OciErrorCode]| codes.iter().any(|c| wanted.contains(c));
                if blob.is_some() && has(&[OciErrorCode::Denied]) {
                    self.blob_refused(blob, 403)
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    self.auth()
                } else if has(&[OciErrorCode::Toomanyrequests]) {
                    self.rate_limited(None)
                } else if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                    OciErrorCode::BlobUnknown,
                ]) {
                    self.not_found(blob)
                } else {
                    self.protocol(envelope.to_string())
                }
            }
            E::ServerError { code, message, .. } => match code {
                404 => self.not_found(blob),
                403 if blob.is_some() => self.blob_refused(blob, 403),
                401 | 403 => self.auth(),
                429 => self.rate_limited(None),
                status => RegistryError::Server {
                    image: self.image.clone(),
                    registry: self.registry(),
                    status,
                    detail: truncate(message.trim()),
                },
            },
            E::RequestError(e) => {
                let detail = root_cause(&e);
                if e.is_connect() {
                    RegistryError::Connect {
                        registry: self.registry(),
                        scheme: self.scheme,
                        detail,
                        hint: self.connect_hint(),
                    }
                } else if e.is_timeout() {
                    RegistryError::Timeout {
                        registry: self.registry(),
                        detail,
                    }
                } else {
                    RegistryError::Transport {
                        registry: self.registry(),
                        detail,
                    }
                }
            }
            E::IoError(e) => RegistryError::Transport {
                registry: self.registry(),
                detail: root_cause(&e),
            },
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                RegistryError::DigestMismatch {
                    what: if blob.is_some() { "blob" } else { "manifest" },
                    expected,
                    actual,
                }
            }
            E::UnsupportedSchemaVersionError(1) => RegistryError::Schema1 {
                image: self.image.clone(),
            },
            other => self.protocol(other.to_string()),
        }
    }

    fn protocol(&self, detail: String) -> RegistryError {
        RegistryError::Protocol {
            image: self.image.clone(),
            registry: self.registry(),
            detail: truncate(&detail),
        }
    }

    fn connect_hint(&self) -> String {
        let host = &self.endpoint.host;
        if self.scheme == "HTTPS" {
            format!(
                "if {host} serves plain HTTP, add it to insecure_registries; \
                 otherwise check the address, TLS setup and that the registry is up"
            )
        } else {
            format!(
                "{host} is in insecure_registries so plain HTTP was used; \
                 check the address and that the registry is up"
            )
        }
    }
}

fn available(candidates: &[(usize, Platform)]) -> String {
    if candidates.is_empty() {
        return "none".into();
    }
    candidates
        .iter()
        .map(|(_, p)| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip_scheme(host: &str) -> String {
    let host = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    host.trim_end_matches('/').to_string()
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_string();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The innermost cause ("Connection refused (os error 111)") is what an operator can act on;
/// the outer layers only repeat the URL.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
