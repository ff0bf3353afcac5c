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
//!
//! Errno points make a syscall fail instead of the process: with
//! `IMAGECACHE_FAULT_ERRNO=<point>:<ERRNO>[,<point>:<ERRNO>...]` (say `loop.claim:ENOSPC` or
//! `loop.attach:EBUSY`), [`errno`] answers that errno every time the point is reached, and
//! the real implementation in `sys` (LinuxSys) returns it in place of the kernel's answer
//! at that very call. Everything above it (retries, error wording, clean-up, the API's
//! answer) runs for real: the way to show what the daemon does when the kernel runs out of
//! loop devices, which cannot be caused on a shared host without taking every device from
//! everyone else. Unknown points or errno names stop the daemon at start. Read once; unset,
//! a point costs one atomic load. Only tests set it.
//!
//! Delay points make a step slow instead: with `IMAGECACHE_FAULT_DELAY=<point>:<ms>`,
//! [`delay`] sleeps that long each time the point is reached. The way to hold the daemon in
//! a state that lasts only moments on a real node (disks still being adopted after a
//! restart) long enough for a test to see what a caller sees then. Only tests set it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rustix::io::Errno;

use crate::errname;

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
    // Import of a shared snapshot: a chunk written to the partial image (`:n` for the n-th).
    "import.chunk",
    // Import: the snapshot committed, no cache has taken its reference yet.
    "import.commit",
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
    // Inside the loop attach call (LinuxSys): the kernel bound the file to the device, the
    // caller not yet told which (`:n` for the n-th attach).
    "loop.attached",
    // Inside the mount calls (LinuxSys, plain and beneath a root): mounted, the caller not
    // yet told (`:n` for the n-th mount).
    "mount.mounted",
    // Snapshot commit: the image renamed into the staging directory, no manifest beside it.
    "snapshot.staged",
    // Snapshot commit: the staging directory renamed to the digest's, the rename not synced.
    "snapshot.renamed",
    // Snapshotter Prepare: the record written, its directories not yet made.
    "snapshotter.prepare",
    // Snapshotter Commit: committed in the store, the work directory not yet removed.
    "snapshotter.commit",
    // Snapshotter Remove: the record gone, its directories not yet removed.
    "snapshotter.remove",
];

/// Arms errno points: `<point>:<ERRNO>`, several separated by commas.
pub const ERRNO_ENV: &str = "IMAGECACHE_FAULT_ERRNO";

/// Every errno point: a syscall in `sys` that answers the armed errno instead of running.
pub const ERRNO_POINTS: &[&str] = &[
    // LOOP_CTL_GET_FREE, asking the kernel for a free loop device (ENOSPC or ENODEV: it has
    // none left to give).
    "loop.claim",
    // LOOP_CONFIGURE, binding a file to the device just claimed (EBUSY: another process
    // bound it first).
    "loop.attach",
];

static ERRNOS: OnceLock<Vec<(&'static str, Errno)>> = OnceLock::new();

/// Parses an [`ERRNO_ENV`] value into (point, errno) pairs; an empty value arms nothing.
pub fn parse_errnos(value: &str) -> Result<Vec<(&'static str, Errno)>, String> {
    let mut armed = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((point, name)) = item.split_once(':') else {
            return Err(format!("{item:?} is not <point>:<ERRNO>"));
        };
        let Some(&point) = ERRNO_POINTS.iter().find(|p| **p == point) else {
            return Err(format!(
                "{point:?} is no errno point; known: {ERRNO_POINTS:?}"
            ));
        };
        let Some(errno) = errname::parse(name) else {
            let known: Vec<_> = errname::known().collect();
            return Err(format!("{name:?} is no errno name; known: {known:?}"));
        };
        if armed.iter().any(|(p, _)| *p == point) {
            return Err(format!("{point:?} is armed twice"));
        }
        armed.push((point, errno));
    }
    Ok(armed)
}

fn errnos_from_env() -> Vec<(&'static str, Errno)> {
    let Ok(value) = std::env::var(ERRNO_ENV) else {
        return Vec::new();
    };
    match parse_errnos(&value) {
        Ok(armed) => {
            for (point, errno) in &armed {
                tracing::warn!(
                    point,
                    errno = errname::name(*errno),
                    "{ERRNO_ENV}: this call will fail every time"
                );
            }
            armed
        }
        Err(e) => {
            // A typo would otherwise make a fault test pass without any fault.
            eprintln!("{ERRNO_ENV}={value}: {e}");
            std::process::exit(2);
        }
    }
}

