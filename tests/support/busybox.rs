//! Runnable images for containerd tests, built deterministically from the host's static
//! busybox (Debian's busybox-static): a pause image for pod sandboxes and busybox images with
//! extra layers whose files containers read.

use bytes::Bytes;
use serde_json::json;

use super::gen::model::{LayerSpec, DEFAULT_MTIME};
use super::oci::{sha256_digest, Compression, Image, Layer, ManifestFormat, Platform};

/// Debian's busybox-static installs a statically linked busybox here; a dynamic one would
/// need the host's libc inside the image.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked in the image's /bin, so a container can run `sh -c '...'`, `cat`, `ls`.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "ls",
    "sleep",
    "stat",
    "find",
    "sha256sum",
    "test",
    "head",
    "wc",
    "readlink",
    "dd",
    "df",
    "mount",
    "true",
    "false",
];

/// The base layer: the root's usual directories, /bin/busybox and its applet links.
pub fn busybox_layer() -> LayerSpec {
    let binary = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} (install busybox-static): {e}"));
    let mut l = LayerSpec::new(Compression::Gzip);
    for d in ["bin", "dev", "etc", "proc", "sys", "root", "var"] {
        l.dir(d);
    }
    l.dir("tmp").mode(0o1777);
    l.file("bin/busybox", binary).mode(0o755);
    for a in APPLETS {
        l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    l.file("etc/group", "root:x:0:\n");
    l
}

/// An image of `layers` (bottom first) whose config runs `cmd` by default. Same inputs, same
/// digests: the config's timestamps are fixed.
pub fn image_with_cmd(layers: Vec<Layer>, cmd: &[&str]) -> Image {
    let platform = Platform::host();
    let history: Vec<_> = (0..layers.len())
        .map(|i| json!({ "created": "2024-01-02T03:04:05Z", "created_by": format!("layer {i}") }))
        .collect();
    let config = json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    let config = serde_json::to_vec(&config).unwrap();
    let format = ManifestFormat::Oci;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": super::oci::OCI_MANIFEST,
        "config": {
            "mediaType": super::oci::OCI_CONFIG,
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": layers
            .iter()
            .map(|l| json!({ "mediaType": l.media_type(format), "digest": l.digest, "size": l.size() }))
            .collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    Image {
        format,
        platform,
        config_digest: sha256_digest(&config),
        config: Bytes::from(config),
        manifest_digest: sha256_digest(&manifest),
        manifest: Bytes::from(manifest),
        layers,
    }
}

/// The pod sandbox image: busybox whose command sleeps until the sandbox is killed.
pub fn pause_image() -> Image {
    image_with_cmd(
        vec![busybox_layer().to_layer()],
        &["/bin/busybox", "sleep", "1000000000"],
    )
}

/// busybox plus `extra` layers on top (bottom first); its default command is /bin/sh.
pub fn busybox_image(extra: &[LayerSpec]) -> Image {
    let mut layers = vec![busybox_layer().to_layer()];
    layers.extend(extra.iter().map(LayerSpec::to_layer));
    image_with_cmd(layers, &["/bin/sh"])
}

/// A small layer writing `files` (path, content), with the parent directories it needs.
pub fn files_layer(files: &[(&str, &str)]) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let mut p = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            if dirs.insert(p.clone()) {
                l.dir(&p).mtime(DEFAULT_MTIME);
            }
        }
    }
    for (path, content) in files {
        l.file(path, content.as_bytes().to_vec());
    }
    l
}
