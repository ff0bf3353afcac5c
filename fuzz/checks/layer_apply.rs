//! Layer apply: a tar stream applied with the unpacker into a fresh directory must leave
//! everything outside that directory as it was, whatever the stream holds; errors are fine.
//!
//! The input is either a layer blob as a registry would serve it (plain tar, gzip or zstd,
//! by magic), or, when it starts with `#!tar\n`, a little program that writes the tar, so
//! that mutations change entries rather than break header checksums. One line per entry:
//!
//! ```text
//! d etc                    directory              f etc/passwd = root:x:0:0   file, data
//! s lib -> /usr/lib        symlink                h link -> etc/passwd        hard link
//! c dev/null               char device (also b, p: block device, fifo)
//! x SCHILY.xattr.user.k=v  a PAX record for the next entry (path, linkpath, uid, mode...)
//! ?name                    any other first byte: that tar type, with this name
//! ```
//!
//! Names and targets longer than a ustar header holds go into PAX `path`/`linkpath`. Absolute
//! symlink targets are rewritten to point into the sandbox, so a confinement bug shows up as
//! a change the walk sees, not as a write to this machine's own files.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use imagecache::unpack::{apply_layer, Compression, UnpackError};
use sha2::{Digest, Sha256};

pub const PROGRAM: &[u8] = b"#!tar\n";

/// Depth of the sandbox below its top: a `..` escape must climb this far to leave what the
/// walk looks at.
const DEPTH: usize = 8;

/// Everything below `top` except `dest`: path, mode, owner, size, links, and the sentinels'
/// bytes.
type Tree = Vec<(PathBuf, u32, (u32, u32), u64, u64, Option<Vec<u8>>)>;

struct Sandbox {
    top: PathBuf,
    /// Where each run's `dest` goes.
    deep: PathBuf,
    /// The sandbox outside `dest` as made. Every run must leave it exactly so, so one walk
    /// after each run is enough: the walk before it would only see what the last run's walk
    /// after already compared equal to this.
    made: Tree,
}

/// Made on first use; dropped (and made afresh by the next run) when a run changed it, so
/// that the replay test names only the inputs that did the damage.
static SANDBOX: Mutex<Option<Sandbox>> = Mutex::new(None);

/// Removes the sandbox: the replay test's clean-up (a fuzzing run's goes with its scratch
/// directory, see scripts/fuzz.sh).
#[allow(dead_code)]
pub fn remove_sandbox() {
    let mut sb = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sb) = sb.take() {
        let _ = fs::remove_dir_all(&sb.top);
    }
}

