//! Embedded state in SQLite (WAL): caches with their status and events, snapshot reference
//! counts, and builds in progress. Everything an operator sees survives a restart.

mod checkpoint;
mod disks;
mod lenient;
mod mirror;
mod refs;
mod schema;
mod snapshotter;

pub use snapshotter::{Backing, CachedLayer, NewSnapshot, SnapshotKind, SnapshotRecord};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::objects::{Disk, ImageCache, Phase};
use mirror::Mirror;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds a record that does not parse ({0}): restore state.db from a backup or delete the record")]
    Corrupt(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
}

impl StoreError {
    /// The write failed for want of room on the filesystem holding state.db (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A build in progress: its work directory is cleaned (or resumed) at restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: String,
    pub cache_name: String,
    pub work_dir: String,
}

/// Room for every distinct statement in this module and disks.rs.
const STATEMENT_CACHE: usize = 32;

/// The state database. One connection behind a mutex for writes: every operation is a short
/// transaction, far below the cost of the work it records.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    _checkpoints: Option<checkpoint::Checkpointer>,
    /// The caches and disks as committed, which the gets and lists read (mirror.rs).
    caches: Mirror<ImageCache>,
    disks: Mirror<Disk>,
    /// The last `metadata.resourceVersion` given out: one sequence for every cache write
    /// (and delete), so lists carry it too. It starts from the clock in microseconds (and
    /// above any stored version), so it keeps rising across restarts without a table.
    resource_version: AtomicU64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement the store runs stays prepared: parsing SQL on each call was the
        // daemon's largest user-space cost when 32 disks were created at once.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&conn)?;
        // checkpoint.rs runs them, away from the commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (caches, disks) = mirrors(&conn)?;
        let store = Store {
            conn: Mutex::new(conn),
            _checkpoints: Some(checkpoint::Checkpointer::start(path)?),
            caches,
            disks,
            resource_version: AtomicU64::new(0),
        };
        // Read loosely: a record that does not parse is reported where it is used, not here.
        let stored: Option<u64> = store.conn().query_row(
            "SELECT MAX(CAST(json_extract(object, '$.metadata.resourceVersion') AS INTEGER)) FROM caches WHERE json_valid(object)",
            [],
            |r| r.get(0),
        )?;
        let stored = stored.unwrap_or(0);
        store.resource_version.store(stored, Ordering::SeqCst);
        store.reindex_all_chains()?;
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        schema::migrate(&conn)?;
        let (caches, disks) = mirrors(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            _checkpoints: None,
            caches,
            disks,
            resource_version: AtomicU64::new(0),
        })
    }

    /// A new `metadata.resourceVersion`, above every one given out before.
    pub fn next_resource_version(&self) -> String {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut last = self.resource_version.load(Ordering::SeqCst);
        loop {
            let next = clock.max(last + 1);
            match self.resource_version.compare_exchange(
                last,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next.to_string(),
                Err(now) => last = now,
            }
        }
    }

    /// The resourceVersion of the newest cache write, for a list's metadata.
    pub fn resource_version(&self) -> String {
        self.resource_version.load(Ordering::SeqCst).to_string()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each call is one
        // transaction), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_cache(&self, cache: &ImageCache) -> Result<()> {
        let status = cache
            .status
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("cache without status".into()))?;
        let json = serde_json::to_string(cache).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let conn = self.conn();
        let res = conn
            .prepare_cached(
                "INSERT INTO caches (name, cache_id, phase, object) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                cache.metadata.name,
                status.image_cache_id,
                status.phase.as_str(),
                json
            ]);
        if res.is_ok() {
            self.caches.insert(&cache.metadata.name, cache.clone());
        }
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::AlreadyExists(format!(
                    "ImageCache {:?}",
                    cache.metadata.name
                )))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub fn get_cache(&self, name: &str) -> Result<Option<ImageCache>> {
        self.caches.get(name)
    }

    pub fn cache_by_id(&self, cache_id: &str) -> Result<Option<ImageCache>> {
        Ok(self.caches.find(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.image_cache_id == cache_id)
        }))
    }

    pub fn list_caches(&self) -> Result<Vec<ImageCache>> {
        self.caches.list()
    }

    /// Applies `change` to the stored cache in one transaction and returns the new object.
    pub fn update_cache(
        &self,
        name: &str,
        change: impl FnOnce(&mut ImageCache),
    ) -> Result<ImageCache> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let json: String = tx
            .prepare_cached("SELECT object FROM caches WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("ImageCache {name:?}")))?;
        let mut cache = parse_cache(&json)?;
        change(&mut cache);
        cache.metadata.resource_version = Some(self.next_resource_version());
        let phase = cache
            .status
            .as_ref()
            .map(|s| s.phase)
            .unwrap_or(Phase::Pending);
        let json = serde_json::to_string(&cache).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.prepare_cached("UPDATE caches SET object = ?2, phase = ?3 WHERE name = ?1")?
            .execute(params![name, json, phase.as_str()])?;
        snapshotter::index_cache_chains(&tx, &cache)?;
        tx.commit()?;
        self.caches.insert(name, cache.clone());
        Ok(cache)
    }

    pub fn delete_cache(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let deleted = tx
            .prepare_cached("DELETE FROM caches WHERE name = ?1")?
            .execute([name])?
            > 0;
        snapshotter::unindex_cache(&tx, name)?;
        tx.commit()?;
        self.caches.remove(name);
        if deleted {
            // A list read after the delete differs from one read before it.
            self.next_resource_version();
        }
        Ok(deleted)
    }

    /// Takes a reference on a snapshot, recording it on first use.
    pub fn snapshot_ref(&self, digest: &str) -> Result<u64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO snapshots (digest, refs) VALUES (?1, 1) \
             ON CONFLICT(digest) DO UPDATE SET refs = refs + 1",
        )?
        .execute([digest])?;
        let refs = conn
            .prepare_cached("SELECT refs FROM snapshots WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))?;
        Ok(refs)
    }

    /// Drops a reference; returns the references left (0: the caller removes the files and
    /// then calls `forget_snapshot`).
    pub fn snapshot_unref(&self, digest: &str) -> Result<u64> {
        let conn = self.conn();
        conn.prepare_cached("UPDATE snapshots SET refs = MAX(refs - 1, 0) WHERE digest = ?1")?
            .execute([digest])?;
        let refs = conn
            .prepare_cached("SELECT refs FROM snapshots WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))
            .optional()?;
        Ok(refs.unwrap_or(0))
    }

    pub fn snapshot_refs(&self, digest: &str) -> Result<u64> {
        Ok(self
            .conn()
            .prepare_cached("SELECT refs FROM snapshots WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    pub fn forget_snapshot(&self, digest: &str) -> Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM snapshots WHERE digest = ?1 AND refs = 0")?
            .execute([digest])?;
        Ok(())
    }

    pub fn insert_build(&self, build: &BuildRecord) -> Result<()> {
        self.conn()
            .prepare_cached("INSERT INTO builds (id, cache_name, work_dir) VALUES (?1, ?2, ?3)")?
            .execute(params![build.id, build.cache_name, build.work_dir])?;
        Ok(())
    }

    pub fn delete_build(&self, id: &str) -> Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM builds WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    pub fn list_builds(&self) -> Result<Vec<BuildRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, cache_name, work_dir FROM builds")?;
        let rows = stmt.query_map([], |r| {
            Ok(BuildRecord {
                id: r.get(0)?,
                cache_name: r.get(1)?,
                work_dir: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The caches and disks tables, read into memory (in their stored order).
fn mirrors(conn: &Connection) -> Result<(Mirror<ImageCache>, Mirror<Disk>)> {
    let rows = |sql: &str| -> Result<Vec<(String, String)>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    Ok((
        Mirror::load(
            rows("SELECT name, object FROM caches ORDER BY created_seq")?,
            parse_cache,
        ),
        Mirror::load(
            rows("SELECT id, object FROM disks ORDER BY created_seq")?,
            disks::parse_disk,
        ),
    ))
}

fn parse_cache(json: &str) -> Result<ImageCache> {
    lenient::from_row(json).map_err(|e| StoreError::Corrupt(format!("ImageCache: {e}")))
}

#[cfg(test)]
mod tests;
