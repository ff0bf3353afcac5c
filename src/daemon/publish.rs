//! Images present before the kubelet asks: when a cache becomes Ready, the images it pulled
//! are published into containerd's image store (namespace `k8s.io`, `containerd_socket`), so
//! CRI's ImageStatus finds them and a kubelet with `IfNotPresent` skips PullImage.
//!
//! For each image: its index (if any), manifest and config blobs are written through
//! containerd's content API, with the garbage-collection labels an unpacked image carries
//! (index → manifests, manifest → config and layers, config → the top layer's snapshot); each
//! layer's snapshot is registered through containerd's snapshots API with the
//! `containerd.io/snapshot.ref` handshake, which this daemon's snapshotter answers from the
//! cache; then the image records (the reference, and `repository@digest` as CRI names them)
//! are created, labelled with the cache that published them. Layer blobs are never written:
//! containerd needs none to run the image, as with any remote snapshotter.
//!
//! A record containerd already has under that name is left alone. Removing a published image
//! in containerd (kubelet image GC) takes nothing from the cache; deleting the cache removes
//! the records it published, and containers running from them keep their snapshots.

use std::collections::HashMap;

use containerd_client::services::v1 as leases;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, Image, ListImagesRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::types::Descriptor;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{info, warn};

use super::events::{NORMAL, WARNING};
use super::owner::Owner;
use super::Daemon;
use crate::registry::{chain_ids, ResolvedImage};

/// CRI's namespace in containerd.
const NAMESPACE: &str = "k8s.io";
/// The snapshotter containerd knows this daemon as (`imagecache containerd-config`).
const SNAPSHOTTER: &str = "imagecache";
/// On each image record published: the cache that published it.
pub const PUBLISHED_LABEL: &str = "imagecache.io/published-by";
/// CRI's own mark on the images it manages.
const CRI_MANAGED: (&str, &str) = ("io.cri-containerd.image", "managed");

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("containerd {what}: {status}")]
    Call {
        what: String,
        #[source]
        status: tonic::Status,
    },
    #[error("the snapshotter did not serve layer {0} from the cache")]
    NotServed(String),
}

/// A request in CRI's namespace, under `lease` when there is one: what a publish writes is
/// held by it until the image records reference it, so containerd's garbage collector cannot
/// take a blob or snapshot written a moment before its record exists.
fn request<T>(message: T, lease: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    let md = request.metadata_mut();
    md.insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
    if let Some(lease) = lease.and_then(|l| l.parse().ok()) {
        md.insert("containerd-lease", lease);
    }
    request
}

