//! The registry client against a real registry (distribution 2.8 on 127.0.0.1, plain HTTP).
//!
//! Cases: resolve a schema 2 image by tag and by digest and stream its layers; choose this
//! platform's manifest from an OCI index (and fail clearly when there is none); missing image;
//! htpasswd registry without, with wrong and with right credentials; tampered and truncated
//! blobs detected at the end of the stream; connection refused over HTTP and HTTPS; mirrors
//! used first and skipped when down.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine as _;
use futures_util::StreamExt as _;
use imagecache::registry::{
    Credentials, ImageReference, Keyring, Platform, RegistryClient, RegistryConfig, RegistryError,
    ResolvedImage,
};
use sha2::{Digest as _, Sha256};
use support::registry::TestRegistry;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic incompressible bytes, so layers span many HTTP chunks.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Minimal HTTP/1.1 over a socket: pushing needs nothing the crate under test provides.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        head.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp)
}

struct Pusher<'a> {
    reg: &'a TestRegistry,
}

impl Pusher<'_> {
    fn auth(&self) -> Option<(&str, &str)> {
        self.reg.credentials()
    }

    /// Monolithic upload as distribution 2.8 supports it: POST opens a session, one PUT with
    /// `digest=` carries the whole blob.
    fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let addr = self.reg.addr();
        let (status, resp) = http(
            &addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            "application/octet-stream",
            b"",
            self.auth(),
        );
        assert_eq!(status, 202, "start upload: {resp}\n{}", self.reg.log());
        let location = resp
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .expect("Location header");
        let path = location
            .strip_prefix(&format!("http://{addr}"))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, resp) = http(
            &addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            "application/octet-stream",
            data,
            self.auth(),
        );
        assert_eq!(status, 201, "blob upload: {resp}\n{}", self.reg.log());
        digest
    }

    fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let (status, resp) = http(
            &self.reg.addr(),
            "PUT",
            &path,
            media_type,
            body,
            self.auth(),
        );
        assert_eq!(status, 201, "manifest put: {resp}\n{}", self.reg.log());
        sha256(body)
    }
}

struct Pushed {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    diff_ids: Vec<String>,
}

/// Pushes a two-layer image and tags it (when `tag` is set). Layer bytes need not be real
/// tarballs: the registry client passes them through untouched.
fn push_image(
    pusher: &Pusher,
    repo: &str,
    tag: Option<&str>,
    platform: (&str, Option<&str>),
    oci: bool,
    seed: u64,
) -> Pushed {
    let layers = vec![noise(seed, 300_000), noise(seed + 1, 1234)];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| sha256(&[l.as_slice(), b"-uncompressed"].concat()))
        .collect();
    let mut config = serde_json::json!({
        "architecture": platform.0,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Cmd": ["/bin/sh"]},
    });
    if let Some(variant) = platform.1 {
        config["variant"] = variant.into();
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = pusher.blob(repo, &config);
    let (manifest_type, config_type, layer_type) = if oci {
        (OCI_MANIFEST, OCI_CONFIG, OCI_ZSTD_LAYER)
    } else {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    };
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": layer_type,
                "digest": pusher.blob(repo, l),
                "size": l.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let digest = sha256(&manifest);
    let manifest_digest = pusher.manifest(repo, tag.unwrap_or(&digest), manifest_type, &manifest);
    Pushed {
        manifest,
        manifest_digest,
        config,
        layers,
        diff_ids,
    }
}

fn insecure_client(regs: &[&TestRegistry]) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        insecure_registries: regs.iter().map(|r| r.addr()).collect(),
        max_retries: 0,
        ..Default::default()
    })
}

fn reference(s: &str) -> ImageReference {
    s.parse().unwrap()
}

async fn read_blob(
    client: &RegistryClient,
    image: &ResolvedImage,
    i: usize,
    creds: &Credentials,
) -> (Vec<u8>, Option<RegistryError>) {
    let mut stream = client
        .open_blob(&image.reference, &image.layers[i], creds)
        .await
        .unwrap();
    let mut data = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                assert!(error.is_none(), "bytes after an error");
                data.extend_from_slice(&chunk);
            }
            Err(e) => error = Some(e),
        }
    }
    (data, error)
}

