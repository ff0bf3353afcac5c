//! /proc/self/mountinfo parsing: which mount points exist and in what order to undo them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Mount points in the order the kernel lists them (parents before children, older before
/// newer over the same point). Lines that do not parse are skipped: the kernel's format is
/// stable and a bad line can only come from a truncated read.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_mountinfo_field(field))))
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
pub fn unescape_mountinfo_field(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The source (the device, for a block filesystem) of the topmost mount exactly at `target`.
pub(super) fn source_of(text: &str, target: &Path) -> Option<PathBuf> {
    text.lines()
        .rfind(|line| {
            line.split(' ').nth(4).is_some_and(|m| {
                Path::new(&OsString::from_vec(unescape_mountinfo_field(m))) == target
            })
        })
        .and_then(source_field)
}

/// Every mount as (target, source), in the table's order.
pub(super) fn sources(text: &str) -> Vec<(PathBuf, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let target = line.split(' ').nth(4)?;
            let target = PathBuf::from(OsString::from_vec(unescape_mountinfo_field(target)));
            Some((target, source_field(line)?))
        })
        .collect()
}

fn source_field(line: &str) -> Option<PathBuf> {
    // After the optional fields, " - " leads fstype, source, super options.
    let (_, tail) = line.split_once(" - ")?;
    let source = tail.split(' ').nth(1)?;
    Some(PathBuf::from(OsString::from_vec(unescape_mountinfo_field(
        source,
    ))))
}

/// Mount points at or below `prefix`, deepest first; among mounts stacked on one point, the
/// newest (listed last) first, since only the top one can be unmounted.
pub(super) fn under(mounts: &[PathBuf], prefix: &Path) -> Vec<PathBuf> {
    let mut hits: Vec<(usize, &PathBuf)> = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.starts_with(prefix))
        .collect();
    hits.sort_by(|(ia, a), (ib, b)| {
        let depth = |p: &Path| p.components().count();
        depth(b).cmp(&depth(a)).then(ib.cmp(ia))
    });
    hits.into_iter().map(|(_, m)| m.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
80 27 7:1 / /tmp/x/mnt rw,relatime - xfs /dev/loop1 rw
81 80 7:2 / /tmp/x/mnt/img\\040one rw,relatime - ext4 /dev/loop2 rw
82 80 0:50 / /tmp/x/mnt/img\\040one/deep rw - tmpfs tmpfs rw
83 81 0:51 / /tmp/x/mnt/img\\040one rw - tmpfs tmpfs rw
84 27 0:52 / /tmp/xy rw - tmpfs tmpfs rw
";

    #[test]
    fn unescapes_octal() {
        assert_eq!(
            unescape_mountinfo_field("a\\040b\\011c\\134d"),
            b"a b\tc\\d"
        );
        assert_eq!(unescape_mountinfo_field("trailing\\04"), b"trailing\\04");
        assert_eq!(unescape_mountinfo_field("not\\999"), b"not\\999");
    }

    #[test]
    fn deepest_and_newest_first() {
        let mounts = parse_mountinfo(SAMPLE);
        let got = under(&mounts, Path::new("/tmp/x"));
        let want: Vec<PathBuf> = [
            "/tmp/x/mnt/img one/deep",
            "/tmp/x/mnt/img one",
            "/tmp/x/mnt/img one",
            "/tmp/x/mnt",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn source_of_topmost_mount() {
        let src = |t: &str| source_of(SAMPLE, Path::new(t));
        assert_eq!(src("/tmp/x/mnt"), Some(PathBuf::from("/dev/loop1")));
        // Two mounts on one point: the later one is on top.
        assert_eq!(src("/tmp/x/mnt/img one"), Some(PathBuf::from("tmpfs")));
        assert_eq!(src("/tmp/x"), None);
    }

    #[test]
    fn every_source_in_table_order() {
        let all = sources(SAMPLE);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[2],
            (
                PathBuf::from("/tmp/x/mnt/img one"),
                PathBuf::from("/dev/loop2")
            )
        );
        // The later of two mounts on one point comes later, as source_of's topmost.
        assert_eq!(all[4].1, PathBuf::from("tmpfs"));
    }

    #[test]
    fn prefix_matches_whole_components() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(
            under(&mounts, Path::new("/tmp/xy")),
            vec![PathBuf::from("/tmp/xy")]
        );
    }
}
