//! Walking a layer's tar stream entry by entry, resolving the extension headers (PAX `x` and
//! `g`, GNU `L` and `K` long names, old GNU sparse maps) into the entry they describe.
//!
//! The tar crate's iterator cannot be used for this: it splits PAX records on newlines,
//! breaking on binary xattr values, and in raw mode (where the records could be parsed
//! here) it no longer applies PAX `size`, which Go's archive/tar writes instead of the header
//! field for files of 8 GiB and more. `tar::Header` still decodes each header's fields
//! (octal and base-256 numbers, ustar prefixes).

use std::io::{self, BufRead, Read};

use super::pax::{self, PaxFields};

const BLOCK: u64 = 512;
/// Go's archive/tar caps PAX and GNU long-name data alike; the largest legitimate content is
/// an xattr value, which Linux limits to 64 KiB.
const MAX_SPECIAL: u64 = 1 << 20;

/// Why the stream could not be read as tar.
pub(crate) enum ReadError {
    /// The stream ended early or could not be read.
    Stream(io::Error),
    /// A header is invalid; `reason` is worded to follow "layer entry `<entry>`".
    Malformed { entry: Vec<u8>, reason: String },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Stream(e)
    }
}

fn malformed(entry: &[u8], reason: impl Into<String>) -> ReadError {
    ReadError::Malformed {
        entry: entry.to_vec(),
        reason: reason.into(),
    }
}

fn ended_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the tar stream ended inside an entry",
    )
}

/// One entry with its extension headers applied. Reused from entry to entry.
pub(crate) struct Entry {
    pub header: tar::Header,
    pub type_byte: u8,
    /// The entry's name: GNU long name, else PAX `path`, else the header's (ustar prefix
    /// joined). Not yet normalised or checked.
    pub name: Vec<u8>,
    /// Link target, chosen the same way; empty if none.
    pub link: Vec<u8>,
    /// Bytes of data the entry carries in the stream.
    pub size: u64,
    /// The file's size: `size`, except for a sparse file whose holes are not in the stream.
    pub apparent: u64,
    pub pax: PaxFields,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            header: tar::Header::new_old(),
            type_byte: 0,
            name: Vec::new(),
            link: Vec::new(),
            size: 0,
            apparent: 0,
            pax: PaxFields::default(),
        }
    }
}

/// A stretch of a file: `hole` zero bytes not in the stream, then `data` bytes that are.
#[derive(Clone, Copy)]
struct Segment {
    hole: u64,
    data: u64,
}

pub(crate) struct TarReader<R> {
    inner: R,
    /// What is left of the current entry's file content, in order.
    segments: Vec<Segment>,
    segment: usize,
    /// Stream bytes of the current entry not yet read: data, then padding to a block.
    data_left: u64,
    padding: u64,
    /// Extension header data waiting for the entry it describes.
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    scratch: Vec<u8>,
}

