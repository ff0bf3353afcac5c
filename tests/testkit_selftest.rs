//! Self-tests of the test kit itself: the registry harness, the OCI pusher, the feature-set
//! generator's expected-tree model and the tree walker. If these fail, every integration
//! test built on them is meaningless.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;
use sha2::{Digest, Sha256};
use support::gen::malicious::{malicious_cases, push_tampered, Tamper};
use support::gen::model::{apply_layer, expected_tree, Kind, LayerSpec, Tree};
use support::gen::{feature_set, realistic};
use support::oci::{self, sha256_digest, Artifact, Compression, RegistryClient};
use support::registry::TestRegistry;

/// Status code of a GET, over a raw socket so the registry tests need nothing else.
fn raw_get_status(addr: &str, path: &str, auth: Option<(&str, &str)>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn registry_starts_answers_and_stops() {
    let reg = TestRegistry::start();
    assert_eq!(
        raw_get_status(&reg.addr(), "/v2/", None),
        200,
        "{}",
        reg.log()
    );
    let addr = reg.addr();
    drop(reg);
    // Dropping reaps the registry: its port stops answering.
    assert!(
        TcpStream::connect(&addr).is_err(),
        "registry still up after drop"
    );
}

#[test]
fn htpasswd_registry_refuses_anonymous_and_accepts_credentials() {
    let reg = TestRegistry::start_with_htpasswd("alice", "s3cret");
    let addr = reg.addr();
    assert_eq!(raw_get_status(&addr, "/v2/", None), 401, "{}", reg.log());
    assert_eq!(raw_get_status(&addr, "/v2/", Some(("alice", "wrong"))), 401);
    assert_eq!(
        raw_get_status(&addr, "/v2/", Some(("alice", "s3cret"))),
        200
    );

    // The same through the pusher: anonymous pushes are refused, authenticated ones land.
    let set = feature_set(1);
    let bravo = set.get("bravo");
    let anon = RegistryClient::new(&addr, None);
    let err = anon
        .push(&bravo.repo, bravo.tag, &bravo.artifact)
        .unwrap_err();
    assert!(err.contains("401"), "{err}");
    let authed = RegistryClient::new(&addr, Some(("alice", "s3cret")));
    let digest = authed
        .push(&bravo.repo, bravo.tag, &bravo.artifact)
        .unwrap();
    let (_, _, served) = authed.get_manifest(&bravo.repo, bravo.tag).unwrap();
    assert_eq!(served.as_deref(), Some(digest.as_str()));
    assert!(anon.get_manifest(&bravo.repo, bravo.tag).is_err());
}

#[test]
fn registries_run_side_by_side() {
    let regs: Vec<_> = (0..4).map(|_| TestRegistry::start()).collect();
    let mut ports: Vec<_> = regs.iter().map(|r| r.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for r in &regs {
        assert_eq!(raw_get_status(&r.addr(), "/v2/", None), 200);
    }
}

fn decompress(data: &[u8], media_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
    } else if media_type.ends_with("zstd") {
        zstd::stream::read::Decoder::new(data)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out.extend_from_slice(data);
    }
    out
}

/// Pulls one image manifest back and checks every digest in it against what was served.
fn check_image(client: &RegistryClient, repo: &str, reference: &str, media_type: &str) {
    let (mt, body, served) = client.get_manifest(repo, reference).unwrap();
    assert_eq!(mt, media_type);
    let digest = sha256_digest(&body);
    assert_eq!(served.as_deref(), Some(digest.as_str()));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let config = client.get_blob(repo, config_digest).unwrap();
    assert_eq!(sha256_digest(&config), config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["os"], "linux");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let d = layer["digest"].as_str().unwrap();
        let blob = client.get_blob(repo, d).unwrap();
        assert_eq!(sha256_digest(&blob), d);
        assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
        let tar = decompress(&blob, layer["mediaType"].as_str().unwrap());
        assert_eq!(sha256_digest(&tar), diff_id.as_str().unwrap());
    }
}

