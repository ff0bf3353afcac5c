//! The matching policy (src/matching.rs) on a JSON request and a node's caches:
//!
//! ```json
//! {"images": ["nginx"], "annotations": {"k8s.aliyun.com/imc-perfect-match": "true"},
//!  "cache": null, "nodeAutoMatch": true,
//!  "caches": [{"id": "imc-a", "name": "web", "phase": "Ready", "sizeGiB": 20,
//!              "created": "2024-01-02T03:04:05Z",
//!              "images": [{"image": "docker.io/library/nginx:latest", "digest": "sha256:…"}]}]}
//! ```
//!
//! Whatever the policy answers must follow its rules: a clone is of a Ready cache, splits the
//! request into what that cache holds and what it lacks, meets the match requirement and is
//! the best automatic candidate; a cold answer means no candidate met it; an unknown explicit
//! cache really is unknown; and the order the caches are listed in changes nothing.

use std::collections::BTreeMap;

use imagecache::api::{CachedImage, Phase};
use imagecache::matching::{
    parse_images, select_on_node, Candidate, DiskRequest, MatchError, Policy, Requirement,
    Selection,
};
use imagecache::registry::ImageReference;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    cache: Option<String>,
    #[serde(default = "yes")]
    node_auto_match: bool,
    #[serde(default)]
    caches: Vec<Cache>,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cache {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default = "ready")]
    phase: Phase,
    #[serde(default, rename = "sizeGiB")]
    size_gib: u32,
    #[serde(default)]
    created: String,
    #[serde(default)]
    images: Vec<Image>,
}

fn ready() -> Phase {
    Phase::Ready
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    #[serde(default)]
    image: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    resolved_digest: Option<String>,
}

fn candidate(c: Cache) -> Candidate {
    Candidate {
        cache_id: c.id,
        name: c.name,
        phase: c.phase,
        images: c
            .images
            .into_iter()
            .map(|i| CachedImage {
                image: i.image,
                digest: i.digest,
                resolved_digest: i.resolved_digest,
                chain_ids: Vec::new(),
                size_bytes: 0,
                credentials_required: false,
            })
            .collect(),
        size_gib: c.size_gib,
        // As Candidate::from_cache reads a stored cache's creationTimestamp.
        created: OffsetDateTime::parse(&c.created, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH),
    }
}

fn held(c: &Candidate, wanted: &[ImageReference]) -> usize {
    wanted.iter().filter(|w| c.holds(w)).count()
}

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return false;
    };
    let Ok(images) = parse_images(&input.images) else {
        return false;
    };
    let caches: Vec<Candidate> = input.caches.into_iter().map(candidate).collect();
    // The daemon makes every cache id unique; two caches under one id are no node's state.
    let mut ids: Vec<&str> = caches.iter().map(|c| c.cache_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return false;
    }
    let req = DiskRequest {
        images,
        annotations: &input.annotations,
        explicit_cache: input.cache,
    };
    let mut wanted: Vec<ImageReference> = Vec::new();
    for i in &req.images {
        if !wanted.contains(i) {
            wanted.push(i.clone());
        }
    }
    let policy = Policy::on_node(&req, input.node_auto_match);
    let answer = select_on_node(&req, &caches, input.node_auto_match);

    let policy = match (policy, &answer) {
        (Err(p), Err(a)) => {
            assert_eq!(&p, a);
            return true;
        }
        (Err(p), Ok(a)) => panic!("policy refused ({p}) but select answered {a:?}"),
        (Ok(policy), _) => policy,
    };
    let minimum = match policy.requirement {
        Requirement::Any => 1,
        Requirement::AtLeast(n) => n,
        Requirement::All => wanted.len(),
    }
    .max(1);
    let best_automatic = caches
        .iter()
        .filter(|c| c.phase == Phase::Ready)
        .map(|c| held(c, &wanted))
        .max()
        .unwrap_or(0);

    match &answer {
        Err(MatchError::NoImages) => assert!(wanted.is_empty()),
        Err(MatchError::CacheNotFound { id, .. }) => {
            assert!(!caches.iter().any(|c| &c.cache_id == id || &c.name == id))
        }
        Err(MatchError::CacheNotReady { id, phase, .. }) => {
            assert_ne!(*phase, Phase::Ready);
            assert!(caches
                .iter()
                .any(|c| &c.cache_id == id && c.phase == *phase));
        }
        Err(e) => panic!("the policy accepted the request, yet select failed: {e}"),
        Ok(Selection::Clone {
            cache_id,
            explicit,
            matched,
            missing,
            ..
        }) => {
            assert!(!wanted.is_empty());
            let chosen = caches
                .iter()
                .find(|c| &c.cache_id == cache_id && c.phase == Phase::Ready)
                .unwrap_or_else(|| panic!("cloned {cache_id}, which is no Ready cache"));
            let mut rebuilt: Vec<&ImageReference> = wanted
                .iter()
                .filter(|w| matched.contains(w) || missing.contains(w))
                .collect();
            rebuilt.dedup();
            assert_eq!(matched.len() + missing.len(), wanted.len());
            assert_eq!(rebuilt.len(), wanted.len());
            assert!(matched.iter().all(|m| chosen.holds(m)));
            assert!(missing.iter().all(|m| !chosen.holds(m)));
            assert_eq!(*explicit, policy.explicit.is_some());
            if !explicit {
                assert!(policy.auto_match);
                assert!(matched.len() >= minimum, "{} < {minimum}", matched.len());
                assert_eq!(matched.len(), best_automatic, "not the best candidate");
            }
        }
        Ok(Selection::Cold { auto_create, .. }) => {
            assert!(policy.explicit.is_none(), "an explicit cache went cold");
            assert!(!wanted.is_empty());
            if policy.auto_match {
                assert!(
                    best_automatic < minimum,
                    "{best_automatic} of {minimum} went cold"
                );
                assert_eq!(*auto_create, policy.auto_create);
            } else {
                assert!(!auto_create);
            }
        }
    }

    // Listing order is irrelevant when ids and names tell every cache apart.
    let mut keys: Vec<&str> = caches
        .iter()
        .flat_map(|c| [c.cache_id.as_str(), c.name.as_str()])
        .collect();
    keys.sort_unstable();
    let distinct = keys.windows(2).all(|w| w[0] != w[1]);
    if distinct {
        let mut reversed = caches.clone();
        reversed.reverse();
        assert_eq!(
            select_on_node(&req, &reversed, input.node_auto_match),
            answer,
            "the answer depends on the order of the caches"
        );
    }
    true
}
