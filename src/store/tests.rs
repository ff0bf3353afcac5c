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
            source: None,
            shared_as: None,
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

fn disk(id: &str) -> crate::objects::Disk {
    serde_json::from_value(serde_json::json!({
        "apiVersion": crate::objects::API_VERSION, "kind": "Disk",
        "metadata": {"name": id},
        "spec": {"images": ["docker.io/library/nginx:latest"]},
        "status": {
            "phase": "Ready", "matchedImages": [], "missingImages": [], "pulledImages": [],
            "sizeGiB": 1, "creationTime": "2026-01-01T00:00:00Z",
            "timings": {"cloneMs": 0.0, "growMs": 0.0, "attachMs": 0.0, "mountMs": 0.0, "pullMs": 0.0}
        }
    }))
    .unwrap()
}

fn phase_of(d: &crate::objects::Disk) -> crate::objects::DiskPhase {
    d.status.as_ref().unwrap().phase
}

#[test]
fn reads_see_every_committed_write_and_a_reopened_file_reads_the_same() {
    use crate::objects::DiskPhase;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (caches, disks) = {
        let s = Store::open(&path).unwrap();
        for name in ["c", "a", "b"] {
            s.insert_cache(&cache(name, &format!("imc-{name}")))
                .unwrap();
        }
        for id in ["d2", "d1", "d3"] {
            s.insert_disk(&disk(id), &[1; 32]).unwrap();
        }
        s.update_cache("a", |c| c.status.as_mut().unwrap().phase = Phase::Ready)
            .unwrap();
        s.update_disk("d1", |d| {
            d.status.as_mut().unwrap().phase = DiskPhase::Failed
        })
        .unwrap();
        assert!(s.delete_cache("c").unwrap());
        assert!(s.delete_disk("d3").unwrap());
        // A failed insert changes nothing that reads see.
        assert!(s.insert_cache(&cache("a", "imc-other")).is_err());
        assert!(s.insert_disk(&disk("d2"), &[2; 32]).is_err());
        assert_eq!(s.get_cache("c").unwrap(), None);
        assert_eq!(s.get_disk("d3").unwrap(), None);
        assert_eq!(
            phase_of(&s.get_disk("d1").unwrap().unwrap()),
            DiskPhase::Failed
        );
        assert_eq!(
            s.cache_by_id("imc-a")
                .unwrap()
                .unwrap()
                .status
                .unwrap()
                .phase,
            Phase::Ready
        );
        (s.list_caches().unwrap(), s.list_disks().unwrap())
    };
    let names = |c: &[ImageCache]| {
        c.iter()
            .map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&caches), ["a", "b"]);
    let ids: Vec<_> = disks.iter().map(|d| d.metadata.name.as_str()).collect();
    assert_eq!(ids, ["d2", "d1"]);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.list_caches().unwrap(), caches);
    assert_eq!(s.list_disks().unwrap(), disks);
    assert_eq!(s.disks_in_phase(DiskPhase::Failed).unwrap().len(), 1);
}

#[test]
fn a_stored_record_that_does_not_parse_is_reported_by_the_reads_that_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.insert_disk(&disk("good"), &[1; 32]).unwrap();
        s.insert_disk(&disk("bad"), &[1; 32]).unwrap();
    }
    let corrupt = |table: &str, key: &str, name: &str| {
        Connection::open(&path)
            .unwrap()
            .execute(
                &format!("UPDATE {table} SET object = '{{\"kind\":' WHERE {key} = ?1"),
                [name],
            )
            .unwrap();
    };
    corrupt("disks", "id", "bad");
    let s = Store::open(&path).unwrap();
    assert!(s.get_disk("good").unwrap().is_some());
    let err = s.get_disk("bad").unwrap_err().to_string();
    assert!(
        err.contains("does not parse") && err.contains("Disk"),
        "{err}"
    );
    assert!(matches!(s.list_disks(), Err(StoreError::Corrupt(_))));
    // Deleting the record, as the error advises, mends the list.
    assert!(s.delete_disk("bad").unwrap());
    assert_eq!(s.list_disks().unwrap().len(), 1);
    s.insert_cache(&cache("c", "imc-1")).unwrap();
    drop(s);
    // A cache that does not parse stops the open itself (its layers index the snapshotter).
    corrupt("caches", "name", "c");
    let err = Store::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("does not parse") && err.contains("ImageCache"),
        "{err}"
    );
}

#[test]
fn a_disks_bind_digest_is_kept_across_a_reopen_and_goes_with_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.insert_disk(&disk("d1"), &[7; 32]).unwrap();
        s.insert_disk(&disk("d2"), &[8; 32]).unwrap();
        // A second insert of the same disk changes neither its object nor its digest.
        assert!(s.insert_disk(&disk("d1"), &[9; 32]).is_err());
        assert_eq!(s.disk_bind_sha256("d1").unwrap(), Some([7; 32]));
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.disk_bind_sha256("d1").unwrap(), Some([7; 32]));
    assert_eq!(s.disk_bind_sha256("d2").unwrap(), Some([8; 32]));
    assert_eq!(s.disk_bind_sha256("none").unwrap(), None);
    assert!(s.delete_disk("d1").unwrap());
    assert_eq!(s.disk_bind_sha256("d1").unwrap(), None);
    // A disk of the same id made again starts with its own digest.
    s.insert_disk(&disk("d1"), &[3; 32]).unwrap();
    assert_eq!(s.disk_bind_sha256("d1").unwrap(), Some([3; 32]));
    // The digest is kept nowhere in the disk's served object.
    let served = serde_json::to_string(&s.get_disk("d1").unwrap().unwrap()).unwrap();
    assert!(!served.contains("bindToken"), "{served}");
}

