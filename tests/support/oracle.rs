//! oracle: what the kernel says is attached and mounted, read without any of imagecache's
//! code. Leak checks judge the product, so they must not share its parsers: a bug in
//! `sys::loop_devices` or the mountinfo parser would otherwise hide the very leak it caused.
//! Loop devices come from util-linux's `losetup --json --list`; mounts from
//! `/proc/self/mountinfo`, parsed here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One attached loop device as `losetup` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedLoop {
    pub device: String,
    /// The backing file, without the " (deleted)" losetup adds for an unlinked one.
    pub backing_file: PathBuf,
}

/// Every attached loop device on the machine.
pub fn attached_loops() -> Vec<AttachedLoop> {
    let out = Command::new("losetup")
        .args(["--json", "--list", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("run losetup");
    assert!(
        out.status.success(),
        "losetup --json --list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_losetup_json(&String::from_utf8_lossy(&out.stdout))
}

/// `losetup --json` prints nothing at all when no device is attached.
pub fn parse_losetup_json(text: &str) -> Vec<AttachedLoop> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(text).expect("losetup's JSON");
    v["loopdevices"]
        .as_array()
        .expect("losetup JSON has loopdevices")
        .iter()
        .map(|d| {
            let back = d["back-file"].as_str().unwrap_or_default();
            AttachedLoop {
                device: d["name"].as_str().unwrap_or_default().to_owned(),
                backing_file: PathBuf::from(back.strip_suffix(" (deleted)").unwrap_or(back)),
            }
        })
        .collect()
}

/// Every mount point of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    parse_mountinfo_points(&text)
}

/// Field 5 of each line is the mount point, with space, tab, newline and backslash written
/// as octal escapes (proc_pid_mountinfo(5)).
pub fn parse_mountinfo_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if escaped {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Loop devices whose backing file, and mounts whose mount point, lie under `prefix`
/// (the prefix itself included).
pub fn held_under(prefix: &Path) -> (Vec<AttachedLoop>, Vec<PathBuf>) {
    let loops = attached_loops()
        .into_iter()
        .filter(|l| l.backing_file.starts_with(prefix))
        .collect();
    let mounts = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(prefix))
        .collect();
    (loops, mounts)
}
