//! Use and space of auto-created caches: each disk cloned from one renews its expiry, and
//! together they stay within the node's budget, the least recently used deleted first. The
//! budget is `max_cache_space_gib` when set, else `max_cache_space_percent` of the size of
//! the filesystem holding the state root (so a node that never set either still keeps its
//! state root from filling up with caches built for pods).
//!
//! A Ready cache's space is its frozen data (`status.dataSizeBytes`): the blocks its snapshot
//! holds on the state root, which is what deleting it can give back (disks cloned from it
//! share those blocks and keep their snapshot reference, so while they live some of it stays).
//! Caches still building are neither counted nor deleted; Failed ones hold no snapshot.
//! The last use is `expireDateTime - retentionDays`: the creation, or the latest clone.

use time::OffsetDateTime;
use tracing::{info, warn};

use super::auto_cache::{Note, DECIDING};
use crate::daemon::build::is_auto_created;
use crate::daemon::events::WARNING;
use crate::daemon::owner::Owner;
use crate::daemon::{clock, handlers, record, Daemon};
use crate::objects::{ImageCache, Phase};

/// A disk was just cloned from the cache `cache_id`: if the daemon created that cache, its
/// expiry moves to now + its retentionDays.
pub(super) fn renew(d: &Daemon, cache_id: &str) {
    let caches = match d.inner.store.list_caches() {
        Ok(caches) => caches,
        Err(e) => {
            warn!(cache = %cache_id, error = %e, "could not read the caches to renew the expiry of the one a disk was cloned from");
            return;
        }
    };
    let Some(cache) = caches.into_iter().find(|c| {
        c.status.as_ref().map(|s| s.image_cache_id.as_str()) == Some(cache_id)
            && is_auto_created(&c.metadata.annotations)
    }) else {
        return;
    };
    let Some(days) = cache.spec.retention_days else {
        return;
    };
    let expire = clock::format(clock::now() + time::Duration::days(i64::from(days)));
    let written = d.inner.store.update_cache(&cache.metadata.name, |c| {
        if let Some(s) = c.status.as_mut() {
            if s.phase == Phase::Ready {
                s.expire_date_time = Some(expire);
            }
        }
    });
    record::or_log(
        d,
        written,
        &Owner::Cache(cache.metadata.name.clone()),
        "the renewed expiry",
    );
}

/// An auto-created Ready cache as the budget sees it.
struct Held {
    name: String,
    id: String,
    bytes: u64,
    last_used: OffsetDateTime,
}

fn held(c: &ImageCache) -> Option<Held> {
    let s = c.status.as_ref()?;
    if s.phase != Phase::Ready || !is_auto_created(&c.metadata.annotations) {
        return None;
    }
    let created = c
        .metadata
        .creation_timestamp
        .as_deref()
        .and_then(clock::parse)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let last_used = match (
        s.expire_date_time.as_deref().and_then(clock::parse),
        c.spec.retention_days,
    ) {
        (Some(expire), Some(days)) => expire - time::Duration::days(i64::from(days)),
        _ => created,
    };
    Some(Held {
        name: c.metadata.name.clone(),
        id: s.image_cache_id.clone(),
        bytes: s.data_size_bytes.unwrap_or(0),
        last_used,
    })
}

/// The caches to delete, least recently used first, until what is left fits in `budget`
/// bytes; `keep` (a cache id) is never chosen.
fn choose(mut auto: Vec<Held>, budget: u64, keep: Option<&str>) -> Vec<Held> {
    let mut total: u64 = auto.iter().map(|h| h.bytes).sum();
    auto.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut chosen = Vec::new();
    for h in auto {
        if total <= budget {
            break;
        }
        if keep == Some(h.id.as_str()) {
            continue;
        }
        total -= h.bytes;
        chosen.push(h);
    }
    chosen
}

/// The bytes auto-created caches may hold, and the words that say where that comes from.
struct Budget {
    bytes: u64,
    source: String,
}

