//! Which cache a per-pod disk is cloned from: the selection policy of Alibaba ECI and Tencent
//! EKS image caches, as pure functions (no I/O, no clock), so the whole table of rules is tested
//! without a daemon.
//!
//! A request names images (from a Pod or a plain list), carries the Pod's annotations and may
//! name a cache on the command line (`--cache ID`; `auto` means none). [`select`] answers with a
//! [`Selection`]: clone a cache (and pull what it lacks into the new disk), or start from an
//! empty disk (the cold path), perhaps building a cache of the images in the background.
//!
//! # Rules, in order of precedence
//!
//! | # | Rule | Source |
//! |---|------|--------|
//! | 1 | Annotation values are checked first, whatever else applies: booleans are `"true"`/`"false"`, the match count a positive integer, cache ids non-empty. A bad value is an error naming the annotation. | — |
//! | 2 | An **explicit cache** comes from [`ECI_IMC_ID`], [`ECI_IMAGE_SNAPSHOT_ID`], [`EKS_USE_IMAGE_CACHE`]`: imc-…` or `--cache ID`. When several are given they must name the same cache. | ECI, EKS |
//! | 3 | An explicit cache wins over automatic matching (and ignores perfect-match / match-count and [`ECI_AUTO_IMC`]). It is looked up by id, then by name; unknown is a not-found error. | ECI, EKS |
//! | 4 | An explicit cache that is not `Ready` is an error naming its phase. | ECI |
//! | 5 | An explicit `Ready` cache lacking some images is cloned anyway; the images it lacks are listed in `missing`, to be pulled into the new disk. | EKS |
//! | 6 | **Automatic matching** is on by default ([`ECI_AUTO_IMC`] defaults to `"true"`); `"false"` turns off matching and automatic creation. [`ECI_IMAGE_CACHE`]`: "true"` or [`EKS_USE_IMAGE_CACHE`]`: auto` turn matching back on (creation stays off). | ECI, EKS |
//! | 7 | Candidates are `Ready` caches holding at least one of the images. [`IMC_PERFECT_MATCH`]`: "true"` requires all of them; otherwise [`IMC_MATCH_COUNT_REQUEST`]`: "N"` requires at least N. Perfect match wins over a match count. | ECI |
//! | 8 | The best candidate holds the most images; ties go to the smaller `imageCacheSize`, then the newer creation time, then the smaller cache id (so the answer is deterministic). | ECI |
//! | 9 | References compare normalised (`nginx` = `docker.io/library/nginx:latest`). A digest-pinned reference (`repo@sha256:…`, `repo:tag@sha256:…`) matches only a cached image of the same repository whose manifest `digest` or `resolvedDigest` (the index's) is that digest; its tag is not consulted. A tag reference matches a cached image of the same repository and tag. | ECI |
//! | 10 | No cache matches: [`Selection::Cold`], with `auto_create` true when [`ECI_AUTO_IMC`] is on, and a reason saying why nothing matched. | ECI |
//!
//! [`ECI_IMAGE_CACHE`]`: "false"` has no effect of its own (it only ever turned matching on);
//! to turn matching off use [`ECI_AUTO_IMC`]`: "false"`.

use std::collections::BTreeMap;
use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::objects::{CachedImage, ImageCache, Phase};
use crate::registry::ImageReference;

/// ECI: the id of the image cache to use (explicit).
pub const ECI_IMC_ID: &str = "k8s.aliyun.com/eci-imc-id";
/// ECI's older name for [`ECI_IMC_ID`] (explicit).
pub const ECI_IMAGE_SNAPSHOT_ID: &str = "k8s.aliyun.com/eci-image-snapshot-id";
/// EKS: `auto` for automatic matching, or a cache id `imc-…` (explicit).
pub const EKS_USE_IMAGE_CACHE: &str = "eks.tke.cloud.tencent.com/use-image-cache";
/// ECI: automatic matching and automatic creation, `"true"` unless set to `"false"`.
pub const ECI_AUTO_IMC: &str = "k8s.aliyun.com/eci-auto-imc";
/// ECI: `"true"` turns automatic matching on.
pub const ECI_IMAGE_CACHE: &str = "k8s.aliyun.com/eci-image-cache";
/// ECI: `"true"` requires a cache holding every image of the pod.
pub const IMC_PERFECT_MATCH: &str = "k8s.aliyun.com/imc-perfect-match";
/// ECI: `"N"` requires a cache holding at least N of the pod's images.
pub const IMC_MATCH_COUNT_REQUEST: &str = "k8s.aliyun.com/imc-match-count-request";

/// The `--cache` value (and EKS annotation value) that asks for automatic matching.
pub const AUTO: &str = "auto";
/// Prefix of cache ids, which the EKS annotation uses to tell an id from `auto`.
const CACHE_ID_PREFIX: &str = "imc-";

/// Why a disk request cannot be served as asked. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error(
        "image cache `{id}` (from {origin}) does not exist; list the caches with \
         `imagecache get` and give one's ID or NAME, or use `--cache auto` / drop the \
         annotation to match automatically"
    )]
    CacheNotFound { id: String, origin: String },

    #[error(
        "image cache `{id}` ({name}, from {origin}) is {phase}, not Ready; wait until \
         `imagecache get {name}` shows Ready{hint}, or name another cache"
    )]
    CacheNotReady {
        id: String,
        name: String,
        origin: String,
        phase: Phase,
        /// Extra advice for failed caches.
        hint: &'static str,
    },

    #[error(
        "{first_origin} names cache `{first}` but {second_origin} names `{second}`; \
         give one cache, or the same one in both places"
    )]
    ConflictingExplicit {
        first: String,
        first_origin: String,
        second: String,
        second_origin: String,
    },

    #[error("annotation {key}: {value:?} is not valid; use {allowed}")]
    BadAnnotation {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },

    #[error(
        "the request names no images; give at least one `--image REF` or a Pod with containers"
    )]
    NoImages,

    #[error("image `{image}` is not a valid reference: {reason}")]
    InvalidImage { image: String, reason: String },

    #[error("the Pod is not usable: {path} {problem}")]
    InvalidPod { path: String, problem: String },
}

impl MatchError {
    /// Whether the API should answer 404 (the named cache does not exist) rather than 400/409.
    pub fn is_not_found(&self) -> bool {
        matches!(self, MatchError::CacheNotFound { .. })
    }
}

/// What a disk is asked for: the pod's images, its annotations and the CLI's `--cache`.
#[derive(Debug, Clone)]
pub struct DiskRequest<'a> {
    /// The images, normalised; duplicates are ignored.
    pub images: Vec<ImageReference>,
    /// The Pod's annotations (empty for a plain image list).
    pub annotations: &'a BTreeMap<String, String>,
    /// `--cache ID` (or name); `None`, empty or `auto` means no explicit cache.
    pub explicit_cache: Option<String>,
}

