//! Retention: a cache past its expiry is deleted by the GC pass; one that is not, is kept.
//! Runs the daemon in-process on the recording `Sys` fake: no loop device is needed.

use std::sync::Arc;

use imagecache::api::validate::validate_image_cache;
use imagecache::api::{ImageCache, Phase};
use imagecache::config::Config;
use imagecache::daemon::{clock, gc, Action, Daemon, Reply};
use imagecache::sys::FakeSys;

fn cache(name: &str, retention: Option<u32>) -> ImageCache {
    // Port 1 on loopback refuses at once: the build fails fast and the cache is Failed.
    let yaml = format!(
        "apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata: {{name: {name}}}\nspec:\n  images: [\"127.0.0.1:1/none/img:v1\"]\n{}",
        retention.map(|d| format!("  retentionDays: {d}\n")).unwrap_or_default()
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

async fn phase(d: &Daemon, name: &str) -> Option<Phase> {
    match d.dispatch(Action::GetImageCache(name.into())).await {
        Ok(Reply::ImageCache(c)) => c.status.map(|s| s.phase),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_caches_are_collected_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().join("state"),
        insecure_registries: vec!["127.0.0.1:1".into()],
        ..Config::default()
    };
    let d = Daemon::start(config, Arc::new(FakeSys::new())).unwrap();
    for (name, days) in [("short", Some(1)), ("forever", None)] {
        let valid = validate_image_cache(cache(name, days), 20).unwrap();
        d.dispatch(Action::CreateImageCache(Box::new(valid)))
            .await
            .unwrap();
    }
    for name in ["short", "forever"] {
        for _ in 0..200 {
            if phase(&d, name).await == Some(Phase::Failed) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            phase(&d, name).await,
            Some(Phase::Failed),
            "{name} fails: its registry refuses"
        );
    }
    // Nothing has expired yet.
    assert!(gc::collect(&d, clock::now()).await.is_empty());
    // A day and a bit later, both failed caches are past their 24 h.
    let later = clock::now() + time::Duration::hours(25);
    let mut collected = gc::collect(&d, later).await;
    collected.sort();
    assert_eq!(collected, vec!["forever", "short"]);
    assert_eq!(phase(&d, "short").await, None);
    d.shutdown().await;
}
