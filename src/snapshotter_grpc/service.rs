//! `containerd.services.snapshots.v1.Snapshots` over gRPC: each method parses its message
//! into a daemon `SnapshotRequest` and maps the reply back. The message types come from
//! `containerd-client`, which generates clients only, so the routing by method path that
//! tonic would generate for a server is written out here, once, for all ten methods.

use std::convert::Infallible;
use std::future::Future;

use containerd_client::services::v1::snapshots::{
    CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};

use super::convert;
use crate::daemon::ctr_snapshots::{SnapshotReply, SnapshotRequest};
use crate::daemon::{Action, Daemon, Reply};

const SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";
/// containerd's own snapshots service sends List in chunks of this many.
const LIST_CHUNK: usize = 100;

/// The snapshots service in front of a daemon.
#[derive(Clone, Debug)]
pub struct SnapshotsService {
    daemon: Daemon,
}

impl SnapshotsService {
    pub fn new(daemon: Daemon) -> Self {
        SnapshotsService { daemon }
    }
}

impl NamedService for SnapshotsService {
    const NAME: &'static str = SERVICE;
}

type GrpcReply<T> = Result<Response<T>, Status>;

/// Every request enters the daemon as an action, as the HTTP API's do.
async fn ask(d: &Daemon, request: SnapshotRequest) -> Result<SnapshotReply, Status> {
    match d.dispatch(Action::Snapshot(request)).await {
        Ok(Reply::Snapshot(reply)) => Ok(reply),
        Ok(other) => Err(Status::internal(format!(
            "daemon answered a snapshot request with {other:?}"
        ))),
        Err(e) => Err(convert::status(e)),
    }
}

fn unexpected(reply: SnapshotReply) -> Status {
    Status::internal(format!("snapshotter answered out of turn: {reply:?}"))
}

async fn prepare(
    d: Daemon,
    r: Request<PrepareSnapshotRequest>,
) -> GrpcReply<PrepareSnapshotResponse> {
    let r = r.into_inner();
    let request = SnapshotRequest::Prepare {
        key: r.key,
        parent: r.parent,
        labels: convert::labels(r.labels),
    };
    match ask(&d, request).await? {
        SnapshotReply::Mounts(m) => Ok(Response::new(PrepareSnapshotResponse {
            mounts: convert::mounts(m),
        })),
        other => Err(unexpected(other)),
    }
}

async fn view(d: Daemon, r: Request<ViewSnapshotRequest>) -> GrpcReply<ViewSnapshotResponse> {
    let r = r.into_inner();
    let request = SnapshotRequest::View {
        key: r.key,
        parent: r.parent,
        labels: convert::labels(r.labels),
    };
    match ask(&d, request).await? {
        SnapshotReply::Mounts(m) => Ok(Response::new(ViewSnapshotResponse {
            mounts: convert::mounts(m),
        })),
        other => Err(unexpected(other)),
    }
}

async fn mounts(d: Daemon, r: Request<MountsRequest>) -> GrpcReply<MountsResponse> {
    let key = r.into_inner().key;
    match ask(&d, SnapshotRequest::Mounts { key }).await? {
        SnapshotReply::Mounts(m) => Ok(Response::new(MountsResponse {
            mounts: convert::mounts(m),
        })),
        other => Err(unexpected(other)),
    }
}

async fn commit(d: Daemon, r: Request<CommitSnapshotRequest>) -> GrpcReply<()> {
    let r = r.into_inner();
    let request = SnapshotRequest::Commit {
        name: r.name,
        key: r.key,
        labels: convert::labels(r.labels),
    };
    ask(&d, request).await.map(|_| Response::new(()))
}

async fn remove(d: Daemon, r: Request<RemoveSnapshotRequest>) -> GrpcReply<()> {
    let key = r.into_inner().key;
    ask(&d, SnapshotRequest::Remove { key })
        .await
        .map(|_| Response::new(()))
}

async fn stat(d: Daemon, r: Request<StatSnapshotRequest>) -> GrpcReply<StatSnapshotResponse> {
    let key = r.into_inner().key;
    match ask(&d, SnapshotRequest::Stat { key }).await? {
        SnapshotReply::Info(i) => Ok(Response::new(StatSnapshotResponse {
            info: Some(convert::info(i)),
        })),
        other => Err(unexpected(other)),
    }
}

