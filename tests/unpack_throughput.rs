//! Throughput of apply_layer on a generated ~100 MB gzip layer of ~5,000 files (the size of
//! a typical language-runtime layer). Ignored by default; run in release:
//!
//!     cargo test --release --test unpack_throughput -- --ignored --nocapture
//!
//! Cases: gzip and zstd blobs of the same tar, each applied into a fresh directory on the
//! temp filesystem, against the decompress+hash floor (no filesystem work); times exclude
//! the one syncfs the caller does per cache, which is reported separately.

mod unpack_util;

use std::fs;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use imagecache::unpack::{apply_layer, Compression};
use unpack_util::*;

/// Text-like content with some incompressible runs, so gzip lands near 2.5-3x as it does on
/// real layers (binaries, libraries, sources).
fn content(rng: &mut u64, len: usize) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"the ",
        b"int ",
        b"return ",
        b"static ",
        b"void ",
        b"self",
        b".so.6",
        b"\x00\x00\x00\x00",
        b"\x7fELF",
        b"GLIBC_2.34",
        b"{\n    ",
        b"}\n",
        b"import ",
        b"def ",
        b"class ",
        b"0x",
    ];
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        if r % 4 == 0 {
            // An incompressible run.
            for _ in 0..(r >> 8) % 48 {
                out.extend_from_slice(&next().to_le_bytes());
            }
        } else {
            out.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()]);
            out.extend_from_slice(format!("{}", (r >> 20) % 1000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn generate() -> Vec<u8> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut l = Layer::new();
    let next = |rng: &mut u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    for d in 0..250 {
        l.dir(&format!("usr/lib/pkg{d:03}"));
        for f in 0..20 {
            // Mostly small files, a few large ones: ~60 KB on average.
            let r = next(&mut rng);
            let size = match r % 20 {
                0 => 400_000 + (r >> 8) as usize % 800_000,
                1..=5 => 20_000 + (r >> 8) as usize % 60_000,
                _ => 200 + (r >> 8) as usize % 12_000,
            };
            let data = content(&mut rng, size);
            l.file_with(
                &format!("usr/lib/pkg{d:03}/file{f:02}.so"),
                &data,
                0o755,
                0,
                0,
                MTIME,
            );
        }
        l.symlink(&format!("usr/lib/pkg{d:03}/current"), "file00.so");
    }
    l.tar()
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn apply_a_100mb_gzip_layer() {
    let cache = std::env::temp_dir().join("imagecache-unpack-bench");
    fs::create_dir_all(&cache).unwrap();
    let tar_path = cache.join("layer.tar");
    let tar = match fs::read(&tar_path) {
        Ok(t) => t,
        Err(_) => {
            let t = generate();
            fs::write(&tar_path, &t).unwrap();
            t
        }
    };
    let id = diff_id(&tar);
    let blob = |c: Compression, ext: &str| -> PathBuf {
        let p = cache.join(format!("layer.tar.{ext}"));
        if !p.exists() {
            let data = match c {
                Compression::Gzip => {
                    // Level 6, as docker and buildkit write layers.
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    std::io::Write::write_all(&mut e, &tar).unwrap();
                    e.finish().unwrap()
                }
                _ => compress(&tar, c),
            };
            fs::write(&p, data).unwrap();
        }
        p
    };
    let files = 250 * 21;
    println!(
        "tar: {:.1} MB, {files} entries (+dirs)",
        tar.len() as f64 / 1e6
    );
    for (c, ext) in [(Compression::Gzip, "gz"), (Compression::Zstd, "zst")] {
        let path = blob(c, ext);
        let compressed = fs::metadata(&path).unwrap().len() as usize;
        let _ = fs::read(&path).unwrap(); // warm the page cache

        // Floor: decompress and hash only.
        let t = Instant::now();
        let mut dec: Box<dyn Read> = match c {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(
                fs::File::open(&path).unwrap(),
            ))),
            _ => Box::new(zstd::Decoder::new(fs::File::open(&path).unwrap()).unwrap()),
        };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = dec.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
        }
        let floor = t.elapsed().as_secs_f64();

        let mut best = f64::MAX;
        for _ in 0..3 {
            let dest = tempfile::tempdir_in(&cache).unwrap();
            let t = Instant::now();
            let stats = apply_layer(
                fs::File::open(&path).unwrap(),
                Compression::None, // the magic decides
                dest.path(),
                &id,
            )
            .unwrap();
            let secs = t.elapsed().as_secs_f64();
            best = best.min(secs);
            assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
            let t = Instant::now();
            let root = fs::File::open(dest.path()).unwrap();
            rustix::fs::syncfs(&root).unwrap();
            println!(
                "  {ext}: apply {secs:.3}s, then syncfs {:.3}s",
                t.elapsed().as_secs_f64()
            );
        }
        println!(
            "{ext}: {:.1} MB compressed -> {:.1} MB: apply best {best:.3}s = {:.0} MB/s compressed, \
             {:.0} MB/s uncompressed; decompress+hash floor {floor:.3}s ({:.0} MB/s uncompressed)",
            compressed as f64 / 1e6,
            tar.len() as f64 / 1e6,
            mbps(compressed, best),
            mbps(tar.len(), best),
            mbps(tar.len(), floor),
        );
    }
}
