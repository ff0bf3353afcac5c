//! Frozen snapshots shared through an OCI registry between two nodes (issue "Build once per
//! cluster"), with two real daemons on separate state roots, one image registry and one share
//! registry on 127.0.0.1:
//!
//! - node A builds a cache and pushes its snapshot (`Pushed`, `status.sharedAs`); node B's
//!   create of the same ImageCache imports it: the same snapshot digest, `source: imported`,
//!   `verify` passes, no layer blob fetched from the image registry (A's build fetched them
//!   all: the log parse is shown to see them), and a disk cloned on B shows the image's tree;
//! - a chunk tampered with in the share registry: B's import is refused naming the chunk
//!   (`ImportFailed`), and B builds the cache itself (`source: built`);
//! - `imagecache pull REF` imports a snapshot by reference, on a node with or without a share
//!   registry of its own, and refuses references that name no snapshot.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::cachefs::mount_chain;
use support::daemon::{cache_yaml, events, TestDaemon};
use support::gen::features::feature_set;
use support::hostile_registry::{blob_path, manifest_path, HostileRegistry, Misbehaviour};
use support::oci::Artifact;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

const SHARE_REPO: &str = "imagecache/snapshots";

/// A daemon on `root` sharing through `share`.
fn node(root: &Path, registries: &[&str], share: &str) -> TestDaemon {
    TestDaemon::start_sharing(root, registries, &format!("{share}/{SHARE_REPO}"))
}

fn ready(daemon: &TestDaemon, name: &str, images: &[String]) -> Value {
    daemon.ready_cache(name, images, "  imageCacheSize: 20\n")
}

/// Waits for the cache's push to end; its `sharedAs`.
fn pushed(daemon: &TestDaemon, name: &str) -> String {
    let cache = daemon.wait_until(name, Duration::from_secs(120), |c| {
        !events(c, "Pushed").is_empty() || !events(c, "PushFailed").is_empty()
    });
    assert!(
        events(&cache, "PushFailed").is_empty(),
        "{cache:#}\n{}",
        daemon.log()
    );
    cache["status"]["sharedAs"]
        .as_str()
        .unwrap_or_else(|| panic!("no sharedAs: {cache:#}"))
        .to_owned()
}

/// The number just before `what` in an event's message ("... 12 chunk(s) uploaded ...").
fn number_before(message: &str, what: &str) -> usize {
    let at = message
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} not in {message:?}"));
    message[..at]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {message:?}"))
}

/// The chunk blobs of the artifact `shared_as` names that were fetched from the share
/// registry since `mark`, counted from the registry's own access log.
fn chunk_gets(share: &TestRegistry, mark: support::registry::LogMark, shared_as: &str) -> usize {
    chunk_gets_from(share, mark, share, shared_as)
}

/// The artifact `shared_as` names, read from `share`: its manifest's bytes and media type,
/// its config's digest and its chunks' blob digests.
fn artifact_of(share: &TestRegistry, shared_as: &str) -> (Vec<u8>, String, String, Vec<String>) {
    let client = support::oci::RegistryClient::new(&share.addr(), None);
    let digest = shared_as.rsplit_once('@').unwrap().1;
    let (media_type, bytes, _) = client.get_manifest(SHARE_REPO, digest).unwrap();
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let chunks = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (bytes, media_type, config, chunks)
}

fn layer_digests(artifact: &Artifact) -> Vec<String> {
    artifact
        .host_image()
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect()
}