impl<R: BufRead> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            segments: Vec::new(),
            segment: 0,
            data_left: 0,
            padding: 0,
            long_name: None,
            long_link: None,
            pax: None,
            scratch: Vec::new(),
        }
    }

    /// The stream after the end-of-archive block (or wherever reading stopped).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Move to the next entry, skipping what is left of the current one's data. `false` at
    /// the end of the archive.
    pub(crate) fn next(&mut self, e: &mut Entry) -> Result<bool, ReadError> {
        self.skip(self.data_left + self.padding)?;
        self.data_left = 0;
        self.padding = 0;
        loop {
            if !self.read_header(&mut e.header)? {
                return self.end();
            }
            let size = e.header.entry_size().map_err(|err| {
                malformed(
                    &e.header.path_bytes(),
                    format!("has a bad size field ({err})"),
                )
            })?;
            match e.header.entry_type().as_byte() {
                b'x' => {
                    let data = self.special(&e.header, size, "PAX extended header", true)?;
                    self.pax = Some(data);
                }
                // A global header's records would apply to every later entry (POSIX), but
                // containerd ignores them and a snapshot must be what containerd would
                // make. Their records are still checked, as Go's reader does.
                b'g' => {
                    let data = self.special(&e.header, size, "PAX global header", false)?;
                    if let Some(Err(reason)) = pax::records(&data).find(Result::is_err) {
                        return Err(malformed(&e.header.path_bytes(), reason.to_string()));
                    }
                    self.scratch = data;
                }
                b'L' => {
                    let data = self.special(&e.header, size, "GNU long name", true)?;
                    self.long_name = Some(until_nul(data));
                }
                b'K' => {
                    let data = self.special(&e.header, size, "GNU long link name", true)?;
                    self.long_link = Some(until_nul(data));
                }
                _ => return self.entry(e, size).map(|()| true),
            }
        }
    }

    /// Fill `e` from its header and the extension headers read before it.
    fn entry(&mut self, e: &mut Entry, header_size: u64) -> Result<(), ReadError> {
        e.type_byte = e.header.entry_type().as_byte();
        let long_name = self.long_name.take();
        let long_link = self.long_link.take();
        e.pax.clear();
        if let Some(data) = self.pax.take() {
            if let Err(reason) = e.pax.parse(&data) {
                let name = long_name
                    .as_deref()
                    .map_or_else(|| e.header.path_bytes(), Into::into);
                return Err(malformed(&name, reason.to_string()));
            }
            self.scratch = data;
        }
        e.name.clear();
        match (long_name, e.pax.path.take()) {
            (Some(n), _) | (None, Some(n)) => e.name.extend_from_slice(&n),
            (None, None) => e.name.extend_from_slice(&e.header.path_bytes()),
        }
        e.link.clear();
        match (long_link, e.pax.linkpath.take()) {
            (Some(l), _) | (None, Some(l)) => e.link.extend_from_slice(&l),
            (None, None) => {
                if let Some(l) = e.header.link_name_bytes() {
                    e.link.extend_from_slice(&l);
                }
            }
        }
        // PAX `size` overrides the header's, which a writer may have left 0 (Go does for
        // 8 GiB and more); both must agree on where the next header is, so there is no
        // choosing between them.
        e.size = e.pax.size.unwrap_or(header_size);
        self.segments.clear();
        self.segment = 0;
        e.apparent = if e.type_byte == b'S' {
            self.sparse_map(e)?
        } else {
            self.segments.push(Segment {
                hole: 0,
                data: e.size,
            });
            e.size
        };
        self.data_left = e.size;
        self.padding = padding(e.size);
        Ok(())
    }

    /// Read an old GNU sparse file's map (in its header and any extension blocks after it)
    /// into segments; the file's real size.
    fn sparse_map(&mut self, e: &Entry) -> Result<u64, ReadError> {
        let Some(gnu) = e.header.as_gnu() else {
            return Err(malformed(&e.name, "is a sparse file without a GNU header"));
        };
        let bad = |what: &str| malformed(&e.name, format!("has a sparse map {what}"));
        let real_size = gnu
            .real_size()
            .map_err(|_| bad("with an unreadable real size"))?;
        let mut end = 0u64;
        let mut stored = 0u64;
        let mut add = |segments: &mut Vec<Segment>, block: &tar::GnuSparseHeader| {
            if block.is_empty() {
                return Ok(());
            }
            let (Ok(offset), Ok(len)) = (block.offset(), block.length()) else {
                return Err(bad("with an unreadable block"));
            };
            if offset < end {
                return Err(bad("with out-of-order or overlapping blocks"));
            }
            segments.push(Segment {
                hole: offset - end,
                data: len,
            });
            end = offset
                .checked_add(len)
                .ok_or_else(|| bad("beyond 2^64 bytes"))?;
            stored += len;
            Ok(())
        };
        for block in &gnu.sparse {
            add(&mut self.segments, block)?;
        }
        let mut extended = gnu.is_extended();
        let mut ext = tar::GnuExtSparseHeader::new();
        while extended {
            if !self.read_block(ext.as_mut_bytes())? {
                return Err(ended_early().into());
            }
            for block in ext.sparse() {
                add(&mut self.segments, block)?;
            }
            extended = ext.is_extended();
        }
        if stored != e.size {
            return Err(bad(&format!(
                "listing {stored} bytes of data where the entry carries {}",
                e.size
            )));
        }
        if end > real_size {
            return Err(bad("reaching past the file's real size"));
        }
        // A hole at the end is not in the map's blocks, only in the real size.
        self.segments.push(Segment {
            hole: real_size - end,
            data: 0,
        });
        Ok(real_size)
    }

    /// The current entry's file content (holes of a sparse file read as zeros).
    pub(crate) fn data(&mut self) -> Data<'_, R> {
        Data(self)
    }

    /// The data of an extension header, whole.
    fn special(
        &mut self,
        header: &tar::Header,
        size: u64,
        what: &str,
        must_precede: bool,
    ) -> Result<Vec<u8>, ReadError> {
        if size > MAX_SPECIAL {
            return Err(malformed(
                &header.path_bytes(),
                format!("is a {what} of {size} bytes, more than the {MAX_SPECIAL} allowed"),
            ));
        }
        let duplicate = match header.entry_type().as_byte() {
            b'x' => self.pax.is_some(),
            b'L' => self.long_name.is_some(),
            b'K' => self.long_link.is_some(),
            _ => false,
        };
        if must_precede && duplicate {
            // Readers disagree on which one wins, so the layer would mean different things
            // to different tools.
            return Err(malformed(
                &header.path_bytes(),
                format!("is a second {what} for the same entry"),
            ));
        }
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        data.resize(size as usize, 0);
        self.inner
            .read_exact(&mut data)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ended_early(),
                _ => e,
            })?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// At the end of the archive, extension headers must not be left waiting.
    fn end(&mut self) -> Result<bool, ReadError> {
        if self.pax.is_some() || self.long_name.is_some() || self.long_link.is_some() {
            let name = self.long_name.as_deref().unwrap_or(b"(end of archive)");
            return Err(malformed(
                name,
                "has extension headers but the archive ends before the entry they describe",
            ));
        }
        Ok(false)
    }

    /// Read a header block; `false` at the end of the archive (a zero block or EOF).
    fn read_header(&mut self, header: &mut tar::Header) -> Result<bool, ReadError> {
        if !self.read_block(header.as_mut_bytes())? {
            return Ok(false);
        }
        let bytes = header.as_bytes();
        if bytes.iter().all(|&b| b == 0) {
            return Ok(false);
        }
        // The checksum field counts as spaces. Some old writers summed signed bytes; Go
        // accepts either, and so does this.
        let (mut unsigned, mut signed) = (8 * u32::from(b' '), 8 * i32::from(b' '));
        for (i, &b) in bytes.iter().enumerate() {
            if !(148..156).contains(&i) {
                unsigned += u32::from(b);
                signed += i32::from(b as i8);
            }
        }
        let stored = header.cksum().ok();
        if stored != Some(unsigned) && stored.map(|s| s as i32) != Some(signed) {
            return Err(ReadError::Stream(io::Error::new(
                io::ErrorKind::InvalidData,
                "a tar header's checksum does not match",
            )));
        }
        Ok(true)
    }

    /// Fill a whole block; `false` on EOF before its first byte.
    fn read_block(&mut self, block: &mut [u8; 512]) -> io::Result<bool> {
        let mut got = 0;
        while got < block.len() {
            match self.inner.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(ended_early()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Discard `n` bytes straight out of the reader's buffer.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(ended_early());
            }
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.inner.consume(k);
            n -= k as u64;
        }
        Ok(())
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// GNU long names are NUL-terminated (and may be NUL-padded).
fn until_nul(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(i) = data.iter().position(|&b| b == 0) {
        data.truncate(i);
    }
    data
}

/// The current entry's content; ends after its last byte, or fails if the stream does.
pub(crate) struct Data<'a, R>(&'a mut TarReader<R>);

