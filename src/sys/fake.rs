//! A recording `Sys` for tests that must not need root.
//!
//! It keeps a simulated loop table and mount table so `loop_devices` and `mounts_under`
//! reflect what was attached and mounted, mirrors the kernel's answers where logic depends
//! on them (EBUSY unmounting a parent, lazy detach of a mounted loop device, autoclear on
//! unmount), implements `reflink` as a sparse copy so code that clones files works on any
//! filesystem, and lets a test make the next call of an operation fail with a chosen errno.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rustix::io::Errno;

use super::{
    FsSpace, FsType, LoopDevice, LoopInfo, LoopOptions, MountOptions, MountTarget, Result, Sys,
    SysError,
};

/// One call made through the fake, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    AttachLoop {
        file: PathBuf,
        opts: LoopOptions,
    },
    DetachLoop {
        device: PathBuf,
    },
    LoopDevices,
    BoundLoopCount,
    Mount {
        source: PathBuf,
        target: PathBuf,
        fstype: String,
        opts: MountOptions,
        data: String,
    },
    Unmount {
        target: PathBuf,
    },
    /// `mount_beneath`: `target` is the whole path (root and relative part).
    MountBeneath {
        source: PathBuf,
        root: PathBuf,
        target: PathBuf,
        fstype: String,
        opts: MountOptions,
        data: String,
    },
    UnmountNofollow {
        target: PathBuf,
    },
    MountsUnder {
        prefix: PathBuf,
    },
    Reflink {
        src: PathBuf,
        dst: PathBuf,
    },
    Syncfs {
        path: PathBuf,
    },
    Fsync {
        path: PathBuf,
    },
    MountSource {
        target: PathBuf,
    },
    MountTable,
    FsType {
        path: PathBuf,
    },
    FsSpace {
        path: PathBuf,
    },
    SparseCopy {
        src: PathBuf,
        dst: PathBuf,
    },
    DetachLoopOf {
        device: PathBuf,
        file: PathBuf,
    },
    ExtentCount {
        file: PathBuf,
    },
    TuneExt4 {
        device: PathBuf,
        name: String,
        value: u64,
    },
}

/// The operations failures can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    AttachLoop,
    DetachLoop,
    LoopDevices,
    /// `mount` and `mount_beneath`.
    Mount,
    /// `unmount` and `unmount_nofollow`.
    Unmount,
    MountsUnder,
    Reflink,
    Syncfs,
    Fsync,
    /// `mount_source` and `mount_table`.
    MountSource,
    FsType,
    FsSpace,
    SparseCopy,
    DetachLoopOf,
    ExtentCount,
    TuneExt4,
}

#[derive(Debug)]
struct BoundLoop {
    file: PathBuf,
    opts: LoopOptions,
    /// LOOP_CLR_FD on a mounted device only marks it; it goes when the mount does.
    clear_on_unmount: bool,
}

#[derive(Debug)]
struct Mounted {
    source: PathBuf,
    target: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    loops: BTreeMap<u32, BoundLoop>,
    mounts: Vec<Mounted>,
    failures: HashMap<Op, VecDeque<i32>>,
    /// `fs_type` answers by longest matching prefix; anything else is XFS.
    fs_types: Vec<(PathBuf, FsType)>,
    /// Answers for the next `extent_count` calls, before it falls back to counting data runs.
    extent_counts: VecDeque<u64>,
    /// What `fs_space` answers for every path; `None`: a roomy 1 TiB, all of it free.
    fs_space: Option<FsSpace>,
}

/// Records every call, simulates loop and mount tables, and pretends the rest succeeded.
#[derive(Debug, Default)]
pub struct FakeSys {
    state: Mutex<State>,
}

fn errno(op: &'static str, path: &Path, e: Errno) -> SysError {
    SysError::io(
        op,
        path,
        std::io::Error::from_raw_os_error(e.raw_os_error()),
    )
}

fn loop_number(device: &Path) -> Option<u32> {
    device.to_str()?.strip_prefix("/dev/loop")?.parse().ok()
}

