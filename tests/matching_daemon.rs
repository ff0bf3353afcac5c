//! Cache selection through the daemon: every rule of src/matching.rs as a row that seeds the
//! node's caches, posts a disk request built the way the API builds one (a Pod manifest as
//! YAML, or the CLI's Disk as JSON), and checks the Disk the daemon answers with — cache,
//! matched and missing images, events, or the API error — and the clone it made through the
//! recording `Sys` fake. Rows:
//!
//! - explicit: each of `eci-imc-id`, `eci-image-snapshot-id`, `use-image-cache: imc-…` and
//!   `--cache` (by id and by name); explicit over a better automatic candidate; explicit and
//!   partial (cloned, the rest pulled); explicit ignoring perfect match and `eci-auto-imc`;
//!   not Ready (409 naming the phase); unknown (404); conflicting names (409);
//! - automatic: on by default; `eci-auto-imc: "false"` (cold, nothing created);
//!   `eci-image-cache: "true"` and `use-image-cache: auto` turning matching back on; a cache
//!   that is not Ready never chosen;
//! - perfect match and match count, met and unmet, and perfect match over a count;
//! - ordering: most images, then smaller imageCacheSize, then newer creationTimestamp; each
//!   row is laid out so that dropping or swapping its rule picks another cache;
//! - normalisation (`nginx` = `docker.io/library/nginx:latest`, another registry's nginx
//!   is another image; a tag matches only itself) and digests (manifest digest, index
//!   digest, a stale tag beside a digest, another digest of the same repository);
//! - no match: a cold disk and an `auto-…` cache, or a cold disk on a node with nothing Ready;
//! - refusals: bad annotation values (422 naming the annotation), a disk smaller than its
//!   cache (422).
//!
//! No root, loop device or registry: each row gets its own state root and daemon. Finished
//! caches are seeded before the daemon starts, as a build leaves them (a store record, and a
//! committed sparse snapshot of the cache's size that the cache holds a reference on); one
//! still building is recorded after start, since start-up fails builds it finds unfinished.
//! Every image a disk lacks lives on 127.0.0.1:1, which refuses at once, so background pulls
//! and automatic builds end quickly; rows check what selection decided, not what the pull did.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use imagecache::api::parse::parse_body;
use imagecache::api::validate::validate_image_cache;
use imagecache::api::validate_disk::{parse_disk_request, validate_disk, ValidDisk};
use imagecache::api::{
    ApiError, CachedImage, Disk, DiskPhase, DiskSpec, ImageCache, ImageCacheStatus, Phase,
    API_VERSION, KIND_DISK,
};
use imagecache::block_snapshot::{hash_file, SnapshotStore};
use imagecache::config::Config;
use imagecache::daemon::{Action, Daemon, Reply};
use imagecache::registry::ImageReference;
use imagecache::store::Store;
use imagecache::sys::fake::Call;
use imagecache::sys::FakeSys;

/// Refuses connections at once: pulls of what a disk lacks fail fast.
const REGISTRY: &str = "127.0.0.1:1";

const WEB: &str = "127.0.0.1:1/shop/web:v1";
const API: &str = "127.0.0.1:1/shop/api:v1";
const DB: &str = "127.0.0.1:1/shop/db:v1";
/// No cache holds it.
const EXTRA: &str = "127.0.0.1:1/shop/extra:v1";

const D_WEB: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D_API: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// The image index `api:v1` resolved to; D_API is its manifest for this platform.
const IDX_API: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const D_DB: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const D_NGINX: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

const JAN: &str = "2025-01-01T00:00:00Z";
const MAR: &str = "2025-03-01T00:00:00Z";

// --- the node: caches as a finished build records them ---

/// An image a cache holds: its reference and the digests it resolved to.
#[derive(Debug, Clone, Copy)]
struct Held {
    image: &'static str,
    digest: &'static str,
    index: Option<&'static str>,
}

const HELD_WEB: Held = Held {
    image: WEB,
    digest: D_WEB,
    index: None,
};
const HELD_API: Held = Held {
    image: API,
    digest: D_API,
    index: Some(IDX_API),
};
const HELD_DB: Held = Held {
    image: DB,
    digest: D_DB,
    index: None,
};
const HELD_NGINX: Held = Held {
    image: "docker.io/library/nginx:latest",
    digest: D_NGINX,
    index: None,
};
/// Same repository and tag as HELD_NGINX, on another registry.
const HELD_LOCAL_NGINX: Held = Held {
    image: "127.0.0.1:1/library/nginx:latest",
    digest: D_NGINX,
    index: None,
};

/// A cache on the node before the request. Its name is its id without `imc-`, so rows can
/// name a cache either way.
#[derive(Debug, Clone)]
struct Seed {
    id: &'static str,
    phase: Phase,
    size_gib: u32,
    created: &'static str,
    holds: &'static [Held],
}

impl Seed {
    fn name(&self) -> &'static str {
        self.id
            .strip_prefix("imc-")
            .expect("cache ids start with imc-")
    }

    fn in_phase(self, phase: Phase) -> Seed {
        Seed { phase, ..self }
    }
}