impl<R: BufRead> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.0;
        let cap = buf.len();
        let want = |left: u64| cap.min(usize::try_from(left).unwrap_or(usize::MAX));
        while let Some(seg) = r.segments.get_mut(r.segment) {
            if seg.hole > 0 {
                let n = want(seg.hole);
                buf[..n].fill(0);
                seg.hole -= n as u64;
                return Ok(n);
            }
            if seg.data > 0 {
                let n = want(seg.data);
                let got = r.inner.read(&mut buf[..n])?;
                if got == 0 && n > 0 {
                    return Err(ended_early());
                }
                seg.data -= got as u64;
                r.data_left -= got as u64;
                return Ok(got);
            }
            r.segment += 1;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn block(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len() + padding(data.len() as u64) as usize, 0);
        v
    }

    fn names(tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
        let mut r = TarReader::new(tar);
        let mut e = Entry::default();
        let mut out = Vec::new();
        while r.next(&mut e)? {
            let mut data = Vec::new();
            r.data().read_to_end(&mut data)?;
            out.push((String::from_utf8_lossy(&e.name).into_owned(), data));
        }
        Ok(out)
    }

    fn reason(r: Result<Vec<(String, Vec<u8>)>, ReadError>) -> (String, String) {
        match r {
            Err(ReadError::Malformed { entry, reason }) => {
                (String::from_utf8_lossy(&entry).into_owned(), reason)
            }
            Err(ReadError::Stream(e)) => panic!("stream error {e}"),
            Ok(v) => panic!("read {} entries", v.len()),
        }
    }

    #[test]
    fn pax_size_decides_where_the_data_ends() {
        // The header says 0, as Go writes it for a size only PAX can hold.
        let mut tar = header("x", b'x', 12);
        tar.extend(block(b"12 size=700\n"));
        tar.extend(header("big", b'0', 0));
        tar.extend(block(&[7u8; 700]));
        tar.extend(header("after", b'0', 2));
        tar.extend(block(b"ok"));
        tar.extend([0u8; 1024]);
        let got = names(&tar).unwrap_or_else(|_| panic!("read failed"));
        assert_eq!(got[0], ("big".into(), vec![7u8; 700]));
        assert_eq!(got[1], ("after".into(), b"ok".to_vec()));
    }

    #[test]
    fn long_names_and_globals() {
        let mut tar = header("g", b'g', 15);
        tar.extend(block(b"15 comment=abc\n"));
        tar.extend(header("././@LongLink", b'L', 6));
        tar.extend(block(b"a/b/c\0"));
        tar.extend(header("short", b'0', 0));
        tar.extend([0u8; 1024]);
        let got = names(&tar).unwrap_or_else(|_| panic!("read failed"));
        assert_eq!(got, vec![("a/b/c".into(), vec![])]);
    }

    #[test]
    fn malformed_pax_names_its_entry() {
        let mut tar = header("x", b'x', 9);
        tar.extend(block(b"6 k=v\nzz\n"));
        tar.extend(header("usr/bin/ping", b'0', 0));
        tar.extend([0u8; 1024]);
        let (entry, why) = reason(names(&tar));
        assert_eq!(entry, "usr/bin/ping");
        assert!(why.contains("byte 6"), "{why}");
    }

    #[test]
    fn extension_headers_need_their_entry() {
        let mut tar = header("x", b'x', 6);
        tar.extend(block(b"6 k=v\n"));
        tar.extend([0u8; 1024]);
        let (_, why) = reason(names(&tar));
        assert!(why.contains("archive ends"), "{why}");

        let mut tar = header("x", b'x', 6);
        tar.extend(block(b"6 k=v\n"));
        tar.extend(header("x", b'x', 6));
        tar.extend(block(b"6 k=v\n"));
        let (_, why) = reason(names(&tar));
        assert!(why.contains("second"), "{why}");
    }

    #[test]
    fn oversized_extension_headers_are_refused() {
        let tar = header("x", b'x', MAX_SPECIAL + 1);
        let (entry, why) = reason(names(&tar));
        assert_eq!(entry, "x");
        assert!(why.contains("more than"), "{why}");
    }
}