#[test]
fn a_snapshot_built_on_one_node_is_imported_by_another_and_a_tampered_one_is_not() {
    let scratch = ScratchXfs::new(64 << 30);
    let images = TestRegistry::start();
    let share = TestRegistry::start();
    let (img_addr, share_addr) = (images.addr(), share.addr());
    let set = feature_set(7);
    let refs = set.push_all(&img_addr, None);
    let (root_a, root_b) = (scratch.path().join("a"), scratch.path().join("b"));
    let a = node(&root_a, &[&img_addr, &share_addr], &share_addr);
    let b = node(&root_b, &[&img_addr, &share_addr], &share_addr);
    let alpha = set.get("alpha");

    // Node A builds (fetching every layer) and pushes.
    let mark = images.log_mark();
    let built = ready(&a, "app", &refs[..1]);
    assert_eq!(built["status"]["source"], "built", "{built:#}");
    let fetched = images.blobs_fetched_since(mark);
    for layer in layer_digests(&alpha.artifact) {
        assert!(
            fetched.contains(&layer),
            "A's build did not fetch {layer}: {fetched:?}"
        );
    }
    let shared_as = pushed(&a, "app");
    assert!(
        shared_as.starts_with(&format!("{share_addr}/{SHARE_REPO}@sha256:")),
        "{shared_as}"
    );
    // A single image finds it by its own tag.
    let held = &a.get_json("app")["status"]["images"][0];
    let image_tag = imagecache::share::tag_for_image(
        &imagecache::registry::Platform::host().to_string(),
        held["resolvedDigest"]
            .as_str()
            .or(held["digest"].as_str())
            .unwrap(),
    );
    let by_image = support::oci::RegistryClient::new(&share_addr, None)
        .get_manifest(SHARE_REPO, &image_tag)
        .unwrap();
    assert_eq!(
        Some(shared_as.rsplit_once('@').unwrap().1),
        by_image.2.as_deref(),
        "the image's tag names another manifest"
    );

    // Node B imports it: same snapshot, nothing but manifests and configs from the images'
    // registry.
    let mark = images.log_mark();
    let imported = ready(&b, "app", &refs[..1]);
    assert_eq!(
        imported["status"]["source"],
        "imported",
        "{imported:#}\n{}",
        b.log()
    );
    assert_eq!(
        imported["status"]["snapshotDigest"], built["status"]["snapshotDigest"],
        "{imported:#}"
    );
    assert_eq!(events(&imported, "Imported").len(), 1, "{imported:#}");
    let fetched = images.blobs_fetched_since(mark);
    for layer in layer_digests(&alpha.artifact) {
        assert!(
            !fetched.contains(&layer),
            "B fetched layer {layer}: {fetched:?}"
        );
    }
    let verified = b.cli_ok(&["verify", "app"]);
    assert!(verified.contains("verified"), "{verified}");
    // An imported cache is not pushed again by itself; `imagecache push` pushes it on demand,
    // and the registry already holds every blob, so nothing is uploaded.
    assert!(imported["status"]["sharedAs"].is_null(), "{imported:#}");
    let out = b.cli_ok(&["push", "app"]);
    assert_eq!(out.trim(), format!("app: pushed as {shared_as}"));
    let again = b.get_json("app");
    let pushed_event = &events(&again, "Pushed")[0];
    assert_eq!(
        number_before(pushed_event, "chunk(s) uploaded"),
        0,
        "{pushed_event}"
    );
    assert!(
        number_before(pushed_event, "already there") > 0,
        "{pushed_event}"
    );
    let refused = b.cli(&["push", "nosuch"]);
    assert!(!refused.status.success());

    // A disk cloned on B shows the image as the generator made it.
    let disk = b.disk_create(&["--image", &refs[0]]);
    assert_eq!(
        disk["status"]["cacheId"], imported["status"]["imageCacheId"],
        "{disk:#}"
    );
    let mnt = std::path::PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap());
    let merged = mount_chain(
        &mnt,
        &alpha.artifact.host_image().chain_ids(),
        &scratch.path().join("merged"),
    );
    assert_tree_eq("alpha", &alpha.expected, &walk(&merged.path));
    drop(merged);
    b.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);

    // Chunks already on B are not fetched: a cache built on A by reuse of `app` shares most
    // of its chunks with it, so A uploads only the others, and B, holding `app`, fetches only
    // the others too.
    let child_yaml = format!(
        "apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata:\n  name: child\n  annotations:\n    k8s.aliyun.com/imc-enable-reuse: \"true\"\nspec:\n  images:\n  - {:?}\n  - {:?}\n  imageCacheSize: 20\n",
        refs[0], refs[2]
    );
    let out = a.create(&child_yaml, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child_a = a.get_json("child");
    assert!(!events(&child_a, "Reusing").is_empty(), "{child_a:#}");
    let child_shared = pushed(&a, "child");
    let child_a = a.get_json("child");
    let pushed_event = &events(&child_a, "Pushed")[0];
    let uploaded = number_before(pushed_event, "chunk(s) uploaded");
    let present = number_before(pushed_event, "already there");
    assert!(present > 0 && uploaded > 0, "{child_a:#}");
    let mark = share.log_mark();
    let out = b.create(&child_yaml, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child_b = b.get_json("child");
    assert_eq!(
        child_b["status"]["source"],
        "imported",
        "{child_b:#}\n{}",
        b.log()
    );
    assert_eq!(
        child_b["status"]["snapshotDigest"],
        child_a["status"]["snapshotDigest"]
    );
    let imported = &events(&child_b, "Imported")[0];
    let fetched = number_before(imported, "chunk(s) fetched");
    let reused = number_before(imported, "taken from snapshots on this node");
    eprintln!("child on B: {imported}\nchild on A: {pushed_event}");
    assert!(reused > 0, "{imported}");
    assert_eq!(fetched + reused, uploaded + present, "{imported}");
    assert_eq!(
        chunk_gets(&share, mark, &child_shared),
        fetched,
        "{imported}"
    );
    assert!(b.cli_ok(&["verify", "child"]).contains("verified"));

    // A chunk tampered with in the share registry: refused, naming it; B builds instead.
    ready(&a, "second", &refs[1..2]);
    let shared_as = pushed(&a, "second");
    let (_, _, _, layers) = artifact_of(&share, &shared_as);
    let last = layers.len() - 1;
    let chunk = layers[last].clone();
    share.corrupt_blob(&chunk, 0);
    let second = ready(&b, "second", &refs[1..2]);
    assert_eq!(second["status"]["source"], "built", "{second:#}");
    let refused = events(&second, "ImportFailed");
    assert_eq!(refused.len(), 1, "{second:#}");
    assert!(
        refused[0].contains(&format!("chunk {last} at offset")) && refused[0].contains(&chunk),
        "{refused:?}"
    );

    // Resumed: what that import wrote is kept; with the blob whole again, B's next import of
    // the snapshot fetches only what the first one had not written.
    b.cli_ok(&["delete", "second"]);
    share.corrupt_blob(&chunk, 0);
    let mark = share.log_mark();
    let again = ready(&b, "second", &refs[1..2]);
    assert_eq!(
        again["status"]["source"],
        "imported",
        "{again:#}\n{}",
        b.log()
    );
    let imported = &events(&again, "Imported")[0];
    let fetched = number_before(imported, "chunk(s) fetched");
    let resumed = number_before(imported, "from an interrupted import");
    eprintln!("second on B, again: {imported}");
    // The failed import stopped starting chunks at the refusal but let those under way
    // finish: every chunk but the tampered one (the last, started last) is in the image.
    assert_eq!((resumed, fetched), (layers.len() - 1, 1), "{imported}");
    assert_eq!(chunk_gets(&share, mark, &shared_as), fetched, "{imported}");
    assert!(
        share.blobs_fetched_since(mark).contains(&chunk),
        "the repaired chunk was fetched"
    );

    drop(a);
    drop(b);
    assert_no_leaks(&root_a);
    assert_no_leaks(&root_b);
}

/// A daemon on `root` sharing through `share`, with `extra` config lines.
fn node_with(root: &Path, registries: &[&str], share: &str, extra: &str) -> TestDaemon {
    let mut daemon = node(root, registries, share);
    let base = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.stop();
    std::fs::write(&daemon.config_path, format!("{base}{extra}")).unwrap();
    daemon.spawn();
    daemon
}

#[test]
fn imports_go_through_a_mirror_and_a_stalled_share_registry_falls_back_in_time() {
    let scratch = ScratchXfs::new(64 << 30);
    let images = TestRegistry::start();
    let share = TestRegistry::start();
    let mirror = TestRegistry::start_mirror_of(&share);
    let (img_addr, share_addr, mirror_addr) = (images.addr(), share.addr(), mirror.addr());
    let set = feature_set(11);
    let refs = set.push_all(&img_addr, None);
    let all = [img_addr.as_str(), share_addr.as_str(), mirror_addr.as_str()];
    let a = node(&scratch.path().join("a"), &all, &share_addr);
    ready(&a, "app", &refs[..1]);
    let shared_as = pushed(&a, "app");

    // B and C import through the mirror: the mirror serves B (fetching from the share
    // registry once), and C gets nothing from the share registry that the mirror holds.
    let mirrors = format!("registry_mirrors = {{ \"{share_addr}\" = [\"{mirror_addr}\"] }}\n");
    let b = node_with(&scratch.path().join("b"), &all, &share_addr, &mirrors);
    let c = node_with(&scratch.path().join("c"), &all, &share_addr, &mirrors);
    let mirror_mark = mirror.log_mark();
    let imported = ready(&b, "app", &refs[..1]);
    assert_eq!(
        imported["status"]["source"],
        "imported",
        "{imported:#}\n{}",
        b.log()
    );
    let through_mirror = chunk_gets_from(&mirror, mirror_mark, &share, &shared_as);
    assert!(through_mirror > 0, "the mirror served B no chunk");
    let origin_mark = share.log_mark();
    let imported = ready(&c, "app", &refs[..1]);
    assert_eq!(
        imported["status"]["source"],
        "imported",
        "{imported:#}\n{}",
        c.log()
    );
    assert_eq!(
        chunk_gets(&share, origin_mark, &shared_as),
        0,
        "C fetched chunks from the origin"
    );

    // A share registry that stalls on one chunk: the import gives up within
    // registry_timeout_secs and the cache is built instead.
    let hostile = HostileRegistry::start();
    let client = support::oci::RegistryClient::new(&share_addr, None);
    let manifest_digest = shared_as.rsplit_once('@').unwrap().1;
    let (manifest, media_type, config, chunks) = artifact_of(&share, &shared_as);
    let cache = a.get_json("app");
    let held = &cache["status"]["images"][0];
    let key = imagecache::share::content_key(
        &imagecache::registry::Platform::host().to_string(),
        20,
        &[imagecache::share::KeyedImage {
            image: held["image"].as_str().unwrap().to_owned(),
            digest: held["resolvedDigest"]
                .as_str()
                .or(held["digest"].as_str())
                .unwrap()
                .to_owned(),
        }],
    );
    let tag = imagecache::share::tag_for_key(&key);
    hostile.put(
        &manifest_path(SHARE_REPO, &tag),
        &media_type,
        manifest.clone(),
    );
    hostile.put(
        &manifest_path(SHARE_REPO, manifest_digest),
        &media_type,
        manifest,
    );
    let mut blobs = vec![config];
    blobs.extend(chunks);
    for digest in &blobs {
        let body = client.get_blob(SHARE_REPO, digest).unwrap();
        hostile.put(
            &blob_path(SHARE_REPO, digest),
            "application/octet-stream",
            body,
        );
    }
    let stalled = blobs.last().unwrap();
    hostile.rule(&blob_path(SHARE_REPO, stalled), Misbehaviour::Stall);
    let d = node_with(
        &scratch.path().join("d"),
        &[&img_addr, hostile.addr()],
        hostile.addr(),
        "registry_timeout_secs = 3\n",
    );
    let started = std::time::Instant::now();
    let built = ready(&d, "app", &refs[..1]);
    let took = started.elapsed();
    assert_eq!(built["status"]["source"], "built", "{built:#}");
    let refused = events(&built, "ImportFailed");
    assert_eq!(refused.len(), 1, "{built:#}");
    assert!(
        refused[0].contains(stalled.as_str()) && refused[0].contains("3 s"),
        "{refused:?}"
    );
    assert!(
        !hostile.seen_at(&blob_path(SHARE_REPO, stalled)).is_empty(),
        "the stalled chunk was never asked for"
    );
    assert!(took < Duration::from_secs(3 + 20), "fallback took {took:?}");
    eprintln!("stalled share registry: Ready (built) {took:?} after the create");

    let roots: Vec<std::path::PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| scratch.path().join(n))
        .collect();
    drop((a, b, c, d));
    for root in roots {
        assert_no_leaks(&root);
    }
}