fn make_sandbox() -> Sandbox {
    let base = std::env::var_os("IMAGECACHE_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let top = base.join(format!("imagecache-fuzz-{}", std::process::id()));
    let _ = fs::remove_dir_all(&top);
    let mut deep = top.clone();
    for i in 0..DEPTH {
        fs::create_dir_all(deep.join("outside")).expect("make the sandbox");
        fs::write(deep.join("outside/sentinel"), format!("sentinel {i}")).unwrap();
        deep.push(format!("d{i}"));
    }
    let dest = deep.join("dest");
    fs::create_dir_all(&dest).expect("make the sandbox");
    // Taken with `dest` present, as every run's walk is.
    let made = walk(&top, &dest);
    fs::remove_dir(&dest).expect("make the sandbox");
    Sandbox { top, deep, made }
}

fn walk(top: &Path, skip: &Path) -> Tree {
    let mut out = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("read a sandbox directory")
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if p == skip {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let content = (p.file_name() == Some("sentinel".as_ref()))
                .then(|| fs::read(&p).unwrap_or_default());
            out.push((
                p.clone(),
                m.mode(),
                (m.uid(), m.gid()),
                m.size(),
                m.nlink(),
                content,
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let mut guard = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let sb = guard.get_or_insert_with(make_sandbox);
    let dest = sb.deep.join("dest");
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir(&dest).expect("make dest");

    let (blob, diff_id) = if let Some(program) = data.strip_prefix(PROGRAM) {
        let tar = write_tar(program, &sb.top);
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        (tar, id)
    } else {
        // Right for a plain tar; for a compressed one the mismatch is found after applying.
        let id = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        (data.to_vec(), id)
    };
    let result = apply_layer(&blob[..], Compression::None, &dest, &diff_id);
    // Reached: the unpacker read the stream through its entries, whether it applied them,
    // refused one as unsafe, or found at the end that the stream's digest differs (always,
    // for a compressed blob: its diffID is not known beforehand). A stream it could not read
    // at all tested nothing past the decoder.
    let reached = matches!(
        result,
        Ok(_) | Err(UnpackError::Unsafe { .. } | UnpackError::DiffIdMismatch { .. })
    );
    if let Ok(stats) = &result {
        assert_eq!(stats.diff_id, diff_id);
    }

    let after = walk(&sb.top, &dest);
    let before = &sb.made;
    if after != *before {
        let gone: Vec<_> = before.iter().filter(|e| !after.contains(e)).collect();
        let new: Vec<_> = after.iter().filter(|e| !before.contains(e)).collect();
        let message = format!("applying the layer changed the sandbox outside dest ({result:?}): before {gone:?}, after {new:?}");
        let _ = fs::remove_dir_all(&sb.top);
        *guard = None;
        panic!("{message}");
    }
    fs::remove_dir_all(&dest).expect("remove dest");
    reached
}

/// The tar the program describes (see the module docs).
pub fn write_tar(program: &[u8], sandbox_top: &Path) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in program.split(|&b| b == b'\n') {
        let Some((&op, rest)) = line.split_first() else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        if op == b'x' {
            let (k, v) = split_on(rest, b"=");
            pax.push((k.to_vec(), v.to_vec()));
            continue;
        }
        let (type_byte, arrow) = match op {
            b'f' => (b'0', &b" = "[..]),
            b'd' => (b'5', &b""[..]),
            b's' => (b'2', &b" -> "[..]),
            b'h' => (b'1', &b" -> "[..]),
            b'c' => (b'3', &b""[..]),
            b'b' => (b'4', &b""[..]),
            b'p' => (b'6', &b""[..]),
            other => (other, &b" -> "[..]),
        };
        let (name, second) = if arrow.is_empty() {
            (rest, &b""[..])
        } else {
            split_on(rest, arrow)
        };
        let (link, data) = if type_byte == b'0' {
            (Vec::new(), second.to_vec())
        } else if type_byte == b'2' && second.starts_with(b"/") {
            let mut inside = sandbox_top.as_os_str().as_encoded_bytes().to_vec();
            inside.extend_from_slice(second);
            (inside, Vec::new())
        } else {
            (second.to_vec(), Vec::new())
        };
        if name.len() > 100 {
            pax.push((b"path".to_vec(), name.to_vec()));
        }
        if link.len() > 100 {
            pax.push((b"linkpath".to_vec(), link.clone()));
        }
        if !pax.is_empty() {
            let records = pax_records(&pax);
            header(
                &mut tar,
                b"PaxHeaders/x",
                b'x',
                0o644,
                records.len() as u64,
                b"",
            );
            data_blocks(&mut tar, &records);
            pax.clear();
        }
        let mode = if type_byte == b'5' { 0o755 } else { 0o644 };
        header(&mut tar, name, type_byte, mode, data.len() as u64, &link);
        data_blocks(&mut tar, &data);
    }
    tar.extend_from_slice(&[0; 1024]);
    tar
}

fn split_on<'a>(s: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match s.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&s[..i], &s[i + sep.len()..]),
        None => (s, &[]),
    }
}

/// `"<len> <key>=<value>\n"`, the length counting itself.
fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// `value` in octal, zero-padded to all but the field's last byte (left NUL), its high digits
/// dropped if it does not fit. By hand: a header has eight of these, for every entry of every
/// input.
fn octal(field: &mut [u8], value: u64) {
    let (digits, _nul) = field.split_at_mut(field.len() - 1);
    let mut rest = value;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest & 7) as u8;
        rest >>= 3;
    }
}

fn header(tar: &mut Vec<u8>, name: &[u8], type_byte: u8, mode: u64, size: u64, link: &[u8]) {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = type_byte;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    tar.extend_from_slice(&h);
}

fn data_blocks(tar: &mut Vec<u8>, data: &[u8]) {
    tar.extend_from_slice(data);
    tar.resize(tar.len().next_multiple_of(512), 0);
}