fn ready(id: &'static str, size_gib: u32, created: &'static str, holds: &'static [Held]) -> Seed {
    Seed {
        id,
        phase: Phase::Ready,
        size_gib,
        created,
        holds,
    }
}

/// A cache whose build has not finished (or failed before holding anything).
fn unfinished(id: &'static str, phase: Phase) -> Seed {
    ready(id, 20, JAN, &[]).in_phase(phase)
}

/// The node most rows run on: three Ready caches of one, two and three images, smallest
/// first, and two that are not Ready.
fn shop() -> Vec<Seed> {
    vec![
        ready("imc-web", 20, JAN, &[HELD_WEB]),
        ready("imc-webapi", 30, JAN, &[HELD_WEB, HELD_API]),
        ready("imc-all", 40, JAN, &[HELD_WEB, HELD_API, HELD_DB]),
        unfinished("imc-pulling", Phase::Pulling),
        unfinished("imc-failed", Phase::Failed),
    ]
}

// --- the request, as a client sends it ---

#[derive(Debug, Clone)]
struct Req {
    /// A Pod manifest (YAML) rather than `imagecache disk create --image …` (JSON).
    pod: bool,
    images: Vec<String>,
    annotations: Vec<(&'static str, &'static str)>,
    /// `--cache`; the CLI sends `auto` when it is not given.
    cache: Option<&'static str>,
    /// `--size`.
    size_gib: Option<u32>,
}

impl Req {
    fn pod(images: &[&str]) -> Req {
        Req {
            pod: true,
            images: images.iter().map(|s| s.to_string()).collect(),
            annotations: Vec::new(),
            cache: None,
            size_gib: None,
        }
    }

    fn cli(images: &[&str]) -> Req {
        Req {
            pod: false,
            ..Req::pod(images)
        }
    }

    fn with(mut self, key: &'static str, value: &'static str) -> Req {
        self.annotations.push((key, value));
        self
    }

    /// Matching on, automatic creation off: a cold row then starts no background build.
    fn no_auto_create(self) -> Req {
        self.with("k8s.aliyun.com/eci-auto-imc", "false")
            .with("k8s.aliyun.com/eci-image-cache", "true")
    }

    fn cache(mut self, id: &'static str) -> Req {
        assert!(!self.pod, "a Pod names its cache by annotation");
        self.cache = Some(id);
        self
    }

    fn size(mut self, gib: u32) -> Req {
        assert!(!self.pod, "a Pod carries no disk size");
        self.size_gib = Some(gib);
        self
    }

    /// The body and content type a client posts.
    fn body(&self) -> (String, &'static str) {
        if self.pod {
            return (self.pod_yaml(), "application/yaml");
        }
        let disk = Disk {
            api_version: API_VERSION.into(),
            kind: KIND_DISK.into(),
            metadata: Default::default(),
            spec: DiskSpec {
                images: self.images.clone(),
                annotations: self
                    .annotations
                    .iter()
                    .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                cache_id: Some(self.cache.unwrap_or("auto").to_owned()),
                size_gib: self.size_gib,
                mount: Some(true),
                ..Default::default()
            },
            status: None,
        };
        (
            serde_json::to_string(&disk).expect("a Disk serialises"),
            "application/json",
        )
    }

    fn pod_yaml(&self) -> String {
        // JSON strings are YAML double-quoted scalars: values like "true" stay strings.
        let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: shop\n",
        );
        if !self.annotations.is_empty() {
            yaml.push_str("  annotations:\n");
            for (k, v) in &self.annotations {
                yaml.push_str(&format!("    {k}: {}\n", quote(v)));
            }
        }
        yaml.push_str("spec:\n  containers:\n");
        for (i, image) in self.images.iter().enumerate() {
            yaml.push_str(&format!("  - name: c{i}\n    image: {}\n", quote(image)));
        }
        yaml
    }

    /// What the API route does with the body before it reaches the daemon.
    fn validate(&self) -> Result<ValidDisk, ApiError> {
        let (body, content_type) = self.body();
        parse_body::<serde_json::Value>(body.as_bytes(), Some(content_type))
            .and_then(parse_disk_request)
            .and_then(validate_disk)
    }
}

// --- what the daemon should answer ---

#[derive(Debug)]
enum Expect {
    /// Cloned from `cache`, sized as it is; `missing` pulled into the disk (PullingMissing).
    Clone {
        cache: &'static str,
        matched: Vec<String>,
        missing: Vec<String>,
        /// In the Cloned event's message.
        says: String,
    },
    /// An empty disk with every image pulled into it; `auto_create`: an `auto-…` cache of
    /// the images is being built (AutoCreatedCache).
    Cold { auto_create: bool, says: String },
    /// Refused, creating nothing.
    Refused {
        code: u16,
        reason: &'static str,
        says: Vec<&'static str>,
    },
}

fn clones(cache: &'static str, matched: &[&str], missing: &[&str], says: &str) -> Expect {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Expect::Clone {
        cache,
        matched: owned(matched),
        missing: owned(missing),
        says: says.to_owned(),
    }
}

fn cold(auto_create: bool, says: &str) -> Expect {
    Expect::Cold {
        auto_create,
        says: says.to_owned(),
    }
}

