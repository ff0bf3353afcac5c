//! Request bodies in JSON or YAML.

use serde::de::DeserializeOwned;

use super::ApiError;
use crate::objects::{ImageCache, ImageCacheSpec, ObjectMeta};

/// An ImageCache as a create request carries it. `status` may be anything (what `get -o
/// yaml` or `kubectl get -o yaml` printed, in any provider's shape) and is dropped, as the
/// Kubernetes API server drops it on create; everything else is as strict as `ImageCache`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCacheManifest {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageCacheSpec,
    #[serde(default)]
    pub status: Option<serde::de::IgnoredAny>,
}

impl From<ImageCacheManifest> for ImageCache {
    fn from(m: ImageCacheManifest) -> ImageCache {
        ImageCache {
            api_version: m.api_version,
            kind: m.kind,
            metadata: ObjectMeta {
                // Written by the daemon at create; whatever came in is someone else's.
                uid: None,
                creation_timestamp: None,
                resource_version: None,
                generation: None,
                self_link: None,
                managed_fields: None,
                ..m.metadata
            },
            spec: m.spec,
            status: None,
        }
    }
}

/// Parses a body as JSON when it says so (content type or a leading `{`), else as YAML, so
/// error messages point at the syntax the operator actually wrote.
pub fn parse_body<T: DeserializeOwned>(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::BadRequest("request body is not UTF-8 text: send JSON or YAML".into())
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty: send an object as JSON or YAML".into(),
        ));
    }
    let looks_json =
        content_type.is_some_and(|c| c.contains("json")) || text.trim_start().starts_with('{');
    if looks_json {
        serde_json::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("malformed YAML body: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageCache;

    #[test]
    fn yaml_and_json_parse_to_the_same_object() {
        let yaml = "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: a\nspec:\n  images: [nginx]\n  imageCacheSize: 25\n";
        let json = r#"{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache","metadata":{"name":"a"},"spec":{"images":["nginx"],"imageCacheSize":25}}"#;
        let a: ImageCache = parse_body(yaml.as_bytes(), None).unwrap();
        let b: ImageCache = parse_body(json.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.spec.image_cache_size, Some(25));
    }

    #[test]
    fn unknown_fields_are_named() {
        let yaml = "apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata: {name: a}\nspec:\n  images: [nginx]\n  imageCacheSise: 25\n";
        let err = parse_body::<ImageCache>(yaml.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("imageCacheSise"), "{err}");
    }

    #[test]
    fn read_only_metadata_and_status_are_dropped_but_typos_are_not() {
        let yaml = "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: a\n  uid: 5e6f\n  resourceVersion: \"42\"\n  generation: 3\n  selfLink: /apis/x\n  creationTimestamp: \"2024-01-02T03:04:05Z\"\n  managedFields:\n  - manager: kubectl\n    operation: Update\nspec:\n  images: [nginx]\nstatus:\n  phase: Creating\n  anything: [1, 2]\n";
        let m: ImageCacheManifest = parse_body(yaml.as_bytes(), None).unwrap();
        let c = ImageCache::from(m);
        assert_eq!(c.metadata.name, "a");
        assert_eq!(c.metadata.uid, None);
        assert_eq!(c.metadata.resource_version, None);
        assert_eq!(c.metadata.generation, None);
        assert_eq!(c.metadata.creation_timestamp, None);
        assert_eq!(c.status, None);
        let typo = yaml.replace("  images: [nginx]", "  images: [nginx]\n  retentionDay: 3");
        let err = parse_body::<ImageCacheManifest>(typo.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("retentionDay"), "{err}");
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in ["{\"apiVersion\": ", "spec: [unclosed", "", "\u{0}"] {
            let err = parse_body::<ImageCache>(body.as_bytes(), None).unwrap_err();
            assert_eq!(err.code(), 400, "{body:?}: {err}");
        }
    }
}
