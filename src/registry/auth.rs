//! Registry credentials: Kubernetes image pull secrets first, then the node's docker
//! config.json, else anonymous — the order the kubelet uses.
//!
//! Secrets are user-supplied, so they are parsed here rather than by `docker_credential`: that
//! crate runs the credential helper a config names, and a pull secret must never make the daemon
//! execute a program. The docker config is the operator's own file, so helpers are honoured there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::error::RegistryError;
use super::reference::{normalize_registry_host, DOCKER_HUB};

/// The file a `kubernetes.io/dockerconfigjson` secret is projected to.
const SECRET_FILE: &str = ".dockerconfigjson";
/// The key docker and credential helpers use for Docker Hub.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// Credentials for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl Credentials {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
    }

    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Where a build's credentials come from, in priority order.
#[derive(Debug, Default)]
pub struct Keyring {
    /// A CRI pull's own credentials (the kubelet's AuthConfig), for its image's registry.
    pull: Option<(String, Credentials)>,
    secrets: Vec<PullSecret>,
    docker_config: Option<DockerConfig>,
}

#[derive(Debug)]
struct PullSecret {
    /// `namespace/name`, for messages.
    name: String,
    /// Normalised registry host -> credentials, in file order.
    auths: Vec<(String, Credentials)>,
}

/// The raw docker config, resolved per host on demand so credential helpers run only for
/// registries actually pulled from.
struct DockerConfig {
    path: PathBuf,
    contents: Vec<u8>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Loads `<secrets_dir>/<namespace>/<name>/.dockerconfigjson` for each `namespace:name`
    /// (or `namespace/name`).
    ///
    /// A named secret that is missing or malformed is an error: the user asked for it, and
    /// pulling anonymously instead would fail later with a less helpful message.
    pub fn from_pull_secrets(
        secrets_dir: &Path,
        secrets: &[String],
    ) -> Result<Self, RegistryError> {
        let secrets = secrets
            .iter()
            .map(|secret| load_pull_secret(secrets_dir, secret))
            .collect::<Result<_, _>>()?;
        Ok(Keyring {
            pull: None,
            secrets,
            docker_config: None,
        })
    }

    /// Puts the credentials a CRI PullImage came with (the kubelet's `AuthConfig`, from the
    /// pod's pull secrets or the node's) first for `registry`: they are what containerd
    /// itself pulls that image with.
    pub fn with_pull_credentials(mut self, registry: &str, credentials: Credentials) -> Self {
        self.pull = Some((normalize_registry_host(registry), credentials));
        self
    }

    /// Adds the node's docker config.json as the fallback after pull secrets. A missing file is
    /// not an error (most nodes have none); an unreadable or malformed one is.
    pub fn with_docker_config(mut self, path: &Path) -> Result<Self, RegistryError> {
        let fail = |reason: String| RegistryError::DockerConfig {
            path: path.display().to_string(),
            reason,
        };
        let contents = match std::fs::read(path) {
            Ok(contents) => contents,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        };
        warn_if_readable_by_others(path);
        serde_json::from_slice::<serde_json::Value>(&contents)
            .map_err(|e| fail(json_error_summary(&e)))?;
        self.docker_config = Some(DockerConfig {
            path: path.to_path_buf(),
            contents,
        });
        Ok(self)
    }

    /// The pull secret (`namespace/name`) that gives the credentials for `registry`, if one
    /// does: what [`Keyring::credentials_for`] would use first.
    pub fn secret_for(&self, registry: &str) -> Option<&str> {
        let host = normalize_registry_host(registry);
        if self.pull.as_ref().is_some_and(|(h, _)| *h == host) {
            return None;
        }
        self.secrets
            .iter()
            .find(|s| s.auths.iter().any(|(h, _)| *h == host))
            .map(|s| s.name.as_str())
    }

    /// Credentials for `registry` (a host as in [`super::ImageReference::registry`]).
    pub fn credentials_for(&self, registry: &str) -> Credentials {
        let host = normalize_registry_host(registry);
        if let Some((_, creds)) = self.pull.as_ref().filter(|(h, _)| *h == host) {
            tracing::debug!(registry = %host, "using the CRI pull's own credentials");
            return creds.clone();
        }
        for secret in &self.secrets {
            if let Some((_, creds)) = secret.auths.iter().find(|(h, _)| *h == host) {
                tracing::debug!(registry = %host, secret = %secret.name, "using image pull secret");
                return creds.clone();
            }
        }
        if let Some(config) = &self.docker_config {
            if let Some(creds) = config.credentials_for(&host) {
                return creds;
            }
        }
        Credentials::Anonymous
    }
}