#[test]
fn feature_set_pushes_and_reads_back_with_matching_digests() {
    let reg = TestRegistry::start();
    let set = feature_set(7);
    let refs = set.push_all(&reg.addr(), None);
    assert_eq!(refs.len(), 3);
    let client = RegistryClient::new(&reg.addr(), None);

    let alpha = set.get("alpha");
    check_image(&client, &alpha.repo, alpha.tag, oci::OCI_MANIFEST);
    let bravo = set.get("bravo");
    check_image(&client, &bravo.repo, bravo.tag, oci::DOCKER_MANIFEST);

    // charlie is an index: the host's entry is not the first one.
    let charlie = set.get("charlie");
    let (mt, body, served) = client.get_manifest(&charlie.repo, charlie.tag).unwrap();
    assert_eq!(mt, oci::OCI_INDEX);
    assert_eq!(served.as_deref(), Some(charlie.artifact.digest()));
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let host = oci::Platform::host().architecture;
    assert_ne!(entries[0]["platform"]["architecture"], host.as_str());
    assert_eq!(entries[1]["platform"]["architecture"], host.as_str());
    for e in entries {
        check_image(
            &client,
            &charlie.repo,
            e["digest"].as_str().unwrap(),
            oci::OCI_MANIFEST,
        );
    }
    assert_eq!(
        entries[1]["digest"],
        charlie.artifact.host_image().manifest_digest.as_str()
    );

    // One shared base layer: same blob, same chainID at the bottom of every image.
    let bases: Vec<_> = set
        .images
        .iter()
        .map(|i| i.artifact.host_image().chain_ids()[0].clone())
        .collect();
    assert!(bases.windows(2).all(|w| w[0] == w[1]));
    // The compressions promised: gzip, zstd and uncompressed all occur.
    let comps: std::collections::HashSet<_> = set
        .images
        .iter()
        .flat_map(|i| i.artifact.host_image().layers.iter().map(|l| l.compression))
        .collect();
    assert_eq!(comps.len(), 3);
}

#[test]
fn feature_set_is_deterministic() {
    let a = feature_set(3);
    let b = feature_set(3);
    let c = feature_set(4);
    for ((x, y), z) in a.images.iter().zip(&b.images).zip(&c.images) {
        assert_eq!(x.artifact.digest(), y.artifact.digest());
        assert_ne!(x.artifact.digest(), z.artifact.digest());
        assert_eq!(x.expected, y.expected);
    }
}

#[test]
fn tampered_blobs_are_served_as_tampered() {
    let reg = TestRegistry::start();
    let client = RegistryClient::new(&reg.addr(), None);
    for (i, how) in [
        Tamper::FlipContentByte,
        Tamper::FlipCompressedByte,
        Tamper::Truncate,
    ]
    .into_iter()
    .enumerate()
    {
        let repo = format!("tamper/case{i}");
        let (image, digest) = push_tampered(&reg, &repo, "v1", how);
        let original = &image.layers[1];
        let served = client.get_blob(&repo, &digest).unwrap();
        assert_ne!(
            sha256_digest(&served),
            digest,
            "{how:?}: registry served the original"
        );
        match how {
            Tamper::Truncate => assert_eq!(served.len() as u64, original.size() / 2),
            _ => assert_eq!(served.len() as u64, original.size()),
        }
        if how == Tamper::FlipContentByte {
            // Still a valid tar: only the digest can tell.
            let mut ar = tar::Archive::new(&served[..]);
            assert_eq!(ar.entries().unwrap().count(), 2);
        }
        // The manifest is untouched and still names the original digest.
        let (_, body, _) = client.get_manifest(&repo, "v1").unwrap();
        assert_eq!(sha256_digest(&body), image.manifest_digest);
    }
}

fn spec(f: impl FnOnce(&mut LayerSpec)) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::None);
    f(&mut l);
    l
}

fn kinds(t: &Tree) -> Vec<(String, Kind)> {
    t.iter().map(|(k, v)| (k.clone(), v.kind)).collect()
}

