//! Retention of Ready caches, on the daemon in-process with the real `Sys` (loop devices,
//! ext4, reflinks on a scratch XFS) and a real registry; `gc::collect` is handed a time days
//! ahead, as the periodic pass would see it then:
//! - a Ready cache past its `retentionDays` is deleted, one without `retentionDays` survives;
//! - a disk cloned from the deleted cache keeps working: mounted, its image readable, writable,
//!   its snapshot kept until the disk goes;
//! - an auto-created cache gets `auto_cache_retention_days`, and a disk cloned from it renews
//!   its expiry.

mod support;

use std::sync::Arc;
use std::time::Duration;

use imagecache::api::validate::validate_image_cache;
use imagecache::api::validate_disk::{parse_disk_request, validate_disk};
use imagecache::api::{Disk, DiskPhase, ImageCache, Phase};
use imagecache::config::Config;
use imagecache::daemon::{clock, gc, Action, Daemon, Reply};
use imagecache::sys::LinuxSys;
use support::gen::features::feature_set;
use support::oci::push;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

async fn create_cache(d: &Daemon, name: &str, image: &str, retention: Option<u32>) {
    let yaml = format!(
        "apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata: {{name: {name}}}\nspec:\n  images: [{image:?}]\n{}",
        retention.map(|d| format!("  retentionDays: {d}\n")).unwrap_or_default()
    );
    let object: ImageCache = serde_saphyr::from_str(&yaml).unwrap();
    let valid = validate_image_cache(object, 20).unwrap();
    d.dispatch(Action::CreateImageCache(Box::new(valid)))
        .await
        .unwrap();
}

async fn get_cache(d: &Daemon, name: &str) -> Option<ImageCache> {
    match d.dispatch(Action::GetImageCache(name.into())).await {
        Ok(Reply::ImageCache(c)) => Some(*c),
        _ => None,
    }
}