impl DockerConfig {
    fn credentials_for(&self, host: &str) -> Option<Credentials> {
        let server = if host == DOCKER_HUB {
            DOCKER_HUB_SERVER
        } else {
            host
        };
        match docker_credential::get_credential_from_reader(&self.contents[..], server) {
            Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
                Some(Credentials::Basic { username, password })
            }
            Ok(docker_credential::DockerCredential::IdentityToken(_)) => {
                tracing::warn!(
                    registry = %host,
                    path = %self.path.display(),
                    "docker config holds an identity token for this registry, which is not \
                     supported; pulling anonymously"
                );
                None
            }
            Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => None,
            Err(e) => {
                tracing::warn!(
                    registry = %host,
                    path = %self.path.display(),
                    error = %e,
                    "cannot get credentials from docker config; pulling anonymously"
                );
                None
            }
        }
    }
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Splits a pull secret reference: `namespace:name`, or `namespace/name` as Tencent EKS
/// writes it. The colon wins when both appear, so `ns:a/b` stays one (invalid) name.
pub fn split_secret_ref(secret: &str) -> Option<(&str, &str)> {
    secret.split_once(':').or_else(|| secret.split_once('/'))
}

fn load_pull_secret(secrets_dir: &Path, secret: &str) -> Result<PullSecret, RegistryError> {
    let fail = |path: &Path, reason: String| RegistryError::PullSecret {
        secret: secret.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let (namespace, name) = split_secret_ref(secret)
        .filter(|(ns, name)| is_dns_name(ns) && is_dns_name(name))
        .ok_or_else(|| {
            fail(
                secrets_dir,
                "expected `namespace:name` or `namespace/name` with Kubernetes object names".into(),
            )
        })?;
    let path = secrets_dir.join(namespace).join(name).join(SECRET_FILE);
    let contents = std::fs::read(&path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "not found: create the secret (type kubernetes.io/dockerconfigjson) there"
        } else {
            "cannot be read"
        };
        fail(&path, format!("{hint} ({e})"))
    })?;
    warn_if_readable_by_others(&path);
    let auths = parse_dockerconfigjson(&contents).map_err(|reason| fail(&path, reason))?;
    Ok(PullSecret {
        name: format!("{namespace}/{name}"),
        auths,
    })
}

/// Credentials any user of the node can read are not secret: say so, naming the file (never
/// its contents). The pull goes on; refusing would break nodes that work today.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                file = %path.display(),
                "a registry credentials file is readable by every user of this node: chmod o-r it (0600 or 0640)"
            );
        }
    }
}

/// Parses a `.dockerconfigjson` document. Errors describe the problem without echoing any of
/// the document, which holds secrets.
fn parse_dockerconfigjson(contents: &[u8]) -> Result<Vec<(String, Credentials)>, String> {
    let config: DockerConfigJson =
        serde_json::from_slice(contents).map_err(|e| json_error_summary(&e))?;
    config
        .auths
        .into_iter()
        .map(|(key, entry)| {
            let host = registry_host_of_key(&key);
            let creds = entry_credentials(entry)
                .map_err(|reason| format!("entry for `{host}`: {reason}"))?;
            Ok((host, creds))
        })
        .collect()
}

fn entry_credentials(entry: AuthEntry) -> Result<Credentials, String> {
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        return decode_basic_auth(&auth);
    }
    match (entry.username, entry.password) {
        (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
        _ => Err("needs `auth` or both `username` and `password`".into()),
    }
}