impl FakeSys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Make the next call of `op` fail with `errno` (queued: call twice to fail twice).
    pub fn fail_next(&self, op: Op, errno: i32) {
        self.state()
            .failures
            .entry(op)
            .or_default()
            .push_back(errno);
    }

    /// Make `fs_type` report `fs` for paths at or below `prefix` (the default is XFS).
    pub fn set_fs_type(&self, prefix: impl Into<PathBuf>, fs: FsType) {
        self.state().fs_types.push((prefix.into(), fs));
    }

    /// Make `fs_space` answer `space` from now on (for every path).
    pub fn set_fs_space(&self, space: FsSpace) {
        self.state().fs_space = Some(space);
    }

    /// Make the next `extent_count` call answer `n`: a file fragmented on disk, which no
    /// filesystem-neutral count can show.
    pub fn report_extents(&self, n: u64) {
        self.state().extent_counts.push_back(n);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; the table is
        // still the best account of what happened.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the call, then fail it if a failure was injected for its operation.
    fn enter(&self, op: Op, call: Call, path: &Path) -> Result<MutexGuard<'_, State>> {
        let mut st = self.state();
        st.calls.push(call);
        if let Some(e) = st.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            return Err(errno(op_name(op), path, Errno::from_raw_os_error(e)));
        }
        Ok(st)
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::AttachLoop => "attach loop",
        Op::DetachLoop => "detach loop",
        Op::LoopDevices => "list loop devices",
        Op::Mount => "mount",
        Op::Unmount => "unmount",
        Op::MountsUnder => "list mounts",
        Op::Reflink => "reflink",
        Op::Syncfs => "syncfs",
        Op::Fsync => "fsync",
        Op::MountSource => "read mount table",
        Op::FsType => "statfs",
        Op::FsSpace => "statvfs",
        Op::SparseCopy => "sparse copy",
        Op::DetachLoopOf => "detach loop",
        Op::ExtentCount => "map extents",
        Op::TuneExt4 => "tune ext4",
    }
}

impl Sys for FakeSys {
    fn attach_loop(&self, file: &Path, opts: LoopOptions) -> Result<LoopDevice> {
        let call = Call::AttachLoop {
            file: file.to_owned(),
            opts,
        };
        let mut st = self.enter(Op::AttachLoop, call, file)?;
        let number = (0..).find(|n| !st.loops.contains_key(n)).unwrap_or(0);
        st.loops.insert(
            number,
            BoundLoop {
                file: file.to_owned(),
                opts,
                clear_on_unmount: false,
            },
        );
        Ok(LoopDevice::new(number))
    }

    fn detach_loop(&self, device: &Path) -> Result<()> {
        let call = Call::DetachLoop {
            device: device.to_owned(),
        };
        let mut st = self.enter(Op::DetachLoop, call, device)?;
        let Some(number) = loop_number(device) else {
            return Err(errno("open", device, Errno::NOENT));
        };
        if st.mounts.iter().any(|m| m.source == device) {
            if let Some(bound) = st.loops.get_mut(&number) {
                bound.clear_on_unmount = true;
            }
        } else {
            st.loops.remove(&number);
        }
        Ok(())
    }

    fn loop_devices(&self) -> Result<Vec<LoopInfo>> {
        let st = self.enter(Op::LoopDevices, Call::LoopDevices, Path::new("/sys/block"))?;
        Ok(st
            .loops
            .iter()
            .map(|(n, bound)| LoopInfo {
                device: LoopDevice::new(*n).path,
                backing_file: bound.file.clone(),
            })
            .collect())
    }

    fn bound_loop_count(&self) -> Result<usize> {
        // Fails when listing does: both read the kernel's table of loop devices.
        let st = self.enter(
            Op::LoopDevices,
            Call::BoundLoopCount,
            Path::new("/proc/partitions"),
        )?;
        Ok(st.loops.len())
    }

    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<()> {
        let call = Call::Mount {
            source: source.to_owned(),
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            opts,
            data: data.to_owned(),
        };
        let mut st = self.enter(Op::Mount, call, target)?;
        if let Some(n) = loop_number(source) {
            if !st.loops.contains_key(&n) {
                return Err(errno("mount", target, Errno::NXIO));
            }
        }
        st.mounts.push(Mounted {
            source: source.to_owned(),
            target: target.to_owned(),
        });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        let call = Call::Unmount {
            target: target.to_owned(),
        };
        let mut st = self.enter(Op::Unmount, call, target)?;
        unmount_top(&mut st, target)
    }

