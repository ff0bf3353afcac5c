//! containerd's snapshot semantics, as its snapshotter test suite states them, on a daemon
//! over the recording fake: the rules live in the store and ops, not in the kernel.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::sys::FakeSys;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) d: Daemon,
}

pub(super) fn daemon() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().join("state"),
        ..Config::default()
    };
    let d = Daemon::start(config, Arc::new(FakeSys::new())).unwrap();
    Fixture { _dir: dir, d }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ask(d: &Daemon, r: SnapshotRequest) -> Result<SnapshotReply> {
    ops::handle(d, r)
}

pub(super) fn prepare(d: &Daemon, key: &str, parent: &str) -> Result<Vec<MountSpec>> {
    match ask(
        d,
        SnapshotRequest::Prepare {
            key: key.into(),
            parent: parent.into(),
            labels: BTreeMap::new(),
        },
    )? {
        SnapshotReply::Mounts(m) => Ok(m),
        other => panic!("{other:?}"),
    }
}

pub(super) fn commit(d: &Daemon, name: &str, key: &str) -> Result<SnapshotReply> {
    ask(
        d,
        SnapshotRequest::Commit {
            name: name.into(),
            key: key.into(),
            labels: labels(&[("containerd.io/snapshot.ref", name)]),
        },
    )
}

pub(super) fn stat(d: &Daemon, key: &str) -> Result<SnapshotInfo> {
    match ask(d, SnapshotRequest::Stat { key: key.into() })? {
        SnapshotReply::Info(i) => Ok(i),
        other => panic!("{other:?}"),
    }
}

pub(super) fn remove(d: &Daemon, key: &str) -> Result<SnapshotReply> {
    ask(d, SnapshotRequest::Remove { key: key.into() })
}