fn refused(code: u16, reason: &'static str, says: &[&'static str]) -> Expect {
    Expect::Refused {
        code,
        reason,
        says: says.to_vec(),
    }
}

struct Row {
    name: &'static str,
    caches: Vec<Seed>,
    request: Req,
    expect: Expect,
}

fn row(name: &'static str, caches: Vec<Seed>, request: Req, expect: Expect) -> Row {
    Row {
        name,
        caches,
        request,
        expect,
    }
}

const IMC_ID: &str = "k8s.aliyun.com/eci-imc-id";
const SNAPSHOT_ID: &str = "k8s.aliyun.com/eci-image-snapshot-id";
const EKS: &str = "eks.tke.cloud.tencent.com/use-image-cache";
const AUTO_IMC: &str = "k8s.aliyun.com/eci-auto-imc";
const IMAGE_CACHE: &str = "k8s.aliyun.com/eci-image-cache";
const PERFECT: &str = "k8s.aliyun.com/imc-perfect-match";
const COUNT: &str = "k8s.aliyun.com/imc-match-count-request";

fn rows() -> Vec<Row> {
    let web_at = format!("127.0.0.1:1/shop/web@{D_WEB}");
    let web_old_at = format!("127.0.0.1:1/shop/web:old@{D_WEB}");
    let api_at_index = format!("127.0.0.1:1/shop/api@{IDX_API}");
    let api_at_manifest = format!("127.0.0.1:1/shop/api@{D_API}");
    let web_at_other = format!("127.0.0.1:1/shop/web@{D_API}");
    let digests = || {
        vec![
            ready("imc-web", 20, JAN, &[HELD_WEB]),
            ready("imc-api", 20, JAN, &[HELD_API]),
        ]
    };

    vec![
        // --- explicit ---
        row(
            "explicit: eci-imc-id names the cache",
            shop(),
            Req::pod(&[WEB]).with(IMC_ID, "imc-all"),
            clones(
                "imc-all",
                &[WEB],
                &[],
                "named by annotation k8s.aliyun.com/eci-imc-id",
            ),
        ),
        row(
            "explicit: eci-image-snapshot-id, the older name",
            shop(),
            Req::pod(&[WEB]).with(SNAPSHOT_ID, "imc-webapi"),
            clones(
                "imc-webapi",
                &[WEB],
                &[],
                "named by annotation k8s.aliyun.com/eci-image-snapshot-id",
            ),
        ),
        row(
            "explicit: use-image-cache names a cache id",
            shop(),
            Req::pod(&[WEB]).with(EKS, "imc-all"),
            clones(
                "imc-all",
                &[WEB],
                &[],
                "named by annotation eks.tke.cloud.tencent.com/use-image-cache",
            ),
        ),
        row(
            "explicit: --cache by id",
            shop(),
            Req::cli(&[WEB]).cache("imc-webapi"),
            clones("imc-webapi", &[WEB], &[], "named by --cache"),
        ),
        row(
            "explicit: --cache by name",
            shop(),
            Req::cli(&[WEB]).cache("all"),
            clones("imc-all", &[WEB], &[], "named by --cache"),
        ),
        row(
            "explicit: two annotations naming the same cache agree",
            shop(),
            Req::pod(&[WEB])
                .with(IMC_ID, "imc-all")
                .with(EKS, "imc-all"),
            clones(
                "imc-all",
                &[WEB],
                &[],
                "named by annotation k8s.aliyun.com/eci-imc-id",
            ),
        ),
        row(
            "explicit: wins over a better automatic candidate",
            shop(),
            Req::cli(&[WEB, API]).cache("imc-web"),
            clones("imc-web", &[WEB], &[API], "holds 1 of 2"),
        ),
        row(
            "explicit: Ready but partial is cloned and the rest pulled",
            shop(),
            Req::pod(&[WEB, EXTRA]).with(IMC_ID, "imc-webapi"),
            clones(
                "imc-webapi",
                &[WEB],
                &[EXTRA],
                "holds 1 of 2 image(s); pulling 127.0.0.1:1/shop/extra:v1",
            ),
        ),
        row(
            "explicit: ignores perfect match and eci-auto-imc false",
            shop(),
            Req::pod(&[WEB, EXTRA])
                .with(IMC_ID, "imc-web")
                .with(PERFECT, "true")
                .with(AUTO_IMC, "false"),
            clones("imc-web", &[WEB], &[EXTRA], "named by annotation"),
        ),
        row(
            "explicit: a Pulling cache is a 409 naming the phase",
            shop(),
            Req::pod(&[WEB]).with(IMC_ID, "imc-pulling"),
            refused(
                409,
                "Conflict",
                &["imc-pulling", "is Pulling, not Ready", "wait"],
            ),
        ),
        row(
            "explicit: a Failed cache is a 409 saying to recreate it",
            shop(),
            Req::cli(&[WEB]).cache("failed"),
            refused(
                409,
                "Conflict",
                &["imc-failed", "is Failed, not Ready", "recreate"],
            ),
        ),
        row(
            "explicit: an unknown cache is a 404",
            shop(),
            Req::pod(&[WEB]).with(EKS, "imc-nope"),
            refused(
                404,
                "NotFound",
                &["imc-nope", "does not exist", "imagecache get"],
            ),
        ),
        row(
            "explicit: two annotations naming different caches conflict",
            shop(),
            Req::pod(&[WEB])
                .with(IMC_ID, "imc-web")
                .with(SNAPSHOT_ID, "imc-all"),
            refused(
                409,
                "Conflict",
                &[
                    "annotation k8s.aliyun.com/eci-imc-id names cache `imc-web`",
                    "annotation k8s.aliyun.com/eci-image-snapshot-id names `imc-all`",
                ],
            ),
        ),
        row(
            "explicit: --cache and an annotation naming different caches conflict",
            shop(),
            Req::cli(&[WEB]).cache("imc-web").with(EKS, "imc-all"),
            refused(
                409,
                "Conflict",
                &[
                    "--cache names cache `imc-web`",
                    "use-image-cache names `imc-all`",
                ],
            ),
        ),
        // --- automatic matching ---
        row(
            "auto: on by default, the best Ready cache",
            shop(),
            Req::pod(&[WEB, API]),
            clones(
                "imc-webapi",
                &[WEB, API],
                &[],
                "matched automatically: holds 2 of 2",
            ),
        ),
        row(
            "auto: eci-auto-imc false gives an empty disk and creates nothing",
            shop(),
            Req::pod(&[WEB]).with(AUTO_IMC, "false"),
            cold(false, "automatic matching is off"),
        ),
        row(
            "auto: eci-image-cache true turns matching back on",
            shop(),
            Req::pod(&[WEB])
                .with(AUTO_IMC, "false")
                .with(IMAGE_CACHE, "true"),
            clones("imc-web", &[WEB], &[], "matched automatically"),
        ),
        row(
            "auto: use-image-cache auto turns matching back on",
            shop(),
            Req::pod(&[WEB]).with(AUTO_IMC, "false").with(EKS, "auto"),
            clones("imc-web", &[WEB], &[], "matched automatically"),
        ),
        row(
            "auto: a cache that is not Ready is never chosen",
            vec![
                // Holds more, and is smaller: it would win if it were Ready.
                ready("imc-broken", 20, MAR, &[HELD_WEB, HELD_API]).in_phase(Phase::Failed),
                ready("imc-web", 30, JAN, &[HELD_WEB]),
            ],
            Req::pod(&[WEB, API]),
            clones("imc-web", &[WEB], &[API], "best of 1 Ready cache(s)"),
        ),
        // --- perfect match and match count ---
        row(
            "perfect match: a cache holding every image",
            shop(),
            Req::pod(&[WEB, API, DB]).with(PERFECT, "true"),
            clones("imc-all", &[WEB, API, DB], &[], "holds 3 of 3"),
        ),
        row(
            "perfect match: none holds every image, so an empty disk",
            shop(),
            Req::pod(&[WEB, API, EXTRA])
                .with(PERFECT, "true")
                .no_auto_create(),
            cold(
                false,
                "k8s.aliyun.com/imc-perfect-match: \"true\" requires all 3 image(s)",
            ),
        ),
        row(
            "match count: 2 of 3 met, by the smaller of two",
            shop(),
            Req::pod(&[WEB, API, EXTRA]).with(COUNT, "2"),
            clones("imc-webapi", &[WEB, API], &[EXTRA], "holds 2 of 3"),
        ),
        row(
            "match count: 3 of 3 unmet, so an empty disk",
            shop(),
            Req::pod(&[WEB, API, EXTRA])
                .with(COUNT, "3")
                .no_auto_create(),
            cold(
                false,
                "k8s.aliyun.com/imc-match-count-request requires at least 3 of the 3 image(s)",
            ),
        ),
        row(
            "perfect match wins over a match count that is met",
            shop(),
            Req::pod(&[WEB, API, EXTRA])
                .with(PERFECT, "true")
                .with(COUNT, "1")
                .no_auto_create(),
            cold(false, "imc-perfect-match: \"true\" requires all"),
        ),
        // --- ordering: each winner loses every later tie-break, and the id's ---
        row(
            "ordering: most images first, over smaller and newer",
            vec![
                ready("imc-one-image", 20, MAR, &[HELD_WEB]),
                ready("imc-two-images", 40, JAN, &[HELD_WEB, HELD_API]),
            ],
            Req::pod(&[WEB, API]),
            clones("imc-two-images", &[WEB, API], &[], "holds 2 of 2"),
        ),
        row(
            "ordering: then the smaller imageCacheSize, over newer",
            vec![
                ready("imc-large", 30, MAR, &[HELD_WEB]),
                ready("imc-small", 20, JAN, &[HELD_WEB]),
            ],
            Req::pod(&[WEB]),
            clones("imc-small", &[WEB], &[], "20 GiB"),
        ),
        row(
            "ordering: then the newer creationTimestamp",
            vec![
                ready("imc-v2", 30, MAR, &[HELD_WEB]),
                ready("imc-v1", 30, JAN, &[HELD_WEB]),
            ],
            Req::pod(&[WEB]),
            clones("imc-v2", &[WEB], &[], "best of 2 Ready cache(s)"),
        ),
        // --- normalisation and digests ---
        row(
            "normalisation: nginx is docker.io/library/nginx:latest, not another registry's",
            vec![
                // Smaller and newer: it would win if registries were not compared.
                ready("imc-local-nginx", 20, MAR, &[HELD_LOCAL_NGINX]),
                ready("imc-hub-nginx", 30, JAN, &[HELD_NGINX]),
            ],
            Req::pod(&["nginx", "docker.io/library/nginx", "library/nginx:latest"]),
            clones(
                "imc-hub-nginx",
                &["docker.io/library/nginx:latest"],
                &[],
                "holds 1 of 1",
            ),
        ),
        row(
            "normalisation: a tag matches only itself",
            shop(),
            Req::pod(&["127.0.0.1:1/shop/web:v2"]).no_auto_create(),
            cold(false, "no Ready cache holds any of 127.0.0.1:1/shop/web:v2"),
        ),
        row(
            "digest: the manifest digest",
            digests(),
            Req::pod(&[&web_at]),
            clones("imc-web", &[&web_at], &[], "matched automatically"),
        ),
        row(
            "digest: a tag beside the digest is not consulted",
            digests(),
            Req::cli(&[&web_old_at]),
            clones("imc-web", &[&web_old_at], &[], "matched automatically"),
        ),
        row(
            "digest: the index digest (resolvedDigest)",
            digests(),
            Req::pod(&[&api_at_index]),
            clones("imc-api", &[&api_at_index], &[], "matched automatically"),
        ),
        row(
            "digest: the platform manifest under an index",
            digests(),
            Req::pod(&[&api_at_manifest]),
            clones("imc-api", &[&api_at_manifest], &[], "matched automatically"),
        ),
        row(
            "digest: another digest in the same repository matches nothing",
            digests(),
            Req::pod(&[&web_at_other]).no_auto_create(),
            cold(false, "no Ready cache holds any of"),
        ),
        // --- no match ---
        row(
            "no match: an empty disk and an auto-created cache of the images",
            shop(),
            Req::pod(&[EXTRA]),
            cold(
                true,
                "no Ready cache holds any of 127.0.0.1:1/shop/extra:v1",
            ),
        ),
        row(
            "no match: nothing on the node is Ready",
            vec![
                unfinished("imc-pulling", Phase::Pulling),
                unfinished("imc-failed", Phase::Failed),
            ],
            Req::pod(&[WEB]),
            cold(true, "no cache on this node is Ready"),
        ),
        // --- refusals ---
        row(
            "bad: match count not a number",
            shop(),
            Req::pod(&[WEB]).with(COUNT, "abc"),
            refused(422, "Invalid", &[COUNT, "\"abc\"", "1 or more"]),
        ),
        row(
            "bad: match count 0",
            shop(),
            Req::pod(&[WEB]).with(COUNT, "0"),
            refused(422, "Invalid", &[COUNT, "\"0\"", "1 or more"]),
        ),
        row(
            "bad: perfect match not a boolean",
            shop(),
            Req::pod(&[WEB]).with(PERFECT, "yes"),
            refused(
                422,
                "Invalid",
                &[PERFECT, "\"yes\"", "\"true\" or \"false\""],
            ),
        ),
        row(
            "bad: eci-auto-imc not a boolean",
            shop(),
            Req::pod(&[WEB]).with(AUTO_IMC, "1"),
            refused(
                422,
                "Invalid",
                &[AUTO_IMC, "\"1\"", "\"true\" or \"false\""],
            ),
        ),
        row(
            "bad: eci-image-cache not a boolean",
            shop(),
            Req::pod(&[WEB]).with(IMAGE_CACHE, "on"),
            refused(422, "Invalid", &[IMAGE_CACHE, "\"on\""]),
        ),
        row(
            "bad: use-image-cache neither auto nor a cache id",
            shop(),
            Req::pod(&[WEB]).with(EKS, "true"),
            refused(422, "Invalid", &[EKS, "\"true\"", "`auto` or a cache id"]),
        ),
        row(
            "bad: empty eci-imc-id",
            shop(),
            Req::pod(&[WEB]).with(IMC_ID, ""),
            refused(422, "Invalid", &[IMC_ID, "the id of a cache"]),
        ),
        row(
            "bad: a bad value is refused beside a good explicit cache",
            shop(),
            Req::pod(&[WEB]).with(IMC_ID, "imc-web").with(COUNT, "abc"),
            refused(422, "Invalid", &[COUNT]),
        ),
        row(
            "size: a disk smaller than its explicit cache is refused",
            shop(),
            Req::cli(&[WEB]).cache("imc-all").size(30),
            refused(
                422,
                "Invalid",
                &[
                    "spec.sizeGiB",
                    "30 GiB is smaller than cache imc-all (40 GiB)",
                    "at least 40",
                ],
            ),
        ),
        row(
            "size: a disk smaller than its automatic cache is refused",
            shop(),
            Req::cli(&[WEB, API]).size(20),
            refused(
                422,
                "Invalid",
                &[
                    "spec.sizeGiB",
                    "20 GiB is smaller than cache imc-webapi (30 GiB)",
                ],
            ),
        ),
    ]
}

