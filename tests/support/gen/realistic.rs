//! Benchmark images that look like a distro image with an application on top: ~400 MB
//! uncompressed in 4 layers (40/30/20/10 %), ~20,000 files under usr/lib, usr/share/doc,
//! usr/share/locale, python packages, headers, man pages; log-normal file sizes; text that
//! compresses like text and binaries that compress like ELF files, tuned so gzip gets
//! about 3:1 on the whole (the anchor image in design §8 is 436 MB → 131 MB gzip).
//!
//! Layers are generated in parallel, each from its own seed stream, and streamed through
//! the compressor: the uncompressed tar is never held.

use std::collections::HashSet;
use std::io::{self, Write};

use super::super::oci::{Compression, Image, Layer, LayerWriter, ManifestFormat};
use super::rng::Rng;
use super::tarw::TarWriter;

pub const REALISTIC_BYTES: u64 = 400_000_000;
pub const REALISTIC_FILES: u64 = 20_000;
const LAYER_SHARES: [f64; 4] = [0.4, 0.3, 0.2, 0.1];

/// A ~400 MB, ~20,000-file, 4-layer image.
pub fn realistic_image(seed: u64, compression: Compression) -> Image {
    realistic_image_sized(seed, compression, REALISTIC_BYTES, REALISTIC_FILES)
}

/// The same shape at another scale (e.g. small for quick tests).
pub fn realistic_image_sized(seed: u64, compression: Compression, bytes: u64, files: u64) -> Image {
    let layers = realistic_layers(seed, compression, bytes, files);
    Image::new(layers, ManifestFormat::Oci)
}

