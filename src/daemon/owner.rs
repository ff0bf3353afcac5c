//! Whose status a pull reports to: a cache being built, or a disk being filled with the
//! images its cache lacked.

use super::{clock, events, record, Daemon};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Cache(String),
    Disk(String),
}

impl Owner {
    /// Adds an event to the owner's status (a repeat bumps the count).
    pub fn event(&self, d: &Daemon, type_: &str, reason: &str, message: String) {
        let now = clock::now_string();
        match self {
            Owner::Cache(name) => {
                let written = d.inner.store.update_cache(name, |c| {
                    if let Some(s) = c.status.as_mut() {
                        s.last_updated_time = now.clone();
                        events::record(&mut s.events, type_, reason, message, &now);
                    }
                });
                record::or_log(d, written, self, reason);
            }
            Owner::Disk(id) => {
                let written = d.inner.store.update_disk(id, |disk| {
                    if let Some(s) = disk.status.as_mut() {
                        events::record(&mut s.events, type_, reason, message, &now);
                    }
                });
                record::or_log(d, written, self, reason);
            }
        }
    }

    /// Records "NN%" where the owner shows progress (caches do; disks show their phase).
    pub fn progress(&self, d: &Daemon, pct: String) {
        if let Owner::Cache(name) = self {
            let written = d.inner.store.update_cache(name, |c| {
                if let Some(s) = c.status.as_mut() {
                    if s.progress != pct {
                        s.progress = pct;
                        s.last_updated_time = clock::now_string();
                    }
                }
            });
            record::or_log(d, written, self, "progress");
        }
    }
}