async fn update(d: Daemon, r: Request<UpdateSnapshotRequest>) -> GrpcReply<UpdateSnapshotResponse> {
    let r = r.into_inner();
    let info = r
        .info
        .ok_or_else(|| Status::invalid_argument("update without info: name the snapshot"))?;
    let request = SnapshotRequest::Update {
        name: info.name,
        labels: convert::labels(info.labels),
        fields: r.update_mask.map(|m| m.paths).unwrap_or_default(),
    };
    match ask(&d, request).await? {
        SnapshotReply::Info(i) => Ok(Response::new(UpdateSnapshotResponse {
            info: Some(convert::info(i)),
        })),
        other => Err(unexpected(other)),
    }
}

type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

async fn list(d: Daemon, r: Request<ListSnapshotsRequest>) -> GrpcReply<ListStream> {
    let filters = r.into_inner().filters;
    match ask(&d, SnapshotRequest::List { filters }).await? {
        SnapshotReply::List(infos) => {
            let infos: Vec<_> = infos.into_iter().map(convert::info).collect();
            let chunks: Vec<Result<ListSnapshotsResponse, Status>> = infos
                .chunks(LIST_CHUNK)
                .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
                .collect();
            Ok(Response::new(tokio_stream::iter(chunks)))
        }
        other => Err(unexpected(other)),
    }
}

async fn usage(d: Daemon, r: Request<UsageRequest>) -> GrpcReply<UsageResponse> {
    let key = r.into_inner().key;
    match ask(&d, SnapshotRequest::Usage { key }).await? {
        SnapshotReply::Usage(u) => Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        })),
        other => Err(unexpected(other)),
    }
}

async fn cleanup(d: Daemon, _r: Request<CleanupRequest>) -> GrpcReply<()> {
    ask(&d, SnapshotRequest::Cleanup)
        .await
        .map(|_| Response::new(()))
}

/// One unary method: a handler taking the daemon and the request.
struct Unary<F>(Daemon, F);

impl<Req, Resp, F, Fut> UnaryService<Req> for Unary<F>
where
    F: Fn(Daemon, Request<Req>) -> Fut,
    Fut: Future<Output = GrpcReply<Resp>> + Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        Box::pin((self.1)(self.0.clone(), request))
    }
}

struct Streaming<F>(Daemon, F);

impl<F, Fut> ServerStreamingService<ListSnapshotsRequest> for Streaming<F>
where
    F: Fn(Daemon, Request<ListSnapshotsRequest>) -> Fut,
    Fut: Future<Output = GrpcReply<ListStream>> + Send + 'static,
{
    type Response = ListSnapshotsResponse;
    type ResponseStream = ListStream;
    type Future = BoxFuture<Response<ListStream>, Status>;

    fn call(&mut self, request: Request<ListSnapshotsRequest>) -> Self::Future {
        Box::pin((self.1)(self.0.clone(), request))
    }
}

type HttpReply = BoxFuture<http::Response<tonic::body::Body>, Infallible>;

fn unary<Req, Resp, F, Fut>(d: Daemon, req: http::Request<tonic::body::Body>, f: F) -> HttpReply
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Daemon, Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = GrpcReply<Resp>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
        Ok(grpc.unary(Unary(d, f), req).await)
    })
}

fn unimplemented(path: &str) -> HttpReply {
    let status = Status::unimplemented(format!("{path} is not a method of {SERVICE}"));
    Box::pin(async move { Ok(status.into_http()) })
}

impl Service<http::Request<tonic::body::Body>> for SnapshotsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = HttpReply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let d = self.daemon.clone();
        let path = req.uri().path().to_owned();
        let method = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(SERVICE))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("");
        match method {
            "Prepare" => unary(d, req, prepare),
            "View" => unary(d, req, view),
            "Mounts" => unary(d, req, mounts),
            "Commit" => unary(d, req, commit),
            "Remove" => unary(d, req, remove),
            "Stat" => unary(d, req, stat),
            "Update" => unary(d, req, update),
            "Usage" => unary(d, req, usage),
            "Cleanup" => unary(d, req, cleanup),
            "List" => Box::pin(async move {
                let codec =
                    tonic_prost::ProstCodec::<ListSnapshotsResponse, ListSnapshotsRequest>::default(
                    );
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.server_streaming(Streaming(d, list), req).await)
            }),
            _ => unimplemented(&path),
        }
    }
}
