//! Store writes nobody waits on: events, progress, the outcome of work running in the
//! background. A failure there cannot be answered to a caller, and a lost state change is a
//! bug, so it is logged where an operator looks, counted in the metrics, and shown on the
//! object itself: until the daemon restarts, every answer that carries the object has a
//! Warning `NotRecorded` event saying what the stored status lacks.

use std::collections::HashMap;
use std::sync::Mutex;

use tracing::{debug, error};

use super::events::{self, WARNING};
use super::owner::Owner;
use super::{clock, Daemon, Reply};
use crate::objects::Event;
use crate::store::StoreError;

/// The event's reason, as `kubectl describe` would show it.
pub const NOT_RECORDED: &str = "NotRecorded";

/// Events of writes that failed, by object; kept in memory only, since the store is what
/// failed.
#[derive(Debug, Default)]
pub struct Unrecorded {
    by_owner: Mutex<HashMap<Owner, Vec<Event>>>,
}

impl Unrecorded {
    fn note(&self, owner: &Owner, message: String) {
        let now = clock::now_string();
        let mut map = self.by_owner.lock().unwrap_or_else(|p| p.into_inner());
        events::record(
            map.entry(owner.clone()).or_default(),
            WARNING,
            NOT_RECORDED,
            message,
            &now,
        );
    }

    /// Forgets an object that is gone (deleted), so a new one of the same name starts clean.
    pub fn forget(&self, owner: &Owner) {
        let mut map = self.by_owner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(owner);
    }

    /// Adds the failed writes' events to the objects `reply` carries.
    pub fn show(&self, reply: &mut Reply) {
        let map = self.by_owner.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return;
        }
        let cache = |c: &mut crate::objects::ImageCache| {
            let key = Owner::Cache(c.metadata.name.clone());
            if let (Some(s), Some(extra)) = (c.status.as_mut(), map.get(&key)) {
                s.events.extend(extra.iter().cloned());
            }
        };
        let disk = |d: &mut crate::objects::Disk| {
            let key = Owner::Disk(d.metadata.name.clone());
            if let (Some(s), Some(extra)) = (d.status.as_mut(), map.get(&key)) {
                s.events.extend(extra.iter().cloned());
            }
        };
        match reply {
            Reply::ImageCache(c) => cache(c),
            Reply::ImageCacheList(l) => l.items.iter_mut().for_each(cache),
            Reply::Disk(d) | Reply::ExistingDisk(d) => disk(d),
            Reply::DiskList(l) => l.items.iter_mut().for_each(disk),
            Reply::Deleted(_) | Reply::Verify(_) | Reply::Info(_) | Reply::Snapshot(_) => {}
        }
    }
}

/// Logs, counts and notes on `owner` a failed write of `what`. An object deleted meanwhile
/// has no state left to keep, so that is only a debug line.
pub fn or_log<T>(d: &Daemon, result: Result<T, StoreError>, owner: &Owner, what: &str) {
    match result {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => {
            debug!(object = ?owner, what, "not recorded: the object is gone")
        }
        Err(e) => {
            error!(object = ?owner, what, error = %e, "could not record a state change: the stored status is behind what happened");
            d.metrics().error("store_write");
            d.unrecorded().note(
                owner,
                format!(
                    "could not record {what} in the state database ({e}): the stored status is \
                     behind what happened until the daemon restarts and recovers; see the \
                     daemon's log and check the state root's filesystem"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::daemon::Action;
    use crate::objects::{ImageCache, ImageCacheSpec, ImageCacheStatus, ObjectMeta, Phase};
    use crate::sys::FakeSys;

    fn daemon(dir: &tempfile::TempDir) -> Daemon {
        let config = Config {
            root: dir.path().join("state"),
            ..Config::default()
        };
        Daemon::start(config, Arc::new(FakeSys::new())).unwrap()
    }

    fn cache(name: &str) -> ImageCache {
        ImageCache {
            api_version: "imagecache.io/v1".into(),
            kind: "ImageCache".into(),
            metadata: ObjectMeta {
                name: name.into(),
                creation_timestamp: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            },
            spec: ImageCacheSpec {
                images: vec!["a".into()],
                image_pull_secrets: Vec::new(),
                image_cache_size: Some(20),
                retention_days: None,
            },
            status: Some(ImageCacheStatus {
                phase: Phase::Pulling,
                progress: "40%".into(),
                image_cache_id: format!("imc-{name}"),
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
        }
    }

    fn events_of(reply: Reply) -> Vec<Event> {
        match reply {
            Reply::ImageCache(c) => c.status.unwrap().events,
            Reply::ImageCacheList(l) => l
                .items
                .into_iter()
                .flat_map(|c| c.status.unwrap().events)
                .collect(),
            other => panic!("not a cache: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_write_shows_on_the_object_until_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(&dir);
        d.inner.store.insert_cache(&cache("web")).unwrap();
        d.inner.store.insert_cache(&cache("other")).unwrap();
        let owner = Owner::Cache("web".into());
        let failed: Result<(), _> = Err(StoreError::Corrupt("database or disk is full".into()));
        or_log(&d, failed, &owner, "the build's failure");

        let shown = events_of(
            d.dispatch(Action::GetImageCache("web".into()))
                .await
                .unwrap(),
        );
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(
            (shown[0].type_.as_str(), shown[0].reason.as_str()),
            (WARNING, NOT_RECORDED)
        );
        assert!(
            shown[0]
                .message
                .contains("could not record the build's failure")
                && shown[0].message.contains("database or disk is full"),
            "{}",
            shown[0].message
        );
        // The list shows it on that cache only.
        let listed = events_of(d.dispatch(Action::ListImageCaches).await.unwrap());
        assert_eq!(listed, shown);
        assert!(d.metrics_text().contains(r#"kind="store_write""#));

        d.dispatch(Action::DeleteImageCache("web".into()))
            .await
            .unwrap();
        d.inner.store.insert_cache(&cache("web")).unwrap();
        let again = events_of(
            d.dispatch(Action::GetImageCache("web".into()))
                .await
                .unwrap(),
        );
        assert!(
            again.is_empty(),
            "a new cache of the name starts clean: {again:?}"
        );
    }

    #[tokio::test]
    async fn a_write_to_an_object_already_gone_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(&dir);
        d.inner.store.insert_cache(&cache("web")).unwrap();
        let gone: Result<(), _> = Err(StoreError::NotFound("web".into()));
        or_log(&d, gone, &Owner::Cache("web".into()), "progress");
        let shown = events_of(
            d.dispatch(Action::GetImageCache("web".into()))
                .await
                .unwrap(),
        );
        assert!(shown.is_empty(), "{shown:?}");
        assert!(!d.metrics_text().contains(r#"kind="store_write""#));
    }
}
