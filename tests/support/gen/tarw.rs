//! A tar writer with byte-level control over names: the `tar` crate's `Builder` normalises
//! and validates paths (it refuses "../evil") and picks the long-name encoding itself, but
//! the test kit must produce exactly the encodings and hostile names real layers contain.

use std::io::{self, Write};

use super::model::{Body, NameStyle, TarEntry};

const BLOCK: usize = 512;

pub struct TarWriter<W: Write> {
    w: W,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Magic {
    Ustar,
    Gnu,
}

/// The fixed fields of one header; names are raw bytes, truncated to their fields.
struct Fields<'a> {
    magic: Magic,
    name: &'a [u8],
    prefix: &'a [u8],
    link: &'a [u8],
    typeflag: u8,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    dev: (u32, u32),
}

fn header(f: &Fields<'_>) -> tar::Header {
    let mut h = match f.magic {
        Magic::Ustar => tar::Header::new_ustar(),
        Magic::Gnu => tar::Header::new_gnu(),
    };
    {
        let b = h.as_mut_bytes();
        copy_field(&mut b[0..100], f.name);
        copy_field(&mut b[157..257], f.link);
        if f.magic == Magic::Ustar {
            copy_field(&mut b[345..500], f.prefix);
        }
    }
    h.set_mode(f.mode);
    h.set_uid(f.uid.into());
    h.set_gid(f.gid.into());
    h.set_size(f.size);
    h.set_mtime(f.mtime);
    h.set_entry_type(tar::EntryType::new(f.typeflag));
    h.set_device_major(f.dev.0).unwrap();
    h.set_device_minor(f.dev.1).unwrap();
    h.set_cksum();
    h
}

fn copy_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Splits a path into ustar (prefix, name) at a '/', if it fits in 155 + 100 bytes.
fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    path.iter()
        .enumerate()
        .filter(|(i, c)| **c == b'/' && *i <= 155 && path.len() - i - 1 <= 100 && *i > 0)
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .next()
}

