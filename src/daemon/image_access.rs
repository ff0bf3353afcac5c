//! Who may be served an image from a cache. A cache is built with one request's credentials
//! and then cloned for others, so an image its registry would not serve without credentials
//! goes only to a request whose own credentials can read it: one that names the same pull
//! secret, or whose credentials the registry lets read that manifest at that digest (asked of
//! the registry itself, and remembered for `credential_check_ttl_secs`). Images their registry
//! serves to anyone go to anyone, with no registry round trip. This is the question the
//! kubelet's "ensure secret pulled images" check answers for containerd's image store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::build::keyring_for;
use super::Daemon;
use crate::objects::CachedImage;
use crate::registry::{split_secret_ref, Credentials, ImageReference, Keyring, ResolvedImage};

/// At most this many remembered grants: a node serves far fewer distinct (image,
/// credentials) pairs within a TTL; beyond it the oldest go first.
const MAX_GRANTS: usize = 4096;

/// Grants the registry gave, by a hash of (registry, repository, digest, credentials), so no
/// password is held here; each until its expiry.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    until: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Grants {
    fn key(pinned: &ImageReference, creds: &Credentials) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            pinned.registry(),
            pinned.repository(),
            pinned.digest().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if let Credentials::Basic { username, password } = creds {
            h.update(username.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
        }
        h.finalize().into()
    }

    fn holds(&self, key: &[u8; 32]) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(key).is_some_and(|t| Instant::now() < *t)
    }

    fn remember(&self, key: [u8; 32], ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.retain(|_, t| now < *t);
        if until.len() >= MAX_GRANTS {
            if let Some(oldest) = until.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                until.remove(&oldest);
            }
        }
        until.insert(key, now + ttl);
    }
}

/// What a cache holds and was built with, as the check needs it.
#[derive(Debug, Clone)]
pub(crate) struct CacheAccess {
    pub name: String,
    pub images: Vec<CachedImage>,
    /// The cache's `imagePullSecrets`.
    pub pull_secrets: Vec<String>,
}

/// Why `cache` may not be served to a request with `request_secrets` (its pod's pull
/// secrets, then the node's docker config, as its own pull would use), or `None` when it may.
/// Every image of the cache counts, not only those asked for: a clone holds them all.
pub(crate) async fn refusal(
    d: &Daemon,
    cache: &CacheAccess,
    request_secrets: &[String],
) -> Option<String> {
    let private: Vec<&CachedImage> = cache
        .images
        .iter()
        .filter(|i| i.credentials_required)
        .collect();
    if private.is_empty() {
        return None;
    }
    let keyring = match keyring_for(d, request_secrets) {
        Ok(k) => k,
        Err(e) => {
            return Some(format!(
                "cache {} holds images that need credentials, and this pod's own could not be read ({e})",
                cache.name
            ))
        }
    };
    for image in private {
        if let Some(why) = image_refusal(d, cache, image, &keyring).await {
            info!(cache = %cache.name, image = %image.image, reason = %why, "cache not served: credentials required");
            d.metrics().credentials_refused.inc();
            return Some(why);
        }
    }
    None
}

async fn image_refusal(
    d: &Daemon,
    cache: &CacheAccess,
    image: &CachedImage,
    keyring: &Keyring,
) -> Option<String> {
    let pinned = match image.image.parse::<ImageReference>() {
        Ok(r) => r.with_digest(image.digest.clone()),
        Err(e) => {
            return Some(format!(
                "cache {} records image {:?} that does not parse ({e})",
                cache.name, image.image
            ))
        }
    };
    if let Some(secret) = keyring.secret_for(pinned.registry()) {
        if cache.pull_secrets.iter().any(|s| same_secret(s, secret)) {
            return None;
        }
    }
    let creds = keyring.credentials_for(pinned.registry());
    let key = Grants::key(&pinned, &creds);
    let grants = &d.inner.grants;
    if grants.holds(&key) {
        return None;
    }
    match d.inner.registry.can_read_manifest(&pinned, &creds).await {
        Ok(true) => {
            let ttl = Duration::from_secs(d.inner.config.credential_check_ttl_secs);
            grants.remember(key, ttl);
            None
        }
        Ok(false) => Some(format!(
            "image {} in cache {} was pulled with credentials, and registry {} does not let this pod's {} read it: give the pod an image pull secret for {}",
            image.image,
            cache.name,
            pinned.registry(),
            match creds {
                Credentials::Anonymous => "(anonymous) requests",
                Credentials::Basic { .. } => "credentials",
            },
            pinned.registry(),
        )),
        Err(e) => {
            warn!(image = %image.image, error = %e, "could not check a pod's access to a cached image that needs credentials");
            Some(format!(
                "image {} in cache {} was pulled with credentials, and whether this pod's may read it could not be checked: {e}",
                image.image, cache.name
            ))
        }
    }
}

