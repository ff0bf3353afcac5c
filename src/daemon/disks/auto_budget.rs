//! Use and space of auto-created caches: each disk cloned from one renews its expiry, and
//! together they stay within `max_cache_space_gib`, the least recently used deleted first.
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
use crate::daemon::{clock, handlers, record, Daemon};
use crate::objects::{ImageCache, Phase};

/// A disk was just cloned from the cache `cache_id`: if the daemon created that cache, its
/// expiry moves to now + its retentionDays.
pub(super) fn renew(d: &Daemon, cache_id: &str) {
    let Ok(caches) = d.inner.store.list_caches() else {
        return;
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
    record::or_log(written, &cache.metadata.name, "the renewed expiry");
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

/// Deletes least recently used auto-created Ready caches until those left fit in
/// `max_cache_space_gib`; `keep` (the cache a disk was just cloned from) is never chosen.
/// Each deletion is logged and returned as a note for the disk that triggered it.
pub(crate) async fn enforce(d: &Daemon, keep: Option<&str>) -> Vec<Note> {
    let Some(budget_gib) = d.inner.config.max_cache_space_gib else {
        return Vec::new();
    };
    let budget = (budget_gib * f64::from(1u32 << 30)) as u64;
    let _deciding = DECIDING.lock().await;
    let Ok(caches) = d.inner.store.list_caches() else {
        return Vec::new();
    };
    let mut auto: Vec<Held> = caches.iter().filter_map(held).collect();
    let mut total: u64 = auto.iter().map(|h| h.bytes).sum();
    auto.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut notes = Vec::new();
    for h in auto {
        if total <= budget {
            break;
        }
        if keep == Some(h.id.as_str()) {
            continue;
        }
        let message = format!(
            "Deleted auto-created image cache {} ({} of frozen data, last used {}): auto-created caches held {}, over max_cache_space_gib = {budget_gib}; disks cloned from it keep their data",
            h.name,
            clock::human_bytes(h.bytes),
            clock::format(h.last_used),
            clock::human_bytes(total)
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
                warn!(cache = %h.name, error = %e, "could not delete an auto-created cache over max_cache_space_gib")
            }
        }
    }
    notes
}