/// The errno the point `name` is armed with, which the caller returns instead of making
/// the real call; `None` (the only answer outside tests) to make it.
#[inline]
pub fn errno(name: &'static str) -> Option<Errno> {
    debug_assert!(ERRNO_POINTS.contains(&name), "unlisted errno point {name}");
    let armed = ERRNOS.get_or_init(errnos_from_env);
    if armed.is_empty() {
        return None;
    }
    armed.iter().find(|(p, _)| *p == name).map(|(_, e)| *e)
}

/// Arms one delay point: `<point>:<milliseconds>`.
pub const DELAY_ENV: &str = "IMAGECACHE_FAULT_DELAY";

/// Every delay point: a step that sleeps the armed time each time it is reached.
pub const DELAY_POINTS: &[&str] = &[
    // Restart: one disk about to be adopted (checked and, if need be, put back).
    "disk.adopt",
];

static DELAY: OnceLock<Option<(&'static str, std::time::Duration)>> = OnceLock::new();

/// Parses a [`DELAY_ENV`] value.
pub fn parse_delay(value: &str) -> Result<(&'static str, std::time::Duration), String> {
    let Some((point, ms)) = value.trim().split_once(':') else {
        return Err(format!("{value:?} is not <point>:<milliseconds>"));
    };
    let Some(&point) = DELAY_POINTS.iter().find(|p| **p == point) else {
        return Err(format!(
            "{point:?} is no delay point; known: {DELAY_POINTS:?}"
        ));
    };
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("{ms:?} is not a number of milliseconds"))?;
    Ok((point, std::time::Duration::from_millis(ms)))
}

fn delay_from_env() -> Option<(&'static str, std::time::Duration)> {
    let value = std::env::var(DELAY_ENV).ok()?;
    match parse_delay(&value) {
        Ok(armed) => {
            tracing::warn!(
                point = armed.0,
                ms = armed.1.as_millis() as u64,
                "{DELAY_ENV}: this step will be slowed"
            );
            Some(armed)
        }
        Err(e) => {
            // A typo would otherwise make a test pass without the state it means to hold.
            eprintln!("{DELAY_ENV}={value}: {e}");
            std::process::exit(2);
        }
    }
}

/// Sleeps the armed time if `name` is the armed delay point; nothing (the only case outside
/// tests) otherwise.
#[inline]
pub fn delay(name: &'static str) {
    debug_assert!(DELAY_POINTS.contains(&name), "unlisted delay point {name}");
    if let Some((point, wait)) = DELAY.get_or_init(delay_from_env) {
        if *point == name {
            std::thread::sleep(*wait);
        }
    }
}

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
    ERRNOS.get_or_init(errnos_from_env);
    DELAY.get_or_init(delay_from_env);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_points_parse() {
        assert_eq!(parse_errnos(""), Ok(vec![]));
        assert_eq!(
            parse_errnos("loop.claim:ENOSPC"),
            Ok(vec![("loop.claim", Errno::NOSPC)])
        );
        assert_eq!(
            parse_errnos("loop.attach:EBUSY, loop.claim:ENODEV,"),
            Ok(vec![
                ("loop.attach", Errno::BUSY),
                ("loop.claim", Errno::NODEV)
            ])
        );
    }

    #[test]
    fn bad_errno_points_are_refused_naming_what_is_known() {
        let e = parse_errnos("loop.claim").unwrap_err();
        assert!(e.contains("<point>:<ERRNO>"), "{e}");
        let e = parse_errnos("loop.clam:ENOSPC").unwrap_err();
        assert!(e.contains("loop.claim") && e.contains("loop.attach"), "{e}");
        let e = parse_errnos("loop.claim:ENOSPACE").unwrap_err();
        assert!(e.contains("ENOSPC"), "{e}");
        let e = parse_errnos("loop.claim:28").unwrap_err();
        assert!(e.contains("no errno name"), "{e}");
        let e = parse_errnos("loop.claim:ENOSPC,loop.claim:EBUSY").unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn delay_points_parse() {
        assert_eq!(
            parse_delay("disk.adopt:250"),
            Ok(("disk.adopt", std::time::Duration::from_millis(250)))
        );
        assert!(parse_delay("disk.adopt").unwrap_err().contains("<point>"));
        assert!(parse_delay("disk.adopted:1")
            .unwrap_err()
            .contains("disk.adopt"));
        assert!(parse_delay("disk.adopt:1s")
            .unwrap_err()
            .contains("milliseconds"));
    }

    #[test]
    fn unset_errno_points_answer_nothing() {
        // The unit tests never set the variable.
        if std::env::var_os(ERRNO_ENV).is_none() {
            assert_eq!(errno("loop.claim"), None);
            assert_eq!(errno("loop.attach"), None);
        }
    }
}
