//! WAL checkpoints on a thread of their own. Left to SQLite, the commit that grows the WAL
//! past 1,000 pages runs the checkpoint itself, fsyncing the database while the store's lock
//! is held: with builds writing, that fsync took 100+ ms, and every API request that read the
//! store waited behind it. Here a passive checkpoint (it waits for no reader or writer) runs
//! every second on a connection of its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tracing::warn;

use super::Result;

const EVERY: Duration = Duration::from_secs(1);

/// Stops its thread when dropped (with the store).
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Checkpointer {
    pub fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    std::thread::park_timeout(EVERY);
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        r.get::<_, i64>(0)
                    });
                    if let Err(e) = done {
                        warn!(error = %e, "state database checkpoint failed; the WAL grows until one succeeds");
                    }
                }
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?;
        Ok(Checkpointer {
            stop,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}