/// A cache as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `status.imageCacheId` (`imc-…`).
    pub cache_id: String,
    /// `metadata.name`.
    pub name: String,
    pub phase: Phase,
    /// `status.images`: what the cache holds (empty until it is Ready).
    pub images: Vec<CachedImage>,
    /// `spec.imageCacheSize` in GiB.
    pub size_gib: u32,
    /// `metadata.creationTimestamp`.
    pub created: OffsetDateTime,
}

impl Candidate {
    /// The policy's view of a stored cache; `None` when it has no status (no id yet), which
    /// the daemon never stores.
    ///
    /// A missing size sorts as the largest and a missing or unparsable creation time as the
    /// oldest, so such a cache never wins a tie it cannot justify.
    pub fn from_cache(c: &ImageCache) -> Option<Candidate> {
        let status = c.status.as_ref()?;
        let created = c
            .metadata
            .creation_timestamp
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Some(Candidate {
            cache_id: status.image_cache_id.clone(),
            name: c.metadata.name.clone(),
            phase: status.phase,
            images: status.images.clone(),
            size_gib: c.spec.image_cache_size.unwrap_or(u32::MAX),
            created,
        })
    }

    /// Whether this cache holds an image that `wanted` names (rule 9).
    pub fn holds(&self, wanted: &ImageReference) -> bool {
        self.images
            .iter()
            .any(|cached| image_matches(cached, wanted))
    }

    /// `wanted` split into the images this cache holds and those it lacks, in request order.
    fn split(&self, wanted: &[ImageReference]) -> (Vec<ImageReference>, Vec<ImageReference>) {
        wanted.iter().cloned().partition(|w| self.holds(w))
    }
}

/// Rule 9: same registry and repository, then the digest (manifest or index) when the
/// reference is pinned, else the tag.
fn image_matches(cached: &CachedImage, wanted: &ImageReference) -> bool {
    let Ok(cached_ref) = cached.image.parse::<ImageReference>() else {
        return false;
    };
    if cached_ref.registry() != wanted.registry() || cached_ref.repository() != wanted.repository()
    {
        return false;
    }
    match wanted.digest() {
        Some(digest) => {
            cached.digest == digest || cached.resolved_digest.as_deref() == Some(digest)
        }
        None => wanted.tag().is_some() && cached_ref.tag() == wanted.tag(),
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Clone this cache; `missing` are pulled into the new disk (an explicit partial match, as
    /// EKS does, or an automatic match that is not perfect).
    Clone {
        cache_id: String,
        /// Named by the user (annotation or `--cache`) rather than chosen automatically.
        explicit: bool,
        /// Requested images the cache holds, in request order.
        matched: Vec<ImageReference>,
        /// Requested images it lacks, in request order.
        missing: Vec<ImageReference>,
        /// One line for the disk's events: which cache and why.
        reason: String,
    },
    /// No cache: an empty disk, every image pulled; `auto_create` = also build a cache of
    /// these images in the background so the next pod hits it.
    Cold { auto_create: bool, reason: String },
}

/// How many of the images a candidate must hold (rule 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// At least one (the default).
    Any,
    /// At least N ([`IMC_MATCH_COUNT_REQUEST`]).
    AtLeast(usize),
    /// All of them ([`IMC_PERFECT_MATCH`]).
    All,
}

impl Requirement {
    fn minimum(self, requested: usize) -> usize {
        match self {
            Requirement::Any => 1,
            Requirement::AtLeast(n) => n,
            Requirement::All => requested,
        }
    }
}

/// An explicitly named cache and where it was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplicitCache {
    /// Cache id (or name) as given.
    pub id: String,
    /// `--cache` or the annotation, with its value, for messages.
    pub origin: String,
}

/// The request's annotations and `--cache`, checked and decoded (rules 1, 2, 6, 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub explicit: Option<ExplicitCache>,
    /// Automatic matching when no cache is explicit.
    pub auto_match: bool,
    /// Build a cache of the images in the background when none matched.
    pub auto_create: bool,
    pub requirement: Requirement,
}

impl Policy {
    /// Decodes the request; a bad annotation value is an error even when it would not be used.
    pub fn from_request(req: &DiskRequest) -> Result<Policy, MatchError> {
        Self::on_node(req, true)
    }

    /// As [`Policy::from_request`] on a node whose config sets `auto_match`: that is what a
    /// pod without [`ECI_AUTO_IMC`] gets, so with `false` only pods that ask use a cache.
    pub fn on_node(req: &DiskRequest, node_auto_match: bool) -> Result<Policy, MatchError> {
        let a = req.annotations;

        let auto_imc = bool_annotation(a, ECI_AUTO_IMC)?.unwrap_or(node_auto_match);
        let eci_image_cache = bool_annotation(a, ECI_IMAGE_CACHE)?.unwrap_or(false);
        let perfect = bool_annotation(a, IMC_PERFECT_MATCH)?.unwrap_or(false);
        let count = match a.get(IMC_MATCH_COUNT_REQUEST) {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(MatchError::BadAnnotation {
                        key: IMC_MATCH_COUNT_REQUEST,
                        value: v.clone(),
                        allowed: "a whole number of images, 1 or more (e.g. \"2\")",
                    })
                }
            },
        };

        let mut named: Vec<ExplicitCache> = Vec::new();
        if let Some(v) = req.explicit_cache.as_deref().map(str::trim) {
            if !v.is_empty() && !v.eq_ignore_ascii_case(AUTO) {
                named.push(ExplicitCache {
                    id: v.to_string(),
                    origin: "--cache".into(),
                });
            }
        }
        for key in [ECI_IMC_ID, ECI_IMAGE_SNAPSHOT_ID] {
            if let Some(v) = a.get(key) {
                let id = v.trim();
                if id.is_empty() {
                    return Err(MatchError::BadAnnotation {
                        key,
                        value: v.clone(),
                        allowed: "the id of a cache (`imc-…`, see `imagecache get`)",
                    });
                }
                named.push(ExplicitCache {
                    id: id.to_string(),
                    origin: format!("annotation {key}"),
                });
            }
        }
        let mut eks_auto = false;
        if let Some(v) = a.get(EKS_USE_IMAGE_CACHE) {
            let value = v.trim();
            if value.eq_ignore_ascii_case(AUTO) {
                eks_auto = true;
            } else if value.starts_with(CACHE_ID_PREFIX) && value.len() > CACHE_ID_PREFIX.len() {
                named.push(ExplicitCache {
                    id: value.to_string(),
                    origin: format!("annotation {EKS_USE_IMAGE_CACHE}"),
                });
            } else {
                return Err(MatchError::BadAnnotation {
                    key: EKS_USE_IMAGE_CACHE,
                    value: v.clone(),
                    allowed: "`auto` or a cache id `imc-…` (see `imagecache get`)",
                });
            }
        }

        let explicit = match named.split_first() {
            None => None,
            Some((first, rest)) => {
                if let Some(other) = rest.iter().find(|o| o.id != first.id) {
                    return Err(MatchError::ConflictingExplicit {
                        first: first.id.clone(),
                        first_origin: first.origin.clone(),
                        second: other.id.clone(),
                        second_origin: other.origin.clone(),
                    });
                }
                Some(first.clone())
            }
        };

        let requirement = match (perfect, count) {
            (true, _) => Requirement::All,
            (false, Some(n)) => Requirement::AtLeast(n),
            (false, None) => Requirement::Any,
        };
        Ok(Policy {
            explicit,
            auto_match: auto_imc || eci_image_cache || eks_auto,
            auto_create: auto_imc,
            requirement,
        })
    }
}