#[test]
fn model_whiteouts_remove_files_and_subtrees_of_lower_layers_only() {
    let lower = spec(|l| {
        l.dir("d");
        l.file("d/f", "x");
        l.dir("d/sub");
        l.file("d/sub/g", "y");
        l.file("d-sibling", "keep: shares a prefix with d");
        l.file("gone", "z");
    });
    let upper = spec(|l| {
        l.whiteout("gone");
        // Same-layer additions are not hidden by a whiteout that comes later in the tar.
        l.file("new", "n");
        l.whiteout("d");
        l.whiteout("never-existed");
    });
    let t = expected_tree(&[lower, upper]);
    assert_eq!(
        kinds(&t),
        vec![("d-sibling".into(), Kind::File), ("new".into(), Kind::File)]
    );
}

#[test]
fn model_opaque_hides_lower_children_but_keeps_the_layers_own() {
    let lower = spec(|l| {
        l.dir("o");
        l.file("o/old", "x");
        l.dir("o/olddir");
        l.file("o/olddir/f", "y");
        l.dir("other");
        l.file("other/keep", "k");
    });
    let upper = spec(|l| {
        l.dir("o").mode(0o700);
        l.file("o/fresh", "f");
        // The marker may come after the layer's own children: it still only hides lower ones.
        l.opaque("o");
    });
    let t = expected_tree(&[lower, upper]);
    assert_eq!(
        kinds(&t),
        vec![
            ("o".into(), Kind::Dir),
            ("o/fresh".into(), Kind::File),
            ("other".into(), Kind::Dir),
            ("other/keep".into(), Kind::File),
        ]
    );
    assert_eq!(t["o"].mode, 0o700, "upper directory's attributes win");
}

#[test]
fn model_replacements_file_dir_file_and_hardlinks() {
    let l1 = spec(|l| {
        l.file("x", "file");
        l.dir("y");
        l.file("y/child", "c");
    });
    let l2 = spec(|l| {
        l.dir("x");
        l.file("x/inner", "i");
        l.file("y", "dir replaced by a file drops its subtree");
        l.file("orig", "shared").mode(0o4755).owner(5, 6);
        l.hardlink("./link", "orig");
    });
    let mut t = expected_tree(&[l1, l2]);
    assert_eq!(t["x"].kind, Kind::Dir);
    assert!(t.contains_key("x/inner"));
    assert_eq!(t["y"].kind, Kind::File);
    assert!(!t.contains_key("y/child"));
    assert_eq!(t["link"], t["orig"], "a hardlink is its target's inode");
    let l3 = spec(|l| {
        l.file("x", "back to a file");
    });
    apply_layer(&mut t, &l3.entries);
    assert_eq!(t["x"].kind, Kind::File);
    assert!(!t.contains_key("x/inner"));
}

