//! An entry's ownership, mode, times and xattrs, read from its header and PAX records.

use std::io;

use super::pax::PaxFields;
use crate::sys::fsops::Time;

#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub atime: Time,
    pub mtime: Time,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// (name, value); reused across entries to avoid reallocating.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a header could not be read, worded to follow "layer entry `<name>`". 2^32-1 is
/// chown's "leave unchanged": such an owner could never be given, and the entry would stay
/// root's.
pub(crate) const ID_RANGE: &str = "has a uid or gid of 2^32-1 or more";

/// An owner id chown can set.
fn owner_id(raw: u64) -> Result<u32, MetaError> {
    u32::try_from(raw)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or(MetaError::Invalid(ID_RANGE))
}

pub(crate) enum MetaError {
    Io(io::Error),
    Invalid(&'static str),
}

impl From<io::Error> for MetaError {
    fn from(e: io::Error) -> Self {
        MetaError::Io(e)
    }
}

impl Meta {
    /// Fill from an entry's header and PAX fields, replacing what the previous entry left;
    /// the xattrs are moved out of `pax`. Device numbers are only read for device entries:
    /// writers leave the fields blank on everything else.
    pub(crate) fn read_from(
        &mut self,
        header: &tar::Header,
        pax: &mut PaxFields,
        device: bool,
    ) -> Result<(), MetaError> {
        // A writer that puts an id in PAX may leave the header field unreadable (Go writes
        // 0), so the header is only consulted without one.
        let uid = match pax.uid {
            Some(uid) => uid,
            None => header.uid()?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => header.gid()?,
        };
        self.uid = owner_id(uid)?;
        self.gid = owner_id(gid)?;
        // Some writers put the file type bits into the mode field as well.
        self.mode = header.mode()? & 0o7777;
        self.mtime = match pax.mtime {
            // Sub-second precision only exists here.
            Some(t) => t,
            None => Time {
                secs: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
                nanos: 0,
            },
        };
        (self.dev_major, self.dev_minor) = if device {
            (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        self.xattrs.clear();
        self.xattrs.append(&mut pax.xattrs);
        // containerd sets atime to the later of atime and mtime.
        self.atime = match pax.atime {
            Some(a) if (a.secs, a.nanos) > (self.mtime.secs, self.mtime.nanos) => a,
            _ => self.mtime,
        };
        Ok(())
    }
}

/// A PAX time: decimal seconds, optionally negative, optionally with a fraction.
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    let mut scale = 100_000_000;
    for c in frac.bytes() {
        if !c.is_ascii_digit() {
            return None;
        }
        // Digits past nanoseconds are truncated, as Go's archive/tar does.
        nanos += u32::from(c - b'0') * scale;
        scale /= 10;
    }
    Some(match (negative, nanos) {
        (false, _) => Time { secs, nanos },
        (true, 0) => Time {
            secs: -secs,
            nanos: 0,
        },
        (true, n) => Time {
            secs: -secs - 1,
            nanos: 1_000_000_000 - n,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"12.1234567899"),
            Some(Time {
                secs: 12,
                nanos: 123_456_789
            })
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Time {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(parse_pax_time(b"42"), Some(Time { secs: 42, nanos: 0 }));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn owners_chown_cannot_set_are_refused() {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(0o644);
        header.set_mtime(0);
        for (uid, gid, ok) in [
            (u64::from(u32::MAX) - 1, 0, true),
            (0, u64::from(u32::MAX) - 1, true),
            (u64::from(u32::MAX), 0, false),
            (0, u64::from(u32::MAX), false),
            (1 << 32, 0, false),
        ] {
            let mut pax = PaxFields {
                uid: Some(uid),
                gid: Some(gid),
                ..PaxFields::default()
            };
            let got = Meta::default().read_from(&header, &mut pax, false);
            assert_eq!(
                matches!(got, Ok(())),
                ok,
                "uid {uid} gid {gid}: {:?}",
                got.err().map(|e| match e {
                    MetaError::Invalid(m) => m.to_string(),
                    MetaError::Io(e) => e.to_string(),
                })
            );
        }
    }
}
