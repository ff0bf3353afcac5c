//! The seed corpora under fuzz/corpus/<target>/, generated here so they stay small, readable
//! and reproducible: real-shaped documents, near misses, and the hostile inputs each target
//! exists for. Files the fuzzer found (crashes since fixed) sit beside them, named `crash-*`.

use imagecache::unpack::Compression;
use tar::EntryType;

use super::unpack_util::{compress, Layer};

/// (target, file name, content).
pub type Seed = (&'static str, String, Vec<u8>);

pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(references());
    out.extend(manifests());
    out.extend(snapshot_manifests());
    out.extend(api_bodies());
    out.extend(matching());
    out.extend(layers());
    out
}

const D1: &str = "sha256:6db2d5c3a9e8f1b0a2c4e6f8091a3b5c7d9e0f1a2b3c4d5e6f708192a3b4c5d6";
const D2: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const D3: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn seed(target: &'static str, name: &str, content: impl Into<Vec<u8>>) -> Seed {
    (target, name.to_string(), content.into())
}

fn references() -> Vec<Seed> {
    let cases = [
        ("short", "nginx".to_string()),
        ("tagged", "nginx:1.27-alpine".into()),
        ("hub-long", "docker.io/library/nginx:latest".into()),
        ("hub-alias", "index.docker.io/library/busybox".into()),
        ("user-repo", "bitnami/redis:7.2".into()),
        ("port", "127.0.0.1:5000/team/app:v1".into()),
        ("localhost", "localhost/app".into()),
        ("digest", format!("registry.k8s.io/pause@{D1}")),
        ("tag-and-digest", format!("quay.io/org/img:v2@{D2}")),
        ("deep-path", "ghcr.io/a/b/c/d/e:1.0".into()),
        ("uppercase-host", "Registry.Example.COM/x/y".into()),
        ("bad-uppercase-repo", "nginx/Bad".into()),
        ("bad-digest", "nginx@sha256:abc".into()),
        ("bad-empty-tag", "nginx:".into()),
        ("bad-space", "ngi nx".into()),
        ("bad-control", "nginx\u{7}".into()),
        ("ipv6", "[::1]:5000/app:1".into()),
        ("sha512", format!("nginx@sha512:{}", "ab".repeat(64))),
        ("long-tag", format!("nginx:{}", "t".repeat(128))),
        ("double-at", format!("nginx@{D1}@{D2}")),
    ];
    cases
        .into_iter()
        .map(|(name, r)| seed("reference", name, r))
        .collect()
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

fn manifests() -> Vec<Seed> {
    let oci_layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let docker_layer = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let oci_config = "application/vnd.oci.image.config.v1+json";
    let docker_config = "application/vnd.docker.container.image.v1+json";
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/bin"],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{D2}","{D3}"]}},"history":[{{"created_by":"ADD rootfs"}}]}}"#
    );
    let oci_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}}"#,
        descriptor(oci_config, D1, 1469),
        descriptor(oci_layer, D2, 3_623_807),
        descriptor(oci_layer, D3, 120)
    );
    let docker_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[{}]}}"#,
        descriptor(docker_config, D1, 7023),
        descriptor(docker_layer, D2, 29_126_484)
    );
    let platform = |arch: &str, variant: Option<&str>| match variant {
        Some(v) => {
            format!(r#""platform":{{"architecture":"{arch}","os":"linux","variant":"{v}"}}"#)
        }
        None => format!(r#""platform":{{"architecture":"{arch}","os":"linux"}}"#),
    };
    let entry = |digest: &str, p: String| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1234,{p}}}"#
        )
    };
    let attestation = format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D3}","size":566,"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}"#
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{},{},{},{attestation}]}}"#,
        entry(D1, platform("amd64", None)),
        entry(D2, platform("arm64", Some("v8"))),
        entry(D3, platform("arm", Some("v6"))),
    );
    let docker_list = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{},{}]}}"#,
        entry(D1, platform("arm", Some("v7"))),
        entry(D2, platform("arm64", None))
    );
    let no_media_type = oci_manifest.replace(
        r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#,
        "",
    );
    let with_config = |m: &str, c: &str| {
        let mut v = m.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(c.as_bytes());
        v
    };
    let one_diff_id = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D2}"]}}}}"#);
    vec![
        seed("manifest", "oci-manifest", oci_manifest.clone()),
        seed(
            "manifest",
            "oci-manifest-with-config",
            with_config(&oci_manifest, &config),
        ),
        seed(
            "manifest",
            "docker-manifest-with-config",
            with_config(&docker_manifest, &one_diff_id),
        ),
        seed(
            "manifest",
            "diff-id-count-mismatch",
            with_config(&oci_manifest, &one_diff_id),
        ),
        seed("manifest", "no-media-type", no_media_type),
        seed("manifest", "oci-index", index),
        seed("manifest", "docker-list", docker_list),
        seed(
            "manifest",
            "empty-index",
            r#"{"schemaVersion":2,"manifests":[]}"#,
        ),
        seed(
            "manifest",
            "schema1",
            r#"{"schemaVersion":1,"name":"library/x","tag":"latest","architecture":"amd64","fsLayers":[],"history":[]}"#,
        ),
        seed(
            "manifest",
            "helm-artifact",
            format!(
                r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
                descriptor("application/vnd.cncf.helm.config.v1+json", D1, 10),
                descriptor(
                    "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    D2,
                    10
                )
            ),
        ),
        seed(
            "manifest",
            "encrypted-layer",
            oci_manifest.replacen(
                oci_layer,
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                1,
            ),
        ),
        seed(
            "manifest",
            "huge-config",
            oci_manifest.replace("1469", "17179869184"),
        ),
        seed(
            "manifest",
            "bad-digest",
            oci_manifest.replacen(D2, "sha256:../../etc", 1),
        ),
        seed(
            "manifest",
            "rootfs-not-layers",
            with_config(
                &oci_manifest,
                r#"{"rootfs":{"type":"other","diff_ids":[]}}"#,
            ),
        ),
    ]
}

