//! Request bodies through the same parse and validation the HTTP API runs (routes.rs): every
//! input is tried as an ImageCache create and as a Disk create (a Disk or a bare Pod). A body
//! is either refused as a bad request (400) or an invalid object (422), or accepted; what is
//! accepted is accepted again, unchanged, when printed as JSON or as `get -o yaml` prints it
//! and sent back.

use imagecache::api::parse::{parse_body, ImageCacheManifest};
use imagecache::api::validate::{check_name, validate_image_cache, ValidImageCache};
use imagecache::api::validate_disk::{parse_disk_request, validate_disk, ValidDisk};
use imagecache::api::{ApiError, Disk, ImageCache, API_VERSION, KIND_DISK};

/// The daemon's default cache size when a request gives none (config default_cache_size_gib).
const DEFAULT_SIZE_GIB: u32 = 20;

fn image_cache(body: &[u8], content_type: Option<&str>) -> Result<ValidImageCache, ApiError> {
    parse_body::<ImageCacheManifest>(body, content_type)
        .map(ImageCache::from)
        .and_then(|c| validate_image_cache(c, DEFAULT_SIZE_GIB))
}

fn disk(body: &[u8], content_type: Option<&str>) -> Result<ValidDisk, ApiError> {
    parse_body::<serde_json::Value>(body, content_type)
        .and_then(parse_disk_request)
        .and_then(validate_disk)
}

fn refused_as_request_error(e: &ApiError) {
    assert!(
        matches!(e.code(), 400 | 422),
        "{} for a body: {e}",
        e.code()
    );
}

/// The object as the API prints it, in JSON and in the CLI's YAML.
fn printed(object: &impl serde::Serialize) -> [(Vec<u8>, Option<&'static str>); 2] {
    let json = serde_json::to_vec(object).expect("an accepted object serialises");
    let yaml = imagecache::cli::output::yaml(&json).expect("JSON prints as YAML");
    [(json, Some("application/json")), (yaml.into_bytes(), None)]
}

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let mut accepted = false;
    match image_cache(data, None) {
        Err(e) => refused_as_request_error(&e),
        Ok(valid) => {
            accepted = true;
            check_name(&valid.object.metadata.name).expect("an accepted name is valid");
            assert!(!valid.images.is_empty());
            for (body, content_type) in printed(&valid.object) {
                let again = image_cache(&body, content_type).unwrap_or_else(|e| {
                    panic!(
                        "accepted cache refused when sent back as {}: {e}",
                        String::from_utf8_lossy(&body)
                    )
                });
                assert_eq!(again, valid, "{}", String::from_utf8_lossy(&body));
            }
        }
    }
    match disk(data, None) {
        Err(e) => refused_as_request_error(&e),
        Ok(valid) => {
            accepted = true;
            assert!(!valid.images.is_empty());
            if let Some(Some(path)) = &valid.mountpoint {
                assert!(path.is_absolute() && !path.components().any(|c| c.as_os_str() == ".."));
            }
            let object = Disk {
                api_version: API_VERSION.into(),
                kind: KIND_DISK.into(),
                metadata: Default::default(),
                spec: valid.spec.clone(),
                status: None,
            };
            for (body, content_type) in printed(&object) {
                let again = disk(&body, content_type).unwrap_or_else(|e| {
                    panic!(
                        "accepted disk refused when sent back as {}: {e}",
                        String::from_utf8_lossy(&body)
                    )
                });
                // The Pod is kept as given and compared through what was taken from it: a
                // JSON number need not print back to the very same float.
                assert_eq!(
                    (
                        &again.images,
                        &again.annotations,
                        &again.cache,
                        again.size_gib,
                        &again.mountpoint,
                        &again.pull_secrets,
                        &again.labels
                    ),
                    (
                        &valid.images,
                        &valid.annotations,
                        &valid.cache,
                        valid.size_gib,
                        &valid.mountpoint,
                        &valid.pull_secrets,
                        &valid.labels
                    ),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
    accepted
}