#[tokio::test]
async fn resolves_and_streams_a_schema2_image_over_http() {
    let reg = TestRegistry::start();
    let pushed = push_image(
        &Pusher { reg: &reg },
        "team/app",
        Some("v1"),
        ("amd64", None),
        false,
        1,
    );
    let client = insecure_client(&[&reg]);
    let anon = Credentials::Anonymous;

    let image = client
        .resolve(&reference(&format!("{}/team/app:v1", reg.addr())), &anon)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));

    assert!(image.index.is_none());
    assert_eq!(
        image.manifest.bytes, pushed.manifest,
        "exact bytes as served"
    );
    assert_eq!(image.manifest.digest, pushed.manifest_digest);
    assert_eq!(image.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(image.config.bytes, pushed.config);
    assert_eq!(image.config.digest, sha256(&pushed.config));
    assert_eq!(image.config.media_type, DOCKER_CONFIG);
    assert_eq!(image.diff_ids(), pushed.diff_ids);
    assert_eq!(image.layers.len(), 2);
    for (i, layer) in image.layers.iter().enumerate() {
        assert_eq!(layer.digest, sha256(&pushed.layers[i]));
        assert_eq!(layer.size, pushed.layers[i].len() as u64);
        assert_eq!(layer.media_type, DOCKER_LAYER);
        let (data, error) = read_blob(&client, &image, i, &anon).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(data, pushed.layers[i]);
    }
    assert_eq!(
        image.pinned_reference().to_string(),
        format!("{}/team/app:v1@{}", reg.addr(), pushed.manifest_digest)
    );

    // By digest, and by tag + digest, give the same image.
    for r in [
        format!("{}/team/app@{}", reg.addr(), pushed.manifest_digest),
        format!("{}/team/app:v1@{}", reg.addr(), pushed.manifest_digest),
    ] {
        let again = client.resolve(&reference(&r), &anon).await.unwrap();
        assert_eq!(again.manifest, image.manifest);
        assert_eq!(again.layers, image.layers);
    }
}

