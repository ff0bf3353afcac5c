//! Shared by the disk tests: a snapshot-like frozen image built for real, and small helpers.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imagecache::image::{self, MountConfig};
use imagecache::sys::{LinuxSys, LoopDevice, LoopOptions, MountOptions, Sys};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Files the snapshot holds, as a cache build would have left them.
pub const FILES: &[(&str, &str)] = &[
    ("oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}"),
    ("snapshots/sha256:aaaa/fs/etc/os-release", "ID=test\n"),
    (
        "snapshots/sha256:aaaa/fs/bin/hello",
        "#!/bin/sh\necho hello\n",
    ),
    ("shared.txt", "from the snapshot\n"),
];

/// Build `dir/name` like a frozen snapshot: sparse ext4 of `size`, `FILES` plus
/// `extra_bytes` of incompressible data written through a mount, unmounted, made read-only.
pub fn make_snapshot(dir: &Path, name: &str, size: u64, extra_bytes: u64) -> PathBuf {
    let img = dir.join(name);
    image::create(&img, size, "snap").unwrap();
    let mnt = dir.join(format!("{name}.build"));
    let mounted = image::mount(&LinuxSys, &img, &mnt, &MountConfig::build()).unwrap();
    for (path, content) in FILES {
        let p = mnt.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    if extra_bytes > 0 {
        // Incompressible, and generated once: the data's content does not matter to a clone.
        let mut block = vec![0u8; 4 * MIB as usize];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let mut f = std::fs::File::create(mnt.join("payload.bin")).unwrap();
        let mut left = extra_bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    mounted.unmount_and_detach().unwrap();
    std::fs::remove_dir(&mnt).unwrap();
    image::fsck(&img).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
    img
}

/// Total size of the filesystem mounted at `path`, as df reports it.
pub fn fs_size(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_blocks * st.f_frsize
}

/// The sysfs attribute of a loop device (`loop/autoclear`, `loop/dio`, …).
pub fn loop_attr(device: &Path, attr: &str) -> String {
    let name = device.file_name().unwrap().to_str().unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/{attr}"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn loops_backed_by(file: &Path) -> Vec<PathBuf> {
    let file = file.canonicalize().unwrap_or_else(|_| file.to_owned());
    crate::support::oracle::attached_loops()
        .into_iter()
        .filter(|l| l.backing_file == file)
        .map(|l| PathBuf::from(l.device))
        .collect()
}

/// An ext4 filesystem (no reflinks) in a sparse file under `dir`, loop-mounted at
/// `dir/ext4`. Lives under a ScratchXfs, whose drop cleans it up if a test fails.
pub struct ScratchExt4 {
    pub path: PathBuf,
    device: Option<LoopDevice>,
}

impl ScratchExt4 {
    pub fn new(dir: &Path, size: u64) -> ScratchExt4 {
        let backing = dir.join("ext4.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("ext4");
        std::fs::create_dir(&path).unwrap();
        let opts = LoopOptions {
            direct_io: true,
            autoclear: true,
            ..LoopOptions::default()
        };
        let device = LinuxSys.attach_loop(&backing, opts).unwrap();
        LinuxSys
            .mount(&device.path, &path, "ext4", MountOptions::default(), "")
            .unwrap();
        ScratchExt4 {
            path,
            device: Some(device),
        }
    }
}

impl Drop for ScratchExt4 {
    fn drop(&mut self) {
        if let Err(e) = imagecache::sys::unmount_settled(&LinuxSys, &self.path) {
            eprintln!("ext4 scratch unmount: {e}");
        }
        if let Some(mut d) = self.device.take() {
            d.release();
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}
