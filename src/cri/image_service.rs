//! The ImageService in front of containerd's: each call goes to containerd as it came and
//! containerd's answer goes back as it is, status codes and messages included, so the
//! kubelet sees exactly what it would talking to containerd itself. A PullImage's
//! credentials are lent to the snapshotter for as long as the forwarded call runs.

use std::path::Path;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use tonic::metadata::KeyAndValueRef;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::auth_config::credentials_of;
use crate::daemon::pull_auth::HeldPullCredentials;
use crate::daemon::Daemon;
use crate::registry::ImageReference;

/// The kubelet's limit on a CRI message (`maxMsgSize`, 16 MiB), both ways: a node with many
/// images answers ListImages with more than tonic's default 4 MiB.
const MAX_MESSAGE: usize = 16 << 20;

/// Headers that belong to one HTTP/2 hop or that the client sets itself; everything else the
/// kubelet sends (its deadline, `grpc-timeout`, among them) goes on to containerd.
const HOP_HEADERS: &[&str] = &[
    "te",
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "grpc-encoding",
    "grpc-accept-encoding",
    "grpc-status",
    "grpc-message",
    "grpc-message-type",
    "grpc-status-details-bin",
];

/// The ImageService that forwards to containerd.
#[derive(Debug, Clone)]
pub struct ImageProxy {
    daemon: Daemon,
    containerd: ImageServiceClient<Channel>,
}

impl ImageProxy {
    /// Forwards to containerd's socket `containerd`, connecting on the first call.
    pub fn new(daemon: Daemon, containerd: &Path) -> Self {
        let containerd = ImageServiceClient::new(crate::unix_grpc::lazy_channel(containerd))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        ImageProxy { daemon, containerd }
    }

    pub fn into_service(self) -> ImageServiceServer<ImageProxy> {
        ImageServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn containerd(&self) -> ImageServiceClient<Channel> {
        self.containerd.clone()
    }

    /// Holds the pull's credentials, if it has any the daemon can use, for its image.
    fn lend_credentials(&self, pull: &PullImageRequest) -> Option<HeldPullCredentials> {
        let credentials = credentials_of(pull.auth.as_ref()?)?;
        // A reference the daemon cannot read is one its cold pull cannot read either.
        let image = pull.image.as_ref()?.image.parse::<ImageReference>().ok()?;
        Some(self.daemon.hold_pull_credentials(&image, credentials))
    }
}

/// `request` as containerd is to get it: the same message and the caller's own metadata.
fn forward<T>(request: Request<T>) -> Request<T> {
    let (metadata, _, message) = request.into_parts();
    let mut forwarded = Request::new(message);
    let out = forwarded.metadata_mut();
    for entry in metadata.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if !HOP_HEADERS.contains(&key.as_str()) => {
                out.append(key.clone(), value.clone());
            }
            KeyAndValueRef::Binary(key, value) if !HOP_HEADERS.contains(&key.as_str()) => {
                out.append_bin(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    forwarded
}

/// containerd's answer as the kubelet is to get it: the message, or the status with its
/// code, message and details.
fn answer<T>(result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    match result {
        Ok(response) => Ok(Response::new(response.into_inner())),
        Err(status) => Err(Status::with_details(
            status.code(),
            status.message().to_owned(),
            status.details().to_vec().into(),
        )),
    }
}

#[tonic::async_trait]
impl ImageService for ImageProxy {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        answer(self.containerd().list_images(forward(request)).await)
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        answer(self.containerd().image_status(forward(request)).await)
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        // Dropped when this call ends however it ends (answered, failed, or cancelled by the
        // kubelet, which drops this future): the credentials go with it.
        let held = self.lend_credentials(request.get_ref());
        let image = request
            .get_ref()
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        debug!(%image, with_credentials = held.is_some(), "PullImage forwarded to containerd");
        let result = self.containerd().pull_image(forward(request)).await;
        drop(held);
        answer(result)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        answer(self.containerd().remove_image(forward(request)).await)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        answer(self.containerd().image_fs_info(forward(request)).await)
    }
}