#[test]
fn feature_trees_show_the_documented_outcomes() {
    let set = feature_set(11);
    let a = &set.get("alpha").expected;
    assert!(!a.contains_key("var/cache/olddir"));
    assert!(!a.contains_key("var/cache/olddir/sub/y"));
    assert_eq!(a["etc/remove-me"].kind, Kind::Symlink);
    assert_eq!(a["srv/thing"].kind, Kind::File);
    assert!(!a.contains_key("srv/thing/inner"));
    assert!(a["opt/app"].kind == Kind::Dir && !a.keys().any(|k| k.starts_with("opt/app/")));
    assert_eq!(a["usr/bin/tool2"].sha256, a["usr/bin/tool"].sha256);
    assert_ne!(a["usr/bin/tool-hardlink"].sha256, a["usr/bin/tool"].sha256);
    assert_eq!(a["usr/share/modes/d0500"].mode, 0o555);
    assert!(!a.contains_key("usr/lib/libfeat.so"));

    let b = &set.get("bravo").expected;
    assert!(!b.keys().any(|k| k.starts_with("usr/share/doc/pkg")));
    assert!(b.contains_key("usr/share/doc"));
    assert_eq!(
        b["usr/bin/tool"].link_target.as_deref(),
        Some("tool-hardlink")
    );
    assert_eq!(
        b.keys()
            .filter(|k| k.starts_with("var/lib/state/"))
            .collect::<Vec<_>>(),
        vec!["var/lib/state/new.db"]
    );
    assert_eq!(b["usr/lib/libfeat.so.1.2.3"].xattrs.len(), 1);
    assert_eq!(b["usr/share/owners/u100000-g100000"].uid, 100000);

    let c = &set.get("charlie").expected;
    assert!(!c.contains_key("WRONG-PLATFORM"));
    assert!(!c.contains_key("opt/app") && c.contains_key("opt"));
    assert_eq!(c["var/cache/olddir"].kind, Kind::Dir);
    assert!(c.contains_key("var/cache/olddir/again") && !c.contains_key("var/cache/olddir/x"));
    assert!(!c.contains_key("etc/keep.conf"));
    assert!(!c.contains_key("usr/share/sizes/size-4096"));
    assert_eq!(c["dev/tty"].rdev, Some((5, 0)));

    // Features present in every image through the shared base.
    for img in &set.images {
        let t = &img.expected;
        assert_eq!(t["usr/share/modes/f7777"].mode, 0o7777);
        assert_eq!(t["tmp"].mode, 0o1777);
        assert_eq!(t["dev/loop7"].kind, Kind::Block);
        assert_eq!(t["run/fifo"].kind, Kind::Fifo);
        assert_eq!(t["usr/share/mtimes/t0"].mtime, 0);
        assert_eq!(t["usr/share/sizes/size-1m"].size, 1024 * 1024 + 7);
        assert_eq!(
            t["usr/share/xattr/binary"].xattrs["user.binary"],
            (0..=255u8).collect::<Vec<_>>()
        );
        let long = support::gen::features::long_file_name();
        assert!(
            t.contains_key(&format!("usr/share/long/{long}")),
            "{}",
            img.name
        );
    }
}

/// Reads a layer back with the `tar` crate in raw mode (so PAX and GNU pseudo-entries are
/// visible), resolving long names and xattrs by hand: names across all long-name encodings,
/// link targets, owners, modes, devices, xattrs and contents must match the model.
#[test]
fn feature_layers_parse_back_to_their_entries() {
    use support::gen::model::Body;
    use support::gen::tarw::parse_pax;
    let set = feature_set(5);
    let mut specs: Vec<&LayerSpec> = Vec::new();
    for img in &set.images {
        specs.extend(img.layers.iter());
    }
    for spec in specs {
        let layer = spec.to_layer();
        let tar_bytes = layer.decompressed();
        assert_eq!(sha256_digest(&tar_bytes), layer.diff_id);
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let mut entries = ar.entries().unwrap().raw(true);
        let mut pending_pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        let mut want = spec.entries.iter();
        for e in entries.by_ref() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let h = e.header().clone();
            match h.entry_type() {
                tar::EntryType::XHeader => {
                    pending_pax = parse_pax(&data).unwrap();
                    continue;
                }
                tar::EntryType::GNULongName => {
                    long_name = Some(String::from_utf8(data[..data.len() - 1].to_vec()).unwrap());
                    continue;
                }
                tar::EntryType::GNULongLink => {
                    long_link = Some(String::from_utf8(data[..data.len() - 1].to_vec()).unwrap());
                    continue;
                }
                _ => {}
            }
            let pax = std::mem::take(&mut pending_pax);
            let pax_get = |k: &str| {
                pax.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            };
            let path = pax_get("path")
                .or(long_name.take())
                .unwrap_or_else(|| String::from_utf8(h.path_bytes().into_owned()).unwrap());
            let link = pax_get("linkpath").or(long_link.take()).or_else(|| {
                h.link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap())
            });
            let xattrs: Vec<(String, Vec<u8>)> = pax
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("SCHILY.xattr.")
                        .map(|n| (n.to_string(), v.clone()))
                })
                .collect();
            let w = want.next().expect("more entries than the model");
            let name = w.tar_name();
            assert_eq!(path, name);
            assert_eq!(xattrs, w.xattrs, "{name}");
            assert_eq!(
                (
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap()
                ),
                (w.uid as u64, w.gid as u64, w.mode, w.mtime),
                "{name}"
            );
            let dev = (h.device_major().unwrap(), h.device_minor().unwrap());
            match &w.body {
                Body::File(d) => assert_eq!(&data, d, "{name}"),
                Body::Symlink(t) | Body::Hardlink(t) => {
                    assert_eq!(link.as_deref(), Some(t.as_str()), "{name}")
                }
                Body::Char(a, b) | Body::Block(a, b) => {
                    assert_eq!(dev, (Some(*a), Some(*b)), "{name}")
                }
                _ => {}
            }
        }
        assert!(want.next().is_none(), "fewer entries than the model");
    }
}