#[test]
fn a_chain_of_layers_prepares_commits_and_mounts_like_overlayfs() {
    let f = daemon();
    let d = &f.d;
    let base = prepare(d, "extract-1 sha256:a", "").unwrap();
    assert_eq!(base[0].kind, "bind", "{base:?}");
    let upper = std::path::Path::new(&base[0].source);
    std::fs::write(upper.join("file"), b"layer a").unwrap();
    commit(d, "sha256:a", "extract-1 sha256:a").unwrap();
    // The key is gone, the name is committed, and the file stayed in its directory.
    assert!(matches!(
        stat(d, "extract-1 sha256:a"),
        Err(SnapshotError::NotFound(_))
    ));
    let a = stat(d, "sha256:a").unwrap();
    assert_eq!(a.kind, SnapshotKind::Committed);
    assert_eq!(a.parent, None);
    assert!(upper.join("file").exists());

    let over = prepare(d, "extract-2 sha256:b", "sha256:a").unwrap();
    assert_eq!(over[0].kind, "overlay");
    let lowerdir = over[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(lowerdir, &format!("lowerdir={}", upper.display()));
    commit(d, "sha256:b", "extract-2 sha256:b").unwrap();
    let container = prepare(d, "container", "sha256:b").unwrap();
    let lowers = container[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(
        lowers.matches(':').count(),
        1,
        "two lowers, nearest first: {lowers}"
    );
    // Mounts answers the same as Prepare did.
    match ask(
        d,
        SnapshotRequest::Mounts {
            key: "container".into(),
        },
    )
    .unwrap()
    {
        SnapshotReply::Mounts(m) => assert_eq!(m, container),
        other => panic!("{other:?}"),
    }
    // A committed snapshot has no mounts of its own.
    assert!(matches!(
        ask(
            d,
            SnapshotRequest::Mounts {
                key: "sha256:a".into()
            }
        ),
        Err(SnapshotError::FailedPrecondition(_))
    ));
}

#[test]
fn names_parents_and_children_are_checked() {
    let f = daemon();
    let d = &f.d;
    prepare(d, "k1", "").unwrap();
    assert!(matches!(
        prepare(d, "k1", ""),
        Err(SnapshotError::AlreadyExists(_))
    ));
    assert!(matches!(
        prepare(d, "k2", "nope"),
        Err(SnapshotError::NotFound(_))
    ));
    // An active snapshot cannot be a parent.
    assert!(matches!(
        prepare(d, "k2", "k1"),
        Err(SnapshotError::InvalidArgument(_))
    ));
    commit(d, "c1", "k1").unwrap();
    prepare(d, "k3", "").unwrap();
    assert!(matches!(
        commit(d, "c1", "k3"),
        Err(SnapshotError::AlreadyExists(_))
    ));
    // A parent with children stays; the children go first.
    prepare(d, "child", "c1").unwrap();
    assert!(matches!(
        remove(d, "c1"),
        Err(SnapshotError::FailedPrecondition(_))
    ));
    remove(d, "child").unwrap();
    remove(d, "c1").unwrap();
    assert!(matches!(remove(d, "c1"), Err(SnapshotError::NotFound(_))));
    // A view is read-only and cannot be committed.
    prepare(d, "k4", "").unwrap();
    commit(d, "c4", "k4").unwrap();
    match ask(
        d,
        SnapshotRequest::View {
            key: "v".into(),
            parent: "c4".into(),
            labels: BTreeMap::new(),
        },
    )
    .unwrap()
    {
        SnapshotReply::Mounts(m) => assert_eq!(m[0].options, vec!["ro", "rbind"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(stat(d, "v").unwrap().kind, SnapshotKind::View);
    assert!(matches!(
        commit(d, "cv", "v"),
        Err(SnapshotError::FailedPrecondition(_))
    ));
}

#[test]
fn labels_update_by_mask_and_list_filters() {
    let f = daemon();
    let d = &f.d;
    ask(
        d,
        SnapshotRequest::Prepare {
            key: "k".into(),
            parent: String::new(),
            labels: labels(&[("a", "1"), ("b", "2")]),
        },
    )
    .unwrap();
    let update = |labels: BTreeMap<String, String>, fields: &[&str]| match ask(
        d,
        SnapshotRequest::Update {
            name: "k".into(),
            labels,
            fields: fields.iter().map(|s| s.to_string()).collect(),
        },
    ) {
        Ok(SnapshotReply::Info(i)) => Ok(i.labels),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    // One label set, one dropped (named in the mask, absent from the labels).
    assert_eq!(
        update(labels(&[("c", "3")]), &["labels.c", "labels.a"]).unwrap(),
        labels(&[("b", "2"), ("c", "3")])
    );
    // No mask: the labels are replaced.
    assert_eq!(
        update(labels(&[("z", "9")]), &[]).unwrap(),
        labels(&[("z", "9")])
    );
    assert!(matches!(
        update(labels(&[]), &["parent"]),
        Err(SnapshotError::InvalidArgument(_))
    ));
    prepare(d, "other", "").unwrap();
    let list = |filters: &[&str]| match ask(
        d,
        SnapshotRequest::List {
            filters: filters.iter().map(|s| s.to_string()).collect(),
        },
    )
    .unwrap()
    {
        SnapshotReply::List(l) => l.into_iter().map(|i| i.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(list(&[]), vec!["k", "other"]);
    assert_eq!(list(&["labels.z==9"]), vec!["k"]);
    assert_eq!(list(&["name==other", "labels.z"]), vec!["k", "other"]);
}

/// containerd's suite (its `Update` test) reads its clock before and after each request and
/// wants created and updated between the two, to the nanosecond; a commit makes a new
/// snapshot, created and updated alike (storage.CommitActive). The times must come back the
/// same from a restarted daemon's store.
#[test]
fn times_keep_nanoseconds_through_commit_update_and_a_restart() {
    use crate::daemon::clock::now_nanos;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().join("state"),
        ..Config::default()
    };
    let sys = Arc::new(FakeSys::new());
    let between = |what: &str, t: i64, before: i64, after: i64| {
        assert!(
            (before..=after).contains(&t),
            "{what} {t} is not between {before} and {after}: cut to whole seconds?"
        );
    };
    let (active, committed, updated) = {
        let d = Daemon::start(config.clone(), sys.clone()).unwrap();
        let t1 = now_nanos();
        prepare(&d, "active", "").unwrap();
        let t2 = now_nanos();
        let active = stat(&d, "active").unwrap();
        between("prepare's created", active.created, t1, t2);
        assert_eq!(active.updated, active.created);

        prepare(&d, "k", "").unwrap();
        let t3 = now_nanos();
        commit(&d, "layer", "k").unwrap();
        let t4 = now_nanos();
        let committed = stat(&d, "layer").unwrap();
        between("commit's created", committed.created, t3, t4);
        assert_eq!(committed.updated, committed.created);

        let u1 = now_nanos();
        let updated = match ask(
            &d,
            SnapshotRequest::Update {
                name: "active".into(),
                labels: labels(&[("l", "v")]),
                fields: vec![],
            },
        )
        .unwrap()
        {
            SnapshotReply::Info(i) => i,
            other => panic!("{other:?}"),
        };
        let u2 = now_nanos();
        assert_eq!(updated.created, active.created);
        between("update's updated", updated.updated, u1, u2);
        (active, committed, updated)
    };
    let d = Daemon::start(config, sys).unwrap();
    let again = stat(&d, "active").unwrap();
    assert_eq!(
        (again.created, again.updated),
        (active.created, updated.updated)
    );
    let again = stat(&d, "layer").unwrap();
    assert_eq!(
        (again.created, again.updated),
        (committed.created, committed.updated)
    );
}

#[test]
fn usage_counts_an_active_snapshots_upper_and_a_committed_one_once() {
    let f = daemon();
    let d = &f.d;
    let m = prepare(d, "k", "").unwrap();
    std::fs::write(
        std::path::Path::new(&m[0].source).join("f"),
        vec![1u8; 8192],
    )
    .unwrap();
    let usage = |key: &str| match ask(d, SnapshotRequest::Usage { key: key.into() }).unwrap() {
        SnapshotReply::Usage(u) => u,
        other => panic!("{other:?}"),
    };
    let active = usage("k");
    assert_eq!(active.inodes, 2, "{active:?}");
    assert!(active.size >= 8192, "{active:?}");
    commit(d, "c", "k").unwrap();
    assert_eq!(usage("c"), active);
}

#[test]
fn cleanup_removes_directories_no_record_names_and_a_restart_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().join("state"),
        ..Config::default()
    };
    let sys = Arc::new(FakeSys::new());
    {
        let d = Daemon::start(config.clone(), sys.clone()).unwrap();
        prepare(&d, "kept", "").unwrap();
        commit(&d, "layer", "kept").unwrap();
        prepare(&d, "active", "layer").unwrap();
    }
    let stray = paths::snapshot_dir(&config.root, 999);
    std::fs::create_dir_all(stray.join("fs")).unwrap();
    let d = Daemon::start(config.clone(), sys).unwrap();
    assert!(!stray.exists(), "recovery left a directory no record names");
    assert_eq!(stat(&d, "layer").unwrap().kind, SnapshotKind::Committed);
    assert_eq!(stat(&d, "active").unwrap().parent.as_deref(), Some("layer"));
    assert_eq!(
        d.snapshot_counts().unwrap(),
        BTreeMap::from([("active", 1), ("committed", 1), ("view", 0)])
    );
}

#[test]
fn a_cached_layer_is_offered_only_over_the_chain_its_cache_recorded() {
    use crate::layout::{write_snapshots, SnapshotEntry};
    use crate::registry::chain_id_over;
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = ("sha256:1111", "sha256:2222");
    let c1 = chain_id_over(None, d1);
    let c2 = chain_id_over(Some(&c1), d2);
    let entry = |diff: &str, parent: Option<&str>| SnapshotEntry {
        diff_id: diff.into(),
        parent: parent.map(str::to_owned),
        size: 0,
        images: vec![],
    };
    let mut recorded = BTreeMap::from([
        (c1.clone(), entry(d1, None)),
        (c2.clone(), entry(d2, Some(&c1))),
    ]);
    write_snapshots(dir.path(), &recorded).unwrap();
    let over = |target: &str, parent: Option<&str>| ops::recorded_over(dir.path(), target, parent);

    assert_eq!(over(&c1, None), Ok(()));
    assert_eq!(over(&c2, Some(&c1)), Ok(()));
    // Planted over another image's chain, or as a base layer.
    let other = chain_id_over(None, "sha256:9999");
    let err = over(&c2, Some(&other)).unwrap_err();
    assert!(err.contains("recorded over"), "{err}");
    assert!(over(&c2, None).is_err());
    assert!(over(&c1, Some(&c1)).is_err());
    // A layer the cache does not list.
    assert!(over(&other, None).unwrap_err().contains("does not list"));
    // A record whose chainID does not follow from its parent and diffID.
    recorded.insert(c2.clone(), entry("sha256:3333", Some(&c1)));
    write_snapshots(dir.path(), &recorded).unwrap();
    assert!(over(&c2, Some(&c1)).unwrap_err().contains("make chainID"));
}

/// A disk as a create leaves it (stored with its token's digest, mounted at `<dir>/mnt`);
/// returns its token and its mountpoint.
fn mounted_disk(f: &Fixture, sys: &FakeSys, id: &str) -> (String, std::path::PathBuf) {
    let mnt = f._dir.path().join(id).join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let disk: crate::objects::Disk = serde_json::from_value(serde_json::json!({
        "apiVersion": crate::objects::API_VERSION, "kind": "Disk",
        "metadata": {"name": id},
        "spec": {"images": ["example.com/app:v1"]},
        "status": {
            "phase": "Ready", "matchedImages": [], "missingImages": [], "pulledImages": [],
            "sizeGiB": 1, "creationTime": "2026-01-01T00:00:00Z", "mountpoint": mnt,
            "timings": {"cloneMs": 0.0, "growMs": 0.0, "attachMs": 0.0, "mountMs": 0.0, "pullMs": 0.0}
        }
    }))
    .unwrap();
    let (token, digest) = crate::daemon::disks::token::issue();
    f.d.inner.store.insert_disk(&disk, &digest).unwrap();
    use crate::sys::{MountOptions, Sys};
    sys.mount(
        &f._dir.path().join(format!("{id}.img")),
        &mnt,
        "ext4",
        MountOptions::default(),
        "",
    )
    .unwrap();
    (token.0, mnt)
}

fn daemon_over(sys: Arc<FakeSys>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().join("state"),
        ..Config::default()
    };
    let d = Daemon::start(config, sys).unwrap();
    Fixture { _dir: dir, d }
}

fn prepare_with(d: &Daemon, key: &str, pairs: &[(&str, &str)]) -> Result<Vec<MountSpec>> {
    match ask(
        d,
        SnapshotRequest::Prepare {
            key: key.into(),
            parent: String::new(),
            labels: labels(pairs),
        },
    )? {
        SnapshotReply::Mounts(m) => Ok(m),
        other => panic!("{other:?}"),
    }
}

/// Everything under the snapshotter's directory and the disk's `containers/`: what a
/// refused Prepare must not change.
fn traces(f: &Fixture, disk_root: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(entry.path());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&paths::snapshots_dir(&f.d.inner.config.root), &mut out);
    walk(&disk_root.join("containers"), &mut out);
    out.sort();
    out
}

#[test]
fn a_disk_binds_only_the_container_that_gives_its_token_and_a_refusal_leaves_nothing() {
    let sys = Arc::new(FakeSys::new());
    let f = daemon_over(sys.clone());
    let d = &f.d;
    let (token, disk_root) = mounted_disk(&f, &sys, "disk-mine");
    let (other_token, _) = mounted_disk(&f, &sys, "disk-other");
    let before = traces(&f, &disk_root);
    let counts = d.snapshot_counts().unwrap();

    let refused = [
        ("none", vec![(LABEL_DISK, "disk-mine")]),
        (
            "wrong",
            vec![
                (LABEL_DISK, "disk-mine"),
                (LABEL_DISK_TOKEN, "0123456789abcdef"),
            ],
        ),
        (
            "empty",
            vec![(LABEL_DISK, "disk-mine"), (LABEL_DISK_TOKEN, "")],
        ),
        (
            "another disk's",
            vec![
                (LABEL_DISK, "disk-mine"),
                (LABEL_DISK_TOKEN, other_token.as_str()),
            ],
        ),
    ];
    for (what, pairs) in refused {
        match prepare_with(d, "ctr", &pairs) {
            Err(SnapshotError::PermissionDenied(message)) => {
                assert!(message.contains("disk-mine"), "{what}: {message}");
                assert!(message.contains(LABEL_DISK_TOKEN), "{what}: {message}");
                assert!(message.contains("status.bindToken"), "{what}: {message}");
                assert!(!message.contains(&other_token), "{what}: {message}");
            }
            other => panic!("{what} token: not refused: {other:?}"),
        }
        assert!(
            matches!(stat(d, "ctr"), Err(SnapshotError::NotFound(_))),
            "{what}: recorded"
        );
        assert_eq!(traces(&f, &disk_root), before, "{what}: left directories");
        assert_eq!(d.snapshot_counts().unwrap(), counts, "{what}");
    }
    // A disk nobody made is not found, token or not.
    assert!(matches!(
        prepare_with(
            d,
            "ctr",
            &[(LABEL_DISK, "disk-nope"), (LABEL_DISK_TOKEN, &token)]
        ),
        Err(SnapshotError::NotFound(_))
    ));

    let mounts = prepare_with(
        d,
        "ctr",
        &[
            (LABEL_DISK, "disk-mine"),
            (LABEL_DISK_TOKEN, &token),
            ("a", "1"),
        ],
    )
    .unwrap();
    assert!(
        mounts[0]
            .source
            .starts_with(&disk_root.to_string_lossy().into_owned()),
        "{mounts:?}"
    );
    assert_eq!(entries_of(&disk_root.join("containers")).len(), 1);
    // The token is checked and dropped: the record keeps every other label.
    assert_eq!(
        stat(d, "ctr").unwrap().labels,
        labels(&[(LABEL_DISK, "disk-mine"), ("a", "1")])
    );
    // Another disk's container binds with that disk's token.
    prepare_with(
        d,
        "ctr2",
        &[(LABEL_DISK, "disk-other"), (LABEL_DISK_TOKEN, &other_token)],
    )
    .unwrap();
    // A token given with no disk named binds nothing and is not kept either.
    prepare_with(d, "plain", &[(LABEL_DISK_TOKEN, &token)]).unwrap();
    assert!(stat(d, "plain").unwrap().labels.is_empty());
    // Nor by a label update (`ctr snapshots label` passes it on).
    ask(
        d,
        SnapshotRequest::Update {
            name: "plain".into(),
            labels: labels(&[(LABEL_DISK_TOKEN, &token), ("b", "2")]),
            fields: vec![format!("labels.{LABEL_DISK_TOKEN}"), "labels.b".into()],
        },
    )
    .unwrap();
    assert_eq!(stat(d, "plain").unwrap().labels, labels(&[("b", "2")]));
}

#[test]
fn a_disk_made_before_tokens_is_refused_with_the_advice_to_recreate_it() {
    let sys = Arc::new(FakeSys::new());
    let f = daemon_over(sys.clone());
    let (token, disk_root) = mounted_disk(&f, &sys, "disk-old");
    // What a state.db from before bind tokens holds: the disk, and no digest for it.
    rusqlite::Connection::open(f.d.inner.config.root.join("state.db"))
        .unwrap()
        .execute("DELETE FROM disk_bind_tokens", [])
        .unwrap();
    let before = traces(&f, &disk_root);
    for given in [None, Some(token.as_str())] {
        let mut pairs = vec![(LABEL_DISK, "disk-old")];
        pairs.extend(given.map(|t| (LABEL_DISK_TOKEN, t)));
        match prepare_with(&f.d, "ctr", &pairs) {
            Err(SnapshotError::PermissionDenied(message)) => {
                assert!(
                    message.contains("disk-old") && message.contains("create it again"),
                    "{message}"
                );
            }
            other => panic!("a disk without a token bound a container: {other:?}"),
        }
    }
    assert_eq!(traces(&f, &disk_root), before);
}

fn entries_of(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}
