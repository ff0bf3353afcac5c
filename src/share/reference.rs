//! A shared snapshot named by reference, as `imagecache pull` takes it:
//! `host[:port]/repository:tag` or `host[:port]/repository@sha256:…`, or, in the daemon's own
//! `share_registry`, only the tag (`sha256-<hex>`, `image-<hex>`) or `@sha256:…`.

use super::remote::ShareTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub target: ShareTarget,
    /// A tag, or a manifest digest (`sha256:…`).
    pub tag_or_digest: String,
}

impl SnapshotRef {
    /// Parses `s`; a reference naming no registry is looked up in `share` (the daemon's
    /// `share_registry`, `None` when it has none).
    pub fn parse(s: &str, share: Option<&ShareTarget>) -> Result<SnapshotRef, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("is empty: give host[:port]/repository:tag or …@sha256:<digest>".into());
        }
        if !s.contains('/') {
            let share = share.ok_or_else(|| {
                format!(
                    "{s:?} names no registry and share_registry is not set in the daemon's config: give host[:port]/repository:tag or …@sha256:<digest>"
                )
            })?;
            let bare = s.trim_start_matches(['@', ':']);
            return Ok(SnapshotRef {
                target: share.clone(),
                tag_or_digest: check_tag_or_digest(bare)?,
            });
        }
        let (name, tag_or_digest) = match s.split_once('@') {
            Some((name, digest)) => (name, digest),
            None => match s.rsplit_once(':') {
                // A colon after the last slash ends the name; one before it is a port.
                Some((name, tag)) if !tag.contains('/') => (name, tag),
                _ => {
                    return Err(format!(
                        "{s:?} names no tag or digest: add :tag (e.g. :sha256-<hex>, the content key's tag) or @sha256:<digest>"
                    ))
                }
            },
        };
        Ok(SnapshotRef {
            target: ShareTarget::parse(name)?,
            tag_or_digest: check_tag_or_digest(tag_or_digest)?,
        })
    }

    /// Whether it names a manifest by digest (then what is fetched must hash to it).
    pub fn is_digest(&self) -> bool {
        self.tag_or_digest.starts_with("sha256:")
    }

    /// The same snapshot pinned to the manifest `digest` it resolved to.
    pub fn pinned(&self, digest: &str) -> SnapshotRef {
        SnapshotRef {
            target: self.target.clone(),
            tag_or_digest: digest.to_owned(),
        }
    }
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.is_digest() {
            true => write!(f, "{}@{}", self.target, self.tag_or_digest),
            false => write!(f, "{}:{}", self.target, self.tag_or_digest),
        }
    }
}

/// A digest must be a whole sha256 one; a tag follows the distribution spec's grammar.
fn check_tag_or_digest(s: &str) -> Result<String, String> {
    if s.starts_with("sha256:") {
        return crate::block_snapshot::parse_digest(s)
            .map(|_| s.to_owned())
            .map_err(|_| format!("{s:?} is not a digest: expected sha256: and 64 hex digits"));
    }
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    match ok {
        true => Ok(s.to_owned()),
        false => Err(format!(
            "{s:?} is not a tag (letters, digits, '_', '.', '-', at most 128) or a sha256: digest"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn share() -> ShareTarget {
        ShareTarget::parse("share.local:5000/imagecache/snapshots").unwrap()
    }

    #[test]
    fn full_references_name_their_registry_and_repository() {
        let r = SnapshotRef::parse(&format!("127.0.0.1:5001/snaps@{DIGEST}"), None).unwrap();
        assert_eq!(r.target.registry, "127.0.0.1:5001");
        assert_eq!(r.target.repository, "snaps");
        assert!(r.is_digest());
        assert_eq!(r.to_string(), format!("127.0.0.1:5001/snaps@{DIGEST}"));

        let r = SnapshotRef::parse("127.0.0.1:5001/a/b:sha256-ab12", Some(&share())).unwrap();
        assert_eq!(r.target.repository, "a/b");
        assert_eq!(r.tag_or_digest, "sha256-ab12");
        assert!(!r.is_digest());
        assert_eq!(
            r.pinned(DIGEST).to_string(),
            format!("127.0.0.1:5001/a/b@{DIGEST}")
        );
    }

    #[test]
    fn bare_tags_and_digests_are_in_the_share_registry() {
        for (s, want) in [
            ("sha256-ab12", "sha256-ab12"),
            (":image-77", "image-77"),
            (&format!("@{DIGEST}"), DIGEST),
            (DIGEST, DIGEST),
        ] {
            let r = SnapshotRef::parse(s, Some(&share())).unwrap();
            assert_eq!(
                (r.target.clone(), r.tag_or_digest.as_str()),
                (share(), want),
                "{s}"
            );
        }
        let e = SnapshotRef::parse("sha256-ab12", None).unwrap_err();
        assert!(e.contains("share_registry is not set"), "{e}");
    }

    #[test]
    fn malformed_references_say_what_is_missing() {
        for (s, says) in [
            ("", "is empty"),
            ("127.0.0.1:5001/snaps", "names no tag or digest"),
            ("127.0.0.1:5001/snaps@sha256:12", "not a digest"),
            ("127.0.0.1:5001/Snaps:v1", "not a repository name"),
            ("127.0.0.1:5001/snaps:-v1", "not a tag"),
            ("a b", "not a tag"),
        ] {
            let e = SnapshotRef::parse(s, Some(&share())).unwrap_err();
            assert!(e.contains(says), "{s:?}: {e}");
        }
    }
}