// --- running a row ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selection_rule_through_the_daemon() {
    let rows = rows();
    let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "two rows share a name");

    // Rows share nothing (each has its own state root, fake and daemon), so they run side by
    // side: most of a row's time is its daemon waiting out the refused pull's retries.
    let started = Instant::now();
    let outcomes = futures_util::future::join_all(rows.iter().map(run)).await;
    let failures: Vec<String> = rows
        .iter()
        .zip(outcomes)
        .filter(|(_, problems)| !problems.is_empty())
        .map(|(row, problems)| format!("{}:\n    {}", row.name, problems.join("\n    ")))
        .collect();
    eprintln!("{} rows in {:?}", rows.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} row(s) broke:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// One row on a daemon of its own; returns what went wrong.
async fn run(row: &Row) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("state");
    // Start-up recovery marks a build left unfinished by an earlier run Failed, so caches
    // still building are recorded once the daemon runs, as its own build would record them.
    let (finished, building): (Vec<&Seed>, Vec<&Seed>) =
        row.caches.iter().partition(|c| c.phase.is_terminal());
    let seeded_before_start = open_store(&root).and_then(|store| seed(&root, &store, &finished));
    let mut snapshots = match seeded_before_start {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let sys = Arc::new(FakeSys::new());
    let config = Config {
        root: root.clone(),
        insecure_registries: vec![REGISTRY.into()],
        ..Config::default()
    };
    let d = match Daemon::start(config, sys.clone()) {
        Ok(d) => d,
        Err(e) => return vec![format!("daemon start: {e}")],
    };
    // Through the daemon's own store: it alone writes the database while it runs.
    let problems = match seed(&root, d.store(), &building) {
        Ok(more) => {
            snapshots.extend(more);
            check(&d, &sys, &root, row, &snapshots).await
        }
        Err(e) => vec![e],
    };
    d.shutdown().await;
    problems
}