/// The label containerd's CRI puts on each layer's Prepare (with
/// `disable_snapshot_annotations = false`, as `imagecache containerd-config` prints): the
/// image manifest the layer is pulled for, which containerd has just resolved from the
/// registry with the pull's own credentials.
pub(crate) const CRI_MANIFEST_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";

/// Whether the snapshotter may offer a cache's layer `chain_id` to a Prepare with `labels`,
/// `images` being what that cache holds: when an image that needed no credentials has the
/// layer (its content is anyone's), or when the pull is for the very manifest of an image
/// that needed them (the registry has just let this puller read it). A pull of anything
/// else (another image whose config names the same diffIDs, a pull without CRI's labels)
/// gets the layer from its registry, as containerd alone would fetch it.
pub(crate) fn layer_offer_allowed(
    images: &[CachedImage],
    chain_id: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let pulled_for = labels.get(CRI_MANIFEST_DIGEST_LABEL);
    images
        .iter()
        .filter(|i| i.chain_ids.iter().any(|c| c == chain_id))
        .any(|i| !i.credentials_required || pulled_for == Some(&i.digest))
}

/// For each of `resolved` (by reference), whether its registry refuses to serve it without
/// credentials: an image pulled anonymously did not need them; one pulled with credentials
/// is asked for anonymously once, at its digest. A check that fails counts as needing them.
pub(crate) async fn needed_credentials(
    d: &Daemon,
    resolved: &[ResolvedImage],
    keyring: &Keyring,
) -> HashMap<String, bool> {
    let checks = resolved.iter().map(|image| async move {
        let name = image.reference.to_string();
        if keyring.credentials_for(image.reference.registry()).is_anonymous() {
            return (name, false);
        }
        let pinned = image.reference.with_digest(image.manifest.digest.clone());
        let needed = match d.inner.registry.can_read_manifest(&pinned, &Credentials::Anonymous).await {
            Ok(anyone) => !anyone,
            Err(e) => {
                warn!(image = %name, error = %e, "could not ask the registry whether an image needs credentials: treated as needing them");
                true
            }
        };
        (name, needed)
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .collect()
}

/// `namespace:name` and `namespace/name` name the same secret.
fn same_secret(a: &str, b: &str) -> bool {
    split_secret_ref(a).is_some() && split_secret_ref(a) == split_secret_ref(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_expire_and_stay_bounded() {
        let grants = Grants::default();
        let image: ImageReference = "127.0.0.1:5000/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        let alice = Credentials::Basic {
            username: "alice".into(),
            password: "x".into(),
        };
        let key = Grants::key(&image, &alice);
        assert!(!grants.holds(&key));
        grants.remember(key, Duration::from_secs(60));
        assert!(grants.holds(&key));
        assert!(!grants.holds(&Grants::key(&image, &Credentials::Anonymous)));
        grants.remember(key, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!grants.holds(&key), "an expired grant is not held");
        for i in 0..(MAX_GRANTS + 10) {
            let creds = Credentials::Basic {
                username: format!("u{i}"),
                password: "p".into(),
            };
            grants.remember(Grants::key(&image, &creds), Duration::from_secs(60));
        }
        assert!(grants.until.lock().unwrap().len() <= MAX_GRANTS);
    }

    #[test]
    fn private_layers_go_only_to_a_pull_of_their_own_manifest() {
        let image = |digest: &str, chains: &[&str], private: bool| CachedImage {
            image: "127.0.0.1:5000/x:1".into(),
            digest: digest.into(),
            resolved_digest: None,
            chain_ids: chains.iter().map(|c| c.to_string()).collect(),
            size_bytes: 1,
            credentials_required: private,
        };
        let labels = |digest: Option<&str>| {
            digest
                .map(|d| (CRI_MANIFEST_DIGEST_LABEL.to_owned(), d.to_owned()))
                .into_iter()
                .collect()
        };
        let private = [image("sha256:p", &["base", "secret"], true)];
        assert!(!layer_offer_allowed(&private, "secret", &labels(None)));
        assert!(!layer_offer_allowed(
            &private,
            "secret",
            &labels(Some("sha256:other"))
        ));
        assert!(layer_offer_allowed(
            &private,
            "secret",
            &labels(Some("sha256:p"))
        ));
        // A layer no recorded image has is never offered.
        assert!(!layer_offer_allowed(
            &private,
            "nowhere",
            &labels(Some("sha256:p"))
        ));
        // A layer a public image of the same cache also has is anyone's.
        let mixed = [private[0].clone(), image("sha256:q", &["base"], false)];
        assert!(layer_offer_allowed(&mixed, "base", &labels(None)));
        assert!(!layer_offer_allowed(
            &mixed,
            "secret",
            &labels(Some("sha256:q"))
        ));
    }

    #[test]
    fn secret_refs_compare_in_either_form() {
        assert!(same_secret("shop:regcred", "shop/regcred"));
        assert!(same_secret("shop:regcred", "shop:regcred"));
        assert!(!same_secret("shop:regcred", "other:regcred"));
        assert!(!same_secret("nocolon", "nocolon"));
    }
}