fn chunk_manifest(size: u64, chunk: u64, chunks: &[(u64, u64, &str)]) -> String {
    let list: Vec<String> = chunks
        .iter()
        .map(|(o, l, d)| format!(r#"{{"offset":{o},"length":{l},"digest":"{d}"}}"#))
        .collect();
    format!(
        r#"{{"version":1,"size":{size},"chunk_size":{chunk},"chunks":[{}]}}"#,
        list.join(",")
    )
}

fn snapshot_manifests() -> Vec<Seed> {
    let mib = 1 << 20;
    let two = chunk_manifest(
        10 * mib,
        4 * mib,
        &[(0, 4 * mib, D1), (8 * mib, 2 * mib, D2)],
    );
    let small = chunk_manifest(
        3 * 4096 + 100,
        4096,
        &[(4096, 4096, D3), (8192, 4096, D1), (12288, 100, D2)],
    );
    let pair = |a: &str, b: &str| {
        let mut v = a.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(b.as_bytes());
        v
    };
    vec![
        seed("snapshot_manifest", "two-chunks", two.clone()),
        seed("snapshot_manifest", "small-grid", small.clone()),
        seed("snapshot_manifest", "empty", chunk_manifest(0, 4096, &[])),
        seed("snapshot_manifest", "compare-same", pair(&two, &two)),
        seed(
            "snapshot_manifest",
            "compare-differs",
            pair(&two, &two.replace(D2, D3)),
        ),
        seed(
            "snapshot_manifest",
            "compare-grown",
            pair(&small, &chunk_manifest(4 * 4096, 4096, &[(4096, 4096, D3)])),
        ),
        seed(
            "snapshot_manifest",
            "off-grid",
            chunk_manifest(10 * mib, 4 * mib, &[(mib, 4096, D1)]),
        ),
        seed(
            "snapshot_manifest",
            "past-end",
            chunk_manifest(4096, 4096, &[(0, 8192, D1)]),
        ),
        seed(
            "snapshot_manifest",
            "overflow",
            chunk_manifest(u64::MAX, 4096, &[(u64::MAX - 4095, 4096, D1)]),
        ),
        seed(
            "snapshot_manifest",
            "bad-chunk-size",
            chunk_manifest(4096, 1000, &[]),
        ),
        seed(
            "snapshot_manifest",
            "digest-traversal",
            chunk_manifest(4096, 4096, &[(0, 4096, "sha256:../../../etc/passwd")]),
        ),
        seed(
            "snapshot_manifest",
            "unknown-field",
            r#"{"version":1,"size":0,"chunk_size":4096,"chunks":[],"extra":true}"#,
        ),
        seed(
            "snapshot_manifest",
            "version-2",
            r#"{"version":2,"size":0,"chunk_size":4096,"chunks":[]}"#,
        ),
    ]
}

fn api_bodies() -> Vec<Seed> {
    vec![
        seed(
            "api_body",
            "imagecache.yaml",
            "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: web\n  labels: {team: shop}\nspec:\n  images:\n  - nginx:1.27\n  - docker.io/library/redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n  imagePullSecrets: [shop:regcred]\n  imageCacheSize: 25\n  retentionDays: 7\n",
        ),
        seed(
            "api_body",
            "imagecache.json",
            r#"{"apiVersion":"imagecache.io/v1","kind":"ImageCache","metadata":{"name":"a.b-c"},"spec":{"images":["busybox"]}}"#,
        ),
        seed(
            "api_body",
            "imagecache-get-o-yaml",
            "apiVersion: eks.cloud.tencent.com/v1\nkind: ImageCache\nmetadata:\n  name: back\n  uid: 5e6f\n  resourceVersion: \"42\"\n  generation: 3\n  creationTimestamp: \"2024-01-02T03:04:05Z\"\n  managedFields:\n  - manager: kubectl\nspec:\n  images: [nginx]\nstatus:\n  phase: Ready\n  anything: [1, 2]\n",
        ),
        seed(
            "api_body",
            "imagecache-invalid",
            "apiVersion: v9\nkind: Pod\nmetadata:\n  name: -Bad-\nspec:\n  images: [\"UPPER/case\", \"\"]\n  imagePullSecrets: [\"nocolon\"]\n  imageCacheSize: 1\n  retentionDays: 0\n",
        ),
        seed(
            "api_body",
            "disk-images.json",
            r#"{"apiVersion":"imagecache.io/v1","kind":"Disk","metadata":{"name":"d"},"spec":{"images":["nginx","redis:7"],"annotations":{"k8s.aliyun.com/imc-match-count-request":"1"},"cacheId":"auto","sizeGiB":30,"mountPath":"/run/disks/d"}}"#,
        ),
        seed(
            "api_body",
            "disk-attach-only.yaml",
            "apiVersion: imagecache.io/v1\nkind: Disk\nspec:\n  images: [nginx]\n  mount: false\n  cacheId: imc-0123\n",
        ),
        seed(
            "api_body",
            "disk-bad-mount",
            r#"{"apiVersion":"imagecache.io/v1","kind":"Disk","spec":{"images":["nginx"],"mountPath":"/run/../etc","sizeGiB":99999999}}"#,
        ),
        seed(
            "api_body",
            "pod.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  uid: u-1\n  annotations:\n    k8s.aliyun.com/imc-perfect-match: \"true\"\n    eks.tke.cloud.tencent.com/use-image-cache: auto\nspec:\n  imagePullSecrets: [{name: regcred}]\n  initContainers: [{name: init, image: \"busybox:1.36\"}]\n  containers:\n  - {name: a, image: nginx, resources: {limits: {cpu: 0.5}}}\n  - {name: b, image: nginx}\n",
        ),
        seed(
            "api_body",
            "pod.json",
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"k8s.aliyun.com/eci-imc-id":"imc-1"}},"spec":{"containers":[{"name":"c","image":"127.0.0.1:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}],"ephemeralContainers":[{"name":"dbg","image":"busybox"}]}}"#,
        ),
        seed(
            "api_body",
            "pod-no-image",
            r#"{"kind":"Pod","metadata":{"annotations":null},"spec":{"containers":[{"name":"c"}]}}"#,
        ),
        seed("api_body", "deep-nesting", format!("{}{}", "[".repeat(200), "]".repeat(200))),
        seed("api_body", "yaml-anchors", "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"),
        seed("api_body", "not-utf8", b"kind: \xff\xfe\n".to_vec()),
    ]
}

fn matching() -> Vec<Seed> {
    let cache = |id: &str, name: &str, phase: &str, size: u32, created: &str, images: &str| {
        format!(
            r#"{{"id":"{id}","name":"{name}","phase":"{phase}","sizeGiB":{size},"created":"{created}","images":[{images}]}}"#
        )
    };
    let img = |image: &str, digest: &str| format!(r#"{{"image":"{image}","digest":"{digest}"}}"#);
    let nginx = img("docker.io/library/nginx:latest", D1);
    let redis = format!(
        r#"{{"image":"docker.io/library/redis:7","digest":"{D2}","resolvedDigest":"{D3}"}}"#
    );
    let caches = [
        cache("imc-a", "web", "Ready", 20, "2024-01-02T03:04:05Z", &nginx),
        cache(
            "imc-b",
            "full",
            "Ready",
            40,
            "2024-01-03T03:04:05Z",
            &format!("{nginx},{redis}"),
        ),
        cache(
            "imc-c",
            "small",
            "Ready",
            20,
            "2024-02-02T03:04:05Z",
            &nginx,
        ),
        cache("imc-d", "building", "Pulling", 20, "", ""),
        cache("imc-e", "broken", "Failed", 20, "not a time", &redis),
    ]
    .join(",");
    let request = |images: &str, annotations: &str, cache: &str, auto: bool| {
        format!(
            r#"{{"images":[{images}],"annotations":{{{annotations}}},"cache":{cache},"nodeAutoMatch":{auto},"caches":[{caches}]}}"#
        )
    };
    let both = r#""nginx","redis:7""#;
    vec![
        seed("matching", "automatic", request(both, "", "null", true)),
        seed(
            "matching",
            "perfect-match",
            request(
                both,
                r#""k8s.aliyun.com/imc-perfect-match":"true""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "match-count",
            request(
                r#""nginx","redis:7","busybox""#,
                r#""k8s.aliyun.com/imc-match-count-request":"3""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "explicit-id",
            request(both, r#""k8s.aliyun.com/eci-imc-id":"imc-a""#, "null", true),
        ),
        seed(
            "matching",
            "explicit-name",
            request(both, "", r#""small""#, true),
        ),
        seed(
            "matching",
            "explicit-not-ready",
            request(
                both,
                r#""eks.tke.cloud.tencent.com/use-image-cache":"imc-d""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "explicit-conflict",
            request(
                both,
                r#""k8s.aliyun.com/eci-imc-id":"imc-a","k8s.aliyun.com/eci-image-snapshot-id":"imc-b""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "explicit-unknown",
            request(both, "", r#""imc-zzz""#, true),
        ),
        seed(
            "matching",
            "auto-off",
            request(
                both,
                r#""k8s.aliyun.com/eci-auto-imc":"false""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "node-auto-off-eks-auto",
            request(
                both,
                r#""eks.tke.cloud.tencent.com/use-image-cache":"auto""#,
                "null",
                false,
            ),
        ),
        seed(
            "matching",
            "bad-annotation",
            request(
                both,
                r#""k8s.aliyun.com/imc-perfect-match":"yes""#,
                "null",
                true,
            ),
        ),
        seed(
            "matching",
            "digest-pinned",
            request(&format!(r#""redis@{D3}","nginx@{D1}""#), "", "null", true),
        ),
        seed("matching", "no-images", request("", "", "null", true)),
    ]
}

fn program(lines: &[&str]) -> Vec<u8> {
    let mut v = b"#!tar\n".to_vec();
    for l in lines {
        v.extend_from_slice(l.as_bytes());
        v.push(b'\n');
    }
    v
}

fn layers() -> Vec<Seed> {
    let mut out = vec![
        seed(
            "layer_apply",
            "program-rootfs",
            program(&[
                "d etc",
                "f etc/passwd = root:x:0:0:root:/root:/bin/sh",
                "d usr",
                "d usr/lib",
                "s lib -> usr/lib",
                "h etc/passwd.bak -> etc/passwd",
                "c dev/null",
                "p run/fifo",
                "x SCHILY.xattr.user.note=kept",
                "f usr/lib/libc.so = ELF",
            ]),
        ),
        seed(
            "layer_apply",
            "program-dotdot",
            program(&[
                "f ../outside/sentinel = changed",
                "f ../../escape = x",
                "d a/../../b",
            ]),
        ),
        seed(
            "layer_apply",
            "program-symlink-parent",
            program(&[
                "s up -> ../..",
                "f up/outside/sentinel = changed",
                "s abs -> /",
                "f abs/escape = x",
            ]),
        ),
        seed(
            "layer_apply",
            "program-symlink-chain",
            program(&[
                "d a",
                "s a/b -> ..",
                "s a/c -> b/..",
                "f a/c/outside/sentinel = x",
                "s loop -> loop",
                "f loop/x = y",
            ]),
        ),
        seed(
            "layer_apply",
            "program-hardlink-escape",
            program(&[
                "h link -> ../outside/sentinel",
                "s dir -> ../outside",
                "h l2 -> dir/sentinel",
                "h self -> self",
            ]),
        ),
        seed(
            "layer_apply",
            "program-whiteouts",
            program(&[
                "d keep",
                "f keep/.wh.gone =",
                "f keep/.wh..wh..opq =",
                "f .wh...",
                "f ../.wh.outside =",
                "f .wh..wh.plnk =",
            ]),
        ),
        seed(
            "layer_apply",
            "program-replace",
            program(&[
                "s x -> ../outside",
                "d x",
                "f x/f = inside",
                "f x = file now",
                "s x -> /outside",
                "d x/y",
            ]),
        ),
        seed(
            "layer_apply",
            "program-pax",
            program(&[
                "x path=../../outside/sentinel",
                "f innocent = x",
                "x linkpath=../outside",
                "s l -> fine",
                "x uid=4294967296",
                "f big-uid = x",
                "x mtime=-1.5",
                "f old = x",
                "x SCHILY.xattr.trusted.overlay.opaque=y",
                "d opaque",
                &format!("f {} = long", "n".repeat(150)),
            ]),
        ),
    ];
    let tars: Vec<(&str, Vec<u8>)> = vec![
        (
            "tar-plain",
            Layer::new()
                .dir("etc")
                .file("etc/os-release", b"ID=debian\n")
                .symlink("bin", "usr/bin")
                .tar(),
        ),
        (
            "tar-traversal",
            Layer::new()
                .raw(EntryType::Regular, b"../outside/sentinel", b"", b"changed")
                .raw(EntryType::Symlink, b"up", b"../../..", b"")
                .raw(EntryType::Regular, b"up/escape", b"", b"x")
                .raw(EntryType::Link, b"hl", b"../outside/sentinel", b"")
                .tar(),
        ),
        (
            "tar-long-names",
            Layer::new()
                .file(&format!("{}/f", "d".repeat(120)), b"gnu long name")
                .symlink(&"s".repeat(110), &"t/".repeat(70))
                .tar(),
        ),
        (
            "tar-pax-xattrs",
            Layer::new()
                .pax(&[
                    ("SCHILY.xattr.user.bin", &[0, 1, 2, 255][..]),
                    ("path", b"p/x"),
                ])
                .file("ignored", b"pax path wins")
                .pax(&[("size", b"3")])
                .file("sized", b"abc")
                .tar(),
        ),
        (
            "tar-devices",
            Layer::new()
                .node("dev/null", EntryType::Char, 1, 3, 0o666)
                .node("dev/loop9", EntryType::Block, 7, 9, 0o660)
                .node("dev/fifo", EntryType::Fifo, 0, 0, 0o644)
                .tar(),
        ),
    ];
    for (name, tar) in tars {
        out.push(seed("layer_apply", name, compress(&tar, Compression::None)));
        if name == "tar-plain" || name == "tar-traversal" {
            out.push(seed(
                "layer_apply",
                &format!("{name}.gz"),
                compress(&tar, Compression::Gzip),
            ));
            out.push(seed(
                "layer_apply",
                &format!("{name}.zst"),
                compress(&tar, Compression::Zstd),
            ));
        }
    }
    out
}