pub fn realistic_layers(seed: u64, compression: Compression, bytes: u64, files: u64) -> Vec<Layer> {
    let vocab = Vocab::new(seed);
    std::thread::scope(|s| {
        let handles: Vec<_> = LAYER_SHARES
            .iter()
            .enumerate()
            .map(|(i, share)| {
                let vocab = &vocab;
                let budget = (bytes as f64 * share) as u64;
                let count = ((files as f64 * share) as u64).max(1);
                s.spawn(move || {
                    let mut g = LayerGen {
                        rng: Rng::fork(seed, 1000 + i as u64),
                        vocab,
                        index: i,
                        tar: TarWriter::new(LayerWriter::new(compression)),
                        dirs: HashSet::new(),
                        buf: Vec::new(),
                        mtime: 1_690_000_000 + i as u64 * 86_400,
                    };
                    g.generate(budget, count).unwrap();
                    g.tar.finish().unwrap().finish()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Word list shared by all layers, so text in different files repeats like real text does.
struct Vocab {
    words: Vec<Vec<u8>>,
    /// A handful of license texts that every package's copyright file repeats, as in a
    /// distro: identical content far apart, which zstd's long window finds and gzip's 32 KiB
    /// window does not.
    licenses: Vec<Vec<u8>>,
}

impl Vocab {
    fn new(seed: u64) -> Vocab {
        const SYL: &[&str] = &[
            "ka", "lo", "mi", "ne", "ru", "sa", "te", "vi", "zo", "pre", "con", "ex", "in", "de",
            "ion", "ment", "ing", "er", "al", "ic", "ty", "per", "trans", "form", "struct", "get",
            "set", "val", "buf", "len", "ptr", "init", "free", "read", "write", "op",
        ];
        let mut rng = Rng::fork(seed, 7);
        let words = (0..4096)
            .map(|_| {
                let n = rng.range(1, 4);
                (0..n)
                    .map(|_| *rng.pick(SYL))
                    .collect::<String>()
                    .into_bytes()
            })
            .collect();
        let mut v = Vocab {
            words,
            licenses: Vec::new(),
        };
        v.licenses = (0..6)
            .map(|_| {
                let mut t = Vec::new();
                let len = rng.range(12_000, 36_000) as usize;
                fill_text(&mut rng, &v, len, &mut t);
                t
            })
            .collect();
        v
    }

    /// Zipf-like: a few words are very common, most are rare.
    #[inline]
    fn word(&self, rng: &mut Rng) -> &[u8] {
        let u = rng.f64();
        &self.words[(u * u * u * self.words.len() as f64) as usize]
    }
}

#[derive(Clone, Copy)]
enum Content {
    Text,
    /// A copyright file: a short header and one of the shared license texts.
    License,
    Binary,
    /// Already compressed data (.gz, .png): incompressible.
    Random,
}

struct LayerGen<'a> {
    rng: Rng,
    vocab: &'a Vocab,
    index: usize,
    tar: TarWriter<LayerWriter>,
    dirs: HashSet<String>,
    buf: Vec<u8>,
    mtime: u64,
}

impl LayerGen<'_> {
    fn generate(&mut self, budget: u64, count: u64) -> io::Result<()> {
        // Log-normal sizes with sigma 1.9: median ≈ mean / 6, a long tail of big libraries.
        let sigma = 1.9f64;
        let mean = budget as f64 / count as f64;
        let mu = mean.ln() - sigma * sigma / 2.0;
        let mut written = 0u64;
        let mut files = 0u64;

        if self.index == 0 {
            // apt's cache, deterministically named so upper layers can delete it.
            for i in 0..8 {
                let size = 50_000;
                self.file(
                    &format!("var/cache/apt/archives/cache-{i}.bin"),
                    size,
                    Content::Random,
                )?;
                written += size;
            }
        } else {
            // "apt-get clean" in every upper layer: whiteouts of lower files.
            self.ensure_dir("var/cache/apt/archives")?;
            for i in (self.index - 1) * 2..self.index * 2 {
                let wh = format!("var/cache/apt/archives/.wh.cache-{i}.bin");
                self.tar.empty_file_header(&wh, self.mtime)?;
            }
        }

        let mut pkg_no = 0;
        while written < budget && files < count * 2 {
            let pkg = self.package_name(pkg_no);
            pkg_no += 1;
            let kind = self.rng.below(10);
            let n_files = self.rng.range(3, 14);
            for f in 0..n_files {
                let mut size = (mu + sigma * self.rng.normal()).exp() as u64;
                size = size
                    .min(24 << 20)
                    .min(budget.saturating_sub(written).max(1));
                let (path, content) = self.path_for(&pkg, kind, f);
                if self.dirs.contains(&path) {
                    continue;
                }
                written += self.file(&path, size, content)?;
                files += 1;
                if kind < 3 && f == 0 {
                    // Shared libraries come with their soname symlinks.
                    let base = path.rsplit_once('/').unwrap().1;
                    let dir = path.rsplit_once('/').unwrap().0;
                    let short = base.split(".so").next().unwrap();
                    self.tar
                        .symlink_header(&format!("{dir}/{short}.so.1"), base, self.mtime)?;
                }
                if written >= budget {
                    break;
                }
            }
        }
        Ok(())
    }

    fn package_name(&mut self, n: u64) -> String {
        let a = self.vocab.word(&mut self.rng).to_vec();
        let b = self.vocab.word(&mut self.rng).to_vec();
        format!(
            "{}{}{}-l{}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            n % 10,
            self.index
        )
    }

    /// A believable path for the `f`-th file of a package of `kind`.
    fn path_for(&mut self, pkg: &str, kind: u64, f: u64) -> (String, Content) {
        const LOCALES: &[&str] = &[
            "de", "fr", "es", "ja", "pt_BR", "ru", "zh_CN", "it", "nl", "pl",
        ];
        let lib = "usr/lib/x86_64-linux-gnu";
        match (kind, f) {
            (0..=2, 0) => (
                format!("{lib}/lib{pkg}.so.1.{}.{}", f % 7, kind),
                Content::Binary,
            ),
            (0..=2, 1) => (
                format!("usr/share/doc/lib{pkg}/copyright"),
                Content::License,
            ),
            (0..=2, 2) => (
                format!("usr/share/doc/lib{pkg}/changelog.Debian.gz"),
                Content::Random,
            ),
            (0..=2, _) => {
                let loc = self.rng.pick(LOCALES);
                (
                    format!("usr/share/locale/{loc}/LC_MESSAGES/{pkg}.mo"),
                    Content::Binary,
                )
            }
            (3..=5, 0) => (format!("usr/bin/{pkg}"), Content::Binary),
            (3..=5, 1) => (format!("usr/share/man/man1/{pkg}.1.gz"), Content::Random),
            (3..=5, 2) => (format!("usr/share/doc/{pkg}/copyright"), Content::License),
            (3..=5, _) => (format!("usr/include/{pkg}/{pkg}-{f}.h"), Content::Text),
            (6..=8, 0) => (
                format!("usr/lib/python3/dist-packages/{pkg}/__init__.py"),
                Content::Text,
            ),
            (6..=8, _) if f.is_multiple_of(3) => (
                format!("usr/lib/python3/dist-packages/{pkg}/__pycache__/m{f}.cpython-311.pyc"),
                Content::Binary,
            ),
            (6..=8, _) => (
                format!("usr/lib/python3/dist-packages/{pkg}/m{f}.py"),
                Content::Text,
            ),
            (_, 0) => (format!("usr/share/{pkg}/data-{f}.json"), Content::Text),
            (_, _) if f.is_multiple_of(4) => {
                (format!("usr/share/{pkg}/icons/i{f}.png"), Content::Random)
            }
            _ => (format!("usr/share/{pkg}/data-{f}.txt"), Content::Text),
        }
    }

    fn ensure_dir(&mut self, dir: &str) -> io::Result<()> {
        if dir.is_empty() || self.dirs.contains(dir) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.rsplit_once('/') {
            let parent = parent.to_string();
            self.ensure_dir(&parent)?;
        }
        self.tar.dir_header(&format!("{dir}/"), 0o755)?;
        self.dirs.insert(dir.to_string());
        Ok(())
    }

    /// Writes one file of about `size` bytes; returns the size written.
    fn file(&mut self, path: &str, size: u64, content: Content) -> io::Result<u64> {
        // Compressed files in a distro (changelogs, man pages, icons) are small.
        let license = self.rng.below(self.vocab.licenses.len() as u64) as usize;
        let size = match content {
            Content::Random => size.min(48 * 1024),
            Content::License => 200 + self.vocab.licenses[license].len() as u64,
            _ => size,
        };
        if let Some((dir, _)) = path.rsplit_once('/') {
            let dir = dir.to_string();
            self.ensure_dir(&dir)?;
        }
        let mode = match content {
            Content::Binary if path.contains("/bin/") || path.contains(".so") => 0o755,
            _ => 0o644,
        };
        self.buf.clear();
        let mut buf = std::mem::take(&mut self.buf);
        match content {
            Content::Text => fill_text(&mut self.rng, self.vocab, size as usize, &mut buf),
            Content::License => {
                fill_text(&mut self.rng, self.vocab, 200, &mut buf);
                buf.extend_from_slice(&self.vocab.licenses[license]);
            }
            Content::Binary => fill_binary(&mut self.rng, self.vocab, size as usize, &mut buf),
            Content::Random => {
                buf.resize(size as usize, 0);
                self.rng.fill(&mut buf);
            }
        }
        self.tar.file_header(path, size, mode, 0, 0, self.mtime)?;
        self.tar.get_mut().write_all(&buf)?;
        self.tar.pad(size)?;
        self.buf = buf;
        Ok(size)
    }
}

/// Word-like tokens, lines of 40–100 bytes, some indentation and punctuation.
fn fill_text(rng: &mut Rng, vocab: &Vocab, len: usize, out: &mut Vec<u8>) {
    out.reserve(len + 32);
    let mut line = 0usize;
    while out.len() < len {
        if out.len() > 256 && rng.below(8) == 0 {
            // Real text repeats itself (identifiers, boilerplate): copy a recent phrase.
            let n = rng.range(16, 64) as usize;
            let back = rng.range(n as u64, (out.len().min(4096)) as u64) as usize;
            let start = out.len() - back;
            out.extend_from_within(start..start + n);
            line += n;
            continue;
        }
        let w = vocab.word(rng);
        out.extend_from_slice(w);
        line += w.len() + 1;
        let r = rng.below(64);
        if line > 40 && r < 6 {
            out.push(b'\n');
            line = 0;
            if r < 2 {
                out.extend_from_slice(b"    ");
            }
        } else if r == 6 {
            out.extend_from_slice(b", ");
        } else if r == 7 {
            out.extend_from_slice(b"(); ");
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
}

/// Segments like an ELF file's: code (instruction-like words from a skewed table with
/// varying operands), zero padding, string tables, and high-entropy data (relocations,
/// hashes, packed tables). The mix sets the compression ratio.
fn fill_binary(rng: &mut Rng, vocab: &Vocab, len: usize, out: &mut Vec<u8>) {
    out.reserve(len + 4096);
    while out.len() < len {
        let seg = rng.range(256, 4096) as usize;
        let target = out.len() + seg;
        match rng.below(100) {
            0..=44 => {
                while out.len() < target {
                    // 64 "opcodes", skewed; operands are mostly small (registers, short
                    // offsets), sometimes a full 32-bit displacement.
                    let u = rng.next_u64();
                    let op = ((u & 0x3f) * ((u >> 6) & 0x3f)) >> 6;
                    let bytes = [
                        0x48,
                        0x89 ^ op as u8,
                        0xc0 | (op as u8 & 7),
                        (u >> 20) as u8 & 0x0f,
                        (u >> 28) as u8,
                        (u >> 36) as u8,
                        (u >> 44) as u8,
                    ];
                    let n = if (u >> 52) & 7 == 0 {
                        7
                    } else {
                        3 + ((u >> 56) & 1) as usize
                    };
                    out.extend_from_slice(&bytes[..n]);
                }
            }
            45..=64 => out.resize(target, 0),
            65..=92 => {
                while out.len() < target {
                    out.extend_from_slice(vocab.word(rng));
                    out.push(if rng.below(4) == 0 { 0 } else { b'_' });
                }
            }
            _ => {
                let start = out.len();
                out.resize(target, 0);
                rng.fill(&mut out[start..]);
            }
        }
    }
    out.truncate(len);
}
