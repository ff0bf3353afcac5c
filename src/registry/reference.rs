//! Image references, normalised the way Docker and containerd do, so that `nginx`,
//! `docker.io/nginx` and `docker.io/library/nginx:latest` name one image everywhere
//! (cache annotations, `snapshots.json`, matching).

use std::fmt;
use std::str::FromStr;

use super::error::RegistryError;

/// Docker Hub's canonical name; its other spellings are folded into this one.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];
const DEFAULT_TAG: &str = "latest";
/// distribution's limit on the repository part of a name.
const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully qualified image reference: registry host, repository path, and a tag and/or digest.
///
/// When both tag and digest are present the digest decides what is pulled and the tag is kept
/// for display, as Docker does.
///
/// Serialises as its normalised string, so stored and wire forms are the familiar one.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageReference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: impl Into<String>) -> ImageReference {
        ImageReference {
            digest: Some(digest.into()),
            ..self.clone()
        }
    }

    /// What the registry's manifest endpoint is asked for: the digest when pinned.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The reference in oci-client's terms; with `mirror`, requests go to that host (with
    /// `?ns=<registry>`, which pull-through caches use to pick the upstream).
    pub(crate) fn to_oci(&self, mirror: Option<&str>) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        let mut reference = match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                digest.clone(),
            ),
            (None, Some(digest)) => {
                oci_client::Reference::with_digest(registry, repository, digest.clone())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_string()),
            ),
        };
        if let Some(mirror) = mirror {
            reference.set_mirror_registry(mirror.to_string());
        }
        reference
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl From<ImageReference> for String {
    fn from(reference: ImageReference) -> String {
        reference.to_string()
    }
}

impl TryFrom<String> for ImageReference {
    type Error = RegistryError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for ImageReference {
    type Err = RegistryError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map_err(|reason| RegistryError::InvalidReference {
            input: input.to_string(),
            reason,
        })
    }
}

fn parse(input: &str) -> Result<ImageReference, String> {
    if input.is_empty() {
        return Err("empty reference".into());
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }

    let (name_and_tag, digest) = match input.split_once('@') {
        Some((name, digest)) => (name, Some(validate_digest(digest)?)),
        None => (input, None),
    };

    // A ':' after the last '/' starts a tag; one before it is a registry port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let split = last_slash + i;
            (
                &name_and_tag[..split],
                Some(validate_tag(&name_and_tag[split + 1..])?),
            )
        }
        None => (name_and_tag, None),
    };

    let (registry, repository) = split_registry(name)?;
    validate_repository(&repository)?;

    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (tag, _) => tag,
    };
    Ok(ImageReference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first path component is a registry if it looks like a host (has a dot
/// or a port, is `localhost`, or has uppercase letters, which repositories cannot).
fn split_registry(name: &str) -> Result<(String, String), String> {
    if name.is_empty() {
        return Err("missing repository name".into());
    }
    let (registry, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            validate_host(first)?;
            // Hosts compare lowercased, except one that only its capitals mark as a host:
            // lowercased, `Myhost/app` would print as `myhost/app`, which is Docker Hub's.
            let marked_by_case_only =
                !first.contains(['.', ':']) && !first.eq_ignore_ascii_case("localhost");
            let registry = if marked_by_case_only {
                first.to_string()
            } else {
                normalize_registry_host(first)
            };
            (registry, rest)
        }
        _ => (DOCKER_HUB.to_string(), name),
    };
    let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_string()
    };
    Ok((registry, repository))
}

/// Folds Docker Hub's aliases (as found in references and credential keys) into `docker.io`.
pub(crate) fn normalize_registry_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: [::1]:5000
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host `{host}` has an unclosed `[`"))?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "registry host `{host}` is not a valid IPv6 address"
            ));
        }
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("registry host `{host}` is malformed"))?,
                ),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("registry host `{host}` has an invalid port"));
        }
    }
    if !name.is_empty() || !host.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!("registry host `{host}` is not a valid host name"));
        }
    }
    Ok(())
}