#[test]
fn a_named_disks_create_is_recorded_until_the_disk_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.begin_disk_create("pod-a").unwrap();
        s.begin_disk_create("pod-b").unwrap();
        // Twice is once.
        s.begin_disk_create("pod-a").unwrap();
        // Storing the disk ends its create in the same transaction.
        s.insert_disk(&disk("pod-b"), &[1; 32]).unwrap();
    }
    // What a crash leaves: the unfinished name, after a reopen.
    let s = Store::open(&path).unwrap();
    assert_eq!(s.disk_creates().unwrap(), vec!["pod-a".to_owned()]);
    s.end_disk_create("pod-a").unwrap();
    assert!(s.disk_creates().unwrap().is_empty());
    // A retry's new token replaces the digest; a disk that is not stored has none to replace.
    s.replace_disk_bind_sha256("pod-b", &[2; 32]).unwrap();
    assert_eq!(s.disk_bind_sha256("pod-b").unwrap(), Some([2; 32]));
    assert!(s.replace_disk_bind_sha256("pod-a", &[2; 32]).is_err());
}

#[test]
fn rows_a_newer_version_wrote_with_fields_this_one_lacks_open_read_and_update() {
    use crate::objects::DiskPhase;
    use serde_json::{json, Value};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        let mut c = cache("c", "imc-1");
        c.status
            .as_mut()
            .unwrap()
            .events
            .push(crate::objects::Event {
                type_: "Normal".into(),
                reason: "Created".into(),
                message: "m".into(),
                count: 1,
                first_timestamp: "2026-01-01T00:00:00Z".into(),
                last_timestamp: "2026-01-01T00:00:00Z".into(),
                involved_object: None,
                source: None,
            });
        s.insert_cache(&c).unwrap();
        s.insert_disk(&disk("d"), &[1; 32]).unwrap();
    }
    let (cache_before, disk_before) = {
        let s = Store::open(&path).unwrap();
        (
            s.get_cache("c").unwrap().unwrap(),
            s.get_disk("d").unwrap().unwrap(),
        )
    };
    // What a newer daemon would write: the same rows with fields added at every level.
    let conn = Connection::open(&path).unwrap();
    let widen = |table: &str, key: &str, name: &str, add: &dyn Fn(&mut Value)| {
        let sql = format!("SELECT object FROM {table} WHERE {key} = ?1");
        let stored: String = conn.query_row(&sql, [name], |r| r.get(0)).unwrap();
        let mut object: Value = serde_json::from_str(&stored).unwrap();
        object["newTop"] = json!({"nested": [1, 2]});
        object["metadata"]["newMeta"] = json!("x");
        object["spec"]["newSpec"] = json!(true);
        object["status"]["newStatus"] = json!(3);
        add(&mut object);
        let sql = format!("UPDATE {table} SET object = ?2 WHERE {key} = ?1");
        conn.execute(&sql, [name, &object.to_string()]).unwrap();
    };
    widen("caches", "name", "c", &|o| {
        o["status"]["events"][0]["newInEvent"] = json!({"a": 1});
    });
    widen("disks", "id", "d", &|o| {
        o["status"]["timings"]["newTiming"] = json!(1.5);
    });
    drop(conn);

    let s = Store::open(&path).unwrap();
    assert_eq!(s.get_cache("c").unwrap().unwrap(), cache_before);
    assert_eq!(
        s.list_caches().unwrap(),
        std::slice::from_ref(&cache_before)
    );
    assert_eq!(s.cache_by_id("imc-1").unwrap().unwrap(), cache_before);
    assert_eq!(s.get_disk("d").unwrap().unwrap(), disk_before);
    assert_eq!(s.list_disks().unwrap(), std::slice::from_ref(&disk_before));
    assert_eq!(s.disks_in_phase(DiskPhase::Ready).unwrap(), [disk_before]);
    // An update reads the widened row itself and writes it back in this version's shape.
    s.update_cache("c", |c| c.status.as_mut().unwrap().phase = Phase::Ready)
        .unwrap();
    s.update_disk("d", |d| {
        d.status.as_mut().unwrap().phase = DiskPhase::Failed
    })
    .unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    let c = s.get_cache("c").unwrap().unwrap();
    assert_eq!(c.status.as_ref().unwrap().phase, Phase::Ready);
    assert_eq!(c.spec, cache_before.spec);
    assert_eq!(
        c.status.unwrap().events,
        cache_before.status.unwrap().events
    );
    assert_eq!(
        phase_of(&s.get_disk("d").unwrap().unwrap()),
        DiskPhase::Failed
    );
}
