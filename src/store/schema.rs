//! Schema and its migrations, applied in order and recorded in `user_version` so an older
//! state.db is upgraded in place at start-up.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE caches (
        name TEXT PRIMARY KEY,
        cache_id TEXT NOT NULL UNIQUE,
        phase TEXT NOT NULL,
        object TEXT NOT NULL,
        created_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TRIGGER caches_seq AFTER INSERT ON caches BEGIN
        UPDATE caches SET created_seq = NEW.rowid WHERE rowid = NEW.rowid;
    END;
    CREATE TABLE snapshots (
        digest TEXT PRIMARY KEY,
        refs INTEGER NOT NULL
    );
    CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        cache_name TEXT NOT NULL,
        work_dir TEXT NOT NULL
    );
"#,
    r#"
    CREATE TABLE disks (
        id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        snapshot_digest TEXT,
        object TEXT NOT NULL,
        created_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TRIGGER disks_seq AFTER INSERT ON disks BEGIN
        UPDATE disks SET created_seq = NEW.rowid WHERE rowid = NEW.rowid;
    END;
"#,
    // The containerd snapshotter: its snapshots (the id names the directory; keys are
    // containerd's, which may contain any character), and which Ready cache holds which layer.
    r#"
    CREATE TABLE ctr_snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        parent TEXT,
        kind TEXT NOT NULL,
        labels TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        backing TEXT NOT NULL,
        cache_digest TEXT,
        chain_id TEXT,
        disk_id TEXT,
        usage_size INTEGER,
        usage_inodes INTEGER
    );
    CREATE INDEX ctr_snapshots_parent ON ctr_snapshots (parent);
    CREATE INDEX ctr_snapshots_digest ON ctr_snapshots (cache_digest);
    CREATE TABLE chain_index (
        chain_id TEXT NOT NULL,
        cache_name TEXT NOT NULL,
        cache_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (chain_id, cache_name)
    );
    CREATE INDEX chain_index_cache ON chain_index (cache_name);
    CREATE TABLE ctr_snapshot_holds (
        digest TEXT PRIMARY KEY
    );
"#,
    // Each disk's bind token, as its sha256 only (the token itself is answered once, by the
    // create, and kept nowhere). Disks made before this have no row: they bind no container.
    r#"
    CREATE TABLE disk_bind_tokens (
        disk_id TEXT PRIMARY KEY,
        sha256 BLOB NOT NULL
    );
"#,
    // Client-named disks being made: written before the disk's file exists, removed with the
    // disk's own row written (or the create undone), so the start after a crash knows which
    // names under disks/ are unfinished disks and not a caller's directories.
    r#"
    CREATE TABLE disk_creates (
        name TEXT PRIMARY KEY
    );
"#,
];

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
