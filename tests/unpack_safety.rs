//! apply_layer never writes outside the layer directory: hostile names, symlinked parents,
//! hard links and whiteouts are refused (naming the entry), and a symlink at an entry's own
//! name is replaced, never followed. Each case checks a sentinel directory next to the layer.

mod unpack_util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imagecache::unpack::{Compression, UnpackError};
use tar::EntryType;
use unpack_util::*;

/// `outer/dest` is the layer directory, `outer/outside/sentinel` must never change.
struct Sandbox {
    _outer: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
    before: Vec<(String, u32, u64, u64)>,
}

impl Sandbox {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        let outside = outer.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"sentinel").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        let before = snapshot(outer.path());
        Sandbox {
            _outer: outer,
            dest,
            outside,
            before,
        }
    }

    fn outer(&self) -> &Path {
        self.dest.parent().unwrap()
    }

    /// Nothing outside `dest` changed: same names, types, modes, sizes and link counts,
    /// sentinel content, owner and times, and no xattr was added to `outside`.
    fn assert_untouched(&self) {
        let now: Vec<_> = snapshot(self.outer())
            .into_iter()
            .filter(|(p, ..)| !p.starts_with("dest/"))
            .collect();
        let before: Vec<_> = self
            .before
            .iter()
            .filter(|(p, ..)| !p.starts_with("dest/"))
            .cloned()
            .collect();
        // `dest` itself may gain children (its nlink), so compare it by type only.
        let strip = |v: Vec<(String, u32, u64, u64)>| -> Vec<_> {
            v.into_iter()
                .map(|(p, m, s, n)| {
                    if p == "dest" {
                        (p, m, 0, 0)
                    } else {
                        (p, m, s, n)
                    }
                })
                .collect()
        };
        assert_eq!(strip(now), strip(before));
        assert_eq!(
            fs::read(self.outside.join("sentinel")).unwrap(),
            b"sentinel"
        );
        let s = lstat(self.outside.join("sentinel"));
        assert_eq!((s.uid(), s.gid()), (0, 0));
        assert_eq!(xattr(&self.outside, "trusted.overlay.opaque"), None);
        assert_eq!(lstat(&self.outside).uid(), 0);
    }

    fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }
}

/// Apply and expect an `Unsafe` refusal naming `entry`.
fn refused(sb: &Sandbox, tar: &[u8], entry: &str) -> String {
    let err = apply(tar, Compression::Gzip, &sb.dest).unwrap_err();
    let msg = err.to_string();
    match &err {
        UnpackError::Unsafe { entry: e, .. } => assert_eq!(e, entry, "{msg}"),
        other => panic!("expected a refusal of `{entry}`, got: {other}"),
    }
    assert!(msg.contains(&format!("`{entry}`")), "{msg}");
    assert!(msg.contains("unsafe and was refused"), "{msg}");
    sb.assert_untouched();
    msg
}

#[test]
fn dot_dot_names_are_refused() {
    for name in ["../x", "a/../../x", "a/..", "./../outside/sentinel"] {
        let sb = Sandbox::new();
        let tar = Layer::new()
            .dir("a")
            .raw(EntryType::Regular, name.as_bytes(), b"", b"evil")
            .tar();
        let msg = refused(&sb, &tar, name);
        assert!(msg.contains("escapes the layer directory"), "{msg}");
    }
}

#[test]
fn absolute_names_are_refused() {
    let sb = Sandbox::new();
    let name = format!("{}/sentinel", sb.outside_abs());
    let tar = Layer::new()
        .raw(EntryType::Regular, name.as_bytes(), b"", b"evil")
        .tar();
    let msg = refused(&sb, &tar, &name);
    assert!(msg.contains("absolute path"), "{msg}");
}

#[test]
fn absolute_symlinked_parent_is_refused() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("dir", &sb.outside_abs())
        .file("dir/sentinel", b"evil")
        .tar();
    refused(&sb, &tar, "dir/sentinel");

    // The classic: `etc -> /etc`, then `etc/<file>`. A fresh name, so a regression would
    // leave a stray file rather than damage the machine.
    let sb = Sandbox::new();
    let probe = format!("imagecache-unpack-test-{}", std::process::id());
    let entry = format!("dir/{probe}");
    let tar = Layer::new()
        .symlink("dir", "/etc")
        .file(&entry, b"evil")
        .tar();
    let msg = refused(&sb, &tar, &entry);
    assert!(msg.contains("symlink in its parent path"), "{msg}");
    assert!(!Path::new("/etc").join(&probe).exists());
}

#[test]
fn relative_symlinked_parent_climbing_out_is_refused() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .dir("a")
        .symlink("a/up", "../../outside")
        .file("a/up/sentinel", b"evil")
        .tar();
    refused(&sb, &tar, "a/up/sentinel");

    // Through a chain of two symlinks, and when a missing parent would be created there.
    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("one", "two")
        .symlink("two", "../outside")
        .file("one/newdir/f", b"evil")
        .tar();
    refused(&sb, &tar, "one/newdir/f");
}

