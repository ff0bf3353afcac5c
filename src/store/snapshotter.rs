//! The containerd snapshotter's records: every snapshot containerd made through us (key,
//! kind, parent, labels, what backs it) and the index of which Ready cache holds which layer
//! chainID. Kept here, not in memory, so a restart of the daemon loses no snapshot.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{Result, Store, StoreError};
use crate::objects::{ImageCache, Phase};

/// What a snapshot is, in containerd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "view" => Ok(SnapshotKind::View),
            "active" => Ok(SnapshotKind::Active),
            "committed" => Ok(SnapshotKind::Committed),
            other => Err(StoreError::Corrupt(format!("snapshot kind {other:?}"))),
        }
    }
}

/// Where a snapshot's own directory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// `<root>/snapshotter/snapshots/<id>/` on node storage, as containerd's overlayfs keeps it.
    Local,
    /// A committed layer of a frozen cache image, mounted read-only once per snapshot digest.
    Cache { digest: String, chain_id: String },
    /// An active snapshot whose upper and work directories are on a per-pod disk.
    Disk { disk_id: String },
}

/// One snapshot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The number naming its directory; never reused.
    pub id: i64,
    pub key: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    pub labels: BTreeMap<String, String>,
    /// Unix nanoseconds.
    pub created: i64,
    pub updated: i64,
    pub backing: Backing,
    /// Bytes and inodes of a committed snapshot, once measured (it never changes after).
    pub usage: Option<(i64, i64)>,
}

/// A new snapshot, before it has an id.
#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    pub key: &'a str,
    pub parent: Option<&'a str>,
    pub kind: SnapshotKind,
    pub labels: &'a BTreeMap<String, String>,
    pub now: i64,
    pub backing: &'a Backing,
}

/// A Ready cache that holds a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    pub cache_id: String,
    pub digest: String,
}

const COLUMNS: &str = "id, key, parent, kind, labels, created, updated, backing, \
                       cache_digest, chain_id, disk_id, usage_size, usage_inodes";

fn from_row(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        key: r.get(1)?,
        parent: r.get(2)?,
        kind: r.get(3)?,
        labels: r.get(4)?,
        created: r.get(5)?,
        updated: r.get(6)?,
        backing: r.get(7)?,
        cache_digest: r.get(8)?,
        chain_id: r.get(9)?,
        disk_id: r.get(10)?,
        usage_size: r.get(11)?,
        usage_inodes: r.get(12)?,
    })
}

/// A row as SQLite returns it, before its text columns are checked.
struct RawRecord {
    id: i64,
    key: String,
    parent: Option<String>,
    kind: String,
    labels: String,
    created: i64,
    updated: i64,
    backing: String,
    cache_digest: Option<String>,
    chain_id: Option<String>,
    disk_id: Option<String>,
    usage_size: Option<i64>,
    usage_inodes: Option<i64>,
}

