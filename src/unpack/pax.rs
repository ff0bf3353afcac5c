//! PAX extended header records, found by their length prefix.
//!
//! A record is `<len> <key>=<value>\n`, `<len>` counting the whole record including its own
//! digits. A value is arbitrary bytes: a binary xattr such as `security.capability` may hold
//! `\n` or `=`, and Go's archive/tar (docker, BuildKit) writes it as is. So a record ends
//! where its length says and nowhere else; tar 0.4's iterator splits on newlines instead and
//! refuses such layers, which is why this parser exists.

use crate::sys::fsops::Time;

use super::meta::parse_pax_time;

/// PAX records carrying xattrs, as GNU tar, Go's archive/tar and BuildKit write them.
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Admin xattrs, which containerd 1.6 never sets from a layer tar (archive's `setxattr`
/// refuses them and the entry goes on without), so neither does a layer here. Among them is
/// overlayfs's own bookkeeping, which a layer may only express through whiteout files:
/// taken from a tar as raw xattrs, `redirect`/`metacopy`/`origin` would make the overlay
/// read another path's data. The unpacker's own opaque markers are not from the tar.
const TRUSTED_XATTR_PREFIX: &[u8] = b"trusted.";
/// GNU tar's PAX encodings of sparse files (formats 0.x and 1.0) keep the sparse map in
/// records or in the data; applying the data as is would write the map into the file.
const GNU_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";

/// Why an extended header could not be read, worded to follow "layer entry `<name>`".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PaxError {
    #[error(
        "has a PAX record at byte {offset} of its extended header that does not start with \
         a decimal length and a space"
    )]
    BadLength { offset: usize },
    #[error(
        "has a PAX record at byte {offset} of its extended header whose length {len} runs \
         past the {available} bytes left in the header"
    )]
    Overrun {
        offset: usize,
        len: usize,
        available: usize,
    },
    #[error(
        "has a PAX record at byte {offset} of its extended header that does not end in a \
         newline where its length says it ends"
    )]
    NoNewline { offset: usize },
    #[error(
        "has a PAX record at byte {offset} of its extended header without a `key=` (empty \
         key, or a NUL in it)"
    )]
    BadKey { offset: usize },
    #[error("has a PAX `{key}` record whose value is not a decimal number")]
    BadNumber { key: &'static str },
    #[error("has a PAX `{key}` record containing a NUL byte")]
    NulInName { key: &'static str },
    #[error(
        "is a sparse file in GNU tar's PAX sparse format, which OCI layers do not use: \
         rebuild the image without `tar --sparse`"
    )]
    GnuSparse,
}

/// The records of one extended header's data, in order, as (key, value).
pub(crate) fn records(data: &[u8]) -> Records<'_> {
    Records { data, offset: 0 }
}

pub(crate) struct Records<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), PaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.offset..];
        if rest.is_empty() {
            return None;
        }
        let result = split_record(rest, self.offset);
        // After an error nothing further can be located, so the iteration ends.
        self.offset = match result {
            Ok((_, _, len)) => self.offset + len,
            Err(_) => self.data.len(),
        };
        Some(result.map(|(key, value, _)| (key, value)))
    }
}

/// Split the record at the start of `rest` into key, value and its total length.
fn split_record(rest: &[u8], offset: usize) -> Result<(&[u8], &[u8], usize), PaxError> {
    let bad_length = PaxError::BadLength { offset };
    // 20 digits hold any usize; a longer length field is garbage, not a huge record.
    let space = rest
        .iter()
        .take(21)
        .position(|&b| b == b' ')
        .ok_or(bad_length.clone())?;
    if space == 0 {
        return Err(bad_length);
    }
    let mut len: usize = 0;
    for &d in &rest[..space] {
        if !d.is_ascii_digit() {
            return Err(bad_length);
        }
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(d - b'0')))
            .ok_or(bad_length.clone())?;
    }
    if len > rest.len() {
        return Err(PaxError::Overrun {
            offset,
            len,
            available: rest.len(),
        });
    }
    // The record must reach past its length field and end in the newline.
    if len <= space + 1 || rest[len - 1] != b'\n' {
        return Err(PaxError::NoNewline { offset });
    }
    let body = &rest[space + 1..len - 1];
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .ok_or(PaxError::BadKey { offset })?;
    let (key, value) = (&body[..eq], &body[eq + 1..]);
    // Go's archive/tar refuses these too; an xattr name cannot hold a NUL anyway.
    if key.is_empty() || key.contains(&0) {
        return Err(PaxError::BadKey { offset });
    }
    Ok((key, value, len))
}