#[test]
fn symlinks_staying_inside_are_followed() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .symlink("usr/lib/self", "../../usr/lib")
        .file("lib/libc.so", b"c")
        .file("usr/lib/self/libm.so", b"m")
        .tar();
    apply(&tar, Compression::Gzip, &sb.dest).unwrap();
    assert_eq!(fs::read(sb.dest.join("usr/lib/libc.so")).unwrap(), b"c");
    assert_eq!(fs::read(sb.dest.join("usr/lib/libm.so")).unwrap(), b"m");
    sb.assert_untouched();
}

#[test]
fn hardlinks_out_of_the_layer_are_refused() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .raw(EntryType::Link, b"h", b"../../etc/passwd", b"")
        .tar();
    let msg = refused(&sb, &tar, "h");
    assert!(msg.contains("../../etc/passwd"), "{msg}");

    let sb = Sandbox::new();
    let abs = format!("{}/sentinel", sb.outside_abs());
    let tar = Layer::new()
        .raw(EntryType::Link, b"h", abs.as_bytes(), b"")
        .tar();
    refused(&sb, &tar, "h");

    // Through a symlinked directory inside the layer.
    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("up", "../outside")
        .hardlink("h", "up/sentinel")
        .tar();
    refused(&sb, &tar, "h");
    assert_eq!(lstat(sb.outside.join("sentinel")).nlink(), 1);
}

#[test]
fn whiteouts_out_of_the_layer_are_refused() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .raw(EntryType::Regular, b"../.wh.outside", b"", b"")
        .tar();
    refused(&sb, &tar, "../.wh.outside");

    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("up", "../outside")
        .file("up/.wh.sentinel", b"")
        .tar();
    refused(&sb, &tar, "up/.wh.sentinel");

    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("up", &sb.outside_abs())
        .file("up/.wh..wh..opq", b"")
        .tar();
    refused(&sb, &tar, "up/.wh..wh..opq");

    for name in ["a/.wh..", "a/.wh."] {
        let sb = Sandbox::new();
        let tar = Layer::new()
            .dir("a")
            .raw(EntryType::Regular, name.as_bytes(), b"", b"")
            .tar();
        let msg = refused(&sb, &tar, name);
        assert!(msg.contains("whiteout"), "{msg}");
    }
}

#[test]
fn a_symlink_at_the_entry_name_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("f", "../outside/sentinel")
        .file_with("f", b"evil", 0o4777, 0, 0, MTIME)
        .symlink("d", &sb.outside_abs())
        .dir_with("d", 0o700, 99, 99, MTIME)
        .symlink("n", "../outside/sentinel")
        .node("n", EntryType::Fifo, 0, 0, 0o666)
        .symlink("w", "../outside/sentinel")
        .file(".wh.w", b"")
        .symlink("l", "../outside/sentinel")
        .file("real", b"real")
        .hardlink("l", "real")
        .tar();
    apply(&tar, Compression::Gzip, &sb.dest).unwrap();
    let p = |s: &str| sb.dest.join(s);
    assert_eq!((kind(p("f")), perm(p("f"))), (S_IFREG, 0o4777));
    assert_eq!(fs::read(p("f")).unwrap(), b"evil");
    assert_eq!(kind(p("d")), S_IFDIR);
    assert_eq!(lstat(p("d")).uid(), 99);
    assert_eq!(kind(p("n")), S_IFIFO);
    assert_eq!(kind(p("w")), S_IFCHR);
    assert_eq!(lstat(p("l")).ino(), lstat(p("real")).ino());
    sb.assert_untouched();
}

#[test]
fn a_parent_replaced_later_is_looked_up_again() {
    // `a/b` is cached as the parent after `a/b/x`; replacing `a` by a symlink out of the
    // layer must not let `a/b/y` reuse the stale directory or follow the new link.
    let sb = Sandbox::new();
    let tar = Layer::new()
        .dir("a")
        .dir("a/b")
        .file("a/b/x", b"x")
        .symlink("a", &sb.outside_abs())
        .file("a/b/y", b"evil")
        .tar();
    refused(&sb, &tar, "a/b/y");
}

#[test]
fn a_directory_replaced_by_an_outward_symlink_keeps_the_layer_valid() {
    // Deferred directory times must not follow the replacement out of the layer.
    let sb = Sandbox::new();
    let before = lstat(&sb.outside).mtime();
    let tar = Layer::new()
        .dir_with("t", 0o755, 0, 0, 12345)
        .symlink("t", &sb.outside_abs())
        .dir_with("u", 0o755, 0, 0, 12345)
        .symlink("u", "../outside")
        .tar();
    apply(&tar, Compression::None, &sb.dest).unwrap();
    assert_eq!(kind(sb.dest.join("t")), S_IFLNK);
    assert_eq!(lstat(&sb.outside).mtime(), before);
    sb.assert_untouched();
}