/// Documents a limit of the `tar` crate that the unpacker must work around: its PAX parser
/// splits records on newlines, so binary xattr values containing 0x0a break it. If this
/// starts failing, the crate was fixed and the workaround can go.
#[test]
fn tar_crate_chokes_on_binary_xattr_values_with_newlines() {
    let set = feature_set(5);
    let tar_bytes = set.get("alpha").layers[0].tar();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut failed = false;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if let Some(exts) = e.pax_extensions().unwrap() {
            failed |= exts.into_iter().any(|x| x.is_err());
        }
    }
    assert!(failed);
}

/// GNU tar, an independent reader, must agree on the long names too.
#[test]
fn gnu_tar_lists_the_long_names() {
    let set = feature_set(5);
    let tar_bytes = set.get("alpha").layers[0].tar();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.tar");
    std::fs::write(&path, &tar_bytes).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let long = support::gen::features::long_file_name();
    for want in [
        format!("usr/share/long/{long}"),
        format!("{}/gnu-longname-file", support::gen::features::DEEP_DIR_2),
        format!("{}/ustar-prefix-file", support::gen::features::DEEP_DIR_2),
        format!("{}/pax-path-file", support::gen::features::DEEP_DIR_2),
    ] {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} not in:\n{listing}"
        );
    }
}

#[test]
fn malicious_layers_carry_their_hostile_names_verbatim() {
    let cases = malicious_cases();
    let names: Vec<_> = cases.iter().map(|c| c.name).collect();
    for want in [
        "dotdot",
        "absolute",
        "symlink-escape",
        "hardlink-escape",
        "whiteout-escape",
    ] {
        assert!(names.contains(&want), "{want}");
    }
    for c in &cases {
        let tar_bytes = c.image.layers[1].decompressed();
        // Read raw header names: the tar crate would sanitise nothing here, but be explicit.
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let got: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        let want: Vec<String> = c.layers[1].entries.iter().map(|e| e.tar_name()).collect();
        assert_eq!(got, want, "{}", c.name);
    }
}

#[test]
fn realistic_generator_small_scale_is_deterministic_and_well_formed() {
    let a = realistic::realistic_image_sized(9, Compression::Gzip, 8_000_000, 400);
    let b = realistic::realistic_image_sized(9, Compression::Gzip, 8_000_000, 400);
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.layers.len(), 4);
    let total = a.uncompressed_size();
    assert!((8_000_000..9_500_000).contains(&total), "{total}");
    let mut files = 0;
    for layer in &a.layers {
        let tar_bytes = layer.decompressed();
        let mut seen_dirs = std::collections::HashSet::new();
        for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
            let e = e.unwrap();
            let p = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let p = p.trim_end_matches('/').to_string();
            if let Some((parent, _)) = p.rsplit_once('/') {
                assert!(seen_dirs.contains(parent), "{p} before its parent");
            }
            match e.header().entry_type() {
                tar::EntryType::Directory => {
                    seen_dirs.insert(p);
                }
                tar::EntryType::Regular => files += 1,
                _ => {}
            }
        }
    }
    assert!((300..700).contains(&files), "{files} files");
}