#[tokio::test]
async fn index_resolves_to_this_platform() {
    let reg = TestRegistry::start();
    let pusher = Pusher { reg: &reg };
    let host = Platform::host();
    let other_arch = if host.architecture == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let other = push_image(&pusher, "multi", None, (other_arch, None), true, 10);
    let ours = push_image(
        &pusher,
        "multi",
        None,
        (&host.architecture, host.variant.as_deref()),
        true,
        20,
    );
    let entry = |p: &Pushed, arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": p.manifest_digest,
            "size": p.manifest.len(),
            "platform": platform,
        })
    };
    // The other platform first, so picking the first entry would be wrong; plus a buildkit
    // style attestation entry that must never be chosen.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            entry(&other, other_arch, None),
            {
                "mediaType": OCI_MANIFEST,
                "digest": other.manifest_digest,
                "size": other.manifest.len(),
                "platform": {"os": "unknown", "architecture": "unknown"},
            },
            entry(&ours, &host.architecture, host.variant.as_deref()),
        ],
    }))
    .unwrap();
    let index_digest = pusher.manifest("multi", "latest", OCI_INDEX, &index);

    let client = insecure_client(&[&reg]);
    let anon = Credentials::Anonymous;
    let image = client
        .resolve(&reference(&format!("{}/multi", reg.addr())), &anon)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    let got_index = image.index.as_ref().expect("index kept");
    assert_eq!(got_index.bytes, index);
    assert_eq!(got_index.digest, index_digest);
    assert_eq!(got_index.media_type, OCI_INDEX);
    assert_eq!(image.manifest.digest, ours.manifest_digest);
    assert_eq!(image.manifest.media_type, OCI_MANIFEST);
    assert_eq!(image.config.bytes, ours.config);
    assert_eq!(image.diff_ids(), ours.diff_ids);
    assert_eq!(image.layers[0].media_type, OCI_ZSTD_LAYER);
    assert!(image
        .pinned_reference()
        .to_string()
        .ends_with(&index_digest));
    let (data, error) = read_blob(&client, &image, 1, &anon).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(data, ours.layers[1]);

    // An index without this platform fails and says what is available.
    let foreign = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&other, other_arch, None)],
    }))
    .unwrap();
    pusher.manifest("multi", "foreign", OCI_INDEX, &foreign);
    let e = client
        .resolve(&reference(&format!("{}/multi:foreign", reg.addr())), &anon)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NoMatchingPlatform { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("linux/{other_arch}")) && msg.contains(&host.to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_images_and_tags_are_not_found() {
    let reg = TestRegistry::start();
    push_image(
        &Pusher { reg: &reg },
        "present",
        Some("v1"),
        ("amd64", None),
        false,
        3,
    );
    let client = insecure_client(&[&reg]);
    for missing in ["absent:v1", "present:v2"] {
        let r = reference(&format!("{}/{missing}", reg.addr()));
        let e = client
            .resolve(&r, &Credentials::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("`{r}` not found in registry {}", reg.addr()))
                && msg.contains("check the name and tag"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn htpasswd_registry_needs_the_right_credentials() {
    let reg = TestRegistry::start_with_htpasswd("puller", "correct-horse");
    let pushed = push_image(
        &Pusher { reg: &reg },
        "private/app",
        Some("1"),
        ("amd64", None),
        false,
        4,
    );
    let client = insecure_client(&[&reg]);
    let r = reference(&format!("{}/private/app:1", reg.addr()));

    let e = client
        .resolve(&r, &Credentials::Anonymous)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::AuthenticationRequired { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("add an imagePullSecret"), "{e}");

    let wrong = Credentials::Basic {
        username: "puller".into(),
        password: "battery-staple".into(),
    };
    let e = client.resolve(&r, &wrong).await.unwrap_err();
    assert!(matches!(e, RegistryError::CredentialsRefused { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("refused the credentials") && msg.contains("pull secret"),
        "{msg}"
    );
    assert!(!msg.contains("battery-staple") && !format!("{e:?}").contains("battery-staple"));

    let right = Credentials::Basic {
        username: "puller".into(),
        password: "correct-horse".into(),
    };
    let image = client
        .resolve(&r, &right)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    assert_eq!(image.manifest.bytes, pushed.manifest);
    let (data, error) = read_blob(&client, &image, 0, &right).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(data, pushed.layers[0]);

    // The same credentials found through a pull secret, as the daemon resolves them.
    let secrets = tempfile::tempdir().unwrap();
    let secret_dir = secrets.path().join("team").join("regcred");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:correct-horse");
    std::fs::write(
        secret_dir.join(".dockerconfigjson"),
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.addr()
        ),
    )
    .unwrap();
    let keyring = Keyring::from_pull_secrets(secrets.path(), &["team:regcred".into()]).unwrap();
    let from_secret = keyring.credentials_for(r.registry());
    assert_eq!(from_secret, right);
    client.resolve(&r, &from_secret).await.unwrap();

    // Blobs are protected too: anonymous streams are refused, not served.
    let e = client
        .open_blob(&image.reference, &image.layers[0], &Credentials::Anonymous)
        .await
        .err()
        .expect("anonymous blob pull refused");
    assert!(
        matches!(e, RegistryError::AuthenticationRequired { .. }),
        "{e}"
    );
}

#[tokio::test]
async fn tampered_blob_fails_at_the_end_of_the_stream() {
    let reg = TestRegistry::start();
    let pushed = push_image(
        &Pusher { reg: &reg },
        "app",
        Some("v1"),
        ("amd64", None),
        false,
        5,
    );
    let client = insecure_client(&[&reg]);
    let image = client
        .resolve(
            &reference(&format!("{}/app:v1", reg.addr())),
            &Credentials::Anonymous,
        )
        .await
        .unwrap();
    let digest = image.layers[0].digest.clone();
    reg.corrupt_blob(&digest, 150_000);

    let (data, error) = read_blob(&client, &image, 0, &Credentials::Anonymous).await;
    assert_eq!(
        data.len(),
        pushed.layers[0].len(),
        "all bytes were passed on first"
    );
    let e = error.expect("digest mismatch reported");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    let msg = e.to_string();
    let mut tampered = pushed.layers[0].clone();
    tampered[150_000] ^= 0xff;
    assert!(
        msg.contains(&digest) && msg.contains(&sha256(&tampered)),
        "{msg}"
    );
}

#[tokio::test]
async fn truncated_blob_is_an_error() {
    let reg = TestRegistry::start();
    push_image(
        &Pusher { reg: &reg },
        "app",
        Some("v1"),
        ("amd64", None),
        false,
        6,
    );
    let client = insecure_client(&[&reg]);
    let image = client
        .resolve(
            &reference(&format!("{}/app:v1", reg.addr())),
            &Credentials::Anonymous,
        )
        .await
        .unwrap();
    reg.truncate_blob(&image.layers[0].digest, 1000);

    let (data, error) = read_blob(&client, &image, 0, &Credentials::Anonymous).await;
    assert!(data.len() <= 1000);
    let e = error.expect("truncation reported");
    assert!(
        matches!(
            e,
            RegistryError::Truncated {
                expected: 300_000,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn connection_refused_names_host_and_scheme() {
    // A port nobody listens on: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let r = reference(&format!("{addr}/app:v1"));

    let over_http = RegistryClient::new(RegistryConfig {
        insecure_registries: vec![addr.clone()],
        max_retries: 1,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let e = over_http
        .resolve(&r, &Credentials::Anonymous)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(100),
        "one retry with backoff"
    );
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Connect { .. }), "{e}");
    assert!(
        msg.contains(&addr) && msg.contains("over HTTP ") && msg.contains("refused"),
        "{msg}"
    );

    let over_https = RegistryClient::new(RegistryConfig {
        max_retries: 0,
        ..Default::default()
    });
    let e = over_https
        .resolve(&r, &Credentials::Anonymous)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("over HTTPS") && msg.contains("insecure_registries"),
        "{msg}"
    );
}

#[tokio::test]
async fn plain_http_registry_not_listed_as_insecure_gets_a_hint() {
    let reg = TestRegistry::start();
    let client = RegistryClient::new(RegistryConfig {
        max_retries: 0,
        ..Default::default()
    });
    let e = client
        .resolve(
            &reference(&format!("{}/app:v1", reg.addr())),
            &Credentials::Anonymous,
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("HTTPS") && msg.contains("insecure_registries"),
        "{msg}"
    );
}

#[tokio::test]
async fn mirrors_are_tried_first_and_skipped_when_down() {
    let upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    // Only the mirror has v1; only upstream has v2.
    let in_mirror = push_image(
        &Pusher { reg: &mirror },
        "app",
        Some("v1"),
        ("amd64", None),
        false,
        7,
    );
    let in_upstream = push_image(
        &Pusher { reg: &upstream },
        "app",
        Some("v2"),
        ("amd64", None),
        false,
        8,
    );

    let client = RegistryClient::new(RegistryConfig {
        insecure_registries: vec![upstream.addr(), mirror.addr(), dead.clone()],
        mirrors: BTreeMap::from([(upstream.addr(), vec![dead.clone(), mirror.addr()])]),
        max_retries: 0,
        ..Default::default()
    });
    let anon = Credentials::Anonymous;

    let image = client
        .resolve(&reference(&format!("{}/app:v1", upstream.addr())), &anon)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mirror.log()));
    assert_eq!(image.manifest.bytes, in_mirror.manifest);
    let (data, error) = read_blob(&client, &image, 0, &anon).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(data, in_mirror.layers[0]);

    let image = client
        .resolve(&reference(&format!("{}/app:v2", upstream.addr())), &anon)
        .await
        .unwrap();
    assert_eq!(image.manifest.bytes, in_upstream.manifest);
    let (data, _) = read_blob(&client, &image, 0, &anon).await;
    assert_eq!(data, in_upstream.layers[0]);
}