/// Like [`chunk_gets`], counted in `mirror`'s access log, the artifact read from `share`.
fn chunk_gets_from(
    mirror: &TestRegistry,
    mark: support::registry::LogMark,
    share: &TestRegistry,
    shared_as: &str,
) -> usize {
    let (_, _, _, chunks) = artifact_of(share, shared_as);
    mirror
        .blobs_fetched_since(mark)
        .iter()
        .filter(|b| chunks.contains(b))
        .count()
}

/// `imagecache pull REF`: a node without `share_registry` pulls the snapshot by A's
/// `sharedAs`, one with it by the image's bare tag; references that name nothing, or no
/// snapshot, are refused with what to give instead, creating nothing.
#[test]
fn a_snapshot_is_pulled_by_reference() {
    let scratch = ScratchXfs::new(64 << 30);
    let images = TestRegistry::start();
    let share = TestRegistry::start();
    let (img_addr, share_addr) = (images.addr(), share.addr());
    let set = feature_set(7);
    let refs = set.push_all(&img_addr, None);
    let a = node(
        &scratch.path().join("a"),
        &[&img_addr, &share_addr],
        &share_addr,
    );
    let built = ready(&a, "app", &refs[..1]);
    let shared_as = pushed(&a, "app");

    // Node C shares nothing itself: the reference names the registry and the digest.
    let c = TestDaemon::start(&scratch.path().join("c"), &[&img_addr, &share_addr]);
    let mark = images.log_mark();
    let out = c.cli_ok(&["pull", &shared_as, "--name", "got"]);
    assert!(out.contains("got: imported"), "{out}\n{}", c.log());
    let got = c.get_json("got");
    assert_eq!(got["status"]["source"], "imported", "{got:#}");
    assert_eq!(
        got["status"]["snapshotDigest"], built["status"]["snapshotDigest"],
        "{got:#}"
    );
    assert_eq!(got["spec"]["images"], built["spec"]["images"], "{got:#}");
    assert_eq!(got["spec"]["imageCacheSize"], 20, "{got:#}");
    assert_eq!(
        got["metadata"]["annotations"]["imagecache.io/import-from"], shared_as,
        "{got:#}"
    );
    let fetched = images.blobs_fetched_since(mark);
    for layer in layer_digests(&set.get("alpha").artifact) {
        assert!(!fetched.contains(&layer), "C fetched layer {layer}");
    }
    assert!(c.cli_ok(&["verify", "got"]).contains("verified"));

    // Node B shares into another repository of the same registry. It pulls A's snapshot
    // (the cache named after the manifest's digest) and pushes it to its own repository by
    // mounting every chunk from A's, uploading none.
    let b = TestDaemon::start_sharing(
        &scratch.path().join("b"),
        &[&img_addr, &share_addr],
        &format!("{share_addr}/team-b/snapshots"),
    );
    let hex = shared_as.rsplit_once("@sha256:").unwrap().1;
    let name = format!("shared-{}", &hex[..12]);
    let out = b.cli_ok(&["pull", &shared_as]);
    assert!(
        out.contains(&format!("{name}: imported")),
        "{out}\n{}",
        b.log()
    );
    let mark = share.log_mark();
    let out = b.cli_ok(&["push", &name]);
    assert_eq!(
        out.trim(),
        format!("{name}: pushed as {share_addr}/team-b/snapshots@sha256:{hex}")
    );
    let pushed_event = &events(&b.get_json(&name), "Pushed")[0];
    let chunks = number_before(pushed_event, "mounted from imagecache/snapshots");
    assert!(chunks > 0, "{pushed_event}");
    assert_eq!(
        number_before(pushed_event, "chunk(s) uploaded"),
        0,
        "{pushed_event}"
    );
    let uploads = share
        .requests_since(mark)
        .into_iter()
        .filter(|(method, path, _)| method == "PUT" && path.contains("/blobs/uploads/"))
        .count();
    assert_eq!(
        uploads, 1,
        "only the config blob is uploaded: {pushed_event}"
    );

    // There, the image's tag alone finds the snapshot.
    let held = &built["status"]["images"][0];
    let image_tag = imagecache::share::tag_for_image(
        &imagecache::registry::Platform::host().to_string(),
        held["resolvedDigest"]
            .as_str()
            .or(held["digest"].as_str())
            .unwrap(),
    );
    let out = b.cli_ok(&["pull", &image_tag, "--name", "again"]);
    assert!(out.contains("again: imported"), "{out}\n{}", b.log());
    assert_eq!(
        b.get_json("again")["status"]["snapshotDigest"],
        built["status"]["snapshotDigest"]
    );

    // Refused, naming what was wrong; nothing is created.
    let missing = format!("{share_addr}/{SHARE_REPO}:sha256-0000");
    for (node, reference, says) in [
        (&c, image_tag.as_str(), "share_registry is not set"),
        (&c, missing.as_str(), "not found"),
        (&c, refs[0].as_str(), "is not an imagecache snapshot"),
        (&b, "127.0.0.1:1/x", "names no tag or digest"),
    ] {
        let out = node.cli(&["pull", reference, "--name", "refused"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{reference}: {err}"
        );
    }
    assert_eq!(c.list_names(), vec!["got".to_owned()]);
    drop((a, b, c));
    for node in ["a", "b", "c"] {
        assert_no_leaks(&scratch.path().join(node));
    }
}

/// A cache of an image its registry serves only with credentials is never pushed: the share
/// registry's readers would get files that registry refuses them.
#[test]
fn a_cache_of_an_image_that_needed_credentials_is_not_pushed() {
    let scratch = ScratchXfs::new(64 << 30);
    let private = TestRegistry::start_with_htpasswd("alice", "alice-pass");
    let share = TestRegistry::start();
    let (priv_addr, share_addr) = (private.addr(), share.addr());
    let set = feature_set(7);
    let refs = set.push_all(&priv_addr, Some(("alice", "alice-pass")));
    let a = node(
        &scratch.path().join("a"),
        &[&priv_addr, &share_addr],
        &share_addr,
    );
    a.write_pull_secret("shop", "alice-cred", &priv_addr, "alice", "alice-pass");
    let mark = share.log_mark();
    let out = a.create(
        &cache_yaml(
            "private",
            &refs[..1],
            "  imageCacheSize: 20\n  imagePullSecrets: [\"shop:alice-cred\"]\n",
        ),
        true,
    );
    assert!(out.status.success(), "{}", a.log());
    let cache = a.wait_until("private", Duration::from_secs(30), |c| {
        !events(c, "NotShared").is_empty() || !events(c, "Pushed").is_empty()
    });
    assert_eq!(
        cache["status"]["images"][0]["credentialsRequired"], true,
        "{cache:#}"
    );
    assert!(events(&cache, "Pushed").is_empty(), "{cache:#}");
    assert!(cache["status"]["sharedAs"].is_null(), "{cache:#}");
    let refused = a.cli(&["push", "private"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("serves only with credentials"),
        "{err}"
    );
    let uploads = share
        .requests_since(mark)
        .into_iter()
        .filter(|(method, _, _)| method == "PUT" || method == "POST")
        .count();
    assert_eq!(uploads, 0, "the share registry was written to");
    drop(a);
    assert_no_leaks(&scratch.path().join("a"));
}