/// One PAX record: "<len> <key>=<value>\n", where <len> counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parses PAX extended header records by their length prefix. The `tar` crate (0.4.46)
/// splits records on '\n' instead, so a binary xattr value containing 0x0a makes it fail
/// with "malformed pax extension"; this is the reference reading for such values.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let bad = || io::Error::other("malformed PAX record");
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len > data.len() || len < sp + 2 || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let key = String::from_utf8(rec[..eq].to_vec()).map_err(|_| bad())?;
        out.push((key, rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> TarWriter<W> {
        TarWriter { w }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Writes one header block and `data` padded to a block.
    fn block(&mut self, f: &Fields<'_>, data: &[u8]) -> io::Result<()> {
        self.w.write_all(header(f).as_bytes())?;
        self.w.write_all(data)?;
        self.pad(data.len() as u64)
    }

    /// Zero padding after `len` bytes of entry data.
    pub fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// A metadata pseudo-entry ('x' PAX or 'L'/'K' GNU) carrying `data`.
    fn meta(&mut self, magic: Magic, name: &[u8], typeflag: u8, data: &[u8]) -> io::Result<()> {
        let f = Fields {
            magic,
            name,
            prefix: &[],
            link: &[],
            typeflag,
            size: data.len() as u64,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            dev: (0, 0),
        };
        self.block(&f, data)
    }

    /// Writes a whole entry from the model.
    pub fn entry(&mut self, e: &TarEntry) -> io::Result<()> {
        let name = e.tar_name();
        let (typeflag, data, link, dev): (u8, &[u8], &str, (u32, u32)) = match &e.body {
            Body::File(d) => (b'0', d, "", (0, 0)),
            Body::Whiteout | Body::Opaque => (b'0', &[], "", (0, 0)),
            Body::Dir => (b'5', &[], "", (0, 0)),
            Body::Symlink(t) => (b'2', &[], t, (0, 0)),
            Body::Hardlink(t) => (b'1', &[], t, (0, 0)),
            Body::Char(a, b) => (b'3', &[], "", (*a, *b)),
            Body::Block(a, b) => (b'4', &[], "", (*a, *b)),
            Body::Fifo => (b'6', &[], "", (0, 0)),
        };
        self.entry_raw(e, name.as_bytes(), typeflag, link.as_bytes(), dev, data)
    }

    fn entry_raw(
        &mut self,
        e: &TarEntry,
        name: &[u8],
        typeflag: u8,
        link: &[u8],
        dev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let mut pax = Vec::new();
        let magic = if e.names == NameStyle::Gnu {
            Magic::Gnu
        } else {
            Magic::Ustar
        };
        let (mut prefix, mut short): (&[u8], &[u8]) = (&[], name);
        match e.names {
            NameStyle::Gnu => {
                if name.len() > 100 {
                    let mut n = name.to_vec();
                    n.push(0);
                    self.meta(Magic::Gnu, b"././@LongLink", b'L', &n)?;
                }
                if link.len() > 100 {
                    let mut n = link.to_vec();
                    n.push(0);
                    self.meta(Magic::Gnu, b"././@LongLink", b'K', &n)?;
                }
            }
            NameStyle::Pax => {
                pax_record(&mut pax, "path", name);
                if !link.is_empty() {
                    pax_record(&mut pax, "linkpath", link);
                }
            }
            NameStyle::Auto => {
                match ustar_split(name) {
                    Some((p, n)) => (prefix, short) = (p, n),
                    None => pax_record(&mut pax, "path", name),
                }
                if link.len() > 100 {
                    pax_record(&mut pax, "linkpath", link);
                }
            }
        }
        for (k, v) in &e.xattrs {
            pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
        }
        if !pax.is_empty() {
            // Go names these "<dir>/PaxHeaders.0/<base>"; readers ignore the name.
            let base = name
                .rsplit(|c| *c == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"x");
            let mut pax_name = b"PaxHeaders.0/".to_vec();
            pax_name.extend_from_slice(&base[..base.len().min(80)]);
            self.meta(Magic::Ustar, &pax_name, b'x', &pax)?;
        }
        let f = Fields {
            magic,
            name: short,
            prefix,
            link,
            typeflag,
            size: data.len() as u64,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            dev,
        };
        self.block(&f, data)
    }

    /// Header of a regular file whose `size` bytes the caller then writes through
    /// `get_mut()`, followed by `pad(size)`: for content too large to hold.
    pub fn file_header(
        &mut self,
        name: &str,
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u64,
    ) -> io::Result<()> {
        let (prefix, short) = ustar_split(name.as_bytes()).expect("name too long for ustar");
        // Sizes past ustar's 8 GiB octal field need GNU's base-256 size (which `set_size`
        // writes); GNU headers have no prefix field, so such names must fit in 100 bytes.
        let magic = if size >= 1 << 33 {
            assert!(
                prefix.is_empty(),
                "name of a huge file must fit in 100 bytes"
            );
            Magic::Gnu
        } else {
            Magic::Ustar
        };
        let f = Fields {
            magic,
            name: short,
            prefix,
            link: &[],
            typeflag: b'0',
            size,
            mode,
            uid,
            gid,
            mtime,
            dev: (0, 0),
        };
        self.w.write_all(header(&f).as_bytes())
    }

    /// A plain directory entry (`name` ends with '/'), for streaming generators.
    pub fn dir_header(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.simple_header(name, b'5', "", mode, 0, 1_690_000_000)
    }

    /// A symlink entry, for streaming generators.
    pub fn symlink_header(&mut self, name: &str, target: &str, mtime: u64) -> io::Result<()> {
        self.simple_header(name, b'2', target, 0o777, 0, mtime)
    }

    /// An empty regular file entry, e.g. a whiteout `.wh.<name>`.
    pub fn empty_file_header(&mut self, name: &str, mtime: u64) -> io::Result<()> {
        self.simple_header(name, b'0', "", 0o644, 0, mtime)
    }

    fn simple_header(
        &mut self,
        name: &str,
        typeflag: u8,
        link: &str,
        mode: u32,
        size: u64,
        mtime: u64,
    ) -> io::Result<()> {
        let (prefix, short) = ustar_split(name.as_bytes()).expect("name too long for ustar");
        assert!(link.len() <= 100, "link target too long for ustar");
        let f = Fields {
            magic: Magic::Ustar,
            name: short,
            prefix,
            link: link.as_bytes(),
            typeflag,
            size,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            dev: (0, 0),
        };
        self.w.write_all(header(&f).as_bytes())
    }

    /// The two zero blocks that end an archive.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.w)
    }
}
