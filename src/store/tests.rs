use super::*;
use crate::objects::{ImageCacheSpec, ImageCacheStatus, ObjectMeta};

fn cache(name: &str, id: &str) -> ImageCache {
    ImageCache {
        api_version: crate::objects::API_VERSION.into(),
        kind: "ImageCache".into(),
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: ImageCacheSpec {
            images: vec!["docker.io/library/nginx:latest".into()],
            ..Default::default()
        },
        status: Some(ImageCacheStatus {
            phase: Phase::Pending,
            progress: "0%".into(),
            image_cache_id: id.into(),
            snapshot_digest: None,
            start_time: None,
            last_updated_time: "2026-01-01T00:00:00Z".into(),
            expire_date_time: None,
            data_size_bytes: None,
            data_size: None,
            message: None,
            images: vec![],
            events: vec![],
        }),
    }
}

#[test]
fn caches_round_trip_in_creation_order_and_names_are_unique() {
    let s = Store::open_in_memory().unwrap();
    s.insert_cache(&cache("b", "imc-1")).unwrap();
    s.insert_cache(&cache("a", "imc-2")).unwrap();
    assert!(matches!(
        s.insert_cache(&cache("a", "imc-3")),
        Err(StoreError::AlreadyExists(_))
    ));
    let names: Vec<_> = s
        .list_caches()
        .unwrap()
        .into_iter()
        .map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, vec!["b", "a"]);
    assert_eq!(s.cache_by_id("imc-2").unwrap().unwrap().metadata.name, "a");
    let updated = s
        .update_cache("a", |c| c.status.as_mut().unwrap().phase = Phase::Ready)
        .unwrap();
    assert_eq!(updated.status.unwrap().phase, Phase::Ready);
    assert_eq!(
        s.get_cache("a").unwrap().unwrap().status.unwrap().phase,
        Phase::Ready
    );
    assert!(s.delete_cache("a").unwrap());
    assert!(!s.delete_cache("a").unwrap());
    assert!(matches!(
        s.update_cache("a", |_| {}),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn snapshot_references_count_up_and_down() {
    let s = Store::open_in_memory().unwrap();
    assert_eq!(s.snapshot_ref("sha256:x").unwrap(), 1);
    assert_eq!(s.snapshot_ref("sha256:x").unwrap(), 2);
    assert_eq!(s.snapshot_unref("sha256:x").unwrap(), 1);
    assert_eq!(s.snapshot_unref("sha256:x").unwrap(), 0);
    assert_eq!(s.snapshot_unref("sha256:x").unwrap(), 0);
    s.forget_snapshot("sha256:x").unwrap();
    assert_eq!(s.snapshot_refs("sha256:x").unwrap(), 0);
}

#[test]
fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.insert_cache(&cache("a", "imc-1")).unwrap();
        s.insert_build(&BuildRecord {
            id: "b1".into(),
            cache_name: "a".into(),
            work_dir: "/w".into(),
        })
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.list_caches().unwrap().len(), 1);
    assert_eq!(s.list_builds().unwrap()[0].id, "b1");
    s.delete_build("b1").unwrap();
    assert!(s.list_builds().unwrap().is_empty());
}