/// The state database under `root`, for seeding before the daemon starts.
fn open_store(root: &Path) -> Result<Store, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    Store::open(&root.join("state.db")).map_err(|e| format!("open store: {e}"))
}

/// Records `caches` in `store` and the state root as a build leaves them: a store record and,
/// for a Ready cache, a committed snapshot (a sparse file of the cache's size with a marker
/// that gives each its own digest) holding one reference, so start-up keeps it. Returns
/// each Ready cache's snapshot digest by id.
fn seed(
    root: &Path,
    store: &Store,
    caches: &[&Seed],
) -> Result<BTreeMap<&'static str, String>, String> {
    let snapshots = SnapshotStore::new(root.join("snapshots"));
    let mut digests = BTreeMap::new();
    for cache in caches {
        let digest = match cache.phase {
            Phase::Ready => {
                let image = root.join(format!("{}.img", cache.id));
                let commit = || -> Result<String, Box<dyn std::error::Error>> {
                    let file = std::fs::File::create(&image)?;
                    file.set_len(u64::from(cache.size_gib) << 30)?;
                    file.write_all_at(cache.id.as_bytes(), 0)?;
                    drop(file);
                    let manifest = hash_file(&image)?;
                    Ok(snapshots.commit(&image, &manifest)?.digest)
                };
                let digest = commit().map_err(|e| format!("snapshot of {}: {e}", cache.id))?;
                store
                    .snapshot_ref(&digest)
                    .map_err(|e| format!("reference {digest}: {e}"))?;
                digests.insert(cache.id, digest.clone());
                Some(digest)
            }
            _ => None,
        };
        store
            .insert_cache(&cache_object(cache, digest)?)
            .map_err(|e| format!("insert {}: {e}", cache.id))?;
    }
    Ok(digests)
}