    fn mount_beneath(
        &self,
        source: &Path,
        target: &MountTarget,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<Vec<PathBuf>> {
        let at = target.path();
        let call = Call::MountBeneath {
            source: source.to_owned(),
            root: target.root().to_owned(),
            target: at.clone(),
            fstype: fstype.to_owned(),
            opts,
            data: data.to_owned(),
        };
        let mut st = self.enter(Op::Mount, call, &at)?;
        // The real walk, on the real directories: the refusals the kernel's openat2 makes.
        if crate::mount_path::first_symlink(target.root()).is_some() {
            return Err(errno(
                "open without following symlinks",
                target.root(),
                Errno::LOOP,
            ));
        }
        let mut dir = target.root().to_owned();
        let mut made = Vec::new();
        let undo = |made: &[PathBuf], e: SysError| {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            e
        };
        for name in target.components() {
            dir.push(name);
            if st.mounts.iter().any(|m| m.target == dir) {
                return Err(undo(&made, errno("open mountpoint", &dir, Errno::XDEV)));
            }
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(undo(&made, errno("open mountpoint", &dir, Errno::LOOP)))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(undo(&made, errno("open mountpoint", &dir, Errno::NOTDIR)))
                }
                Ok(_) => {}
                Err(_) => {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .mode(crate::access::PRIVATE_DIR)
                        .create(&dir)
                        .map_err(|e| undo(&made, SysError::io("create mountpoint", &dir, e)))?;
                    made.push(dir.clone());
                }
            }
        }
        if let Some(n) = loop_number(source) {
            if !st.loops.contains_key(&n) {
                return Err(undo(&made, errno("mount", &at, Errno::NXIO)));
            }
        }
        st.mounts.push(Mounted {
            source: source.to_owned(),
            target: at,
        });
        Ok(made)
    }

    fn unmount_nofollow(&self, target: &Path) -> Result<()> {
        let call = Call::UnmountNofollow {
            target: target.to_owned(),
        };
        let mut st = self.enter(Op::Unmount, call, target)?;
        if crate::mount_path::first_symlink(target).is_some() {
            return Err(errno("unmount", target, Errno::LOOP));
        }
        unmount_top(&mut st, target)
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        let call = Call::MountsUnder {
            prefix: prefix.to_owned(),
        };
        let st = self.enter(Op::MountsUnder, call, prefix)?;
        let mut hits: Vec<(usize, PathBuf)> = st
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.target.starts_with(prefix))
            .map(|(i, m)| (i, m.target.clone()))
            .collect();
        hits.sort_by(|(ia, a), (ib, b)| {
            let depth = |p: &Path| p.components().count();
            depth(b).cmp(&depth(a)).then(ib.cmp(ia))
        });
        Ok(hits.into_iter().map(|(_, p)| p).collect())
    }

    fn reflink(&self, src: &Path, dst: &Path) -> Result<()> {
        let call = Call::Reflink {
            src: src.to_owned(),
            dst: dst.to_owned(),
        };
        // The copy runs under the lock too: tests are small, and ordering stays simple.
        let _st = self.enter(Op::Reflink, call, dst)?;
        // Data extents only, as a real reflink shares only those: a snapshot is a sparse file
        // of the cache's full size, and copying its holes as zeros would cost seconds and
        // gigabytes per clone.
        super::sparse::sparse_copy(src, dst).map(drop)
    }

    fn syncfs(&self, path: &Path) -> Result<()> {
        let call = Call::Syncfs {
            path: path.to_owned(),
        };
        self.enter(Op::Syncfs, call, path).map(drop)
    }

    fn fsync(&self, path: &Path) -> Result<()> {
        let call = Call::Fsync {
            path: path.to_owned(),
        };
        self.enter(Op::Fsync, call, path).map(drop)
    }

    fn mount_source(&self, target: &Path) -> Result<Option<PathBuf>> {
        let call = Call::MountSource {
            target: target.to_owned(),
        };
        let st = self.enter(Op::MountSource, call, target)?;
        Ok(st
            .mounts
            .iter()
            .rev()
            .find(|m| m.target == target)
            .map(|m| m.source.clone()))
    }

    fn mount_table(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let st = self.enter(
            Op::MountSource,
            Call::MountTable,
            Path::new("/proc/self/mountinfo"),
        )?;
        Ok(st
            .mounts
            .iter()
            .map(|m| (m.target.clone(), m.source.clone()))
            .collect())
    }

    fn fs_type(&self, path: &Path) -> Result<FsType> {
        let call = Call::FsType {
            path: path.to_owned(),
        };
        let st = self.enter(Op::FsType, call, path)?;
        Ok(st
            .fs_types
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.components().count())
            .map_or(FsType::XFS, |(_, fs)| *fs))
    }

    fn fs_space(&self, path: &Path) -> Result<FsSpace> {
        let call = Call::FsSpace {
            path: path.to_owned(),
        };
        let st = self.enter(Op::FsSpace, call, path)?;
        Ok(st.fs_space.unwrap_or(FsSpace {
            total: 1 << 40,
            available: 1 << 40,
        }))
    }

    fn sparse_copy(&self, src: &Path, dst: &Path) -> Result<u64> {
        let call = Call::SparseCopy {
            src: src.to_owned(),
            dst: dst.to_owned(),
        };
        let _st = self.enter(Op::SparseCopy, call, dst)?;
        // Plain file work, like the fake reflink's copy: safe to do for real.
        super::sparse::sparse_copy(src, dst)
    }

    fn detach_loop_of(&self, device: &Path, file: &Path) -> Result<bool> {
        let call = Call::DetachLoopOf {
            device: device.to_owned(),
            file: file.to_owned(),
        };
        let mut st = self.enter(Op::DetachLoopOf, call, device)?;
        let Some(number) = loop_number(device) else {
            return Ok(false);
        };
        if st.loops.get(&number).is_none_or(|b| b.file != file) {
            return Ok(false);
        }
        if st.mounts.iter().any(|m| m.source == device) {
            if let Some(bound) = st.loops.get_mut(&number) {
                bound.clear_on_unmount = true;
            }
        } else {
            st.loops.remove(&number);
        }
        Ok(true)
    }

    fn extent_count(&self, file: &Path) -> Result<u64> {
        let call = Call::ExtentCount {
            file: file.to_owned(),
        };
        let mut st = self.enter(Op::ExtentCount, call, file)?;
        if let Some(n) = st.extent_counts.pop_front() {
            return Ok(n);
        }
        drop(st);
        // A filesystem-neutral stand-in: the file's data runs, as SEEK_DATA/SEEK_HOLE see them.
        let handle = std::fs::File::open(file).map_err(|e| SysError::io("open", file, e))?;
        let runs = super::sparse::data_runs(&handle)
            .map_err(|e| errno(op_name(Op::ExtentCount), file, e))?;
        Ok(runs.len() as u64)
    }

    fn tune_ext4(&self, device: &Path, name: &str, value: u64) -> Result<()> {
        let call = Call::TuneExt4 {
            device: device.to_owned(),
            name: name.to_owned(),
            value,
        };
        self.enter(Op::TuneExt4, call, device).map(drop)
    }
}