/// distribution's path grammar: lowercase alphanumeric components separated by `/`, with
/// `.`, `_`, `__` or runs of `-` between alphanumerics.
fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "repository name is longer than {MAX_REPOSITORY_LEN} characters"
        ));
    }
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("repository name must be lowercase".into());
    }
    for component in repository.split('/') {
        if !valid_path_component(component) {
            return Err(format!(
                "repository path component `{component}` is invalid \
                 (use lowercase letters, digits and single `.`, `_`, `__` or `-` separators)"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<String, String> {
    let valid = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(tag.to_string())
    } else {
        Err(format!(
            "tag `{tag}` is invalid (up to {MAX_TAG_LEN} letters, digits, `_`, `.` or `-`, \
             not starting with `.` or `-`)"
        ))
    }
}

/// Accepts the digests imagecache can verify: `sha256:` + 64 lowercase hex digits, or
/// `sha512:` + 128.
pub(crate) fn validate_digest(digest: &str) -> Result<String, String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("digest `{digest}` must look like sha256:<64 hex digits>"))?;
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => {
            return Err(format!(
                "digest algorithm `{other}` is not supported (use sha256)"
            ))
        }
    };
    let hex_ok = hex.len() == expected_len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex_ok {
        Ok(digest.to_string())
    } else {
        Err(format!(
            "digest `{digest}` must be {algorithm}: followed by {expected_len} lowercase hex digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(input: &str) -> String {
        input
            .parse::<ImageReference>()
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .to_string()
    }

    fn err(input: &str) -> String {
        input
            .parse::<ImageReference>()
            .expect_err(input)
            .to_string()
    }

    #[test]
    fn docker_hub_short_names_get_library_and_latest() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(norm("library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("docker.io/x"), "docker.io/library/x:latest");
        assert_eq!(norm("index.docker.io/x"), "docker.io/library/x:latest");
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
    }

    #[test]
    fn other_registries_keep_their_path() {
        assert_eq!(norm("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("quay.io/a/b/c:v1"), "quay.io/a/b/c:v1");
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("[::1]:5000/a"), "[::1]:5000/a:latest");
        let r: ImageReference = "Registry.Example.com/x".parse().unwrap();
        assert_eq!(r.registry(), "registry.example.com");
        // Found by fuzzing: a host known only by its capitals keeps them, so the printed
        // form names the same registry rather than a Docker Hub repository.
        let r: ImageReference = "loRncalhoat/app".parse().unwrap();
        assert_eq!(r.registry(), "loRncalhoat");
        assert_eq!(r.to_string().parse::<ImageReference>().unwrap(), r);
        assert_eq!(norm("LOCALHOST/x"), "localhost/x:latest");
    }

    #[test]
    fn digest_only_has_no_tag() {
        let r: ImageReference = format!("host:5000/a/b@{D}").parse().unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("host:5000/a/b@{D}"));
    }

    #[test]
    fn tag_and_digest_keep_both_and_digest_wins() {
        let r: ImageReference = format!("nginx:1.25@{D}").parse().unwrap();
        assert_eq!(r.tag(), Some("1.25"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/nginx:1.25@{D}"));
        assert_eq!(r.to_oci(None).digest(), Some(D));
    }

    #[test]
    fn display_round_trips() {
        for input in ["nginx", "localhost:5000/x:1", &format!("quay.io/a/b:t@{D}")] {
            let once = norm(input);
            assert_eq!(norm(&once), once);
        }
    }

    #[test]
    fn serde_uses_the_normalised_string() {
        let r: ImageReference = serde_json::from_str("\"nginx\"").unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"docker.io/library/nginx:latest\""
        );
        let e = serde_json::from_str::<ImageReference>("\"Bad/Name\"").unwrap_err();
        assert!(e.to_string().contains("invalid image reference"), "{e}");
    }

    #[test]
    fn uppercase_repository_rejected() {
        let e = err("docker.io/Nginx");
        assert!(
            e.contains("invalid image reference `docker.io/Nginx`"),
            "{e}"
        );
        assert!(e.contains("lowercase"), "{e}");
        assert!(err("myregistry:5000/Foo/bar").contains("lowercase"));
    }

    #[test]
    fn bad_digests_rejected() {
        assert!(err("nginx@sha256:abc").contains("64 lowercase hex"));
        assert!(err(&format!("nginx@{}", D.to_uppercase().replace("SHA", "sha"))).contains("hex"));
        assert!(err("nginx@md5:0123").contains("not supported"));
        assert!(err("nginx@0123").contains("must look like"));
    }

    #[test]
    fn other_malformed_references_rejected() {
        assert!(err("").contains("empty"));
        assert!(err("nginx:").contains("tag ``"));
        assert!(err("nginx:-x").contains("tag"));
        assert!(err("a//b").contains("component"));
        assert!(err("a/-b").contains("component"));
        assert!(err("a b").contains("whitespace"));
        assert!(err("host:99999/x").contains("port"));
        assert!(err("ho_st.com/x").contains("host"));
        assert!(err(&format!("x:{}", "a".repeat(129))).contains("tag"));
    }

    #[test]
    fn path_components_follow_distribution_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a1-b2.c3"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a___b", "a-_b", "A"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }
}
