//! Replays every file of every fuzz target's corpus (fuzz/corpus/<target>/) through the very
//! checks the target runs (fuzz/checks/<target>.rs), so a regression on an input the fuzzer
//! once found, or on a seed, fails `cargo test` on stable Rust without cargo-fuzz. Also checks
//! the seeds are the ones tests/fuzz_seeds generates (IMAGECACHE_WRITE_SEEDS=1 rewrites them).

mod fuzz_seeds;
mod unpack_util;

#[path = "../fuzz/checks/api_body.rs"]
mod api_body;
#[path = "../fuzz/checks/layer_apply.rs"]
mod layer_apply;
#[path = "../fuzz/checks/manifest.rs"]
mod manifest;
#[path = "../fuzz/checks/matching.rs"]
mod matching;
#[path = "../fuzz/checks/reference.rs"]
mod reference;
#[path = "../fuzz/checks/snapshot_manifest.rs"]
mod snapshot_manifest;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// How many of a target's seeds (tests/fuzz_seeds) reach the check's assertions past its
/// parse. A seed is written to reach them, or to be refused at a stated point; a change that
/// makes a check bail out early (a parse that now refuses every input, a renamed field) drops
/// this count, and the replay fails instead of passing on inputs that test nothing.
const SEEDS_REACHING: &[(&str, usize)] = &[
    ("api_body", 7),
    ("layer_apply", 17),
    ("manifest", 9),
    ("matching", 13),
    ("reference", 14),
    ("snapshot_manifest", 6),
];

/// Runs `check` on every corpus file and names each one that fails; then counts the corpus
/// files and the seeds that reached the assertions, and holds the seeds to their share.
fn replay(target: &str, check: fn(&[u8]) -> bool) {
    let mut files: Vec<PathBuf> = fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    let mut reached = 0;
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap();
            match catch_unwind(AssertUnwindSafe(|| check(&data))) {
                Ok(deep) => {
                    reached += usize::from(deep);
                    false
                }
                Err(_) => true,
            }
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: failed on {failed:?}");

    let seeds: Vec<_> = fuzz_seeds::all()
        .into_iter()
        .filter(|(t, _, _)| *t == target)
        .collect();
    let shallow: Vec<String> = seeds
        .iter()
        .filter(|(_, _, content)| !check(content))
        .map(|(_, name, _)| name.clone())
        .collect();
    let seeds_reaching = seeds.len() - shallow.len();
    eprintln!(
        "{target}: {reached} of {} corpus files reached the assertions; seeds {seeds_reaching} of {} (stopped early: {shallow:?})",
        files.len(),
        seeds.len()
    );
    let (_, want) = SEEDS_REACHING
        .iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("{target} has no entry in SEEDS_REACHING"));
    assert!(
        seeds_reaching >= *want,
        "{target}: only {seeds_reaching} seeds reached the assertions, {want} should (stopped early: {shallow:?})"
    );
}

#[test]
fn api_body_corpus() {
    replay("api_body", api_body::check);
}

#[test]
fn layer_apply_corpus() {
    replay("layer_apply", layer_apply::check);
    layer_apply::remove_sandbox();
}

#[test]
fn manifest_corpus() {
    replay("manifest", manifest::check);
}

#[test]
fn matching_corpus() {
    replay("matching", matching::check);
}

#[test]
fn reference_corpus() {
    replay("reference", reference::check);
}

#[test]
fn snapshot_manifest_corpus() {
    replay("snapshot_manifest", snapshot_manifest::check);
}

#[test]
fn seeds_are_checked_in() {
    let write = std::env::var_os("IMAGECACHE_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, content) in fuzz_seeds::all() {
        let path = corpus(target).join(&name);
        if fs::read(&path).ok().as_deref() == Some(&content[..]) {
            continue;
        }
        if write {
            fs::create_dir_all(corpus(target)).unwrap();
            fs::write(&path, &content).unwrap();
        } else {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seeds differ from tests/fuzz_seeds: {stale:?}; IMAGECACHE_WRITE_SEEDS=1 cargo test --test fuzz_corpora rewrites them"
    );
}

/// The program form of a layer writes a tar the unpacker reads entry by entry.
#[test]
fn layer_programs_write_valid_tars() {
    let tar = layer_apply::write_tar(
        b"d etc\nf etc/hostname = node-1\ns lib -> usr/lib\nx SCHILY.xattr.user.k=v\nf x = y\n",
        std::path::Path::new("/sandbox"),
    );
    let mut archive = tar::Archive::new(&tar[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["etc", "etc/hostname", "lib", "x"]);
}