/// What an entry's extended header overrides in its ustar header, and its xattrs.
#[derive(Debug, Default)]
pub(crate) struct PaxFields {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<Time>,
    pub atime: Option<Time>,
    /// (name, value), overlayfs's own names already dropped.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PaxFields {
    pub(crate) fn clear(&mut self) {
        self.path = None;
        self.linkpath = None;
        self.size = None;
        self.uid = None;
        self.gid = None;
        self.mtime = None;
        self.atime = None;
        self.xattrs.clear();
    }

    /// Take in the records of a per-entry (`x`) extended header. Keys this unpacker has no
    /// use for (`uname`, `gname`, `ctime`, vendor keys) are skipped. An empty value removes
    /// the override, as POSIX specifies, leaving the header field in force.
    pub(crate) fn parse(&mut self, data: &[u8]) -> Result<(), PaxError> {
        for record in records(data) {
            let (key, value) = record?;
            if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                if name.starts_with(TRUSTED_XATTR_PREFIX) {
                    tracing::warn!(
                        xattr = %String::from_utf8_lossy(name),
                        "dropping a trusted.* xattr carried in a layer tar, as containerd does"
                    );
                    continue;
                }
                self.xattrs.push((name.to_vec(), value.to_vec()));
                continue;
            }
            if key.starts_with(GNU_SPARSE_PREFIX) {
                return Err(PaxError::GnuSparse);
            }
            match key {
                b"path" => self.path = name(value, "path")?,
                b"linkpath" => self.linkpath = name(value, "linkpath")?,
                b"size" => self.size = number(value, "size")?,
                b"uid" => self.uid = number(value, "uid")?,
                b"gid" => self.gid = number(value, "gid")?,
                // An unreadable time falls back to the header's whole seconds, as before
                // this parser existed; times are not worth refusing a layer over.
                b"mtime" => self.mtime = parse_pax_time(value),
                b"atime" => self.atime = parse_pax_time(value),
                _ => {}
            }
        }
        Ok(())
    }
}

fn name(value: &[u8], key: &'static str) -> Result<Option<Vec<u8>>, PaxError> {
    if value.contains(&0) {
        return Err(PaxError::NulInName { key });
    }
    Ok((!value.is_empty()).then(|| value.to_vec()))
}