async fn wait_terminal(d: &Daemon, name: &str) -> ImageCache {
    for _ in 0..3000 {
        let c = get_cache(d, name).await.expect("the cache exists");
        if c.status.as_ref().unwrap().phase.is_terminal() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cache {name} did not finish its build within 60 s");
}

async fn create_disk(d: &Daemon, images: &[&str]) -> Disk {
    let body = serde_json::json!({
        "apiVersion": "imagecache.io/v1",
        "kind": "Disk",
        "spec": {"images": images},
    });
    let valid = validate_disk(parse_disk_request(body).unwrap()).unwrap();
    match d.dispatch(Action::CreateDisk(Box::new(valid))).await {
        Ok(Reply::Disk(disk)) => *disk,
        other => panic!("disk create: {other:?}"),
    }
}

async fn get_disk(d: &Daemon, id: &str) -> Disk {
    match d.dispatch(Action::GetDisk(id.into())).await {
        Ok(Reply::Disk(disk)) => *disk,
        other => panic!("disk get {id}: {other:?}"),
    }
}

fn expiry(c: &ImageCache) -> time::OffsetDateTime {
    let s = c.status.as_ref().unwrap();
    clock::parse(s.expire_date_time.as_deref().expect("an expiry")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_caches_expire_by_retention_and_their_disks_keep_working() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(11);
    let refs = set.push_all(&addr, None);
    // Alpha's content under a name no cache holds, for the auto-created cache.
    let delta = format!("{addr}/features/delta:v1");
    push(
        &addr,
        "features/delta",
        "v1",
        &set.get("alpha").artifact,
        None,
    );
    let root = scratch.path().join("state");
    let config = Config {
        root: root.clone(),
        insecure_registries: vec![addr.clone()],
        snapshotter_socket: "".into(),
        auto_cache_retention_days: 2,
        ..Config::default()
    };
    let d = Daemon::start(config, Arc::new(LinuxSys)).unwrap();

    create_cache(&d, "short", &refs[0], Some(1)).await;
    create_cache(&d, "forever", &refs[1], None).await;
    let short = wait_terminal(&d, "short").await;
    let forever = wait_terminal(&d, "forever").await;
    for c in [&short, &forever] {
        assert_eq!(c.status.as_ref().unwrap().phase, Phase::Ready, "{c:#?}");
    }
    assert!(forever.status.as_ref().unwrap().expire_date_time.is_none());
    let short_digest = short
        .status
        .as_ref()
        .unwrap()
        .snapshot_digest
        .clone()
        .unwrap();

    // A disk cloned from the cache that will expire, with data of its own.
    let disk = create_disk(&d, &[&refs[0]]).await;
    let s = disk.status.as_ref().unwrap();
    assert_eq!(s.phase, DiskPhase::Ready, "{disk:#?}");
    assert_eq!(
        s.cache_id.as_deref(),
        Some(short.status.as_ref().unwrap().image_cache_id.as_str())
    );
    let mnt = std::path::PathBuf::from(s.mountpoint.clone().unwrap());
    let index_before = std::fs::read(mnt.join("index.json")).unwrap();
    std::fs::write(mnt.join("before.txt"), b"written before the cache expired").unwrap();

    // Nothing has expired yet; a day and an hour later "short" has, "forever" never does.
    assert!(gc::collect(&d, clock::now()).await.is_empty());
    let later = clock::now() + time::Duration::hours(25);
    assert_eq!(gc::collect(&d, later).await, vec!["short".to_owned()]);
    assert!(get_cache(&d, "short").await.is_none());
    let kept = get_cache(&d, "forever")
        .await
        .expect("no retentionDays: kept");
    assert_eq!(kept.status.as_ref().unwrap().phase, Phase::Ready);
    let far = clock::now() + time::Duration::days(3650);
    assert!(gc::collect(&d, far).await.is_empty());
    assert!(get_cache(&d, "forever").await.is_some());

    // The disk of the deleted cache: still Ready and mounted, its image and data readable,
    // writable, and the snapshot it was cloned from kept for it.
    let again = get_disk(&d, &disk.metadata.name).await;
    assert_eq!(again.status.as_ref().unwrap().phase, DiskPhase::Ready);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(mnt.to_str().unwrap()),
        "{} is not mounted",
        mnt.display()
    );
    assert_eq!(std::fs::read(mnt.join("index.json")).unwrap(), index_before);
    assert_eq!(
        std::fs::read(mnt.join("before.txt")).unwrap(),
        b"written before the cache expired"
    );
    let big = vec![0x5au8; 8 << 20];
    std::fs::write(mnt.join("after.bin"), &big).unwrap();
    std::fs::File::open(mnt.join("after.bin"))
        .and_then(|f| f.sync_all())
        .unwrap();
    assert_eq!(std::fs::read(mnt.join("after.bin")).unwrap(), big);
    let snapshot_dir = root.join("snapshots").join(short_digest.replace(':', "/"));
    assert!(snapshot_dir.exists(), "the disk holds {short_digest}");
    d.dispatch(Action::DeleteDisk(disk.metadata.name.clone()))
        .await
        .unwrap();
    assert!(
        !snapshot_dir.exists(),
        "the snapshot goes with its last disk"
    );

    // An auto-created cache expires auto_cache_retention_days after its last use.
    let cold = create_disk(&d, &[&delta]).await;
    let auto = cold
        .status
        .as_ref()
        .unwrap()
        .auto_created_cache
        .clone()
        .expect("an auto-created cache");
    let built = wait_terminal(&d, &auto).await;
    assert_eq!(
        built.status.as_ref().unwrap().phase,
        Phase::Ready,
        "{built:#?}"
    );
    assert_eq!(built.spec.retention_days, Some(2), "{built:#?}");
    let first_expiry = expiry(&built);
    // Whole seconds: wait for the next one so a renewal shows.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let warm = create_disk(&d, &[&delta]).await;
    assert_eq!(
        warm.status.as_ref().unwrap().cache_id.as_deref(),
        Some(built.status.as_ref().unwrap().image_cache_id.as_str()),
        "{warm:#?}"
    );
    let renewed = expiry(&get_cache(&d, &auto).await.unwrap());
    assert!(renewed > first_expiry, "{renewed} after {first_expiry}");
    let now = clock::now();
    assert!(renewed >= now + time::Duration::days(2) - time::Duration::seconds(5));
    // Past the first expiry but not the renewed one: kept; past the renewed one: gone.
    let between = first_expiry + time::Duration::milliseconds(500);
    if between < renewed {
        assert!(!gc::collect(&d, between).await.contains(&auto));
    }
    assert_eq!(
        gc::collect(&d, renewed + time::Duration::seconds(1)).await,
        vec![auto.clone()]
    );
    for disk in [cold, warm] {
        d.dispatch(Action::DeleteDisk(disk.metadata.name.clone()))
            .await
            .unwrap();
    }
    d.dispatch(Action::DeleteImageCache("forever".into()))
        .await
        .unwrap();
    d.shutdown().await;
    assert_no_leaks(&root);
}