/// umount(2) of the topmost mount on `target`, as the kernel answers it.
fn unmount_top(st: &mut State, target: &Path) -> Result<()> {
    let Some(top) = st.mounts.iter().rposition(|m| m.target == target) else {
        return Err(errno("unmount", target, Errno::INVAL));
    };
    let covered = st.mounts[top + 1..]
        .iter()
        .any(|m| m.target != target && m.target.starts_with(target));
    if covered {
        return Err(errno("unmount", target, Errno::BUSY));
    }
    let gone = st.mounts.remove(top);
    if let Some(n) = loop_number(&gone.source) {
        let still_used = st.mounts.iter().any(|m| m.source == gone.source);
        let clears = st
            .loops
            .get(&n)
            .is_some_and(|b| b.opts.autoclear || b.clear_on_unmount);
        if clears && !still_used {
            st.loops.remove(&n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    use super::*;

    fn autoclear() -> LoopOptions {
        LoopOptions {
            autoclear: true,
            ..LoopOptions::default()
        }
    }

    #[test]
    fn records_calls_in_order() {
        let sys = FakeSys::new();
        let dev = sys
            .attach_loop(Path::new("/img"), LoopOptions::default())
            .unwrap();
        sys.mount(
            &dev.path,
            Path::new("/m"),
            "ext4",
            MountOptions::default(),
            "noinit_itable",
        )
        .unwrap();
        sys.unmount(Path::new("/m")).unwrap();
        sys.detach_loop(&dev.path).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 4);
        assert!(matches!(&calls[1], Call::Mount { data, .. } if data == "noinit_itable"));
        assert_eq!(
            calls[3],
            Call::DetachLoop {
                device: PathBuf::from("/dev/loop0")
            }
        );
    }

    #[test]
    fn loop_table_follows_attach_and_detach() {
        let sys = FakeSys::new();
        let a = sys
            .attach_loop(Path::new("/a"), LoopOptions::default())
            .unwrap();
        let b = sys
            .attach_loop(Path::new("/b"), LoopOptions::default())
            .unwrap();
        assert_ne!(a.number, b.number);
        let files: Vec<_> = sys
            .loop_devices()
            .unwrap()
            .into_iter()
            .map(|l| l.backing_file)
            .collect();
        assert_eq!(files, [PathBuf::from("/a"), PathBuf::from("/b")]);
        sys.detach_loop(&a.path).unwrap();
        // Detaching twice is fine, as with the kernel's ENXIO.
        sys.detach_loop(&a.path).unwrap();
        assert_eq!(sys.loop_devices().unwrap().len(), 1);
        // The freed number is handed out again, like LOOP_CTL_GET_FREE does.
        assert_eq!(
            sys.attach_loop(Path::new("/c"), LoopOptions::default())
                .unwrap()
                .number,
            a.number
        );
    }

    #[test]
    fn autoclear_and_lazy_detach_follow_unmount() {
        let sys = FakeSys::new();
        let auto = sys.attach_loop(Path::new("/a"), autoclear()).unwrap();
        let plain = sys
            .attach_loop(Path::new("/b"), LoopOptions::default())
            .unwrap();
        sys.mount(
            &auto.path,
            Path::new("/ma"),
            "ext4",
            MountOptions::default(),
            "",
        )
        .unwrap();
        sys.mount(
            &plain.path,
            Path::new("/mb"),
            "ext4",
            MountOptions::default(),
            "",
        )
        .unwrap();
        sys.detach_loop(&plain.path).unwrap();
        assert_eq!(
            sys.loop_devices().unwrap().len(),
            2,
            "mounted devices stay bound"
        );
        sys.unmount(Path::new("/ma")).unwrap();
        sys.unmount(Path::new("/mb")).unwrap();
        assert!(sys.loop_devices().unwrap().is_empty());
    }

    #[test]
    fn mount_table_orders_and_guards_unmounts() {
        let sys = FakeSys::new();
        let opts = MountOptions::default();
        sys.mount(Path::new("none"), Path::new("/s"), "tmpfs", opts, "")
            .unwrap();
        sys.mount(Path::new("none"), Path::new("/s/a/b"), "tmpfs", opts, "")
            .unwrap();
        sys.mount(Path::new("none"), Path::new("/s/a"), "tmpfs", opts, "")
            .unwrap();
        sys.mount(Path::new("none"), Path::new("/sx"), "tmpfs", opts, "")
            .unwrap();
        let under = sys.mounts_under(Path::new("/s")).unwrap();
        assert_eq!(under, [PathBuf::from("/s/a/b"), "/s/a".into(), "/s".into()]);
        let busy = sys.unmount(Path::new("/s")).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
        for m in under {
            sys.unmount(&m).unwrap();
        }
        let missing = sys.unmount(Path::new("/s")).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        assert_eq!(
            sys.mounts_under(Path::new("/")).unwrap(),
            [PathBuf::from("/sx")]
        );
    }

    #[test]
    fn injected_failures_fire_once_each_and_are_recorded() {
        let sys = FakeSys::new();
        sys.fail_next(Op::AttachLoop, Errno::BUSY.raw_os_error());
        let err = sys
            .attach_loop(Path::new("/a"), LoopOptions::default())
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
        assert!(sys.loop_devices().unwrap().is_empty());
        sys.attach_loop(Path::new("/a"), LoopOptions::default())
            .unwrap();
        assert_eq!(sys.calls().len(), 3);
    }

    #[test]
    fn reflink_copies_with_mode_and_refuses_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"frozen").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o444)).unwrap();
        let dst = dir.path().join("dst");
        let sys = FakeSys::new();
        sys.reflink(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"frozen");
        let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o444);
        let again = sys.reflink(&src, &dst).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(Errno::EXIST.raw_os_error()));

        sys.fail_next(Op::Reflink, Errno::OPNOTSUPP.raw_os_error());
        let err = sys.reflink(&src, &dir.path().join("other")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::OPNOTSUPP.raw_os_error()));
        assert!(!dir.path().join("other").exists());
    }

    #[test]
    fn reflink_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let file = std::fs::File::create(&src).unwrap();
        file.set_len(4 << 30).unwrap();
        file.write_all_at(b"superblock", 1024).unwrap();
        file.write_all_at(b"tail", (4 << 30) - 4).unwrap();
        drop(file);
        let dst = dir.path().join("dst");
        FakeSys::new().reflink(&src, &dst).unwrap();
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 4 << 30);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes were filled: {} blocks",
            meta.blocks()
        );
        let copy = std::fs::File::open(&dst).unwrap();
        let mut head = [0u8; 10];
        copy.read_exact_at(&mut head, 1024).unwrap();
        assert_eq!(&head, b"superblock");
        let mut tail = [0u8; 4];
        copy.read_exact_at(&mut tail, (4 << 30) - 4).unwrap();
        assert_eq!(&tail, b"tail");
    }
}
