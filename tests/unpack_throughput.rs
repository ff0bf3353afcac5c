//! Throughput of apply_layer on a generated ~100 MB gzip layer of ~5,000 files (the size of
//! a typical language-runtime layer). Ignored by default; run in release:
//!
//!     cargo test --release --test unpack_throughput -- --ignored --nocapture
//!
//! Cases: gzip and zstd blobs of the same tar, each applied twice into a fresh directory on
//! a loop-mounted ext4 image (the real target) and on a tmpfs (no block I/O), against the
//! decompress+hash floor (no filesystem work). Wall and CPU time are both reported (the
//! machine is shared); times exclude the one syncfs the caller does per cache, which is
//! reported separately.

mod unpack_util;

use std::fs;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use imagecache::unpack::{apply_layer, Compression};
use unpack_util::*;

/// Token soup with occasional incompressible runs, tuned so gzip -6 lands near 2.8x as it
/// does on real layers (binaries, libraries, sources).
fn content(rng: &mut u64, vocab: &[Vec<u8>], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = xorshift(rng);
        if r.is_multiple_of(16) {
            for _ in 0..1 + (r >> 8) % 3 {
                out.extend_from_slice(&xorshift(rng).to_le_bytes());
            }
        } else {
            // Skewed towards the first tokens, like real symbol frequencies.
            let a = (r >> 8) as usize % vocab.len();
            let b = (r >> 24) as usize % vocab.len();
            out.extend_from_slice(&vocab[a.min(b)]);
        }
    }
    out.truncate(len);
    out
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn generate() -> Vec<u8> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let vocab: Vec<Vec<u8>> = (0..256)
        .map(|_| {
            let len = 2 + xorshift(&mut rng) as usize % 10;
            (0..len).map(|_| xorshift(&mut rng) as u8).collect()
        })
        .collect();
    let mut l = Layer::new();
    for d in 0..250 {
        l.dir(&format!("usr/lib/pkg{d:03}"));
        for f in 0..20 {
            // Mostly small files, a few large ones: ~60 KB on average.
            let r = xorshift(&mut rng);
            let size = match r % 20 {
                0 => 400_000 + (r >> 8) as usize % 800_000,
                1..=5 => 20_000 + (r >> 8) as usize % 60_000,
                _ => 200 + (r >> 8) as usize % 12_000,
            };
            let data = content(&mut rng, &vocab, size);
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

/// CPU time this thread has used, in seconds: the machine is shared, so wall time alone
/// says more about the neighbours than about the code.
fn cpu_secs() -> f64 {
    let s = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (w, c) = (Instant::now(), cpu_secs());
    let out = f();
    (out, w.elapsed().as_secs_f64(), cpu_secs() - c)
}

/// A tmpfs for the in-memory case, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        rustix::mount::mount(
            "imagecache-bench",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            Some(c"size=2g"),
        )
        .unwrap();
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// A fresh ext4 image loop-mounted with util-linux, as the cache filesystem is (the image
/// module attaches its own loops; for a bench `mount -o loop` is enough). Unmounted on drop.
struct LoopExt4 {
    dir: tempfile::TempDir,
}

impl LoopExt4 {
    fn new(cache: &std::path::Path) -> Self {
        let img = cache.join("ext4.img");
        let _ = fs::remove_file(&img);
        fs::File::create(&img).unwrap().set_len(3 << 30).unwrap();
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            let st = std::process::Command::new(cmd).args(args).status().unwrap();
            assert!(st.success(), "{cmd} failed");
        };
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), img.as_os_str()],
        );
        let dir = tempfile::tempdir().unwrap();
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                img.as_os_str(),
                dir.path().as_os_str(),
            ],
        );
        LoopExt4 { dir }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
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
    let mem = Tmpfs::new();
    let ext4 = LoopExt4::new(&cache);
    println!(
        "tar: {:.1} MB, 5,250 files and symlinks in 250 directories",
        tar.len() as f64 / 1e6
    );
    for (c, ext) in [(Compression::Gzip, "gz"), (Compression::Zstd, "zst")] {
        let path = blob(c, ext);
        let compressed = fs::metadata(&path).unwrap().len() as usize;
        let _ = fs::read(&path).unwrap(); // warm the page cache

        // Floor: decompress and hash only.
        let ((), floor_wall, floor_cpu) = timed(|| {
            let file = BufReader::new(fs::File::open(&path).unwrap());
            let mut dec: Box<dyn Read> = match c {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
                _ => Box::new(zstd::Decoder::with_buffer(file).unwrap()),
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
        });
        println!(
            "{ext}: {:.1} MB compressed ({:.2}x); decompress+hash floor: wall {floor_wall:.2}s, \
             cpu {floor_cpu:.2}s = {:.0} MB/s compressed per core",
            compressed as f64 / 1e6,
            tar.len() as f64 / compressed as f64,
            mbps(compressed, floor_cpu),
        );
        for (label, base) in [("loop ext4", ext4.dir.path()), ("tmpfs", mem.0.path())] {
            for _ in 0..2 {
                let dest = tempfile::tempdir_in(base).unwrap();
                let (stats, wall, cpu) = timed(|| {
                    // Labelled None: the magic decides.
                    apply_layer(
                        fs::File::open(&path).unwrap(),
                        Compression::None,
                        dest.path(),
                        &id,
                    )
                    .unwrap()
                });
                assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
                let ((), sync_wall, _) =
                    timed(|| rustix::fs::syncfs(fs::File::open(dest.path()).unwrap()).unwrap());
                println!(
                    "  apply to {label}: wall {wall:.2}s ({:.0} MB/s compressed), cpu {cpu:.2}s \
                     ({:.0} MB/s compressed, {:.0} MB/s uncompressed per core); syncfs {sync_wall:.2}s",
                    mbps(compressed, wall),
                    mbps(compressed, cpu),
                    mbps(tar.len(), cpu),
                );
            }
        }
    }
}