impl RawRecord {
    fn parse(self) -> Result<SnapshotRecord> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("snapshot {:?}: {what}", self.key));
        let backing = match self.backing.as_str() {
            "local" => Backing::Local,
            "cache" => Backing::Cache {
                digest: self
                    .cache_digest
                    .clone()
                    .ok_or_else(|| corrupt("no digest"))?,
                chain_id: self.chain_id.clone().ok_or_else(|| corrupt("no chainID"))?,
            },
            "disk" => Backing::Disk {
                disk_id: self.disk_id.clone().ok_or_else(|| corrupt("no disk"))?,
            },
            other => return Err(corrupt(&format!("backing {other:?}"))),
        };
        let labels = serde_json::from_str(&self.labels).map_err(|e| corrupt(&e.to_string()))?;
        Ok(SnapshotRecord {
            id: self.id,
            kind: SnapshotKind::parse(&self.kind)?,
            key: self.key,
            parent: self.parent,
            labels,
            created: self.created,
            updated: self.updated,
            backing,
            usage: self.usage_size.zip(self.usage_inodes),
        })
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("a string map always serialises")
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store {
    /// Records a new snapshot; AlreadyExists when the key is taken.
    pub fn insert_ctr_snapshot(&self, new: &NewSnapshot<'_>) -> Result<SnapshotRecord> {
        let (backing, digest, chain, disk) = match new.backing {
            Backing::Local => ("local", None, None, None),
            Backing::Cache { digest, chain_id } => (
                "cache",
                Some(digest.as_str()),
                Some(chain_id.as_str()),
                None,
            ),
            Backing::Disk { disk_id } => ("disk", None, None, Some(disk_id.as_str())),
        };
        let conn = self.conn();
        let res = conn
            .prepare_cached(
                "INSERT INTO ctr_snapshots (key, parent, kind, labels, created, updated, \
                 backing, cache_digest, chain_id, disk_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                new.key,
                new.parent,
                new.kind.as_str(),
                labels_json(new.labels),
                new.now,
                backing,
                digest,
                chain,
                disk
            ]);
        match res {
            Err(e) if is_constraint(&e) => {
                return Err(StoreError::AlreadyExists(format!("snapshot {:?}", new.key)))
            }
            other => other?,
        };
        Ok(SnapshotRecord {
            id: conn.last_insert_rowid(),
            key: new.key.to_owned(),
            parent: new.parent.map(str::to_owned),
            kind: new.kind,
            labels: new.labels.clone(),
            created: new.now,
            updated: new.now,
            backing: new.backing.clone(),
            usage: None,
        })
    }

    pub fn get_ctr_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        let raw = self
            .conn()
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM ctr_snapshots WHERE key = ?1"
            ))?
            .query_row([key], from_row)
            .optional()?;
        raw.map(RawRecord::parse).transpose()
    }

    /// Every snapshot, in the order they were made.
    pub fn list_ctr_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM ctr_snapshots ORDER BY id"))?;
        let rows = stmt.query_map([], from_row)?;
        rows.map(|r| r?.parse()).collect()
    }

    /// How many snapshots name `key` as their parent.
    pub fn ctr_children(&self, key: &str) -> Result<u64> {
        Ok(self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM ctr_snapshots WHERE parent = ?1")?
            .query_row([key], |r| r.get(0))?)
    }

    /// How many snapshots a cache's mounted image backs.
    pub fn ctr_snapshots_on_digest(&self, digest: &str) -> Result<u64> {
        Ok(self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM ctr_snapshots WHERE cache_digest = ?1")?
            .query_row([digest], |r| r.get(0))?)
    }

    /// How many snapshots keep their upper directory on a disk.
    pub fn ctr_snapshots_on_disk(&self, disk_id: &str) -> Result<u64> {
        Ok(self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM ctr_snapshots WHERE disk_id = ?1")?
            .query_row([disk_id], |r| r.get(0))?)
    }

    pub fn delete_ctr_snapshot(&self, key: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("DELETE FROM ctr_snapshots WHERE key = ?1")?
            .execute([key])?
            > 0)
    }

    /// Turns active snapshot `key` into committed snapshot `name` (same id, so the same
    /// directory), in one transaction. AlreadyExists when `name` is taken. The committed
    /// snapshot is a new one to containerd: created and updated both become `now`, as its
    /// own storage does (`CommitActive` in snapshots/storage/bolt.go).
    pub fn commit_ctr_snapshot(
        &self,
        key: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        usage: (i64, i64),
        now: i64,
    ) -> Result<SnapshotRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let res = tx
            .prepare_cached(
                "UPDATE ctr_snapshots SET key = ?2, kind = 'committed', labels = ?3, \
                 created = ?4, updated = ?4, usage_size = ?5, usage_inodes = ?6 \
                 WHERE key = ?1 AND kind = 'active'",
            )?
            .execute(params![
                key,
                name,
                labels_json(labels),
                now,
                usage.0,
                usage.1
            ]);
        let changed = match res {
            Err(e) if is_constraint(&e) => {
                return Err(StoreError::AlreadyExists(format!("snapshot {name:?}")))
            }
            other => other?,
        };
        if changed == 0 {
            return Err(StoreError::NotFound(format!("active snapshot {key:?}")));
        }
        let raw = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM ctr_snapshots WHERE key = ?1"
            ))?
            .query_row([name], from_row)?;
        tx.commit()?;
        raw.parse()
    }

    /// Replaces a snapshot's labels.
    pub fn set_ctr_labels(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<()> {
        let changed = self
            .conn()
            .prepare_cached("UPDATE ctr_snapshots SET labels = ?2, updated = ?3 WHERE key = ?1")?
            .execute(params![key, labels_json(labels), now])?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("snapshot {key:?}")));
        }
        Ok(())
    }

    /// Records what a committed snapshot holds, measured once.
    pub fn set_ctr_usage(&self, key: &str, usage: (i64, i64)) -> Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE ctr_snapshots SET usage_size = ?2, usage_inodes = ?3 WHERE key = ?1",
            )?
            .execute(params![key, usage.0, usage.1])?;
        Ok(())
    }

    /// Takes the snapshotter's one reference on a frozen snapshot (while its image is
    /// mounted for containerd), unless it holds it already.
    pub fn ctr_hold_snapshot(&self, digest: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let new = tx
            .prepare_cached("INSERT OR IGNORE INTO ctr_snapshot_holds (digest) VALUES (?1)")?
            .execute([digest])?;
        if new > 0 {
            tx.prepare_cached(
                "INSERT INTO snapshots (digest, refs) VALUES (?1, 1) \
                 ON CONFLICT(digest) DO UPDATE SET refs = refs + 1",
            )?
            .execute([digest])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the snapshotter's reference if it holds one; returns the references left
    /// (`None`: it held none). At 0 the caller removes the files and forgets the snapshot.
    pub fn ctr_release_snapshot(&self, digest: &str) -> Result<Option<u64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let held = tx
            .prepare_cached("DELETE FROM ctr_snapshot_holds WHERE digest = ?1")?
            .execute([digest])?;
        if held == 0 {
            return Ok(None);
        }
        tx.prepare_cached("UPDATE snapshots SET refs = MAX(refs - 1, 0) WHERE digest = ?1")?
            .execute([digest])?;
        let refs: Option<u64> = tx
            .prepare_cached("SELECT refs FROM snapshots WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))
            .optional()?;
        tx.commit()?;
        Ok(Some(refs.unwrap_or(0)))
    }

    /// The Ready caches holding layer `chain_id`, the most recently frozen first.
    pub fn caches_with_layer(&self, chain_id: &str) -> Result<Vec<CachedLayer>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT cache_id, digest FROM chain_index WHERE chain_id = ?1 ORDER BY rowid DESC",
        )?;
        let rows = stmt.query_map([chain_id], |r| {
            Ok(CachedLayer {
                cache_id: r.get(0)?,
                digest: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rebuilds the whole chainID index from the caches table (at start-up: cheap, and it
    /// covers caches frozen before the index existed).
    pub fn reindex_all_chains(&self) -> Result<()> {
        let caches = self.list_caches()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM chain_index", [])?;
        for cache in &caches {
            index_cache_chains(&tx, cache)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Puts a cache's layers into the chainID index when it is Ready, and takes them out
/// otherwise. Called in the transaction that changes the cache.
pub(super) fn index_cache_chains(tx: &Transaction<'_>, cache: &ImageCache) -> Result<()> {
    tx.prepare_cached("DELETE FROM chain_index WHERE cache_name = ?1")?
        .execute([&cache.metadata.name])?;
    let Some(status) = cache.status.as_ref() else {
        return Ok(());
    };
    let Some(digest) = status.snapshot_digest.as_deref() else {
        return Ok(());
    };
    if status.phase != Phase::Ready {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO chain_index (chain_id, cache_name, cache_id, digest) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for image in &status.images {
        for chain_id in &image.chain_ids {
            insert.execute(params![
                chain_id,
                cache.metadata.name,
                status.image_cache_id,
                digest
            ])?;
        }
    }
    Ok(())
}

/// Takes a deleted cache's layers out of the index.
pub(super) fn unindex_cache(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM chain_index WHERE cache_name = ?1")?
        .execute([name])?;
    Ok(())
}
