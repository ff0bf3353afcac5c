//! Manifests, indexes and image configs as the registry client parses them. The input is a
//! manifest or index, optionally followed by a NUL byte and an image config; without one the
//! same bytes are also tried as the config. Whatever parses must be consistent: an index's
//! chosen entry exists, and the layers paired with the config are exactly the manifest's.

use imagecache::fuzzing::{image_layers, manifest, ManifestDoc};
use imagecache::registry::Platform;

/// Index entries are matched against these as well as this node's platform.
fn hosts() -> [Platform; 3] {
    let p = |os: &str, arch: &str, variant: Option<&str>| Platform {
        os: os.into(),
        architecture: arch.into(),
        variant: variant.map(str::to_string),
    };
    [
        p("linux", "amd64", None),
        p("linux", "arm64", Some("v8")),
        p("linux", "arm", Some("v7")),
    ]
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some((alg, hex)) => {
            !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let (doc, config) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let parsed = manifest(doc, None);
    for host in hosts() {
        let again = manifest(doc, Some(&host));
        assert_eq!(again.is_ok(), parsed.is_ok());
        if let Ok(ManifestDoc::Index {
            entries, chosen, ..
        }) = again
        {
            assert!(
                chosen.is_none_or(|i| i < entries),
                "{chosen:?} of {entries}"
            );
        }
    }
    let layers = image_layers(doc, config);
    match (&parsed, &layers) {
        (Err(_), Err(_)) => {}
        (Ok(ManifestDoc::Index { .. }), Ok(None)) => {}
        (
            Ok(ManifestDoc::Image {
                layers: n,
                config_digest,
                ..
            }),
            result,
        ) => {
            assert!(is_digest(config_digest), "{config_digest:?}");
            if let Ok(Some(layers)) = result {
                assert_eq!(layers.len(), *n);
                for l in layers {
                    assert!(is_digest(&l.digest) && is_digest(&l.diff_id), "{l:?}");
                }
            }
        }
        (parsed, layers) => panic!("manifest {parsed:?} but layers {layers:?}"),
    }
    parsed.is_ok()
}
