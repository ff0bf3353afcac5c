//! The credentials of the kubelet's PullImage calls in flight, lent to the snapshotter's cold
//! pull of the same image (daemon/ctr_snapshots/cold_pull.rs). containerd's CRI does not pass a
//! pull's credentials to the snapshotter, so the CRI image service (src/cri) holds them here
//! for exactly as long as its forwarded PullImage runs: the guard it gets removes them when
//! the call returns, fails or is cancelled. They are never written anywhere (state.db, the
//! ImageCache object, events, logs, metrics) and never formatted: `Debug` names only the
//! registry.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::registry::{Credentials, ImageReference};

/// One pull's credentials, for the one registry its image is on.
#[derive(Clone, PartialEq, Eq)]
pub struct PullCredentials {
    registry: String,
    credentials: Credentials,
}

impl PullCredentials {
    pub fn new(registry: &str, credentials: Credentials) -> Self {
        PullCredentials {
            registry: registry.to_owned(),
            credentials,
        }
    }

    /// The registry host (as [`ImageReference::registry`]) they are for.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

impl fmt::Debug for PullCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullCredentials")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// The pulls of one image in flight, by the id of their guard; the newest last.
type Pulls = Vec<(u64, Arc<PullCredentials>)>;

/// Pulls in flight by image, each with its credentials.
#[derive(Debug, Default)]
pub(crate) struct PullAuths {
    next_id: AtomicU64,
    held: Mutex<HashMap<String, Pulls>>,
}

/// Keeps one pull's credentials lendable until dropped.
#[must_use = "the credentials are removed when the guard drops"]
#[derive(Debug)]
pub struct HeldPullCredentials {
    auths: Arc<PullAuths>,
    key: String,
    id: u64,
}

/// How a pull and the snapshotter's labels name the same image: CRI's `cri.image-ref` label
/// is the pull's reference normalised as Docker does, with the tag dropped when a digest
/// pins it; [`ImageReference`] normalises both sides alike.
fn key(image: &ImageReference) -> String {
    match image.digest() {
        Some(digest) => format!("{}/{}@{digest}", image.registry(), image.repository()),
        None => format!(
            "{}/{}:{}",
            image.registry(),
            image.repository(),
            image.tag().unwrap_or("latest")
        ),
    }
}

impl PullAuths {
    /// Holds `credentials` for pulls of `image` until the guard drops.
    pub(crate) fn hold(
        self: &Arc<Self>,
        image: &ImageReference,
        credentials: Credentials,
    ) -> HeldPullCredentials {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = key(image);
        let lent = Arc::new(PullCredentials::new(image.registry(), credentials));
        self.lock().entry(key.clone()).or_default().push((id, lent));
        HeldPullCredentials {
            auths: self.clone(),
            key,
            id,
        }
    }

    /// The credentials of the newest pull of `image` in flight. Two pulls of one image at
    /// once (two pods, two pull secrets) both resolved its manifest with their own
    /// credentials, so either one's can fetch it.
    pub(crate) fn for_image(&self, image: &ImageReference) -> Option<Arc<PullCredentials>> {
        self.lock()
            .get(&key(image))
            .and_then(|pulls| pulls.last())
            .map(|(_, creds)| creds.clone())
    }

    /// How many pulls hold credentials now: none once every pull returned.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pulls>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for HeldPullCredentials {
    fn drop(&mut self) {
        let mut held = self.auths.lock();
        if let Some(pulls) = held.get_mut(&self.key) {
            pulls.retain(|(id, _)| *id != self.id);
            if pulls.is_empty() {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str) -> Credentials {
        Credentials::Basic {
            username: user.into(),
            password: "s3cret".into(),
        }
    }

    fn image(s: &str) -> ImageReference {
        s.parse().unwrap()
    }

    #[test]
    fn credentials_are_lent_only_while_their_pull_is_held() {
        let auths = Arc::new(PullAuths::default());
        let held = auths.hold(&image("127.0.0.1:5000/app:v1"), basic("alice"));
        let lent = auths.for_image(&image("127.0.0.1:5000/app:v1")).unwrap();
        assert_eq!(lent.registry(), "127.0.0.1:5000");
        assert_eq!(lent.credentials(), &basic("alice"));
        assert!(auths.for_image(&image("127.0.0.1:5000/app:v2")).is_none());
        assert!(auths.for_image(&image("127.0.0.1:5000/other:v1")).is_none());
        drop(held);
        assert!(auths.for_image(&image("127.0.0.1:5000/app:v1")).is_none());
        assert_eq!(auths.len(), 0);
    }

    #[test]
    fn a_pull_and_cris_label_name_one_image_however_spelled() {
        let auths = Arc::new(PullAuths::default());
        let _a = auths.hold(&image("nginx"), basic("alice"));
        assert!(auths
            .for_image(&image("docker.io/library/nginx:latest"))
            .is_some());
        let digest = format!("sha256:{}", "a".repeat(64));
        let _b = auths.hold(
            &image(&format!("127.0.0.1:5000/app:v1@{digest}")),
            basic("bob"),
        );
        // CRI drops the tag of a pinned reference.
        assert!(auths
            .for_image(&image(&format!("127.0.0.1:5000/app@{digest}")))
            .is_some());
    }

    #[test]
    fn the_newest_of_concurrent_pulls_lends_and_each_guard_removes_only_its_own() {
        let auths = Arc::new(PullAuths::default());
        let app = image("127.0.0.1:5000/app:v1");
        let alice = auths.hold(&app, basic("alice"));
        let bob = auths.hold(&app, basic("bob"));
        assert_eq!(auths.for_image(&app).unwrap().credentials(), &basic("bob"));
        drop(bob);
        assert_eq!(
            auths.for_image(&app).unwrap().credentials(),
            &basic("alice")
        );
        drop(alice);
        assert_eq!(auths.len(), 0);
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let shown = format!("{:?}", PullCredentials::new("r:5000", basic("alice")));
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
    }
}
