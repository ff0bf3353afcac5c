//! Named fault points, to prove the daemon survives a crash at any step that changes state.
//!
//! A point is a name; [`point`] is a no-op unless the process was started with
//! `IMAGECACHE_FAULT_POINT=<name>` (or `<name>:<n>`, the n-th time it is reached). When an
//! armed point is reached the process writes the name to stderr (and to the file
//! `IMAGECACHE_FAULT_FILE` names, if set) and sends itself SIGKILL: no destructor, no
//! unmount, no store write runs, exactly as an OOM kill or a power cut would leave things.
//!
//! Only tests and `scripts/crash-soak.sh` set the variable. It is read once; unset, a point
//! costs one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Arms one point: `<name>` or `<name>:<n>`.
pub const ENV: &str = "IMAGECACHE_FAULT_POINT";
/// Where the name of the point that fired is written (appended, one line).
pub const FILE_ENV: &str = "IMAGECACHE_FAULT_FILE";

/// Every fault point, so a test can iterate them. Each one names the step that has just
/// been done (or is about to be) when the process dies there.
pub const POINTS: &[&str] = &[
    // Build: the image file exists, not yet formatted.
    "build.mkfs",
    // Build: a layer has been unpacked into the mounted work image (`:n` for the n-th).
    "build.layer",
    // Build: every layer is in, the image still mounted with dirty pages.
    "build.sync",
    // Build: unmounted and detached, not yet densified or checked.
    "build.unmount",
    // Build: densified, before e2fsck and hashing.
    "build.fsck",
    // Build: hashed, before the snapshot is committed.
    "build.hash",
    // Build: the snapshot committed, no cache has taken its reference yet.
    "build.commit",
    // Build: the reference taken, the cache not yet marked Ready.
    "build.ready",
    // Disk create: the snapshot's image at the disk's size ready (a grown image made when
    // the disk is larger than the cache), not yet cloned.
    "disk.grow",
    // Disk create: the disk's file cloned (or formatted), not yet attached.
    "disk.clone",
    // Disk create: attached to a loop device, not mounted.
    "disk.attach",
    // Disk create: mounted, not yet recorded in the store.
    "disk.mount",
    // Disk delete: unmounted, detached and its file removed, the record still there.
    "disk.delete",
    // Cache delete: the record gone, its snapshot reference not yet given back.
    "cache.delete",
    // Retention: an expired cache chosen, not yet deleted.
    "gc.collect",
    // Snapshotter Prepare: the record written, its directories not yet made.
    "snapshotter.prepare",
    // Snapshotter Commit: committed in the store, the work directory not yet removed.
    "snapshotter.commit",
    // Snapshotter Remove: the record gone, its directories not yet removed.
    "snapshotter.remove",
];

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn from_env() -> Option<Armed> {
    let value = std::env::var(ENV).ok()?;
    let (name, nth) = match value.rsplit_once(':') {
        Some((name, n)) => (name, n.parse().unwrap_or(1)),
        None => (value.as_str(), 1),
    };
    if !POINTS.contains(&name) {
        // A typo would otherwise make a crash test pass without crashing.
        eprintln!("{ENV}={value}: no such fault point; known: {POINTS:?}");
        std::process::exit(2);
    }
    Some(Armed {
        name: name.to_owned(),
        nth: nth.max(1),
        hits: AtomicU64::new(0),
    })
}

/// Reads the variable now, so a bad name stops the daemon at start rather than mid-way.
pub fn init() {
    ARMED.get_or_init(from_env);
}

/// The process dies here if `name` is the armed point (and this is its n-th hit).
#[inline]
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unlisted fault point {name}");
    if let Some(armed) = ARMED.get_or_init(from_env) {
        if armed.name == name && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
            fire(name);
        }
    }
}

fn fire(name: &str) -> ! {
    let line = format!("fault point {name} reached: killing the process\n");
    if let Ok(path) = std::env::var(FILE_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = std::io::Write::write_all(&mut f, format!("{name}\n").as_bytes());
        }
    }
    // Std's stderr is unbuffered and bypasses tracing: the line is out before the kill.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; this only runs if the kill call itself failed.
    std::process::abort()
}