fn call(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> PublishError {
    let what = what.into();
    move |status| PublishError::Call { what, status }
}

/// Publishes `images` of the Ready cache `name` in the background; the outcome is an event.
pub(crate) fn spawn(d: &Daemon, name: &str, images: Vec<ResolvedImage>) {
    if !publishing(d) || images.is_empty() {
        return;
    }
    let (d2, name) = (d.clone(), name.to_owned());
    let stop = d.inner.shutdown.clone();
    d.inner.tasks.spawn(async move {
        tokio::select! {
            () = publish_and_record(&d2, &name, &images) => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Whether this node publishes: the config asks, the snapshotter is on (it serves the
/// layers) and containerd's socket is there (a node without containerd has no image store).
fn publishing(d: &Daemon) -> bool {
    let c = &d.inner.config;
    c.publish_images && c.snapshotter().is_some() && c.containerd_socket.exists()
}

async fn publish_and_record(d: &Daemon, name: &str, images: &[ResolvedImage]) {
    let owner = Owner::Cache(name.to_owned());
    match publish(d, name, images).await {
        Ok(names) => {
            info!(cache = %name, images = ?names, "images published to containerd");
            owner.event(
                d,
                NORMAL,
                "Published",
                format!(
                    "Published to containerd ({NAMESPACE}): {}",
                    names.join(", ")
                ),
            );
        }
        Err(e) => {
            warn!(cache = %name, error = %e, "images not published to containerd");
            owner.event(
                d,
                WARNING,
                "PublishFailed",
                format!("Could not publish the images to containerd ({NAMESPACE}): {e}; the kubelet pulls them through the snapshotter instead"),
            );
        }
    }
}

/// containerd's API; connected on the first call, whose failure names the socket's trouble.
fn channel(d: &Daemon) -> Channel {
    crate::unix_grpc::lazy_channel(&d.inner.config.containerd_socket)
}

/// The image names published, or why not.
async fn publish(
    d: &Daemon,
    cache: &str,
    images: &[ResolvedImage],
) -> Result<Vec<String>, PublishError> {
    let channel = channel(d);
    let mut leases = LeasesClient::new(channel.clone());
    // Expires by itself should the daemon die before deleting it.
    let expire = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let create = leases::CreateRequest {
        id: String::new(),
        labels: HashMap::from([(
            "containerd.io/gc.expire".to_owned(),
            expire
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )]),
    };
    let lease = leases
        .create(request(create, None))
        .await
        .map_err(call("lease create"))?
        .into_inner()
        .lease
        .map(|l| l.id)
        .unwrap_or_default();
    let mut published = Vec::new();
    let mut result = Ok(());
    for image in images {
        result = publish_one(&channel, &lease, cache, image).await;
        if result.is_err() {
            break;
        }
        published.extend(record_names(image));
    }
    let delete = leases::DeleteRequest {
        id: lease.clone(),
        sync: false,
    };
    if let Err(s) = leases.delete(request(delete, None)).await {
        warn!(%lease, error = %s, "could not delete the publish lease; it expires within the hour");
    }
    result.map(|()| published)
}

/// The names CRI gives an image it pulled: the reference as asked (tag or digest), and
/// `repository@digest` of what it resolved to.
fn record_names(image: &ResolvedImage) -> Vec<String> {
    let r = &image.reference;
    let top = image
        .index
        .as_ref()
        .unwrap_or(&image.manifest)
        .digest
        .clone();
    let repository = format!("{}/{}", r.registry(), r.repository());
    let mut names = Vec::new();
    if let Some(tag) = r.tag() {
        names.push(format!("{repository}:{tag}"));
    }
    names.push(format!("{repository}@{top}"));
    names
}

async fn publish_one(
    channel: &Channel,
    lease: &str,
    cache: &str,
    image: &ResolvedImage,
) -> Result<(), PublishError> {
    let lease = Some(lease);
    let chains = chain_ids(&image.diff_ids());
    // Layers bottom up: each registered over the one below, as an unpack would.
    let mut parent = String::new();
    for chain in &chains {
        register_layer(channel, lease, chain, &parent, &image.manifest.digest).await?;
        parent.clone_from(chain);
    }
    let config_labels = chains
        .last()
        .map(|top| {
            vec![(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            )]
        })
        .unwrap_or_default();
    write_blob(
        channel,
        lease,
        &image.config.bytes,
        &image.config.digest,
        config_labels,
    )
    .await?;
    let mut manifest_labels = vec![(
        "containerd.io/gc.ref.content.config".to_owned(),
        image.config.digest.clone(),
    )];
    for (i, layer) in image.layers.iter().enumerate() {
        manifest_labels.push((
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        ));
    }
    write_blob(
        channel,
        lease,
        &image.manifest.bytes,
        &image.manifest.digest,
        manifest_labels,
    )
    .await?;
    let target = match &image.index {
        Some(index) => {
            let labels = vec![(
                "containerd.io/gc.ref.content.m.0".to_owned(),
                image.manifest.digest.clone(),
            )];
            write_blob(channel, lease, &index.bytes, &index.digest, labels).await?;
            descriptor(&index.media_type, &index.digest, index.bytes.len())
        }
        None => descriptor(
            &image.manifest.media_type,
            &image.manifest.digest,
            image.manifest.bytes.len(),
        ),
    };
    for name in record_names(image) {
        create_record(channel, lease, &name, &target, cache).await?;
    }
    Ok(())
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
    }
}

/// Registers layer `chain` over `parent` in containerd's metadata: a Prepare carrying
/// `containerd.io/snapshot.ref`, which this daemon's snapshotter answers "already exists"
/// from the cache, whereupon containerd records the committed snapshot under that name.
async fn register_layer(
    channel: &Channel,
    lease: Option<&str>,
    chain: &str,
    parent: &str,
    manifest: &str,
) -> Result<(), PublishError> {
    let mut client =
        containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(
            channel.clone(),
        );
    let key = format!("imagecache-publish-{chain}");
    let labels = HashMap::from([
        ("containerd.io/snapshot.ref".to_owned(), chain.to_owned()),
        // What a CRI pull labels the Prepare with: a layer only images that needed
        // credentials hold is offered to their own manifest alone (image_access.rs).
        (
            crate::daemon::image_access::CRI_MANIFEST_DIGEST_LABEL.to_owned(),
            manifest.to_owned(),
        ),
    ]);
    let prepare = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_owned(),
        key: key.clone(),
        parent: parent.to_owned(),
        labels,
    };
    match client.prepare(self::request(prepare, lease)).await {
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(call(format!("prepare of layer {chain}"))(s)),
        Ok(_) => {
            // Not served from the cache: an empty active snapshot, which is no layer.
            let remove = RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_owned(),
                key,
            };
            let _ = client.remove(self::request(remove, lease)).await;
            Err(PublishError::NotServed(chain.to_owned()))
        }
    }
}

/// Writes `bytes` as the blob `digest` with `labels`, committed in one message.
async fn write_blob(
    channel: &Channel,
    lease: Option<&str>,
    bytes: &[u8],
    digest: &str,
    labels: Vec<(String, String)>,
) -> Result<(), PublishError> {
    let mut client =
        containerd_client::services::v1::content_client::ContentClient::new(channel.clone());
    let write = WriteContentRequest {
        action: WriteAction::Commit.into(),
        r#ref: format!("imagecache-publish-{digest}"),
        total: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        expected: digest.to_owned(),
        offset: 0,
        data: bytes.to_vec(),
        labels: labels.into_iter().collect(),
    };
    match client
        .write(self::request(tokio_stream::once(write), lease))
        .await
    {
        Ok(mut answers) => {
            while answers
                .get_mut()
                .message()
                .await
                .map_err(call(format!("write of {digest}")))?
                .is_some()
            {}
            Ok(())
        }
        // Already there (a pull of the same image): containerd keeps its own labels.
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(call(format!("write of {digest}"))(s)),
    }
}

/// Creates the image record `name` → `target`; one containerd has already is left alone.
async fn create_record(
    channel: &Channel,
    lease: Option<&str>,
    name: &str,
    target: &Descriptor,
    cache: &str,
) -> Result<(), PublishError> {
    let mut client =
        containerd_client::services::v1::images_client::ImagesClient::new(channel.clone());
    let create = CreateImageRequest {
        image: Some(Image {
            name: name.to_owned(),
            labels: HashMap::from([
                (CRI_MANAGED.0.to_owned(), CRI_MANAGED.1.to_owned()),
                (PUBLISHED_LABEL.to_owned(), cache.to_owned()),
            ]),
            target: Some(target.clone()),
            created_at: None,
            updated_at: None,
        }),
        source_date_epoch: None,
    };
    match client.create(self::request(create, lease)).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(call(format!("create of image {name}"))(s)),
    }
}

/// Removes the image records cache `name` published (on its delete). Containers running
/// from them keep their snapshots; containerd's garbage collector takes the rest.
pub(crate) async fn unpublish(d: &Daemon, name: &str) {
    if !publishing(d) {
        return;
    }
    let result: Result<usize, PublishError> = async {
        let channel = channel(d);
        let mut client = containerd_client::services::v1::images_client::ImagesClient::new(channel);
        let filter = format!("labels.\"{PUBLISHED_LABEL}\"=={name}");
        let list = ListImagesRequest {
            filters: vec![filter],
        };
        let images = client
            .list(request(list, None))
            .await
            .map_err(call("list of images"))?
            .into_inner()
            .images;
        for image in &images {
            // Synchronous, as CRI's RemoveImage: containerd's collector then runs at once and
            // takes the blobs and snapshots nothing else uses, instead of at some later
            // mutation.
            let delete = DeleteImageRequest {
                name: image.name.clone(),
                sync: true,
                target: None,
            };
            match client.delete(request(delete, None)).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(call(format!("delete of image {}", image.name))(s)),
            }
        }
        Ok(images.len())
    }
    .await;
    match result {
        Ok(n) => info!(cache = %name, images = n, "published images removed from containerd"),
        Err(e) => {
            warn!(cache = %name, error = %e, "could not remove the images this cache published from containerd")
        }
    }
}
