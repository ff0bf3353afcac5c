//! A state database a newer daemon wrote, read by this one (a rollback): the newer version
//! stored a cache and a disk with fields this one does not know, at several levels, and this
//! daemon still starts on it and serves both as they were (root, loop devices, a registry on
//! 127.0.0.1, a scratch XFS state root).

mod support;

use rusqlite::Connection;
use serde_json::{json, Value};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

/// Adds fields no version of this daemon knows to the stored object of row `key` in `table`,
/// at the top, in metadata, spec and status, and inside one of its events.
fn widen(db: &Connection, table: &str, key_column: &str, key: &str) {
    let sql = format!("SELECT object FROM {table} WHERE {key_column} = ?1");
    let stored: String = db.query_row(&sql, [key], |r| r.get(0)).unwrap();
    let mut object: Value = serde_json::from_str(&stored).unwrap();
    object["newTopLevel"] = json!({"nested": [1, 2]});
    object["metadata"]["newMetadata"] = json!("x");
    object["spec"]["newSpec"] = json!(true);
    object["status"]["newStatus"] = json!(7);
    object["status"]["events"][0]["newEventField"] = json!({"a": 1});
    let sql = format!("UPDATE {table} SET object = ?2 WHERE {key_column} = ?1");
    assert_eq!(db.execute(&sql, [key, &object.to_string()]).unwrap(), 1);
}

fn disk_get(daemon: &TestDaemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["disk", "get", id, "-o", "json"])).unwrap()
}

#[test]
fn a_cache_and_a_disk_stored_by_a_newer_version_are_served_after_a_restart() {
    let scratch = ScratchXfs::new(16 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let image = feature_set(1).push_all(&addr, None).remove(0);
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
    let out = daemon.create(&cache_yaml("c", std::slice::from_ref(&image), ""), true);
    assert!(out.status.success(), "{}", daemon.log());
    let cache = daemon.get_json("c");
    let cache_id = cache["status"]["imageCacheId"].as_str().unwrap().to_owned();
    let disk: Value = serde_json::from_str(&daemon.cli_ok(&[
        "disk", "create", "--image", &image, "--cache", &cache_id, "-o", "json",
    ]))
    .unwrap();
    let disk_id = disk["metadata"]["name"].as_str().unwrap().to_owned();
    let disk_before = disk_get(&daemon, &disk_id);
    daemon.stop();

    let db = Connection::open(daemon.root.join("state.db")).unwrap();
    widen(&db, "caches", "name", "c");
    widen(&db, "disks", "id", &disk_id);
    drop(db);

    daemon.spawn();
    let served = daemon.get_json("c");
    assert_eq!(served["status"]["phase"], "Ready", "{served:#}");
    assert_eq!(served["spec"], cache["spec"]);
    assert_eq!(served["status"]["imageCacheId"], cache_id.as_str());
    assert!(served["newTopLevel"].is_null() && served["spec"]["newSpec"].is_null());
    let listed = daemon.list_names();
    assert_eq!(listed, ["c"]);
    let disk_now = disk_get(&daemon, &disk_id);
    assert_eq!(disk_now["status"]["phase"], "Ready", "{disk_now:#}");
    assert_eq!(disk_now["spec"], disk_before["spec"]);
    assert_eq!(
        disk_now["status"]["device"],
        disk_before["status"]["device"]
    );
    assert!(disk_now["status"]["newStatus"].is_null());

    // Both go as any other object does.
    daemon.cli_ok(&["disk", "delete", &disk_id]);
    daemon.cli_ok(&["delete", "c"]);
    assert!(daemon.list_names().is_empty());
    daemon.stop();
    assert_no_leaks(&daemon.root);
}
