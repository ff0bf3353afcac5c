//! Validation of Disk requests: a Pod (JSON/YAML object) or an image list with selection
//! annotations, turned into what the daemon's matching needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::Cause;
use super::ApiError;
use crate::matching::{annotations_of_pod, images_of_pod, parse_images};
pub use crate::objects::ValidDisk;
use crate::objects::*;

/// Accepts a `Disk` object, or a bare `Pod` object (the same as a Disk whose spec.pod it is).
pub fn parse_disk_request(value: serde_json::Value) -> Result<Disk, ApiError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    if kind == "Pod" {
        return Ok(Disk {
            api_version: API_VERSION.into(),
            kind: KIND_DISK.into(),
            metadata: ObjectMeta::default(),
            spec: DiskSpec {
                pod: Some(value),
                ..Default::default()
            },
            status: None,
        });
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("malformed Disk: {e}")))
}

/// The longest disk name: a DNS-1123 label, as Kubernetes allows for names made from a
/// pod's UID or name.
pub const MAX_DISK_NAME: usize = 63;

/// Checks a client-given disk name: a DNS-1123 label (it names the disk's file and mount
/// directory under the state root, and goes into pods' annotations as it is).
pub fn check_disk_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_DISK_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a DNS-1123 label: use 1 to {MAX_DISK_NAME} lowercase letters, digits \
         and '-', starting and ending with a letter or digit (a pod's UID is one), or leave \
         metadata.name out for a generated disk-… name"
    ))
}

