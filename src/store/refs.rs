//! Snapshot reference counts put back to what the records say, at start-up.

use std::collections::BTreeMap;

use super::{Result, Store};

impl Store {
    /// Sets each snapshot's reference count to the holders the records name: every cache
    /// and disk whose status names it, and the snapshotter's hold. A crash between taking a
    /// reference and recording its holder (or between forgetting a holder and giving its
    /// reference back) leaves a count no record explains, and the snapshot would never be
    /// removed. Returns the digests whose count changed, with the old and new counts.
    pub fn recount_snapshot_refs(&self) -> Result<Vec<(String, u64, u64)>> {
        let mut holders: BTreeMap<String, u64> = BTreeMap::new();
        let caches = self.list_caches()?;
        let disks = self.list_disks()?;
        let named = caches
            .iter()
            .filter_map(|c| c.status.as_ref()?.snapshot_digest.clone())
            .chain(
                disks
                    .iter()
                    .filter_map(|d| d.status.as_ref()?.snapshot_digest.clone()),
            );
        for digest in named {
            *holders.entry(digest).or_default() += 1;
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut held = tx.prepare("SELECT digest FROM ctr_snapshot_holds")?;
            for digest in held.query_map([], |r| r.get::<_, String>(0))? {
                *holders.entry(digest?).or_default() += 1;
            }
        }
        let stored: Vec<(String, u64)> = tx
            .prepare("SELECT digest, refs FROM snapshots")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut changed = Vec::new();
        for (digest, old) in &stored {
            let new = holders.remove(digest).unwrap_or(0);
            if new != *old {
                tx.execute(
                    "UPDATE snapshots SET refs = ?2 WHERE digest = ?1",
                    rusqlite::params![digest, new],
                )?;
                changed.push((digest.clone(), *old, new));
            }
        }
        for (digest, new) in holders {
            tx.execute(
                "INSERT INTO snapshots (digest, refs) VALUES (?1, ?2)",
                rusqlite::params![digest, new],
            )?;
            changed.push((digest, 0, new));
        }
        tx.commit()?;
        Ok(changed)
    }
}