/// The stored ImageCache: the spec as the API validates it, the status as a build writes it.
fn cache_object(cache: &Seed, snapshot_digest: Option<String>) -> Result<ImageCache, String> {
    // One that holds nothing yet was still asked for something.
    let asked: Vec<&str> = if cache.holds.is_empty() {
        vec![WEB]
    } else {
        cache.holds.iter().map(|h| h.image).collect()
    };
    let yaml = format!(
        "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata: {{name: {}}}\nspec:\n  images: {}\n  imageCacheSize: {}\n",
        cache.name(),
        serde_json::to_string(&asked).expect("strings serialise"),
        cache.size_gib
    );
    let parsed: ImageCache = parse_body(yaml.as_bytes(), None).map_err(|e| e.to_string())?;
    let mut object = validate_image_cache(parsed, 20)
        .map_err(|e| format!("seed {}: {e}", cache.id))?
        .object;
    object.metadata.creation_timestamp = Some(cache.created.to_owned());
    object.status = Some(ImageCacheStatus {
        phase: cache.phase,
        progress: if cache.phase == Phase::Ready {
            "100%"
        } else {
            "0%"
        }
        .into(),
        image_cache_id: cache.id.to_owned(),
        snapshot_digest,
        start_time: Some(cache.created.to_owned()),
        last_updated_time: cache.created.to_owned(),
        expire_date_time: None,
        data_size_bytes: None,
        data_size: None,
        message: None,
        source: None,
        shared_as: None,
        images: cache
            .holds
            .iter()
            .map(|h| CachedImage {
                image: normalised(h.image),
                digest: h.digest.to_owned(),
                resolved_digest: h.index.map(str::to_owned),
                chain_ids: Vec::new(),
                size_bytes: 1,
                credentials_required: false,
            })
            .collect(),
        events: Vec::new(),
    });
    Ok(object)
}