/// `max_cache_space_gib` when set; else the share of the state root's filesystem, measured
/// now (a grown backing image or a resized volume counts at once). `None` when the filesystem
/// cannot be measured: nothing is deleted on a guess.
fn budget(d: &Daemon) -> Option<Budget> {
    let config = &d.inner.config;
    if let Some(gib) = config.max_cache_space_gib {
        return Some(Budget {
            bytes: (gib * f64::from(1u32 << 30)) as u64,
            source: format!("max_cache_space_gib = {gib}"),
        });
    }
    let percent = config.max_cache_space_percent;
    match d.inner.sys.fs_space(&config.root) {
        Ok(space) => Some(Budget {
            bytes: share(space.total, percent),
            source: format!(
                "max_cache_space_percent = {percent} of the state root's {} filesystem; max_cache_space_gib sets another size",
                clock::human_bytes(space.total),
            ),
        }),
        Err(e) => {
            warn!(error = %e, "cannot measure the state root's filesystem: auto-created caches are not kept within max_cache_space_percent this time");
            None
        }
    }
}

/// `percent` of `total`, rounded down, without overflowing for any filesystem size.
fn share(total: u64, percent: u32) -> u64 {
    (u128::from(total) * u128::from(percent) / 100) as u64
}

/// Deletes least recently used auto-created Ready caches until those left fit in the budget
/// (`budget`); `keep` (the cache a disk was just cloned from) is never chosen. Each deletion
/// is logged and returned as a note for the disk that triggered it.
pub(crate) async fn enforce(d: &Daemon, keep: Option<&str>) -> Vec<Note> {
    let Some(Budget {
        bytes: budget,
        source,
    }) = budget(d)
    else {
        return Vec::new();
    };
    let _deciding = DECIDING.lock().await;
    let Ok(caches) = d.inner.store.list_caches() else {
        return Vec::new();
    };
    let auto: Vec<Held> = caches.iter().filter_map(held).collect();
    let mut total: u64 = auto.iter().map(|h| h.bytes).sum();
    let mut notes = Vec::new();
    for h in choose(auto, budget, keep) {
        let message = format!(
            "Deleted auto-created image cache {} ({} of frozen data, last used {}): auto-created caches held {}, over {} ({source}); disks cloned from it keep their data",
            h.name,
            clock::human_bytes(h.bytes),
            clock::format(h.last_used),
            clock::human_bytes(total),
            clock::human_bytes(budget),
        );
        match handlers::delete_cache(d, &h.name).await {
            Ok(_) => {
                total -= h.bytes;
                info!(cache = %h.name, bytes = h.bytes, "{message}");
                notes.push(Note {
                    type_: WARNING,
                    reason: "AutoCacheEvicted",
                    message,
                });
            }
            Err(e) => {
                warn!(cache = %h.name, error = %e, budget = %source, "could not delete an auto-created cache over the budget of auto-created caches")
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::objects::{ImageCacheSpec, ImageCacheStatus, ObjectMeta};
    use crate::sys::{FakeSys, FsSpace};

    fn cache(name: &str, auto: bool, phase: Phase, expire: &str, bytes: u64) -> ImageCache {
        let annotations = match auto {
            true => BTreeMap::from([(
                crate::daemon::build::AUTO_CREATED_ANNOTATION.to_owned(),
                "true".to_owned(),
            )]),
            false => BTreeMap::new(),
        };
        ImageCache {
            api_version: "imagecache.io/v1".into(),
            kind: "ImageCache".into(),
            metadata: ObjectMeta {
                name: name.into(),
                annotations,
                creation_timestamp: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            },
            spec: ImageCacheSpec {
                images: vec!["a".into()],
                image_pull_secrets: Vec::new(),
                image_cache_size: Some(20),
                retention_days: Some(7),
            },
            status: Some(ImageCacheStatus {
                phase,
                progress: "100%".into(),
                image_cache_id: format!("imc-{name}"),
                snapshot_digest: None,
                start_time: None,
                last_updated_time: String::new(),
                expire_date_time: Some(expire.into()),
                data_size_bytes: Some(bytes),
                data_size: None,
                message: None,
                source: None,
                shared_as: None,
                images: Vec::new(),
                events: Vec::new(),
            }),
        }
    }

    fn names(chosen: &[Held]) -> Vec<&str> {
        chosen.iter().map(|h| h.name.as_str()).collect()
    }

    fn daemon_on(dir: &tempfile::TempDir, total: u64, config: Config) -> Daemon {
        let sys = FakeSys::new();
        sys.set_fs_space(FsSpace {
            total,
            available: total / 3,
        });
        let config = Config {
            root: dir.path().join("state"),
            ..config
        };
        Daemon::start(config, Arc::new(sys)).unwrap()
    }

    #[test]
    fn without_max_cache_space_gib_the_budget_is_half_the_state_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon_on(&dir, 1000 << 20, Config::default());
        let b = budget(&d).expect("the fake filesystem is measured");
        assert_eq!(b.bytes, 500 << 20);
        assert!(
            b.source.contains("max_cache_space_percent = 50")
                && b.source.contains("1000.0 MiB")
                && b.source.contains("max_cache_space_gib"),
            "{}",
            b.source
        );
        let dir = tempfile::tempdir().unwrap();
        let quarter = Config {
            max_cache_space_percent: 25,
            ..Config::default()
        };
        assert_eq!(budget(&daemon_on(&dir, 1000, quarter)).unwrap().bytes, 250);
    }

    #[test]
    fn an_explicit_max_cache_space_gib_wins_over_the_share() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            max_cache_space_gib: Some(1.5),
            max_cache_space_percent: 10,
            ..Config::default()
        };
        let b = budget(&daemon_on(&dir, 1 << 40, config)).unwrap();
        assert_eq!(b.bytes, 3 << 29);
        assert_eq!(b.source, "max_cache_space_gib = 1.5");
    }

    #[test]
    fn a_percentage_share_never_overflows_and_rounds_down() {
        assert_eq!(share(1000, 50), 500);
        assert_eq!(share(999, 50), 499);
        assert_eq!(share(u64::MAX, 100), u64::MAX);
        assert_eq!(share(u64::MAX, 1), u64::MAX / 100);
    }

    #[test]
    fn least_recently_used_auto_created_ready_caches_go_until_the_rest_fit() {
        let caches = [
            cache("new", true, Phase::Ready, "2026-01-20T00:00:00Z", 300),
            cache("old", true, Phase::Ready, "2026-01-10T00:00:00Z", 100),
            cache("mid", true, Phase::Ready, "2026-01-15T00:00:00Z", 200),
            cache("users", false, Phase::Ready, "2026-01-01T00:00:00Z", 1000),
            cache("building", true, Phase::Pulling, "2026-01-01T00:00:00Z", 0),
        ];
        let all = || caches.iter().filter_map(held).collect::<Vec<_>>();
        let listed = all();
        assert_eq!(
            names(&listed),
            ["new", "old", "mid"],
            "only auto-created Ready ones"
        );
        // Last use is expiry minus retentionDays.
        assert_eq!(clock::format(listed[1].last_used), "2026-01-03T00:00:00Z");
        assert!(choose(all(), 600, None).is_empty(), "within the budget");
        assert_eq!(names(&choose(all(), 500, None)), ["old"]);
        assert_eq!(names(&choose(all(), 350, None)), ["old", "mid"]);
        assert_eq!(names(&choose(all(), 0, None)), ["old", "mid", "new"]);
        // The cache a disk was just cloned from stays, whatever it costs.
        assert_eq!(names(&choose(all(), 350, Some("imc-old"))), ["mid", "new"]);
    }
}