fn bool_annotation(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<bool>, MatchError> {
    match annotations.get(key) {
        None => Ok(None),
        Some(v) if v.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(MatchError::BadAnnotation {
            key,
            value: v.clone(),
            allowed: "\"true\" or \"false\"",
        }),
    }
}

/// Chooses the cache a disk is cloned from, or the cold path (see the module docs for the
/// rules). `caches` are all known caches, in any phase and any order.
pub fn select(req: &DiskRequest, caches: &[Candidate]) -> Result<Selection, MatchError> {
    select_on_node(req, caches, true)
}

/// [`select`] on a node whose config sets `auto_match` (see [`Policy::on_node`]).
pub fn select_on_node(
    req: &DiskRequest,
    caches: &[Candidate],
    node_auto_match: bool,
) -> Result<Selection, MatchError> {
    let policy = Policy::on_node(req, node_auto_match)?;
    let mut wanted: Vec<ImageReference> = Vec::with_capacity(req.images.len());
    for image in &req.images {
        if !wanted.contains(image) {
            wanted.push(image.clone());
        }
    }
    if wanted.is_empty() {
        return Err(MatchError::NoImages);
    }

    if let Some(explicit) = &policy.explicit {
        return select_explicit(explicit, &wanted, caches);
    }
    if !policy.auto_match {
        let reason = if req.annotations.contains_key(ECI_AUTO_IMC) {
            format!("automatic matching is off ({ECI_AUTO_IMC}: \"false\") and no cache was named")
        } else {
            format!(
                "automatic matching is off on this node (config auto_match = false) and the pod \
                 asks for no cache (set {EKS_USE_IMAGE_CACHE}: auto, {ECI_AUTO_IMC}: \"true\" or \
                 name a cache)"
            )
        };
        return Ok(Selection::Cold {
            auto_create: false,
            reason,
        });
    }
    Ok(select_automatic(&policy, &wanted, caches))
}

fn select_explicit(
    explicit: &ExplicitCache,
    wanted: &[ImageReference],
    caches: &[Candidate],
) -> Result<Selection, MatchError> {
    let cache = caches
        .iter()
        .find(|c| c.cache_id == explicit.id)
        .or_else(|| caches.iter().find(|c| c.name == explicit.id))
        .ok_or_else(|| MatchError::CacheNotFound {
            id: explicit.id.clone(),
            origin: explicit.origin.clone(),
        })?;
    if cache.phase != Phase::Ready {
        return Err(MatchError::CacheNotReady {
            id: cache.cache_id.clone(),
            name: cache.name.clone(),
            origin: explicit.origin.clone(),
            phase: cache.phase,
            hint: if cache.phase == Phase::Failed {
                " (a Failed cache never will: `imagecache describe` says why; recreate it)"
            } else {
                ""
            },
        });
    }
    let (matched, missing) = cache.split(wanted);
    let mut reason = format!(
        "cache {} ({}) named by {}, holds {} of {} image(s)",
        cache.cache_id,
        cache.name,
        explicit.origin,
        matched.len(),
        wanted.len()
    );
    if !missing.is_empty() {
        reason.push_str(&format!("; pulling {} into the disk", Refs(&missing)));
    }
    Ok(Selection::Clone {
        cache_id: cache.cache_id.clone(),
        explicit: true,
        matched,
        missing,
        reason,
    })
}

fn select_automatic(policy: &Policy, wanted: &[ImageReference], caches: &[Candidate]) -> Selection {
    let minimum = policy.requirement.minimum(wanted.len()).max(1);
    let mut ready: Vec<(&Candidate, usize)> = caches
        .iter()
        .filter(|c| c.phase == Phase::Ready)
        .map(|c| (c, wanted.iter().filter(|w| c.holds(w)).count()))
        .filter(|&(_, n)| n >= 1)
        .collect();
    // Rule 8: most images, then smaller, then newer, then the id for determinism.
    ready.sort_by(|(a, na), (b, nb)| {
        nb.cmp(na)
            .then(a.size_gib.cmp(&b.size_gib))
            .then(b.created.cmp(&a.created))
            .then(a.cache_id.cmp(&b.cache_id))
    });

    match ready.first() {
        Some(&(best, n)) if n >= minimum => {
            let (matched, missing) = best.split(wanted);
            let mut reason = format!(
                "cache {} ({}) matched automatically: holds {} of {} image(s), {} GiB; \
                 best of {} Ready cache(s) holding any (most images, then smallest, then newest)",
                best.cache_id,
                best.name,
                n,
                wanted.len(),
                best.size_gib,
                ready.len()
            );
            if !missing.is_empty() {
                reason.push_str(&format!("; pulling {} into the disk", Refs(&missing)));
            }
            Selection::Clone {
                cache_id: best.cache_id.clone(),
                explicit: false,
                matched,
                missing,
                reason,
            }
        }
        Some(&(best, n)) => {
            let rule = match policy.requirement {
                Requirement::All => format!("{IMC_PERFECT_MATCH}: \"true\" requires all"),
                _ => format!("{IMC_MATCH_COUNT_REQUEST} requires at least {minimum} of the"),
            };
            Selection::Cold {
                auto_create: policy.auto_create,
                reason: format!(
                    "{rule} {} image(s); the closest Ready cache, {} ({}), holds {n}",
                    wanted.len(),
                    best.cache_id,
                    best.name
                ),
            }
        }
        None => {
            let reason = if caches.iter().any(|c| c.phase == Phase::Ready) {
                format!(
                    "no Ready cache holds any of {}",
                    Refs(wanted) // names them, since a near miss (a tag) is the usual cause
                )
            } else {
                "no cache on this node is Ready".to_string()
            };
            Selection::Cold {
                auto_create: policy.auto_create,
                reason,
            }
        }
    }
}

/// Images listed for messages: `a, b, c`.
struct Refs<'a>(&'a [ImageReference]);