/// An `auth` value as docker config and CRI's AuthConfig write it: base64 of
/// `username:password`. Errors never echo it.
pub fn decode_basic_auth(auth: &str) -> Result<Credentials, String> {
    // Docker writes standard base64 with padding; some tools drop the padding.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
        .map_err(|_| "`auth` is not valid base64".to_string())?;
    let decoded = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8".to_string())?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| "`auth` must encode `username:password`".to_string())?;
    Ok(Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// `auths` keys may be a host, a host with path, or a URL (`https://index.docker.io/v1/`).
fn registry_host_of_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    normalize_registry_host(host)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// serde_json's messages can quote the offending value; keep only the category and position.
fn json_error_summary(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "cannot be read",
        serde_json::error::Category::Syntax => "is not valid JSON",
        serde_json::error::Category::Data => "does not have the dockerconfigjson shape",
        serde_json::error::Category::Eof => "ends early",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    fn write_secret(dir: &Path, ns: &str, name: &str, json: &str) {
        let d = dir.join(ns).join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(SECRET_FILE), json).unwrap();
    }

    #[test]
    fn auth_field_is_base64_user_colon_pass() {
        // "alice:s3cr:et" — the password may itself contain ':'.
        let json = r#"{"auths":{"reg.example.com":{"auth":"YWxpY2U6czNjcjpldA=="}}}"#;
        let auths = parse_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(
            auths,
            vec![("reg.example.com".into(), basic("alice", "s3cr:et"))]
        );
    }

    #[test]
    fn username_and_password_fields() {
        let json = r#"{"auths":{"reg:5000":{"username":"bob","password":"pw"}}}"#;
        let auths = parse_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(auths, vec![("reg:5000".into(), basic("bob", "pw"))]);
    }

    #[test]
    fn url_keys_map_to_hosts() {
        assert_eq!(
            registry_host_of_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(registry_host_of_key("registry-1.docker.io"), "docker.io");
        assert_eq!(registry_host_of_key("http://reg:5000"), "reg:5000");
        assert_eq!(registry_host_of_key("quay.io/v2/"), "quay.io");
    }

    #[test]
    fn malformed_entries_do_not_echo_secrets() {
        let e = parse_dockerconfigjson(br#"{"auths":{"r":{"auth":"!!!hunter2"}}}"#).unwrap_err();
        assert!(e.contains("base64") && !e.contains("hunter2"), "{e}");
        let e = parse_dockerconfigjson(br#"{"auths":{"r":{"username":"u"}}}"#).unwrap_err();
        assert!(e.contains("password"), "{e}");
        let e = parse_dockerconfigjson(br#"{"auths":{"r":"hunter2"}}"#).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_dockerconfigjson(br#"{"auths": hunter2"#).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_cri_pulls_own_credentials_come_first_for_its_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        write_secret(
            dir.path(),
            "team",
            "regcred",
            r#"{"auths":{"reg:5000":{"username":"secret","password":"a"},
                         "other:5000":{"username":"secret","password":"b"}}}"#,
        );
        let keyring = Keyring::from_pull_secrets(dir.path(), &["team:regcred".to_string()])
            .unwrap()
            .with_pull_credentials("reg:5000", basic("pod", "p"));
        assert_eq!(keyring.credentials_for("reg:5000"), basic("pod", "p"));
        assert_eq!(keyring.secret_for("reg:5000"), None);
        assert_eq!(keyring.credentials_for("other:5000"), basic("secret", "b"));
        assert_eq!(keyring.secret_for("other:5000"), Some("team/regcred"));
        assert_eq!(keyring.credentials_for("quay.io"), Credentials::Anonymous);
    }

    #[test]
    fn keyring_prefers_pull_secrets_in_order_then_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        write_secret(
            dir.path(),
            "team",
            "first",
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"hub","password":"a"}}}"#,
        );
        write_secret(
            dir.path(),
            "team",
            "second",
            r#"{"auths":{"docker.io":{"username":"other","password":"b"},
                         "reg:5000":{"auth":"cmVnOnBhc3M="}}}"#,
        );
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"auths":{"node.example.com":{"auth":"bm9kZTpwdw=="},
                         "reg:5000":{"auth":"bm9kZTpwdw=="}}}"#,
        )
        .unwrap();

        let keyring = Keyring::from_pull_secrets(
            dir.path(),
            &["team:first".to_string(), "team:second".to_string()],
        )
        .unwrap()
        .with_docker_config(&config)
        .unwrap();

        assert_eq!(keyring.credentials_for("docker.io"), basic("hub", "a"));
        assert_eq!(
            keyring.credentials_for("index.docker.io"),
            basic("hub", "a")
        );
        assert_eq!(keyring.credentials_for("reg:5000"), basic("reg", "pass"));
        assert_eq!(
            keyring.credentials_for("node.example.com"),
            basic("node", "pw")
        );
        assert_eq!(keyring.credentials_for("quay.io"), Credentials::Anonymous);
    }

    #[test]
    fn missing_docker_config_is_fine_missing_secret_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::default()
            .with_docker_config(&dir.path().join("nope.json"))
            .unwrap();
        assert_eq!(keyring.credentials_for("x.io"), Credentials::Anonymous);

        let e = Keyring::from_pull_secrets(dir.path(), &["ns:missing".to_string()]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`ns:missing`") && msg.contains("create the secret"),
            "{msg}"
        );
    }

    #[test]
    fn secret_names_cannot_escape_the_secrets_dir() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../etc:x", "ns:..", "ns", "ns:a/b", ":x", "NS:x", "../x", "ns/a/b", "/x", "ns/..",
        ] {
            let e = Keyring::from_pull_secrets(dir.path(), &[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains("namespace:name"), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_redacts_passwords() {
        let creds = basic("alice", "hunter2");
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(format!("{:?}", Credentials::Anonymous), "Anonymous");

        let dir = tempfile::tempdir().unwrap();
        write_secret(
            dir.path(),
            "ns",
            "s",
            r#"{"auths":{"r.io":{"username":"u","password":"hunter2"}}}"#,
        );
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"auths":{"x.io":{"auth":"aHVudGVyMjpodW50ZXIy"}}}"#,
        )
        .unwrap();
        let keyring = Keyring::from_pull_secrets(dir.path(), &["ns:s".into()])
            .unwrap()
            .with_docker_config(&config)
            .unwrap();
        let shown = format!("{keyring:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("aHVudGVy"),
            "{shown}"
        );
    }
}
