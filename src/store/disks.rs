//! Disks in the state database.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store, StoreError};
use crate::objects::{Disk, DiskPhase};

pub(super) fn parse_disk(json: &str) -> Result<Disk> {
    super::lenient::from_row(json).map_err(|e| StoreError::Corrupt(format!("Disk: {e}")))
}

fn columns(disk: &Disk) -> Result<(String, Option<String>, String)> {
    let status = disk
        .status
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("disk without status".into()))?;
    let json = serde_json::to_string(disk).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((
        status.phase.to_string(),
        status.snapshot_digest.clone(),
        json,
    ))
}

impl Store {
    /// Records a new disk with the sha256 of its bind token, in one transaction: a disk is
    /// never stored without the digest that lets its pod bind it.
    pub fn insert_disk(&self, disk: &Disk, bind_sha256: &[u8; 32]) -> Result<()> {
        let (phase, digest, json) = columns(disk)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO disks (id, phase, snapshot_digest, object) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![disk.metadata.name, phase, digest, json])?;
        tx.prepare_cached("INSERT INTO disk_bind_tokens (disk_id, sha256) VALUES (?1, ?2)")?
            .execute(params![disk.metadata.name, &bind_sha256[..]])?;
        // A named disk's create is finished the moment its row exists.
        tx.prepare_cached("DELETE FROM disk_creates WHERE name = ?1")?
            .execute([&disk.metadata.name])?;
        tx.commit()?;
        self.disks.insert(&disk.metadata.name, disk.clone());
        Ok(())
    }

    /// Gives stored disk `id` a new bind token's digest: the earlier token stops binding.
    pub fn replace_disk_bind_sha256(&self, id: &str, bind_sha256: &[u8; 32]) -> Result<()> {
        let changed = self
            .conn()
            .prepare_cached("UPDATE disk_bind_tokens SET sha256 = ?2 WHERE disk_id = ?1")?
            .execute(params![id, &bind_sha256[..]])?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("bind token of Disk {id:?}")));
        }
        Ok(())
    }

    /// Records that the disk named `name` is being made, before anything of it exists.
    pub fn begin_disk_create(&self, name: &str) -> Result<()> {
        self.conn()
            .prepare_cached("INSERT OR IGNORE INTO disk_creates (name) VALUES (?1)")?
            .execute([name])?;
        Ok(())
    }

    /// The named disk is stored, or nothing of it is left.
    pub fn end_disk_create(&self, name: &str) -> Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM disk_creates WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    /// Names of disks whose create began and neither finished nor was undone.
    pub fn disk_creates(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM disk_creates ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }

    /// The sha256 of disk `id`'s bind token; None for a disk made before disks had tokens
    /// (or no disk at all).
    pub fn disk_bind_sha256(&self, id: &str) -> Result<Option<[u8; 32]>> {
        let stored: Option<Vec<u8>> = self
            .conn()
            .prepare_cached("SELECT sha256 FROM disk_bind_tokens WHERE disk_id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        stored
            .map(|bytes| {
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "disk {id}'s bind token digest is {} bytes, not 32",
                        bytes.len()
                    ))
                })
            })
            .transpose()
    }

    pub fn get_disk(&self, id: &str) -> Result<Option<Disk>> {
        self.disks.get(id)
    }

    pub fn list_disks(&self) -> Result<Vec<Disk>> {
        self.disks.list()
    }

    /// Applies `change` to the stored disk in one transaction and returns the new object.
    pub fn update_disk(&self, id: &str, change: impl FnOnce(&mut Disk)) -> Result<Disk> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let json: String = tx
            .prepare_cached("SELECT object FROM disks WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("Disk {id:?}")))?;
        let mut disk = parse_disk(&json)?;
        change(&mut disk);
        let (phase, digest, json) = columns(&disk)?;
        tx.prepare_cached(
            "UPDATE disks SET object = ?2, phase = ?3, snapshot_digest = ?4 WHERE id = ?1",
        )?
        .execute(params![id, json, phase, digest])?;
        tx.commit()?;
        self.disks.insert(id, disk.clone());
        Ok(disk)
    }

    pub fn delete_disk(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let deleted = tx
            .prepare_cached("DELETE FROM disks WHERE id = ?1")?
            .execute([id])?
            > 0;
        tx.prepare_cached("DELETE FROM disk_bind_tokens WHERE disk_id = ?1")?
            .execute([id])?;
        tx.commit()?;
        self.disks.remove(id);
        Ok(deleted)
    }

    /// Disks in a phase, for restart recovery.
    pub fn disks_in_phase(&self, phase: DiskPhase) -> Result<Vec<Disk>> {
        Ok(self
            .list_disks()?
            .into_iter()
            .filter(|d| d.status.as_ref().map(|s| s.phase) == Some(phase))
            .collect())
    }
}
