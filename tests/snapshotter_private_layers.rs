//! The snapshotter hands a layer that only images which needed credentials hold only to a
//! pull of that very image (containerd 1.6 over CRI, as the kubelet drives it). containerd
//! asks whether a layer exists by its chainID, which follows from the diffIDs an image's
//! config lists, and anyone can push a config listing another image's diffIDs over layers of
//! their own. So:
//!
//! - such a crafted image, pulled through CRI, is not served the private image's layers:
//!   containerd fetches its own layers, finds they are not what the config says, and fails,
//!   exactly as containerd alone would;
//! - the private image itself, pulled with credentials (CRI labels each layer's Prepare with
//!   the manifest containerd just resolved), comes from the cache with no layer blob fetched.

mod snapshotter_util;
mod support;

use bytes::Bytes;
use serde_json::json;
use snapshotter_util::*;
use support::containerd::{ContainerdOptions, TestContainerd};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::LayerSpec;
use support::oci::{push_image, sha256_digest, Compression, Image};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const USER: (&str, &str) = ("alice", "Pw-alice-0c7e-quiet-lantern");

/// `own`'s layers under `victim`'s config (so the victim's diffIDs and chainIDs).
fn crafted(own: &Image, victim: &Image) -> Image {
    let layers: Vec<_> = own
        .layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type(own.format), "digest": l.digest, "size": l.size()}))
        .collect();
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": victim.manifest_media_type(),
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": victim.config_digest,
            "size": victim.config.len(),
        },
        "layers": layers,
    }))
    .unwrap();
    Image {
        manifest_digest: sha256_digest(&manifest),
        manifest: Bytes::from(manifest),
        config: victim.config.clone(),
        config_digest: victim.config_digest.clone(),
        layers: own.layers.clone(),
        format: own.format,
        platform: own.platform.clone(),
    }
}

/// Three layers of the attacker's own, as many as the victim has.
fn own_layers() -> Image {
    let specs: Vec<LayerSpec> = (0..3)
        .map(|i| {
            let mut l = LayerSpec::new(Compression::Gzip);
            l.file(&format!("mine-{i}"), format!("attacker layer {i}\n"));
            l
        })
        .collect();
    Image::new(
        specs.iter().map(|s| s.to_layer()).collect(),
        support::oci::ManifestFormat::Oci,
    )
}

#[test]
fn a_crafted_config_gets_no_private_layer_and_the_image_itself_comes_from_the_cache() {
    let scratch = ScratchXfs::new(16 << 30);
    let registry = TestRegistry::start_with_htpasswd(USER.0, USER.1);
    let addr = registry.addr();
    let victim = layered_image();
    assert_eq!(victim.layers.len(), 3);
    push_image(&addr, "team/app", "v1", &victim, Some(USER));
    let attack = crafted(&own_layers(), &victim);
    push_image(&addr, "mallory/app", "v1", &attack, Some(USER));
    let victim_ref = format!("{addr}/team/app:v1");
    let attack_ref = format!("{addr}/mallory/app:v1");

    let root = scratch.path().join("state");
    let daemon = TestDaemon::start(&root, &[&addr]);
    daemon.write_pull_secret("default", "cred", &addr, USER.0, USER.1);
    let out = daemon.create(
        &cache_yaml(
            "private",
            std::slice::from_ref(&victim_ref),
            "  imagePullSecrets: [\"default:cred\"]\n",
        ),
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = daemon.get_json("private");
    assert_eq!(
        cache["status"]["images"][0]["credentialsRequired"], true,
        "{cache:#}"
    );
    {
        let containerd = TestContainerd::start(
            &scratch.path().join("containerd"),
            &ContainerdOptions {
                registry: addr.clone(),
                sandbox_image: format!("{addr}/pause:v1"),
                proxy_snapshotter: Some(daemon.snapshotter_socket()),
            },
        );
        let cri = containerd.cri();

        // The crafted image: containerd is offered none of the cached layers, fetches its
        // own, and refuses them for not matching the config.
        let mark = registry.log_mark();
        let crafted = cri.try_pull_image_as(&attack_ref, Some(USER));
        let fetched = registry.blobs_fetched_since(mark);
        assert!(
            crafted.is_err(),
            "the crafted image was pulled: the private layers were served to it\n{}",
            daemon.log()
        );
        assert!(
            fetched.contains(&attack.layers[0].digest),
            "containerd did not fetch the crafted image's own first layer: {fetched:?}\n{crafted:?}"
        );

        // The private image, with credentials: every layer from the cache.
        let mark = registry.log_mark();
        cri.try_pull_image_as(&victim_ref, Some(USER))
            .unwrap_or_else(|e| {
                panic!(
                    "pull of the cached private image: {e}\n{}",
                    containerd.log()
                )
            });
        let fetched = registry.blobs_fetched_since(mark);
        for layer in &victim.layers {
            assert!(
                !fetched.contains(&layer.digest),
                "layer {} fetched: {fetched:?}",
                layer.digest
            );
        }
        // Its config is the crafted image's, already in containerd's content store: the
        // access-log parse is shown to work by the crafted pull's fetches above.
        cri.remove_image(&victim_ref);
    }
    drop(daemon);
    assert_no_leaks(&root);
}
