//! The caches and the disks as last committed, held in memory for the gets and lists.
//!
//! Reading them from SQLite put file locks under every API read: under 4 builds and 32 disk
//! creates a read waited for XFS's inode lock behind a write of the WAL that the kernel was
//! throttling (page cache full of the builds' data), for SQLite's allocator mutex, and for
//! the reader connection a create held while off its core: the reads' p99 was 20-28 ms
//! (tests/api_load.rs). Here a read takes a read lock held only while another thread swaps
//! an entry in, and clones. The database stays the record: this is filled from it at open
//! and changed only after a write to it succeeded, under the writer's lock, so the two
//! agree in content and order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Result, StoreError};

/// One table's rows by key, in the order they were inserted (the order lists have).
#[derive(Debug)]
pub(super) struct Mirror<T> {
    rows: RwLock<Rows<T>>,
}

/// A row as stored: the object, or why its stored JSON does not parse (reported on each
/// read of it, as reading it from the database did).
type Row<T> = std::result::Result<Arc<T>, String>;

#[derive(Debug)]
struct Rows<T> {
    by_key: HashMap<String, (u64, Row<T>)>,
    order: BTreeMap<u64, String>,
    next: u64,
}

impl<T: Clone> Mirror<T> {
    /// Filled with `rows` (key and stored JSON) in their stored order, parsed by `parse`.
    pub fn load(rows: Vec<(String, String)>, parse: fn(&str) -> Result<T>) -> Mirror<T> {
        let mirror = Mirror {
            rows: RwLock::new(Rows {
                by_key: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
        };
        {
            let mut w = mirror.write();
            for (key, json) in rows {
                let row = parse(&json).map(Arc::new).map_err(|e| match e {
                    StoreError::Corrupt(why) => why,
                    other => other.to_string(),
                });
                w.push(key, row);
            }
        }
        mirror
    }

    // A panic while holding either lock leaves whole rows (each change is one insert or
    // remove), so a poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Rows<T>> {
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rows<T>> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A new row, last in order (an existing one of that key is replaced in place).
    pub fn insert(&self, key: &str, value: T) {
        let value = Arc::new(value);
        let mut w = self.write();
        match w.by_key.get_mut(key) {
            Some((_, row)) => *row = Ok(value),
            None => w.push(key.to_owned(), Ok(value)),
        }
    }

    pub fn remove(&self, key: &str) {
        let mut w = self.write();
        if let Some((seq, _)) = w.by_key.remove(key) {
            w.order.remove(&seq);
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<T>> {
        let row = self.read().by_key.get(key).map(|(_, row)| row.clone());
        row.map(unpack).transpose()
    }

    /// The first row (in order) that `matches`; a row that does not parse is passed over.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<T> {
        let rows = self.read();
        rows.order
            .values()
            .filter_map(|key| rows.by_key[key].1.as_ref().ok())
            .find(|value| matches(value))
            .map(|value| T::clone(value))
    }

    /// Every row in order; an error if one does not parse.
    pub fn list(&self) -> Result<Vec<T>> {
        let rows: Vec<Row<T>> = {
            let r = self.read();
            r.order
                .values()
                .map(|key| r.by_key[key].1.clone())
                .collect()
        };
        // Cloned after the lock is let go: a writer need not wait for it.
        rows.into_iter().map(unpack).collect()
    }
}

impl<T> Rows<T> {
    fn push(&mut self, key: String, row: Row<T>) {
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key.clone());
        self.by_key.insert(key, (seq, row));
    }
}

fn unpack<T: Clone>(row: Row<T>) -> Result<T> {
    row.map(|value| T::clone(&value))
        .map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<String> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("row: {e}")))
    }

    fn loaded() -> Mirror<String> {
        Mirror::load(
            vec![
                ("b".into(), "\"B\"".into()),
                ("a".into(), "\"A\"".into()),
                ("c".into(), "\"C\"".into()),
            ],
            parse,
        )
    }

    #[test]
    fn lists_in_stored_order_then_insertion_order_and_a_change_keeps_its_place() {
        let m = loaded();
        m.insert("d", "D".into());
        m.insert("a", "A2".into());
        m.remove("b");
        assert_eq!(m.list().unwrap(), ["A2", "C", "D"]);
        // A key inserted again after its removal goes last, as a new row does in the table.
        m.insert("b", "B2".into());
        assert_eq!(m.list().unwrap(), ["A2", "C", "D", "B2"]);
        assert_eq!(m.get("a").unwrap().as_deref(), Some("A2"));
        assert_eq!(m.get("gone").unwrap(), None);
        assert_eq!(m.find(|v| v.starts_with('C')).as_deref(), Some("C"));
        assert_eq!(m.find(|v| v == "nothing"), None);
    }

    #[test]
    fn a_row_that_does_not_parse_is_reported_on_each_read_of_it_until_replaced() {
        let m = Mirror::load(
            vec![("ok".into(), "\"fine\"".into()), ("bad".into(), "{".into())],
            parse,
        );
        assert!(matches!(m.get("bad"), Err(StoreError::Corrupt(why)) if why.starts_with("row: ")));
        assert!(matches!(m.list(), Err(StoreError::Corrupt(_))));
        // The others still read, and a search passes over the bad row.
        assert_eq!(m.get("ok").unwrap().as_deref(), Some("fine"));
        assert_eq!(m.find(|_| true).as_deref(), Some("fine"));
        m.insert("bad", "mended".into());
        assert_eq!(m.list().unwrap(), ["fine", "mended"]);
    }
}