#[test]
fn oversized_layer_claims_its_size_in_a_small_blob() {
    let size = 96 << 20;
    let layer = support::gen::oversized::build_oversized_layer(size);
    assert!(layer.size() < 64 * 1024, "blob {} bytes", layer.size());
    let mut dec = zstd::stream::read::Decoder::new(&layer.blob[..]).unwrap();
    let mut ar = tar::Archive::new(&mut dec);
    let mut sizes = Vec::new();
    let mut hasher_len = 0u64;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        sizes.push(e.header().size().unwrap());
        hasher_len += std::io::copy(&mut e, &mut std::io::sink()).unwrap();
    }
    assert_eq!(sizes, vec![0, size]);
    assert_eq!(hasher_len, size);
    assert!(layer.uncompressed_size > size);
}

#[test]
fn oversized_header_uses_gnu_base256_past_8_gib() {
    // Header only: the tar crate must read a >8 GiB size back exactly.
    let mut tw = support::gen::tarw::TarWriter::new(Vec::new());
    tw.file_header("huge", 21 << 30, 0o644, 0, 0, 0).unwrap();
    let bytes = tw.get_mut().clone();
    let h = tar::Header::from_byte_slice(&bytes[..512]);
    assert_eq!(h.size().unwrap(), 21 << 30);
}

#[test]
fn tree_walk_reads_what_is_on_disk() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/f"), b"hello").unwrap();
    std::fs::set_permissions(root.join("d/f"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    symlink("../elsewhere", root.join("d/l")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let xattr_ok = rustix::fs::lsetxattr(
        root.join("d/f"),
        "user.k",
        b"v\0binary",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();

    let t = support::tree::walk(root);
    assert_eq!(
        kinds(&t),
        vec![
            ("d".into(), Kind::Dir),
            ("d/f".into(), Kind::File),
            ("d/l".into(), Kind::Symlink),
            ("fifo".into(), Kind::Fifo),
        ]
    );
    let f = &t["d/f"];
    assert_eq!(f.mode, 0o4750);
    assert_eq!(f.size, 5);
    assert_eq!(
        f.sha256.as_deref(),
        Some(hex::encode(Sha256::digest(b"hello")).as_str())
    );
    assert_eq!(t["d/l"].link_target.as_deref(), Some("../elsewhere"));
    if xattr_ok {
        assert_eq!(f.xattrs["user.k"], b"v\0binary");
    }

    // diff names each difference.
    let mut expected = t.clone();
    expected.get_mut("d/f").unwrap().mode = 0o755;
    expected.get_mut("d/l").unwrap().link_target = Some("x".into());
    expected.remove("fifo");
    expected.insert("ghost".into(), t["d/f"].clone());
    let d = support::tree::diff(&expected, &t);
    assert_eq!(d.len(), 4, "{d:#?}");
    assert!(
        d.iter()
            .any(|l| l.starts_with("d/f: mode 4750, expected 0755")),
        "{d:#?}"
    );
    assert!(d.iter().any(|l| l.starts_with("ghost: missing")));
    assert!(d.iter().any(|l| l.starts_with("fifo: unexpected")));
    assert!(support::tree::diff(&t, &t).is_empty());
}

/// The strongest check of the expected-tree model: an independent implementation (umoci,
/// via skopeo from the test registry) unpacks each feature image and must produce exactly
/// the tree the generator predicts, but for `trusted.*` xattrs: umoci sets them from the
/// tar, containerd (whose tree the model follows) drops them. Needs root (devices, owners).
#[test]
fn umoci_unpack_matches_the_expected_trees() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = TestRegistry::start();
    let set = feature_set(21);
    let work = tempfile::tempdir().unwrap();
    for img in &set.images {
        // umoci 0.4.7 reads no zstd: the oracle gets the same tars, all gzip.
        let layers = img
            .layers
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.compression = Compression::Gzip;
                l.to_layer()
            })
            .collect();
        let image = oci::Image::new(layers, oci::ManifestFormat::Oci);
        let repo = format!("oracle/{}", img.name);
        oci::push_image(&reg.addr(), &repo, "v1", &image, None);
        let layout = work.path().join(format!("{}-layout", img.name));
        let status = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/{repo}:v1", reg.addr()))
            .arg(format!("oci:{}:v1", layout.display()))
            .status()
            .unwrap();
        assert!(status.success(), "skopeo copy {}", img.name);
        let bundle = work.path().join(format!("{}-bundle", img.name));
        let out = std::process::Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci unpack {}: {}",
            img.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut actual = support::tree::walk(&bundle.join("rootfs"));
        for entry in actual.values_mut() {
            entry.xattrs.retain(|name, _| !name.starts_with("trusted."));
        }
        support::tree::assert_tree_eq(img.name, &img.expected, &actual);
    }
}