pub fn validate_disk(disk: Disk) -> Result<ValidDisk, ApiError> {
    let mut causes = Vec::new();
    let mut invalid = |field: &str, message: String| {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        })
    };
    if disk.api_version != API_VERSION {
        invalid(
            "apiVersion",
            format!("{:?} is not supported: use {API_VERSION}", disk.api_version),
        );
    }
    if disk.kind != KIND_DISK {
        invalid(
            "kind",
            format!(
                "{:?} is not supported here: use {KIND_DISK} (or post a Pod)",
                disk.kind
            ),
        );
    }
    let name = (!disk.metadata.name.is_empty()).then(|| disk.metadata.name.clone());
    if let Some(Err(message)) = name.as_deref().map(check_disk_name) {
        invalid("metadata.name", message);
    }
    let spec = disk.spec.clone();
    let mut raw_images: Vec<String> = spec.images.clone();
    let mut annotations = spec.annotations.clone();
    let mut labels = BTreeMap::new();
    let mut pull_secrets = Vec::new();
    if let Some(pod) = &spec.pod {
        if !raw_images.is_empty() {
            invalid(
                "spec.images",
                "give either spec.pod or spec.images, not both".into(),
            );
        }
        match images_of_pod(pod) {
            Ok(images) => raw_images = images,
            Err(e) => invalid("spec.pod", e.to_string()),
        }
        match annotations_of_pod(pod) {
            Ok(a) => annotations.extend(a),
            Err(e) => invalid("spec.pod.metadata.annotations", e.to_string()),
        }
        let meta = &pod["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        for (key, field) in [("namespace", "namespace"), ("name", "name"), ("uid", "uid")] {
            if let Some(v) = meta[field].as_str() {
                labels.insert(format!("pod.imagecache.io/{key}"), v.to_owned());
            }
        }
        if let Some(secrets) = pod["spec"]["imagePullSecrets"].as_array() {
            for s in secrets {
                if let Some(name) = s["name"].as_str() {
                    pull_secrets.push(format!("{namespace}:{name}"));
                }
            }
        }
    }
    let images = if raw_images.is_empty() {
        invalid(
            "spec.images",
            "must list at least 1 image, or give spec.pod".into(),
        );
        Vec::new()
    } else {
        match parse_images(&raw_images) {
            Ok(images) => images,
            Err(e) => {
                invalid("spec.images", e.to_string());
                Vec::new()
            }
        }
    };
    if let Some(size) = spec.size_gib {
        if !(MIN_CACHE_SIZE_GIB..=MAX_CACHE_SIZE_GIB).contains(&size) {
            invalid(
                "spec.sizeGiB",
                format!("{size} GiB is out of range: use {MIN_CACHE_SIZE_GIB} to {MAX_CACHE_SIZE_GIB} (GiB)"),
            );
        }
    }
    let mountpoint = match (spec.mount.unwrap_or(true), &spec.mount_path) {
        (false, Some(_)) => {
            invalid(
                "spec.mountPath",
                "is set but spec.mount is false: drop one of them".into(),
            );
            None
        }
        (false, None) => None,
        // What the text alone tells; the daemon also holds it to `disk_mount_root`, and
        // the mount never follows a symlink.
        (true, Some(p)) => match crate::mount_path::check_plain(std::path::Path::new(p)) {
            Ok(()) => Some(Some(PathBuf::from(p))),
            Err(e) => {
                invalid("spec.mountPath", e.to_string());
                None
            }
        },
        (true, None) => Some(None),
    };
    let cache = spec
        .cache_id
        .clone()
        .filter(|c| !c.is_empty() && c != "auto");
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: KIND_DISK.into(),
            name: disk.metadata.name,
            causes,
        });
    }
    Ok(ValidDisk {
        name,
        images,
        annotations,
        cache,
        size_gib: spec.size_gib,
        mountpoint,
        pull_secrets,
        spec,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "annotations": {"k8s.aliyun.com/imc-perfect-match": "true"}},
            "spec": {"containers": [{"name": "a", "image": "nginx"}],
                     "initContainers": [{"name": "i", "image": "busybox:1.36"}],
                     "imagePullSecrets": [{"name": "regcred"}]}
        })
    }

    #[test]
    fn a_bare_pod_is_a_disk_request() {
        let v = validate_disk(parse_disk_request(pod()).unwrap()).unwrap();
        let names: Vec<String> = v.images.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            names,
            vec![
                "docker.io/library/nginx:latest",
                "docker.io/library/busybox:1.36"
            ]
        );
        assert_eq!(v.annotations["k8s.aliyun.com/imc-perfect-match"], "true");
        assert_eq!(v.pull_secrets, vec!["shop:regcred"]);
        assert_eq!(v.labels["pod.imagecache.io/uid"], "u-1");
        assert_eq!(v.mountpoint, Some(None));
    }

    #[test]
    fn mount_paths_that_would_reach_mount_options_are_refused() {
        let disk = |path: &str| Disk {
            api_version: API_VERSION.into(),
            kind: KIND_DISK.into(),
            metadata: ObjectMeta::default(),
            spec: DiskSpec {
                images: vec!["nginx".into()],
                mount_path: Some(path.into()),
                ..Default::default()
            },
            status: None,
        };
        for bad in [
            "/var/lib/imagecache/disks/p,upperdir=/",
            "/var/lib/imagecache/disks/a:b",
            "/var/lib/imagecache/disks/a b",
            "/var/lib/imagecache/disks/a\nb",
            "/var/lib/imagecache/disks/../../../etc",
            "relative/path",
        ] {
            match validate_disk(disk(bad)) {
                Err(ApiError::Invalid { causes, .. }) => {
                    assert_eq!(causes.len(), 1, "{bad:?}: {causes:?}");
                    assert_eq!(causes[0].field, "spec.mountPath", "{bad:?}");
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        let ok = validate_disk(disk("/var/lib/imagecache/disks/pod-a/mnt")).unwrap();
        assert_eq!(
            ok.mountpoint,
            Some(Some(PathBuf::from("/var/lib/imagecache/disks/pod-a/mnt")))
        );
    }

    #[test]
    fn disk_names_are_dns_labels() {
        let named = |name: &str| Disk {
            api_version: API_VERSION.into(),
            kind: KIND_DISK.into(),
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: DiskSpec {
                images: vec!["nginx".into()],
                ..Default::default()
            },
            status: None,
        };
        for good in [
            "a",
            "pod-0d6f3c1e-7b2a-4c55-9e61-5a1f0b2c3d4e",
            "0",
            &"x".repeat(63),
        ] {
            let v = validate_disk(named(good)).unwrap();
            assert_eq!(v.name.as_deref(), Some(good));
        }
        assert_eq!(validate_disk(named("")).unwrap().name, None);
        for bad in [
            "Pod-A",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a/b",
            "..",
            "a b",
            &"x".repeat(64),
        ] {
            match validate_disk(named(bad)) {
                Err(ApiError::Invalid { causes, .. }) => {
                    assert_eq!(causes.len(), 1, "{bad:?}: {causes:?}");
                    assert_eq!(causes[0].field, "metadata.name", "{bad:?}");
                    assert!(causes[0].message.contains("DNS-1123 label"), "{causes:?}");
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let disk = Disk {
            api_version: API_VERSION.into(),
            kind: KIND_DISK.into(),
            metadata: ObjectMeta::default(),
            spec: DiskSpec {
                images: vec!["Not A Ref".into()],
                size_gib: Some(10),
                mount: Some(false),
                mount_path: Some("/x".into()),
                ..Default::default()
            },
            status: None,
        };
        match validate_disk(disk).unwrap_err() {
            ApiError::Invalid { causes, .. } => {
                let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
                assert_eq!(
                    fields,
                    vec!["spec.images", "spec.sizeGiB", "spec.mountPath"]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