impl fmt::Display for Refs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Parses image references, naming the first bad one.
pub fn parse_images<S: AsRef<str>>(images: &[S]) -> Result<Vec<ImageReference>, MatchError> {
    images
        .iter()
        .map(|s| {
            let s = s.as_ref();
            s.parse::<ImageReference>()
                .map_err(|e| MatchError::InvalidImage {
                    image: s.to_string(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// The images a Pod runs: `spec.containers`, then `spec.initContainers`, then
/// `spec.ephemeralContainers`, each once, in that order (exact strings; [`select`] folds
/// spellings of one image together after parsing).
pub fn images_of_pod(pod: &serde_json::Value) -> Result<Vec<String>, MatchError> {
    let invalid = |path: &str, problem: &str| MatchError::InvalidPod {
        path: path.to_string(),
        problem: problem.to_string(),
    };
    let object = pod
        .as_object()
        .ok_or_else(|| invalid("the document", "is not an object; give a Pod"))?;
    if let Some(kind) = object.get("kind") {
        if kind.as_str() != Some("Pod") {
            return Err(invalid(
                "kind",
                &format!("is {kind}, not \"Pod\"; give a Pod (for a workload, its spec.template as a Pod)"),
            ));
        }
    }
    let spec = object
        .get("spec")
        .and_then(|s| s.as_object())
        .ok_or_else(|| invalid("spec", "is missing or not an object"))?;

    let mut images: Vec<String> = Vec::new();
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(list) = spec.get(field) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| invalid(&format!("spec.{field}"), "is not a list"))?;
        for (i, container) in list.iter().enumerate() {
            let path = format!("spec.{field}[{i}].image");
            let image = container
                .get("image")
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    let name = container
                        .get("name")
                        .and_then(|v| v.as_str())
                        .map(|n| format!(" (container {n:?})"))
                        .unwrap_or_default();
                    invalid(
                        &path,
                        &format!("is missing or empty{name}; every container needs an image"),
                    )
                })?;
            if !images.iter().any(|known| known == image) {
                images.push(image.to_string());
            }
        }
    }
    if images.is_empty() {
        return Err(invalid("spec.containers", "is missing or empty"));
    }
    Ok(images)
}

/// A Pod's `metadata.annotations` (empty when it has none).
pub fn annotations_of_pod(pod: &serde_json::Value) -> Result<BTreeMap<String, String>, MatchError> {
    let Some(annotations) = pod.pointer("/metadata/annotations") else {
        return Ok(BTreeMap::new());
    };
    if annotations.is_null() {
        return Ok(BTreeMap::new());
    }
    let map = annotations
        .as_object()
        .ok_or_else(|| MatchError::InvalidPod {
            path: "metadata.annotations".into(),
            problem: "is not a map of strings".into(),
        })?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(MatchError::InvalidPod {
                path: format!("metadata.annotations[{k:?}]"),
                problem: format!("is {v}, not a string; quote it (e.g. \"true\")"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{ImageCacheSpec, ImageCacheStatus, ObjectMeta};

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const IDX: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    /// `(reference, manifest digest, index digest)`.
    type Img = (&'static str, &'static str, Option<&'static str>);

    fn cache(id: &str, phase: Phase, size_gib: u32, created: i64, images: &[Img]) -> Candidate {
        Candidate {
            cache_id: id.to_string(),
            name: format!("name-{id}"),
            phase,
            images: images
                .iter()
                .map(|&(image, digest, resolved)| CachedImage {
                    image: image
                        .parse::<ImageReference>()
                        .expect("fixture reference")
                        .to_string(),
                    digest: digest.to_string(),
                    resolved_digest: resolved.map(str::to_string),
                    chain_ids: Vec::new(),
                    size_bytes: 1,
                    credentials_required: false,
                })
                .collect(),
            size_gib,
            created: OffsetDateTime::from_unix_timestamp(created).unwrap(),
        }
    }

    fn ready(id: &str, size_gib: u32, created: i64, images: &[Img]) -> Candidate {
        cache(id, Phase::Ready, size_gib, created, images)
    }

    const NGINX: Img = ("nginx:latest", D1, Some(IDX));
    const REDIS: Img = ("redis:7", D2, None);

    /// The node most rows run against.
    fn node() -> Vec<Candidate> {
        vec![
            ready("imc-nginx", 20, 100, &[NGINX]),
            ready("imc-both", 40, 100, &[NGINX, REDIS]),
            ready("imc-redis", 20, 100, &[REDIS]),
            cache("imc-pulling", Phase::Pulling, 20, 100, &[]),
            cache("imc-failed", Phase::Failed, 20, 100, &[]),
        ]
    }

    #[derive(Debug)]
    enum Want {
        Clone {
            cache: &'static str,
            explicit: bool,
            matched: &'static [&'static str],
            missing: &'static [&'static str],
        },
        Cold {
            auto_create: bool,
            reason_has: &'static str,
        },
        /// Substrings the error message must contain.
        Err(&'static [&'static str]),
    }

    struct Row {
        name: &'static str,
        images: &'static [&'static str],
        annotations: &'static [(&'static str, &'static str)],
        cli: Option<&'static str>,
        caches: fn() -> Vec<Candidate>,
        want: Want,
    }

    const fn row(
        name: &'static str,
        images: &'static [&'static str],
        annotations: &'static [(&'static str, &'static str)],
        want: Want,
    ) -> Row {
        Row {
            name,
            images,
            annotations,
            cli: None,
            caches: node,
            want,
        }
    }

    fn rows() -> Vec<Row> {
        use Want::*;
        vec![
            // --- automatic matching: degree, then size, then time ---
            row(
                "auto: most images matched wins over a smaller cache",
                &["nginx", "redis:7"],
                &[],
                Clone { cache: "imc-both", explicit: false, matched: &["nginx", "redis:7"], missing: &[] },
            ),
            row(
                "auto: equal degree, the smaller cache wins",
                &["nginx"],
                &[],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            Row {
                caches: || vec![
                    ready("imc-old", 20, 100, &[NGINX]),
                    ready("imc-new", 20, 200, &[NGINX]),
                    ready("imc-big-newest", 30, 300, &[NGINX]),
                ],
                ..row(
                    "auto: equal degree and size, the newer cache wins",
                    &["nginx"],
                    &[],
                    Clone { cache: "imc-new", explicit: false, matched: &["nginx"], missing: &[] },
                )
            },
            Row {
                caches: || vec![
                    ready("imc-b", 20, 100, &[NGINX]),
                    ready("imc-a", 20, 100, &[NGINX]),
                ],
                ..row(
                    "auto: full tie, the smaller id wins (deterministic)",
                    &["nginx"],
                    &[],
                    Clone { cache: "imc-a", explicit: false, matched: &["nginx"], missing: &[] },
                )
            },
            Row {
                caches: || vec![
                    ready("imc-small-one", 20, 300, &[NGINX]),
                    ready("imc-big-two", 500, 100, &[NGINX, REDIS]),
                ],
                ..row(
                    "auto: degree beats both size and age",
                    &["nginx", "redis:7", "busybox:1.36"],
                    &[],
                    Clone {
                        cache: "imc-big-two",
                        explicit: false,
                        matched: &["nginx", "redis:7"],
                        missing: &["busybox:1.36"],
                    },
                )
            },
            row(
                "auto: a partial automatic match lists the missing images",
                &["nginx", "busybox:1.36"],
                &[],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &["busybox:1.36"] },
            ),
            Row {
                caches: || vec![
                    cache("imc-pulling", Phase::Pulling, 20, 100, &[NGINX]),
                    cache("imc-failed", Phase::Failed, 20, 100, &[NGINX]),
                    ready("imc-ok", 40, 100, &[NGINX]),
                ],
                ..row(
                    "auto: caches that are not Ready are never candidates",
                    &["nginx"],
                    &[],
                    Clone { cache: "imc-ok", explicit: false, matched: &["nginx"], missing: &[] },
                )
            },
            row(
                "auto: eci-image-cache true matches",
                &["redis:7"],
                &[(ECI_IMAGE_CACHE, "true")],
                Clone { cache: "imc-redis", explicit: false, matched: &["redis:7"], missing: &[] },
            ),
            row(
                "auto: eks use-image-cache auto matches",
                &["redis:7"],
                &[(EKS_USE_IMAGE_CACHE, "auto")],
                Clone { cache: "imc-redis", explicit: false, matched: &["redis:7"], missing: &[] },
            ),
            row(
                "auto: eci-auto-imc true explicitly is the default",
                &["redis:7"],
                &[(ECI_AUTO_IMC, "true")],
                Clone { cache: "imc-redis", explicit: false, matched: &["redis:7"], missing: &[] },
            ),
            Row {
                cli: Some("auto"),
                ..row(
                    "auto: --cache auto is automatic matching",
                    &["redis:7"],
                    &[],
                    Clone { cache: "imc-redis", explicit: false, matched: &["redis:7"], missing: &[] },
                )
            },
            // --- perfect match and match count ---
            row(
                "perfect: a cache with every image is chosen",
                &["nginx", "redis:7"],
                &[(IMC_PERFECT_MATCH, "true")],
                Clone { cache: "imc-both", explicit: false, matched: &["nginx", "redis:7"], missing: &[] },
            ),
            row(
                "perfect: no cache with every image is cold",
                &["nginx", "redis:7", "busybox:1.36"],
                &[(IMC_PERFECT_MATCH, "true")],
                Cold { auto_create: true, reason_has: "imc-perfect-match: \"true\" requires all 3 image(s); the closest Ready cache, imc-both" },
            ),
            row(
                "perfect: false means no requirement",
                &["nginx", "busybox:1.36"],
                &[(IMC_PERFECT_MATCH, "false")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &["busybox:1.36"] },
            ),
            row(
                "count: threshold met",
                &["nginx", "redis:7", "busybox:1.36"],
                &[(IMC_MATCH_COUNT_REQUEST, "2")],
                Clone { cache: "imc-both", explicit: false, matched: &["nginx", "redis:7"], missing: &["busybox:1.36"] },
            ),
            row(
                "count: threshold not met is cold",
                &["nginx", "redis:7", "busybox:1.36"],
                &[(IMC_MATCH_COUNT_REQUEST, "3")],
                Cold { auto_create: true, reason_has: "imc-match-count-request requires at least 3 of the 3 image(s)" },
            ),
            row(
                "count: more than the pod has can never be met",
                &["nginx"],
                &[(IMC_MATCH_COUNT_REQUEST, "2")],
                Cold { auto_create: true, reason_has: "requires at least 2" },
            ),
            row(
                "count: 1 is the default threshold",
                &["nginx", "busybox:1.36"],
                &[(IMC_MATCH_COUNT_REQUEST, "1")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &["busybox:1.36"] },
            ),
            row(
                "perfect wins over a count it would satisfy",
                &["nginx", "redis:7", "busybox:1.36"],
                &[(IMC_PERFECT_MATCH, "true"), (IMC_MATCH_COUNT_REQUEST, "1")],
                Cold { auto_create: true, reason_has: "imc-perfect-match" },
            ),
            row(
                "perfect wins over a count it would refuse",
                &["nginx"],
                &[(IMC_PERFECT_MATCH, "true"), (IMC_MATCH_COUNT_REQUEST, "5")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            // --- normalisation, tags and digests ---
            row(
                "normalise: nginx = docker.io/library/nginx:latest",
                &["docker.io/library/nginx:latest"],
                &[(IMC_PERFECT_MATCH, "true")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            row(
                "normalise: index.docker.io/nginx and library/nginx are nginx",
                &["index.docker.io/nginx", "library/nginx:latest"],
                &[(IMC_PERFECT_MATCH, "true")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            row(
                "tag: another tag of a cached repository does not match",
                &["nginx:1.25"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any of docker.io/library/nginx:1.25" },
            ),
            row(
                "tag: same repository path on another registry does not match",
                &["quay.io/library/nginx:latest"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any" },
            ),
            row(
                "digest: pinned to the manifest digest matches",
                &["nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
                &[],
                Clone {
                    cache: "imc-nginx",
                    explicit: false,
                    matched: &["nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
                    missing: &[],
                },
            ),
            row(
                "digest: pinned to the index digest matches",
                &["nginx@sha256:3333333333333333333333333333333333333333333333333333333333333333"],
                &[],
                Clone {
                    cache: "imc-nginx",
                    explicit: false,
                    matched: &["nginx@sha256:3333333333333333333333333333333333333333333333333333333333333333"],
                    missing: &[],
                },
            ),
            row(
                "digest: another digest of a cached repository does not match",
                &["nginx@sha256:4444444444444444444444444444444444444444444444444444444444444444"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any" },
            ),
            row(
                "digest: a cached digest under another repository does not match",
                &["redis@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any" },
            ),
            row(
                "digest: tag+digest matches by digest, whatever the tag",
                &["nginx:1.25@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
                &[],
                Clone {
                    cache: "imc-nginx",
                    explicit: false,
                    matched: &["nginx:1.25@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
                    missing: &[],
                },
            ),
            row(
                "digest: tag+digest with the right tag but another digest does not match",
                &["nginx:latest@sha256:4444444444444444444444444444444444444444444444444444444444444444"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any" },
            ),
            Row {
                caches: || vec![ready("imc-pinned", 20, 100, &[(
                    "nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                    D1,
                    None,
                )])],
                ..row(
                    "tag: a cache built from a digest-only reference does not match a tag",
                    &["nginx"],
                    &[],
                    Cold { auto_create: true, reason_has: "no Ready cache holds any" },
                )
            },
            Row {
                caches: || vec![ready("imc-pinned", 20, 100, &[(
                    "nginx:1.25@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                    D1,
                    None,
                )])],
                ..row(
                    "tag: a cache built from tag+digest matches that tag",
                    &["nginx:1.25"],
                    &[],
                    Clone { cache: "imc-pinned", explicit: false, matched: &["nginx:1.25"], missing: &[] },
                )
            },
            row(
                "duplicates: spellings of one image count once",
                &["nginx", "docker.io/library/nginx:latest", "redis:7"],
                &[(IMC_MATCH_COUNT_REQUEST, "2")],
                Clone { cache: "imc-both", explicit: false, matched: &["nginx", "redis:7"], missing: &[] },
            ),
            // --- no match, auto-create, eci-auto-imc ---
            row(
                "no match: cold with auto-create by default",
                &["busybox:1.36"],
                &[],
                Cold { auto_create: true, reason_has: "no Ready cache holds any of docker.io/library/busybox:1.36" },
            ),
            Row {
                caches: || vec![cache("imc-pulling", Phase::Pulling, 20, 100, &[NGINX])],
                ..row(
                    "no match: no Ready cache at all",
                    &["nginx"],
                    &[],
                    Cold { auto_create: true, reason_has: "no cache on this node is Ready" },
                )
            },
            row(
                "eci-auto-imc false: no matching, no auto-create, even when a cache would match",
                &["nginx"],
                &[(ECI_AUTO_IMC, "false")],
                Cold { auto_create: false, reason_has: "automatic matching is off (k8s.aliyun.com/eci-auto-imc: \"false\")" },
            ),
            row(
                "eci-auto-imc false + eci-image-cache true: matching on, auto-create off (hit)",
                &["nginx"],
                &[(ECI_AUTO_IMC, "false"), (ECI_IMAGE_CACHE, "true")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            row(
                "eci-auto-imc false + eks auto: matching on, auto-create off (miss)",
                &["busybox:1.36"],
                &[(ECI_AUTO_IMC, "False"), (EKS_USE_IMAGE_CACHE, "auto")],
                Cold { auto_create: false, reason_has: "no Ready cache holds any" },
            ),
            row(
                "eci-image-cache false has no effect of its own",
                &["nginx"],
                &[(ECI_IMAGE_CACHE, "false")],
                Clone { cache: "imc-nginx", explicit: false, matched: &["nginx"], missing: &[] },
            ),
            // --- explicit caches ---
            row(
                "explicit: eci-imc-id wins over a better automatic match",
                &["nginx", "redis:7"],
                &[(ECI_IMC_ID, "imc-redis")],
                Clone { cache: "imc-redis", explicit: true, matched: &["redis:7"], missing: &["nginx"] },
            ),
            row(
                "explicit: eci-image-snapshot-id",
                &["nginx"],
                &[(ECI_IMAGE_SNAPSHOT_ID, "imc-both")],
                Clone { cache: "imc-both", explicit: true, matched: &["nginx"], missing: &[] },
            ),
            row(
                "explicit: eks use-image-cache imc-…",
                &["nginx"],
                &[(EKS_USE_IMAGE_CACHE, "imc-both")],
                Clone { cache: "imc-both", explicit: true, matched: &["nginx"], missing: &[] },
            ),
            Row {
                cli: Some("imc-both"),
                ..row(
                    "explicit: --cache ID",
                    &["nginx"],
                    &[],
                    Clone { cache: "imc-both", explicit: true, matched: &["nginx"], missing: &[] },
                )
            },
            Row {
                cli: Some("name-imc-redis"),
                ..row(
                    "explicit: --cache NAME is looked up by name",
                    &["redis:7"],
                    &[],
                    Clone { cache: "imc-redis", explicit: true, matched: &["redis:7"], missing: &[] },
                )
            },
            row(
                "explicit partial (EKS): a cache with none of the images is still cloned",
                &["busybox:1.36"],
                &[(ECI_IMC_ID, "imc-nginx")],
                Clone { cache: "imc-nginx", explicit: true, matched: &[], missing: &["busybox:1.36"] },
            ),
            row(
                "explicit wins over eci-auto-imc false",
                &["nginx"],
                &[(ECI_IMC_ID, "imc-nginx"), (ECI_AUTO_IMC, "false")],
                Clone { cache: "imc-nginx", explicit: true, matched: &["nginx"], missing: &[] },
            ),
            row(
                "explicit ignores perfect match",
                &["nginx", "busybox:1.36"],
                &[(ECI_IMC_ID, "imc-nginx"), (IMC_PERFECT_MATCH, "true")],
                Clone { cache: "imc-nginx", explicit: true, matched: &["nginx"], missing: &["busybox:1.36"] },
            ),
            row(
                "explicit: the same id in two annotations is fine",
                &["nginx"],
                &[(ECI_IMC_ID, "imc-nginx"), (EKS_USE_IMAGE_CACHE, "imc-nginx")],
                Clone { cache: "imc-nginx", explicit: true, matched: &["nginx"], missing: &[] },
            ),
            Row {
                cli: Some("auto"),
                ..row(
                    "explicit: --cache auto leaves the annotation in charge",
                    &["nginx"],
                    &[(ECI_IMC_ID, "imc-both")],
                    Clone { cache: "imc-both", explicit: true, matched: &["nginx"], missing: &[] },
                )
            },
            row(
                "explicit: unknown id is not found, and says how to list caches",
                &["nginx"],
                &[(ECI_IMC_ID, "imc-nope")],
                Err(&["`imc-nope`", "annotation k8s.aliyun.com/eci-imc-id", "does not exist", "imagecache get"]),
            ),
            Row {
                cli: Some("imc-nope"),
                ..row(
                    "explicit: unknown --cache is not found",
                    &["nginx"],
                    &[],
                    Err(&["`imc-nope`", "--cache", "does not exist"]),
                )
            },
            row(
                "explicit: not Ready (Pulling) is an error naming the phase",
                &["nginx"],
                &[(ECI_IMC_ID, "imc-pulling")],
                Err(&["imc-pulling", "is Pulling, not Ready", "wait"]),
            ),
            row(
                "explicit: not Ready (Failed) says it never will be",
                &["nginx"],
                &[(EKS_USE_IMAGE_CACHE, "imc-failed")],
                Err(&["imc-failed", "is Failed, not Ready", "recreate"]),
            ),
            Row {
                cli: Some("imc-both"),
                ..row(
                    "explicit: --cache and an annotation naming different caches conflict",
                    &["nginx"],
                    &[(ECI_IMC_ID, "imc-nginx")],
                    Err(&["--cache names cache `imc-both`", "k8s.aliyun.com/eci-imc-id names `imc-nginx`"]),
                )
            },
            // --- bad values ---
            row(
                "bad: match count not a number",
                &["nginx"],
                &[(IMC_MATCH_COUNT_REQUEST, "abc")],
                Err(&["k8s.aliyun.com/imc-match-count-request", "\"abc\"", "1 or more"]),
            ),
            row(
                "bad: match count 0",
                &["nginx"],
                &[(IMC_MATCH_COUNT_REQUEST, "0")],
                Err(&["k8s.aliyun.com/imc-match-count-request", "\"0\"", "1 or more"]),
            ),
            row(
                "bad: match count negative",
                &["nginx"],
                &[(IMC_MATCH_COUNT_REQUEST, "-1")],
                Err(&["imc-match-count-request", "1 or more"]),
            ),
            row(
                "bad: perfect match not a boolean",
                &["nginx"],
                &[(IMC_PERFECT_MATCH, "yes")],
                Err(&["k8s.aliyun.com/imc-perfect-match", "\"yes\"", "\"true\" or \"false\""]),
            ),
            row(
                "bad: eci-auto-imc not a boolean",
                &["nginx"],
                &[(ECI_AUTO_IMC, "1")],
                Err(&["k8s.aliyun.com/eci-auto-imc", "\"true\" or \"false\""]),
            ),
            row(
                "bad: eci-image-cache not a boolean",
                &["nginx"],
                &[(ECI_IMAGE_CACHE, "on")],
                Err(&["k8s.aliyun.com/eci-image-cache", "\"true\" or \"false\""]),
            ),
            row(
                "bad: eks use-image-cache neither auto nor an id",
                &["nginx"],
                &[(EKS_USE_IMAGE_CACHE, "true")],
                Err(&["eks.tke.cloud.tencent.com/use-image-cache", "`auto` or a cache id"]),
            ),
            row(
                "bad: empty eci-imc-id",
                &["nginx"],
                &[(ECI_IMC_ID, " ")],
                Err(&["k8s.aliyun.com/eci-imc-id", "the id of a cache"]),
            ),
            row(
                "bad: a bad value is refused even beside an explicit cache",
                &["nginx"],
                &[(ECI_IMC_ID, "imc-nginx"), (IMC_MATCH_COUNT_REQUEST, "abc")],
                Err(&["imc-match-count-request"]),
            ),
            row(
                "bad: no images",
                &[],
                &[],
                Err(&["no images"]),
            ),
        ]
    }

    fn refs(images: &[&str]) -> Vec<ImageReference> {
        parse_images(images).expect("test references parse")
    }

    #[test]
    fn selection_rules() {
        let mut failures = Vec::new();
        for row in rows() {
            let annotations: BTreeMap<String, String> = row
                .annotations
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let req = DiskRequest {
                images: refs(row.images),
                annotations: &annotations,
                explicit_cache: row.cli.map(str::to_string),
            };
            let got = select(&req, &(row.caches)());
            let ok = match (&row.want, &got) {
                (
                    Want::Clone {
                        cache,
                        explicit,
                        matched,
                        missing,
                    },
                    Ok(Selection::Clone {
                        cache_id,
                        explicit: e,
                        matched: m,
                        missing: mi,
                        ..
                    }),
                ) => {
                    cache_id == cache
                        && e == explicit
                        && *m == refs(matched)
                        && *mi == refs(missing)
                }
                (
                    Want::Cold {
                        auto_create,
                        reason_has,
                    },
                    Ok(Selection::Cold {
                        auto_create: a,
                        reason,
                    }),
                ) => a == auto_create && reason.contains(reason_has),
                (Want::Err(parts), Err(e)) => {
                    let msg = e.to_string();
                    parts.iter().all(|p| msg.contains(p))
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{}:\n    want {:?}\n    got  {:?}",
                    row.name, row.want, got
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} rule(s) broke:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn rows_have_unique_names() {
        let rows = rows();
        let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len(), "two rows share a name");
    }

    #[test]
    fn not_found_is_flagged_for_a_404() {
        let annotations = BTreeMap::new();
        let req = DiskRequest {
            images: refs(&["nginx"]),
            annotations: &annotations,
            explicit_cache: Some("imc-nope".into()),
        };
        let e = select(&req, &node()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let req = DiskRequest {
            explicit_cache: Some("imc-pulling".into()),
            ..req
        };
        assert!(!select(&req, &node()).unwrap_err().is_not_found());
    }

    #[test]
    fn reasons_name_the_cache_and_the_missing_images() {
        let annotations: BTreeMap<String, String> =
            [(ECI_IMC_ID.to_string(), "imc-nginx".to_string())].into();
        let req = DiskRequest {
            images: refs(&["nginx", "busybox:1.36"]),
            annotations: &annotations,
            explicit_cache: None,
        };
        let Ok(Selection::Clone { reason, .. }) = select(&req, &node()) else {
            panic!("expected a clone");
        };
        assert!(reason.contains("imc-nginx"), "{reason}");
        assert!(reason.contains("holds 1 of 2"), "{reason}");
        assert!(
            reason.contains("pulling docker.io/library/busybox:1.36"),
            "{reason}"
        );
    }

    #[test]
    fn candidate_from_cache() {
        let json = serde_json::json!({
            "apiVersion": "imagecache.io/v1",
            "kind": "ImageCache",
            "metadata": {"name": "web", "creationTimestamp": "2025-01-02T03:04:05Z"},
            "spec": {"images": ["nginx"], "imageCacheSize": 25},
            "status": {
                "phase": "Ready",
                "progress": "100%",
                "imageCacheId": "imc-0123456789abcdef",
                "lastUpdatedTime": "2025-01-02T03:05:00Z",
                "images": [{
                    "image": "docker.io/library/nginx:latest",
                    "digest": D1,
                    "resolvedDigest": IDX,
                    "chainIds": [],
                    "sizeBytes": 10
                }],
                "events": []
            }
        });
        let c: ImageCache = serde_json::from_value(json).unwrap();
        let cand = Candidate::from_cache(&c).unwrap();
        assert_eq!(cand.cache_id, "imc-0123456789abcdef");
        assert_eq!(cand.name, "web");
        assert_eq!(cand.phase, Phase::Ready);
        assert_eq!(cand.size_gib, 25);
        assert_eq!(cand.created.unix_timestamp(), 1_735_787_045);
        assert!(cand.holds(&"nginx".parse().unwrap()));
        assert!(cand.holds(&format!("nginx@{IDX}").parse().unwrap()));

        let bare = ImageCache {
            api_version: "imagecache.io/v1".into(),
            kind: "ImageCache".into(),
            metadata: ObjectMeta::default(),
            spec: ImageCacheSpec::default(),
            status: None,
        };
        assert!(Candidate::from_cache(&bare).is_none());
        let defaults = ImageCache {
            status: Some(ImageCacheStatus {
                phase: Phase::Pending,
                progress: "0%".into(),
                image_cache_id: "imc-x".into(),
                snapshot_digest: None,
                start_time: None,
                last_updated_time: String::new(),
                expire_date_time: None,
                data_size_bytes: None,
                data_size: None,
                message: None,
                source: None,
                shared_as: None,
                images: Vec::new(),
                events: Vec::new(),
            }),
            ..bare
        };
        let cand = Candidate::from_cache(&defaults).unwrap();
        assert_eq!(cand.size_gib, u32::MAX, "no size sorts as the largest");
        assert_eq!(
            cand.created,
            OffsetDateTime::UNIX_EPOCH,
            "no time sorts as the oldest"
        );
    }

    /// A Pod as `kubectl get pod -o json` prints it, trimmed.
    fn pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-7d9c",
                "namespace": "shop",
                "uid": "0b1c2d3e-aaaa-bbbb-cccc-123456789abc",
                "labels": {"app": "web"},
                "annotations": {
                    "k8s.aliyun.com/eci-imc-id": "imc-0123456789abcdef",
                    "k8s.aliyun.com/imc-perfect-match": "true"
                }
            },
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "registry.example.com/shop/migrate:v3",
                     "command": ["/migrate"]},
                    {"name": "wait", "image": "busybox:1.36"}
                ],
                "containers": [
                    {"name": "web", "image": "nginx:1.25",
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "resources": {"limits": {"memory": "256Mi"}}},
                    {"name": "app", "image": "registry.example.com/shop/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"},
                    {"name": "sidecar", "image": "busybox:1.36"}
                ],
                "ephemeralContainers": [
                    {"name": "debugger", "image": "busybox:1.36", "targetContainerName": "web"},
                    {"name": "shell", "image": "alpine:3.20"}
                ],
                "restartPolicy": "Always",
                "imagePullSecrets": [{"name": "regcred"}]
            },
            "status": {"phase": "Pending"}
        })
    }

    #[test]
    fn images_of_a_pod_in_order_without_duplicates() {
        assert_eq!(
            images_of_pod(&pod()).unwrap(),
            [
                "nginx:1.25",
                "registry.example.com/shop/app@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                "busybox:1.36",
                "registry.example.com/shop/migrate:v3",
                "alpine:3.20",
            ]
        );
    }

    #[test]
    fn a_pod_drives_selection_end_to_end() {
        let pod = pod();
        let annotations = annotations_of_pod(&pod).unwrap();
        let images = parse_images(&images_of_pod(&pod).unwrap()).unwrap();
        let caches = vec![ready(
            "imc-0123456789abcdef",
            20,
            1,
            &[("nginx:1.25", D2, None)],
        )];
        let req = DiskRequest {
            images,
            annotations: &annotations,
            explicit_cache: None,
        };
        let Ok(Selection::Clone {
            cache_id,
            explicit,
            matched,
            missing,
            ..
        }) = select(&req, &caches)
        else {
            panic!("expected a clone");
        };
        assert_eq!(cache_id, "imc-0123456789abcdef");
        assert!(explicit);
        assert_eq!(matched, refs(&["nginx:1.25"]));
        assert_eq!(missing.len(), 4);
    }

    #[test]
    fn bad_pods_say_where() {
        let err = |v: serde_json::Value| images_of_pod(&v).unwrap_err().to_string();
        assert!(err(serde_json::json!([])).contains("not an object"));
        assert!(err(serde_json::json!({"kind": "Deployment", "spec": {}})).contains("not \"Pod\""));
        assert!(err(serde_json::json!({"kind": "Pod"})).contains("spec is missing"));
        assert!(
            err(serde_json::json!({"spec": {}})).contains("spec.containers is missing or empty")
        );
        assert!(err(serde_json::json!({"spec": {"containers": {}}}))
            .contains("spec.containers is not a list"));
        let e = err(serde_json::json!({"spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": ""}
        ]}}));
        assert!(
            e.contains("spec.containers[1].image is missing or empty (container \"b\")"),
            "{e}"
        );
        let e = err(
            serde_json::json!({"spec": {"containers": [{"name": "a", "image": "nginx"}],
            "initContainers": [{"name": "i"}]}}),
        );
        assert!(e.contains("spec.initContainers[0].image"), "{e}");
        // A Pod without `kind` (a bare object from a template) is accepted.
        assert_eq!(
            images_of_pod(&serde_json::json!({"spec": {"containers": [{"image": "nginx"}]}}))
                .unwrap(),
            ["nginx"]
        );
    }

    #[test]
    fn pod_annotations() {
        assert!(annotations_of_pod(&serde_json::json!({"spec": {}}))
            .unwrap()
            .is_empty());
        let e = annotations_of_pod(&serde_json::json!({"metadata": {"annotations": {
            "k8s.aliyun.com/imc-perfect-match": true
        }}}))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("imc-perfect-match") && e.contains("quote it"),
            "{e}"
        );
    }

    #[test]
    fn a_node_with_auto_match_off_serves_only_pods_that_ask() {
        let images = parse_images(&["nginx"]).unwrap();
        let run = |pairs: &[(&str, &str)]| {
            let annotations: BTreeMap<String, String> = pairs
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let req = DiskRequest {
                images: images.clone(),
                annotations: &annotations,
                explicit_cache: None,
            };
            select_on_node(&req, &node(), false).unwrap()
        };
        match run(&[]) {
            Selection::Cold {
                auto_create,
                reason,
            } => {
                assert!(!auto_create);
                assert!(reason.contains("auto_match = false"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // EKS `auto`: matched, but nothing built for it.
        assert!(matches!(
            run(&[(EKS_USE_IMAGE_CACHE, "auto")]),
            Selection::Clone { .. }
        ));
        assert!(matches!(
            run(&[(EKS_USE_IMAGE_CACHE, "imc-nginx")]),
            Selection::Clone { explicit: true, .. }
        ));
        assert!(matches!(
            run(&[(ECI_AUTO_IMC, "true")]),
            Selection::Clone { .. }
        ));
        let wanted_busybox = parse_images(&["busybox:1.36"]).unwrap();
        let annotations = BTreeMap::from([(ECI_AUTO_IMC.to_string(), "true".to_string())]);
        let asked = DiskRequest {
            images: wanted_busybox.clone(),
            annotations: &annotations,
            explicit_cache: None,
        };
        assert!(matches!(
            select_on_node(&asked, &node(), false).unwrap(),
            Selection::Cold {
                auto_create: true,
                ..
            }
        ));
        let annotations = BTreeMap::from([(EKS_USE_IMAGE_CACHE.to_string(), "auto".to_string())]);
        let matching_only = DiskRequest {
            images: wanted_busybox,
            annotations: &annotations,
            explicit_cache: None,
        };
        assert!(matches!(
            select_on_node(&matching_only, &node(), false).unwrap(),
            Selection::Cold {
                auto_create: false,
                ..
            }
        ));
    }

    #[test]
    fn parse_images_names_the_bad_one() {
        let e = parse_images(&["nginx", "Bad/Name"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`Bad/Name`"), "{e}");
    }
}