#[test]
fn artifacts_expose_their_images() {
    let set = feature_set(2);
    let charlie = set.get("charlie");
    assert!(matches!(charlie.artifact, Artifact::Index(_)));
    assert_eq!(charlie.artifact.images().len(), 2);
    assert_eq!(
        charlie.artifact.host_image().platform,
        oci::Platform::host()
    );
    let ids = charlie.artifact.host_image().chain_ids();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        ids[1],
        sha256_digest(
            format!(
                "{} {}",
                ids[0],
                charlie.artifact.host_image().layers[1].diff_id
            )
            .as_bytes()
        )
    );
}

#[test]
fn the_leak_oracle_parses_what_losetup_and_the_kernel_write() {
    use support::oracle::{parse_losetup_json, parse_mountinfo_points, AttachedLoop};
    let json = r#"{"loopdevices": [
        {"name": "/dev/loop3", "back-file": "/tmp/a b/xfs.img"},
        {"name": "/dev/loop4", "back-file": "/tmp/gone.img (deleted)"}]}"#;
    assert_eq!(
        parse_losetup_json(json),
        vec![
            AttachedLoop {
                device: "/dev/loop3".into(),
                backing_file: "/tmp/a b/xfs.img".into()
            },
            AttachedLoop {
                device: "/dev/loop4".into(),
                backing_file: "/tmp/gone.img".into()
            },
        ]
    );
    assert!(parse_losetup_json("").is_empty());
    let info = "36 35 98:0 /mnt1 /mnt/a\\040b\\134c rw,noatime master:1 - ext3 /dev/root rw\n";
    assert_eq!(
        parse_mountinfo_points(info),
        vec![std::path::PathBuf::from("/mnt/a b\\c")]
    );
}

/// The oracle sees a real loop device and mount the moment they exist, and the scratch's
/// own check reports them while the scratch still stands.
#[test]
fn the_leak_oracle_sees_a_loop_device_and_a_mount() {
    let scratch = support::scratch::ScratchXfs::new(512 << 20);
    scratch.assert_nothing_left();
    let inner = scratch.path().join("inner.img");
    std::fs::File::create(&inner)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&inner)
        .output()
        .unwrap();
    assert!(out.status.success());
    let at = scratch.path().join("at");
    std::fs::create_dir(&at).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&inner)
        .arg(&at)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (loops, mounts) = support::oracle::held_under(scratch.path());
    assert!(loops.iter().any(|l| l.backing_file == inner), "{loops:?}");
    assert!(mounts.contains(&at), "{mounts:?}");
    let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scratch.assert_nothing_left()
    }));
    assert!(
        seen.is_err(),
        "assert_nothing_left missed a mount and a loop device"
    );
    // The scratch's drop detaches and unmounts what is left on it.
}

/// A scratch dropped while the test still holds a file on it (a leaked handle) goes once
/// the handle is closed: nothing of it stays on the machine.
#[test]
fn a_scratch_dropped_while_busy_goes_once_released() {
    let scratch = support::scratch::ScratchXfs::new(512 << 20);
    let root = scratch.path().parent().unwrap().to_owned();
    let held = std::fs::File::create(scratch.path().join("held")).unwrap();
    drop(scratch);
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (loops, mounts) = support::oracle::held_under(&root);
        if loops.is_empty() && mounts.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left after the handle closed: {loops:?} {mounts:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