fn normalised(image: &str) -> String {
    image
        .parse::<ImageReference>()
        .expect("test references parse")
        .to_string()
}

/// The calls that make a disk, relative to the state root: what was cloned, attached and
/// mounted.
fn disk_calls(calls: &[Call], root: &Path) -> Vec<String> {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Reflink { src, dst } => Some(format!("reflink {} -> {}", rel(src), rel(dst))),
            Call::AttachLoop { file, .. } => Some(format!("attach {}", rel(file))),
            // Disks are mounted beneath their mount root without following symlinks.
            Call::Mount {
                source,
                target,
                fstype,
                ..
            }
            | Call::MountBeneath {
                source,
                target,
                fstype,
                ..
            } => Some(format!(
                "mount {} on {} ({fstype})",
                rel(source),
                rel(target)
            )),
            _ => None,
        })
        .collect()
}

async fn cache_count(d: &Daemon) -> usize {
    match d.dispatch(Action::ListImageCaches).await {
        Ok(Reply::ImageCacheList(l)) => l.items.len(),
        other => panic!("list caches: {other:?}"),
    }
}

/// Sends the row's request and compares the answer with what the row expects.
async fn check(
    d: &Daemon,
    sys: &FakeSys,
    root: &Path,
    row: &Row,
    snapshots: &BTreeMap<&'static str, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want = |what: &str, ok: bool, detail: String| {
        if !ok {
            problems.push(format!("{what}: {detail}"));
        }
    };

    // Every seeded cache is there as seeded: the finished ones came through start-up with
    // their snapshots (recovery removes a snapshot nothing references).
    let seeded = cache_count(d).await;
    want(
        "seeded caches",
        seeded == row.caches.len(),
        format!("{seeded} listed"),
    );
    let store = SnapshotStore::new(root.join("snapshots"));
    for cache in &row.caches {
        let phase = match d.dispatch(Action::GetImageCache(cache.name().into())).await {
            Ok(Reply::ImageCache(c)) => c.status.map(|s| s.phase),
            _ => None,
        };
        want(
            "seeded cache",
            phase == Some(cache.phase),
            format!("{} is {phase:?}, seeded {:?}", cache.id, cache.phase),
        );
        if let Some(digest) = snapshots.get(cache.id) {
            let kept = store.image_path(digest).is_ok_and(|p| p.exists());
            want(
                "seeded snapshot",
                kept,
                format!("{digest} of {} is gone", cache.id),
            );
        }
    }

    let valid = match row.request.validate() {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "the API refused the request before the daemon: {e}"
            )]
        }
    };
    let requested: Vec<String> = valid.images.iter().map(|r| r.to_string()).collect();
    let calls_before = sys.calls().len();
    let answer = d.dispatch(Action::CreateDisk(Box::new(valid))).await;
    let calls = disk_calls(&sys.calls()[calls_before..], root);

    let disk = match (&row.expect, answer) {
        (Expect::Refused { code, reason, says }, Err(e)) => {
            // As the HTTP API answers it: the daemon's error mapped at the door.
            let e = ApiError::from(e);
            let status = e.to_status();
            want(
                "code",
                status.code == *code,
                format!("{} ({e})", status.code),
            );
            want("reason", status.reason == *reason, status.reason.clone());
            for part in says {
                want(
                    "message",
                    e.to_string().contains(part),
                    format!("{part:?} not in {e}"),
                );
            }
            want("calls", calls.is_empty(), format!("{calls:?}"));
            let disks = match d.dispatch(Action::ListDisks).await {
                Ok(Reply::DiskList(l)) => l.items.len(),
                other => panic!("list disks: {other:?}"),
            };
            want("disks", disks == 0, format!("{disks} recorded"));
            let caches = cache_count(d).await;
            want(
                "caches",
                caches == seeded,
                format!("{caches}, seeded {seeded}"),
            );
            return problems;
        }
        (Expect::Refused { .. }, Ok(reply)) => {
            return vec![format!("expected a refusal, got {reply:?}")];
        }
        (_, Err(e)) => {
            let e = ApiError::from(e);
            return vec![format!("refused: {} {e}", e.code())];
        }
        (_, Ok(Reply::Disk(disk))) => disk,
        (_, Ok(other)) => return vec![format!("not a Disk: {other:?}")],
    };
    let Some(status) = &disk.status else {
        return vec!["the Disk has no status".into()];
    };
    let id = &disk.metadata.name;
    let image = root.join("disks").join(format!("{id}.img"));
    let reasons: Vec<&str> = status.events.iter().map(|e| e.reason.as_str()).collect();
    let first_message = status
        .events
        .first()
        .map(|e| e.message.as_str())
        .unwrap_or("");
    let device = status.device.clone().unwrap_or_default();
    let mounted = format!("mount {device} on disks/{id}/mnt (ext4)");
    want(
        "mountpoint",
        status.mountpoint.as_deref().map(Path::new)
            == Some(&root.join("disks").join(id).join("mnt")),
        format!("{:?}", status.mountpoint),
    );

    match &row.expect {
        Expect::Clone {
            cache,
            matched,
            missing,
            says,
        } => {
            let seed = row
                .caches
                .iter()
                .find(|c| c.id == *cache)
                .expect("row names a seeded cache");
            let size_gib = row.request.size_gib.unwrap_or(seed.size_gib);
            let digest = snapshots.get(cache).cloned().unwrap_or_default();
            want(
                "cacheId",
                status.cache_id.as_deref() == Some(*cache),
                format!("{:?}", status.cache_id),
            );
            want(
                "snapshotDigest",
                status.snapshot_digest.as_deref() == Some(digest.as_str()),
                format!("{:?}, {cache} has {digest}", status.snapshot_digest),
            );
            want(
                "matchedImages",
                status.matched_images == *matched,
                format!("{:?}", status.matched_images),
            );
            want(
                "missingImages",
                status.missing_images == *missing,
                format!("{:?}", status.missing_images),
            );
            let phase = if missing.is_empty() {
                DiskPhase::Ready
            } else {
                DiskPhase::Pulling
            };
            want("phase", status.phase == phase, format!("{}", status.phase));
            want(
                "sizeGiB",
                status.size_gib == size_gib,
                format!("{}", status.size_gib),
            );
            want(
                "autoCreatedCache",
                status.auto_created_cache.is_none(),
                format!("{:?}", status.auto_created_cache),
            );
            let mut events = vec!["Cloned"];
            if !missing.is_empty() {
                events.push("PullingMissing");
            }
            want("events", reasons == events, format!("{reasons:?}"));
            want(
                "Cloned event",
                first_message.contains(cache) && first_message.contains(says.as_str()),
                format!("{says:?} not in {first_message:?}"),
            );
            if let Some(pulling) = status.events.get(1) {
                want(
                    "PullingMissing event",
                    missing.iter().all(|m| pulling.message.contains(m)),
                    pulling.message.clone(),
                );
            }
            let snapshot = store
                .image_path(&digest)
                .map(|p| p.strip_prefix(root).unwrap_or(&p).display().to_string())
                .unwrap_or_default();
            let made = vec![
                format!("reflink {snapshot} -> disks/{id}.img"),
                format!("attach disks/{id}.img"),
                mounted,
            ];
            want(
                "sys calls",
                calls == made,
                format!("{calls:#?}\n    want {made:#?}"),
            );
            // The clone is the snapshot at the cache's size: nothing grew it.
            let len = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            want(
                "disk file",
                len == u64::from(size_gib) << 30,
                format!("{len} bytes"),
            );
        }
        Expect::Cold { auto_create, says } => {
            want(
                "cacheId",
                status.cache_id.is_none(),
                format!("{:?}", status.cache_id),
            );
            want(
                "snapshotDigest",
                status.snapshot_digest.is_none(),
                format!("{:?}", status.snapshot_digest),
            );
            want(
                "matchedImages",
                status.matched_images.is_empty(),
                format!("{:?}", status.matched_images),
            );
            want(
                "missingImages",
                status.missing_images == requested,
                format!("{:?}", status.missing_images),
            );
            want(
                "phase",
                status.phase == DiskPhase::Pulling,
                format!("{}", status.phase),
            );
            want(
                "NoCacheMatched event",
                first_message.contains(says.as_str()),
                format!("{says:?} not in {first_message:?}"),
            );
            let caches = cache_count(d).await;
            if *auto_create {
                want(
                    "events",
                    reasons == ["NoCacheMatched", "AutoCreatedCache"],
                    format!("{reasons:?}"),
                );
                let name = status.auto_created_cache.clone().unwrap_or_default();
                want(
                    "autoCreatedCache",
                    name.starts_with("auto-"),
                    format!("{name:?}"),
                );
                let built = match d.dispatch(Action::GetImageCache(name.clone())).await {
                    Ok(Reply::ImageCache(c)) => c.spec.images,
                    _ => Vec::new(),
                };
                let mut images = requested.clone();
                images.sort();
                want(
                    "auto-created cache's images",
                    built == images,
                    format!("{built:?}"),
                );
                want(
                    "caches",
                    caches == seeded + 1,
                    format!("{caches}, seeded {seeded}"),
                );
            } else {
                want(
                    "events",
                    reasons == ["NoCacheMatched"],
                    format!("{reasons:?}"),
                );
                want(
                    "autoCreatedCache",
                    status.auto_created_cache.is_none(),
                    format!("{:?}", status.auto_created_cache),
                );
                want(
                    "caches",
                    caches == seeded,
                    format!("{caches}, seeded {seeded}"),
                );
            }
            let made = vec![format!("attach disks/{id}.img"), mounted];
            want(
                "sys calls (no clone)",
                calls == made,
                format!("{calls:#?}\n    want {made:#?}"),
            );
        }
        Expect::Refused { .. } => unreachable!("answered above"),
    }
    problems
}
