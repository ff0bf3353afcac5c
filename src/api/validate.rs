//! Validation of requests: every problem is reported with the field that has it and what is
//! allowed, all at once, so an operator fixes a manifest in one go.

use std::str::FromStr;

use super::error::Cause;
use super::ApiError;
pub use crate::objects::ValidImageCache;
use crate::objects::*;
use crate::registry::ImageReference;

/// Checks a Kubernetes object name (DNS-1123 subdomain, as kubectl would require).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required: set metadata.name".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "is {} characters long: at most 253 are allowed",
            name.len()
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok_chars || !ok_ends {
        return Err(format!(
            "{name:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

pub fn validate_image_cache(
    mut object: ImageCache,
    default_size_gib: u32,
) -> Result<ValidImageCache, ApiError> {
    let mut causes = Vec::new();
    let mut invalid = |field: &str, message: String| {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        })
    };

    if !ACCEPTED_API_VERSIONS.contains(&object.api_version.as_str()) {
        invalid(
            "apiVersion",
            format!(
                "{:?} is not supported: use one of {}",
                object.api_version,
                ACCEPTED_API_VERSIONS.join(", ")
            ),
        );
    }
    if object.kind != KIND_IMAGE_CACHE {
        invalid(
            "kind",
            format!(
                "{:?} is not supported here: use {KIND_IMAGE_CACHE}",
                object.kind
            ),
        );
    }
    if let Err(m) = check_name(&object.metadata.name) {
        invalid("metadata.name", m);
    }
    if object.spec.images.is_empty() {
        invalid("spec.images", "must list at least 1 image".into());
    }
    let mut images = Vec::new();
    for (i, raw) in object.spec.images.iter().enumerate() {
        match ImageReference::from_str(raw) {
            Ok(r) => {
                if !images.contains(&r) {
                    images.push(r)
                }
            }
            Err(e) => invalid(&format!("spec.images[{i}]"), e.to_string()),
        }
    }
    for (i, s) in object.spec.image_pull_secrets.iter().enumerate() {
        if let Err(m) = check_secret_ref(s) {
            invalid(&format!("spec.imagePullSecrets[{i}]"), m);
        }
    }
    let size_gib = object.spec.image_cache_size.unwrap_or(default_size_gib);
    if !(MIN_CACHE_SIZE_GIB..=MAX_CACHE_SIZE_GIB).contains(&size_gib) {
        invalid(
            "spec.imageCacheSize",
            format!("{size_gib} GiB is out of range: use {MIN_CACHE_SIZE_GIB} to {MAX_CACHE_SIZE_GIB} (GiB)"),
        );
    }
    if let Some(days) = object.spec.retention_days {
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&days) {
            invalid(
                "spec.retentionDays",
                format!("{days} is out of range: use {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} (days), or leave it out for no expiry"),
            );
        }
    }
    if object.status.is_some() {
        // A status fed back from `get -o yaml` is ignored rather than refused: the daemon owns it.
        object.status = None;
    }
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: KIND_IMAGE_CACHE.into(),
            name: object.metadata.name.clone(),
            causes,
        });
    }
    // The object keeps the group it was written for: ECI and EKS users read back what they sent.
    object.spec.images = images.iter().map(|r| r.to_string()).collect();
    object.spec.image_cache_size = Some(size_gib);
    Ok(ValidImageCache {
        object,
        images,
        size_gib,
    })
}

/// `namespace:name`, or `namespace/name` as Tencent EKS writes it; both Kubernetes names.
fn check_secret_ref(s: &str) -> Result<(), String> {
    let Some((ns, name)) = crate::registry::split_secret_ref(s) else {
        return Err(format!(
            "{s:?} is not of the form namespace:name (or namespace/name)"
        ));
    };
    check_name(ns).map_err(|m| format!("namespace {m}"))?;
    check_name(name).map_err(|m| format!("secret name {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(images: &[&str]) -> ImageCache {
        ImageCache {
            api_version: "eks.cloud.tencent.com/v1".into(),
            kind: "ImageCache".into(),
            metadata: ObjectMeta {
                name: "web".into(),
                ..Default::default()
            },
            spec: ImageCacheSpec {
                images: images.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Invalid { causes, .. } => causes.into_iter().map(|c| c.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_normalises() {
        let v =
            validate_image_cache(cache(&["nginx", "docker.io/library/nginx:latest"]), 20).unwrap();
        assert_eq!(v.size_gib, 20);
        assert_eq!(v.object.spec.images, vec!["docker.io/library/nginx:latest"]);
        assert_eq!(v.object.api_version, "eks.cloud.tencent.com/v1");
    }

    #[test]
    fn sizes_and_retention_out_of_range_name_the_field_and_range() {
        for size in [19, 32769] {
            let mut c = cache(&["nginx"]);
            c.spec.image_cache_size = Some(size);
            let err = validate_image_cache(c, 20).unwrap_err();
            assert_eq!(err.code(), 422);
            assert!(err.to_string().contains("20 to 32768"), "{err}");
            assert_eq!(fields(err), vec!["spec.imageCacheSize"]);
        }
        let mut c = cache(&["nginx"]);
        c.spec.retention_days = Some(0);
        let err = validate_image_cache(c, 20).unwrap_err();
        assert!(err.to_string().contains("1 to 65536"), "{err}");
        assert_eq!(fields(err), vec!["spec.retentionDays"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = cache(&["Not A Ref!!"]);
        c.metadata.name = "Bad_Name".into();
        c.kind = "Pod".into();
        c.spec.image_pull_secrets = vec!["nocolon".into()];
        let f = fields(validate_image_cache(c, 20).unwrap_err());
        assert_eq!(
            f,
            vec![
                "kind",
                "metadata.name",
                "spec.images[0]",
                "spec.imagePullSecrets[0]"
            ]
        );
    }

    #[test]
    fn pull_secrets_take_a_colon_or_a_slash() {
        let mut c = cache(&["nginx"]);
        c.spec.image_pull_secrets = vec![
            "imc-operator-system/qcloudregistrykey".into(),
            "default:regcred".into(),
        ];
        assert!(validate_image_cache(c, 20).is_ok());
        for bad in ["ns/a/b", "ns:a/b", "/x", "Ns/x"] {
            let mut c = cache(&["nginx"]);
            c.spec.image_pull_secrets = vec![bad.into()];
            let err = validate_image_cache(c, 20).unwrap_err();
            assert_eq!(fields(err), vec!["spec.imagePullSecrets[0]"], "{bad}");
        }
    }

    #[test]
    fn empty_images_is_invalid() {
        assert_eq!(
            fields(validate_image_cache(cache(&[]), 20).unwrap_err()),
            vec!["spec.images"]
        );
    }
}
