//! An in-memory OCI image model (layers, config, manifest, index) and a blocking pusher that
//! speaks the distribution API to a `TestRegistry`.
//!
//! Everything here is built from first principles (sha256 over the exact bytes pushed) so that
//! digests checked by the code under test are independent of it.

use std::fmt;
use std::io::{self, Write};

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Fixed timestamps keep configs, and so image digests, reproducible across runs.
const CREATED: &str = "2024-01-02T03:04:05Z";

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" | "tar" | "uncompressed" => Some(Compression::None),
            "gzip" | "gz" => Some(Compression::Gzip),
            "zstd" | "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    /// OCI image manifest / OCI image index.
    Oci,
    /// Docker image manifest v2 schema 2 / Docker manifest list.
    DockerV2,
}

/// One layer blob as it is pushed, with what identifies its uncompressed tar.
#[derive(Clone)]
pub struct Layer {
    pub compression: Compression,
    /// The bytes pushed to the registry (compressed unless `Compression::None`). `Bytes` so
    /// pushing a 400 MB layer hands the HTTP client a reference, not a copy.
    pub blob: Bytes,
    /// sha256 of `blob`: the descriptor digest.
    pub digest: String,
    /// sha256 of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    pub uncompressed_size: u64,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("compression", &self.compression)
            .field("digest", &self.digest)
            .field("size", &self.blob.len())
            .field("diff_id", &self.diff_id)
            .field("uncompressed_size", &self.uncompressed_size)
            .finish()
    }
}

impl Layer {
    /// Compresses a finished tar.
    pub fn from_tar(tar: &[u8], compression: Compression) -> Layer {
        let mut w = LayerWriter::new(compression);
        w.write_all(tar).unwrap();
        w.finish()
    }

    /// A layer whose blob was produced elsewhere (e.g. streamed), trusted as given.
    pub fn from_parts(
        blob: Vec<u8>,
        compression: Compression,
        diff_id: String,
        uncompressed_size: u64,
    ) -> Layer {
        Layer {
            compression,
            digest: sha256_digest(&blob),
            blob: Bytes::from(blob),
            diff_id,
            uncompressed_size,
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }

    pub fn media_type(&self, format: ManifestFormat) -> &'static str {
        match (format, self.compression) {
            (ManifestFormat::Oci, Compression::None) => OCI_LAYER_TAR,
            (ManifestFormat::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (ManifestFormat::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (ManifestFormat::DockerV2, Compression::None) => DOCKER_LAYER_TAR,
            (ManifestFormat::DockerV2, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (ManifestFormat::DockerV2, Compression::Zstd) => {
                panic!("Docker schema 2 has no zstd layer media type")
            }
        }
    }

    /// The uncompressed tar, for tests that inspect a layer's entries.
    pub fn decompressed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.compression {
            Compression::None => out.extend_from_slice(&self.blob),
            Compression::Gzip => {
                io::copy(&mut flate2::read::GzDecoder::new(&self.blob[..]), &mut out).unwrap();
            }
            Compression::Zstd => {
                io::copy(
                    &mut zstd::stream::read::Decoder::new(&self.blob[..]).unwrap(),
                    &mut out,
                )
                .unwrap();
            }
        }
        out
    }
}

/// Streams a tar into a layer: hashes the uncompressed bytes for the diffID while
/// compressing, so a generator never holds the uncompressed tar and the blob at once.
/// Use as the sink of a `tar::Builder`.
pub struct LayerWriter {
    compression: Compression,
    hasher: Sha256,
    uncompressed: u64,
    sink: Sink,
}

enum Sink {
    Plain(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl LayerWriter {
    pub fn new(compression: Compression) -> LayerWriter {
        Self::with_level(compression, None)
    }

    /// `level`: gzip 0–9 (default 6, what Go's and Docker's gzip use), zstd 1–19 (default 3).
    pub fn with_level(compression: Compression, level: Option<i32>) -> LayerWriter {
        let sink = match compression {
            Compression::None => Sink::Plain(Vec::new()),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.unwrap_or(6) as u32),
            )),
            Compression::Zstd => Sink::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), level.unwrap_or(3)).unwrap(),
            ),
        };
        LayerWriter {
            compression,
            hasher: Sha256::new(),
            uncompressed: 0,
            sink,
        }
    }

    pub fn finish(self) -> Layer {
        let blob = match self.sink {
            Sink::Plain(v) => v,
            Sink::Gzip(e) => e.finish().unwrap(),
            Sink::Zstd(e) => e.finish().unwrap(),
        };
        Layer {
            compression: self.compression,
            digest: sha256_digest(&blob),
            blob: Bytes::from(blob),
            diff_id: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            uncompressed_size: self.uncompressed,
        }
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Plain(v) => v.write(buf)?,
            Sink::Gzip(e) => e.write(buf)?,
            Sink::Zstd(e) => e.write(buf)?,
        };
        self.hasher.update(&buf[..n]);
        self.uncompressed += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str) -> Platform {
        let variant = (architecture == "arm64").then(|| "v8".to_string());
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant,
        }
    }

    /// The platform of the machine running the tests, in OCI's (GOARCH) spelling.
    pub fn host() -> Platform {
        Platform::linux(host_arch())
    }

    /// A platform that is not the host's: the wrong answer for a client that must pick.
    pub fn foreign() -> Platform {
        Platform::linux(if host_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        })
    }

    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A single-platform image: layers, config and manifest, all serialised and digested.