fn number(value: &[u8], key: &'static str) -> Result<Option<u64>, PaxError> {
    if value.is_empty() {
        return Ok(None);
    }
    // Digits only: `str::parse` would also take a leading `+`, which Go's reader refuses.
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(PaxError::BadNumber { key });
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or(PaxError::BadNumber { key })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record with its length computed the way writers do (the length counts itself).
    fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len += 1;
        }
        let mut r = format!("{len} ").into_bytes();
        r.extend_from_slice(key);
        r.push(b'=');
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn all(data: &[u8]) -> Result<Pairs, PaxError> {
        records(data)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }

    #[test]
    fn binary_values_with_newlines_and_equals() {
        let value = b"\x01\x00\n=\n\n9 x=y\n\xff=";
        let data = record(b"SCHILY.xattr.security.capability", value);
        assert_eq!(
            all(&data).unwrap(),
            vec![(b"SCHILY.xattr.security.capability".to_vec(), value.to_vec())]
        );
    }

    #[test]
    fn records_back_to_back() {
        let mut data = record(b"path", b"a/b");
        data.extend(record(b"SCHILY.xattr.user.bin", b"\n\n"));
        data.extend(record(b"mtime", b"1.5"));
        // Exactly 9 and 10 bytes long: the length's digit count changes at the boundary.
        data.extend(b"9 k=vvvv\n");
        data.extend(b"10 k=vvvv\n");
        let got = all(&data).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(
            keys,
            [&b"path"[..], b"SCHILY.xattr.user.bin", b"mtime", b"k", b"k"]
        );
        assert_eq!(got[1].1, b"\n\n");
        assert_eq!(got[3].1, b"vvvv");
        assert_eq!(got[4].1, b"vvvv");
    }

    #[test]
    fn malformed_lengths_are_refused() {
        for data in [
            &b"x k=v\n"[..],
            b" 6 k=v\n",
            b"k=v\n",
            b"+6 k=v\n",
            b"6k=v\n",
        ] {
            assert_eq!(
                all(data),
                Err(PaxError::BadLength { offset: 0 }),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        // Too short to reach past its own length field.
        assert_eq!(all(b"2 "), Err(PaxError::NoNewline { offset: 0 }));
        // The length lands one byte short of the newline.
        assert_eq!(all(b"6 k=vv\n"), Err(PaxError::NoNewline { offset: 0 }));
        assert_eq!(all(b"5 kv\n"), Err(PaxError::BadKey { offset: 0 }));
        assert_eq!(all(b"5 =v\n"), Err(PaxError::BadKey { offset: 0 }));
        assert_eq!(
            all(b"99999999999999999999999 k=v\n"),
            Err(PaxError::BadLength { offset: 0 })
        );
        // The error names where the bad record starts.
        let mut data = record(b"k", b"v");
        data.extend(b"junk\n");
        assert_eq!(all(&data), Err(PaxError::BadLength { offset: 6 }));
    }

    #[test]
    fn a_length_overrunning_the_data_is_refused() {
        let mut data = record(b"k", b"v");
        data.extend(b"30 key=value\n");
        assert_eq!(
            all(&data),
            Err(PaxError::Overrun {
                offset: 6,
                len: 30,
                available: 13
            })
        );
        let message = PaxError::Overrun {
            offset: 6,
            len: 30,
            available: 13,
        }
        .to_string();
        assert!(message.contains("runs past"), "{message}");
    }

    #[test]
    fn fields_are_taken_and_empty_values_unset() {
        let mut data = record(b"path", b"long/name");
        data.extend(record(b"linkpath", b""));
        data.extend(record(b"size", b"10737418240"));
        data.extend(record(b"uid", b"3000000"));
        data.extend(record(b"gid", b""));
        data.extend(record(b"mtime", b"1700000000.5"));
        data.extend(record(b"uname", b"whoever"));
        data.extend(record(b"SCHILY.xattr.user.bin", b"a\nb"));
        data.extend(record(b"SCHILY.xattr.trusted.overlay.redirect", b"/x"));
        data.extend(record(b"SCHILY.xattr.trusted.bin", b"\x00\n"));
        let mut f = PaxFields::default();
        f.parse(&data).unwrap();
        assert_eq!(f.path.as_deref(), Some(&b"long/name"[..]));
        assert_eq!(f.linkpath, None);
        assert_eq!(f.size, Some(10 << 30));
        assert_eq!((f.uid, f.gid), (Some(3_000_000), None));
        assert_eq!(
            f.mtime,
            Some(Time {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(f.xattrs, vec![(b"user.bin".to_vec(), b"a\nb".to_vec())]);
        f.clear();
        assert!(f.path.is_none() && f.size.is_none() && f.xattrs.is_empty());
    }

    #[test]
    fn bad_field_values_are_refused() {
        let mut f = PaxFields::default();
        assert_eq!(
            f.parse(&record(b"size", b"12x")),
            Err(PaxError::BadNumber { key: "size" })
        );
        assert_eq!(
            f.parse(&record(b"uid", b"+1")),
            Err(PaxError::BadNumber { key: "uid" })
        );
        assert_eq!(
            f.parse(&record(b"path", b"a\0b")),
            Err(PaxError::NulInName { key: "path" })
        );
        assert_eq!(
            f.parse(&record(b"GNU.sparse.major", b"1")),
            Err(PaxError::GnuSparse)
        );
    }
}
