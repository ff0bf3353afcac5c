//! Symlink loops in a layer, applied by the real unpacker into a temp dir: loops on their own
//! are kept as links (a safe result: nothing follows them while unpacking), and any entry
//! written, made or whited out through a loop is refused naming the entry. Each case checks
//! that a sentinel directory beside the layer is untouched. The same layers go through the
//! daemon in tests/hostile_registry.rs.

mod unpack_util;

use std::fs;
use std::path::PathBuf;

use imagecache::unpack::Compression;
use unpack_util::*;

/// `outer/dest` is the layer directory; `outer/outside` must never change.
struct Sandbox {
    _outer: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
    before: Vec<(String, u32, u64, u64)>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        let outside = outer.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"sentinel").unwrap();
        let before = snapshot(&outside);
        Sandbox {
            _outer: outer,
            dest,
            outside,
            before,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(snapshot(&self.outside), self.before);
        assert_eq!(
            fs::read(self.outside.join("sentinel")).unwrap(),
            b"sentinel"
        );
    }
}

#[test]
fn symlink_loops_alone_are_kept_as_links() {
    let sb = Sandbox::new();
    let tar = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .symlink("self", "self")
        .dir("deep")
        .symlink("deep/x", "../deep/x")
        .symlink("up", "../outside/../dest/up")
        .file("plain", b"still here")
        .tar();
    apply(&tar, Compression::Gzip, &sb.dest).expect("loops alone are not an error");
    for (link, target) in [
        ("a", "b"),
        ("b", "a"),
        ("self", "self"),
        ("deep/x", "../deep/x"),
        ("up", "../outside/../dest/up"),
    ] {
        assert_eq!(
            fs::read_link(sb.dest.join(link)).unwrap(),
            PathBuf::from(target),
            "{link}"
        );
    }
    assert_eq!(fs::read(sb.dest.join("plain")).unwrap(), b"still here");
    sb.assert_untouched();
}

/// Adds a case's entries after the loops.
type AddEntries = Box<dyn Fn(&mut Layer)>;

#[test]
fn entries_through_a_symlink_loop_are_refused_naming_them() {
    let loops = |l: &mut Layer| {
        l.symlink("a", "b")
            .symlink("b", "a")
            .symlink("self", "self");
    };
    let cases: Vec<(&str, AddEntries)> = vec![
        (
            "a/escape",
            Box::new(|l: &mut Layer| {
                l.file("a/escape", b"evil");
            }),
        ),
        (
            "self/escape",
            Box::new(|l: &mut Layer| {
                l.file("self/escape", b"evil");
            }),
        ),
        (
            "a/sub/escape",
            Box::new(|l: &mut Layer| {
                l.file("a/sub/escape", b"evil");
            }),
        ),
        (
            "self/dir",
            Box::new(|l: &mut Layer| {
                l.dir("self/dir");
            }),
        ),
        (
            "b/.wh.x",
            Box::new(|l: &mut Layer| {
                l.file("b/.wh.x", b"");
            }),
        ),
        (
            "a/link",
            Box::new(|l: &mut Layer| {
                l.symlink("a/link", "/etc");
            }),
        ),
        (
            "a/hard",
            Box::new(|l: &mut Layer| {
                l.file("plain", b"x").hardlink("a/hard", "plain");
            }),
        ),
    ];
    for (entry, add) in cases {
        let sb = Sandbox::new();
        let mut layer = Layer::new();
        loops(&mut layer);
        add(&mut layer);
        let err = apply(&layer.tar(), Compression::Gzip, &sb.dest)
            .expect_err(&format!("{entry} is written through a loop"));
        let msg = err.to_string();
        eprintln!("{entry}: {msg}");
        assert!(msg.contains(&format!("`{entry}`")), "{entry}: {msg}");
        assert!(msg.contains("symlink loop"), "{entry}: {msg}");
        sb.assert_untouched();
    }
}