#[derive(Clone, Debug)]
pub struct Image {
    pub format: ManifestFormat,
    pub platform: Platform,
    pub layers: Vec<Layer>,
    pub config: Bytes,
    pub config_digest: String,
    pub manifest: Bytes,
    pub manifest_digest: String,
}

impl Image {
    /// A host-platform image.
    pub fn new(layers: Vec<Layer>, format: ManifestFormat) -> Image {
        Self::for_platform(layers, format, Platform::host())
    }

    pub fn for_platform(layers: Vec<Layer>, format: ManifestFormat, platform: Platform) -> Image {
        let config = config_json(&layers, &platform);
        let config_digest = sha256_digest(&config);
        let (manifest_type, config_type) = match format {
            ManifestFormat::Oci => (OCI_MANIFEST, OCI_CONFIG),
            ManifestFormat::DockerV2 => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| json!({ "mediaType": l.media_type(format), "digest": l.digest, "size": l.size() }))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": layer_descs,
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        Image {
            format,
            platform,
            manifest_digest: sha256_digest(&manifest),
            manifest: Bytes::from(manifest),
            config_digest,
            config: Bytes::from(config),
            layers,
        }
    }

    pub fn manifest_media_type(&self) -> &'static str {
        match self.format {
            ManifestFormat::Oci => OCI_MANIFEST,
            ManifestFormat::DockerV2 => DOCKER_MANIFEST,
        }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// chainIDs of the layers, bottom first, as the OCI spec defines them:
    /// chain(0) = diffID(0), chain(n) = sha256(chain(n-1) + " " + diffID(n)).
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids())
    }

    pub fn uncompressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.uncompressed_size).sum()
    }

    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size()).sum()
    }
}

pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn config_json(layers: &[Layer], platform: &Platform) -> Vec<u8> {
    // History carries one `empty_layer` entry: a client that pairs history entries with
    // layers by position (instead of skipping empty ones) gets caught.
    let mut history = vec![json!({
        "created": CREATED,
        "created_by": "/bin/sh -c #(nop) ENV IMAGECACHE_TEST=1",
        "empty_layer": true,
    })];
    for (i, l) in layers.iter().enumerate() {
        history.push(json!({
            "created": CREATED,
            "created_by": format!("/bin/sh -c #(nop) ADD layer {i} ({} bytes)", l.uncompressed_size),
        }));
    }
    let mut config = json!({
        "created": CREATED,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    serde_json::to_vec(&config).unwrap()
}

/// A multi-platform image index (OCI) or manifest list (Docker), listing images in the given
/// order: put the host's image last so a client that takes the first entry fails.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub format: ManifestFormat,
    pub images: Vec<Image>,
    pub bytes: Bytes,
    pub digest: String,
}

impl ImageIndex {
    pub fn new(images: Vec<Image>, format: ManifestFormat) -> ImageIndex {
        let media_type = match format {
            ManifestFormat::Oci => OCI_INDEX,
            ManifestFormat::DockerV2 => DOCKER_MANIFEST_LIST,
        };
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                json!({
                    "mediaType": img.manifest_media_type(),
                    "digest": img.manifest_digest,
                    "size": img.manifest.len(),
                    "platform": img.platform.to_json(),
                })
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
        let bytes = serde_json::to_vec_pretty(&index).unwrap();
        ImageIndex {
            format,
            images,
            digest: sha256_digest(&bytes),
            bytes: Bytes::from(bytes),
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self.format {
            ManifestFormat::Oci => OCI_INDEX,
            ManifestFormat::DockerV2 => DOCKER_MANIFEST_LIST,
        }
    }

    /// The entry a correct client on this machine resolves to.
    pub fn host_image(&self) -> &Image {
        let host = Platform::host();
        self.images
            .iter()
            .find(|i| i.platform.architecture == host.architecture && i.platform.os == host.os)
            .expect("index has no image for the host platform")
    }
}

/// What can be pushed under a tag: a single image or an index of images.
#[derive(Clone, Debug)]
pub enum Artifact {
    Image(Image),
    Index(ImageIndex),
}

impl Artifact {
    /// Digest of what the tag points at (manifest or index).
    pub fn digest(&self) -> &str {
        match self {
            Artifact::Image(i) => &i.manifest_digest,
            Artifact::Index(x) => &x.digest,
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self {
            Artifact::Image(i) => i.manifest_media_type(),
            Artifact::Index(x) => x.media_type(),
        }
    }

    /// The image a host-platform client ends up with.
    pub fn host_image(&self) -> &Image {
        match self {
            Artifact::Image(i) => i,
            Artifact::Index(x) => x.host_image(),
        }
    }

    pub fn images(&self) -> Vec<&Image> {
        match self {
            Artifact::Image(i) => vec![i],
            Artifact::Index(x) => x.images.iter().collect(),
        }
    }
}

impl From<Image> for Artifact {
    fn from(i: Image) -> Artifact {
        Artifact::Image(i)
    }
}

impl From<ImageIndex> for Artifact {
    fn from(i: ImageIndex) -> Artifact {
        Artifact::Index(i)
    }
}

pub type BasicAuth<'a> = Option<(&'a str, &'a str)>;

/// A blocking distribution-API client for pushing test images and reading them back.
pub struct RegistryClient {
    http: reqwest::blocking::Client,
    base: String,
    auth: Option<(String, String)>,
}

impl RegistryClient {
    /// `addr` is "host:port"; plain HTTP, as the test registry serves.
    pub fn new(addr: &str, auth: BasicAuth<'_>) -> RegistryClient {
        let http = reqwest::blocking::Client::builder()
            // Large layers over a busy loopback can take a while; never cut them short.
            .timeout(None)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap();
        RegistryClient {
            http,
            base: format!("http://{addr}"),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, String> {
        let resp = self
            .req(
                reqwest::Method::HEAD,
                &self.url(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .send()
            .map_err(|e| format!("HEAD blob {digest}: {e}"))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(format!("HEAD blob {digest}: HTTP {s}")),
        }
    }

    /// Monolithic upload: POST to open a session, then one PUT with the whole blob and its
    /// digest. Skips blobs the registry already has.
    pub fn push_blob(&self, repo: &str, digest: &str, data: Bytes) -> Result<(), String> {
        if self.blob_exists(repo, digest)? {
            return Ok(());
        }
        let resp = self
            .req(
                reqwest::Method::POST,
                &self.url(&format!("/v2/{repo}/blobs/uploads/")),
            )
            .header("Content-Length", "0")
            .send()
            .map_err(|e| format!("start upload of {digest}: {e}"))?;
        if resp.status().as_u16() != 202 {
            return Err(format!(
                "start upload of {digest}: HTTP {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            ));
        }
        let location = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or("upload session without Location")?
            .to_string();
        // Location may be relative, and usually already carries a `_state` query.
        let mut url = if location.starts_with("http") {
            location
        } else {
            self.url(&location)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(digest);
        let len = data.len();
        let resp = self
            .req(reqwest::Method::PUT, &url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string())
            .body(data)
            .send()
            .map_err(|e| format!("upload {digest} ({len} bytes): {e}"))?;
        if resp.status().as_u16() != 201 {
            return Err(format!(
                "upload {digest}: HTTP {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// PUT a manifest or index under a tag or digest reference.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), String> {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &self.url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("Content-Type", media_type)
            .body(body)
            .send()
            .map_err(|e| format!("PUT manifest {repo}:{reference}: {e}"))?;
        if resp.status().as_u16() != 201 {
            return Err(format!(
                "PUT manifest {repo}:{reference}: HTTP {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// GET a manifest (accepting every type this kit pushes): (media type, bytes,
    /// Docker-Content-Digest header).
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, Vec<u8>, Option<String>), String> {
        let accept = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self
            .req(
                reqwest::Method::GET,
                &self.url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("Accept", accept)
            .send()
            .map_err(|e| format!("GET manifest {repo}:{reference}: {e}"))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header("Content-Type").unwrap_or_default();
        let digest = header("Docker-Content-Digest");
        let body = resp.bytes().map_err(|e| e.to_string())?.to_vec();
        if status != 200 {
            return Err(format!(
                "GET manifest {repo}:{reference}: HTTP {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok((media_type, body, digest))
    }

    /// GET a blob's bytes as the registry serves them (no verification: that is the point).
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .req(
                reqwest::Method::GET,
                &self.url(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .send()
            .map_err(|e| format!("GET blob {digest}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().map_err(|e| e.to_string())?.to_vec();
        if status != 200 {
            return Err(format!("GET blob {digest}: HTTP {status}"));
        }
        Ok(body)
    }

    /// HTTP status of an arbitrary GET, for auth checks.
    pub fn get_status(&self, path: &str) -> Result<u16, String> {
        let resp = self
            .req(reqwest::Method::GET, &self.url(path))
            .send()
            .map_err(|e| format!("GET {path}: {e}"))?;
        Ok(resp.status().as_u16())
    }

    pub fn delete_manifest(&self, repo: &str, digest: &str) -> Result<(), String> {
        let resp = self
            .req(
                reqwest::Method::DELETE,
                &self.url(&format!("/v2/{repo}/manifests/{digest}")),
            )
            .send()
            .map_err(|e| format!("DELETE manifest {digest}: {e}"))?;
        match resp.status().as_u16() {
            202 => Ok(()),
            s => Err(format!("DELETE manifest {digest}: HTTP {s}")),
        }
    }

    /// Pushes every blob, then every child manifest by digest, then the top manifest by tag
    /// (a registry refuses an index whose children it lacks). Returns the tag's digest.
    pub fn push(&self, repo: &str, tag: &str, artifact: &Artifact) -> Result<String, String> {
        for image in artifact.images() {
            for layer in &image.layers {
                self.push_blob(repo, &layer.digest, layer.blob.clone())?;
            }
            self.push_blob(repo, &image.config_digest, image.config.clone())?;
        }
        match artifact {
            Artifact::Image(image) => self.put_manifest(
                repo,
                tag,
                image.manifest_media_type(),
                image.manifest.clone(),
            )?,
            Artifact::Index(index) => {
                for image in &index.images {
                    self.put_manifest(
                        repo,
                        &image.manifest_digest,
                        image.manifest_media_type(),
                        image.manifest.clone(),
                    )?;
                }
                self.put_manifest(repo, tag, index.media_type(), index.bytes.clone())?;
            }
        }
        Ok(artifact.digest().to_string())
    }
}

/// Pushes `artifact` to `registry_addr` ("127.0.0.1:PORT") as `repo:tag`; returns the digest
/// the tag resolves to. Panics with the registry's answer on failure: this is test setup.
pub fn push(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    artifact: &Artifact,
    basic_auth: BasicAuth<'_>,
) -> String {
    RegistryClient::new(registry_addr, basic_auth)
        .push(repo, tag, artifact)
        .unwrap_or_else(|e| panic!("push {registry_addr}/{repo}:{tag}: {e}"))
}

/// `push` for a single image.
pub fn push_image(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    image: &Image,
    basic_auth: BasicAuth<'_>,
) -> String {
    push(
        registry_addr,
        repo,
        tag,
        &Artifact::Image(image.clone()),
        basic_auth,
    )
}
