//! HTTP routes: each handler parses and validates, builds one `Action`, and renders the reply.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::Cause;
use super::parse::{parse_body, ImageCacheManifest};
use super::peer::Access;
use super::validate::{check_name, validate_image_cache};
use super::validate_disk::{parse_disk_request, validate_disk};
use super::{ApiError, ImageCache, SnapshotPull, Status, KIND_IMAGE_CACHE};
use crate::daemon::{Action, Daemon, Reply};

pub const IMAGECACHES: &str = "/apis/imagecache.io/v1/imagecaches";
/// The same caches under the Alibaba ECI and Tencent EKS groups: one set of names, whichever
/// group a cache was created under, so clients written for either find them where they look.
pub const ECI_IMAGECACHES: &str = "/apis/eci.alibabacloud.com/v1/imagecaches";
pub const EKS_IMAGECACHES: &str = "/apis/eks.cloud.tencent.com/v1/imagecaches";
pub const DISKS: &str = "/apis/imagecache.io/v1/disks";
pub const INFO: &str = "/apis/imagecache.io/v1/info";
/// `imagecache pull`: a cache made from a shared snapshot named by reference.
pub const PULLS: &str = "/apis/imagecache.io/v1/pulls";

/// Every route, behind the caller check of `access`. Serve it with
/// `into_make_service_with_connect_info::<Peer>()`: the check needs each connection's peer.
pub fn router(daemon: Daemon, access: Access) -> Router {
    let mut router = Router::new();
    for path in [IMAGECACHES, ECI_IMAGECACHES, EKS_IMAGECACHES] {
        router = router
            .route(path, post(create_cache).get(list_caches))
            .route(
                &format!("{path}/{{name}}"),
                get(get_cache).delete(delete_cache),
            );
    }
    router
        .route(
            &format!("{IMAGECACHES}/{{name}}/verify"),
            post(verify_cache),
        )
        .route(&format!("{IMAGECACHES}/{{name}}/push"), post(push_cache))
        .route(PULLS, post(pull_snapshot))
        .route(DISKS, post(create_disk).get(list_disks))
        .route(
            &format!("{DISKS}/{{id}}"),
            get(get_disk).delete(delete_disk),
        )
        .route(INFO, get(info))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            count_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(access),
            super::peer::check,
        ))
        .with_state(daemon)
}

/// Counts every answered request by its route's template, method and status code.
async fn count_request(
    State(daemon): State<Daemon>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels = crate::daemon::metrics::RequestLabels {
        route,
        method,
        code: response.status().as_u16(),
    };
    daemon.metrics().api_requests.get_or_create(&labels).inc();
    response
}

/// The Prometheus text format; reading it takes a list of caches, disks and loop devices, so
/// it runs off the async workers.
async fn metrics(State(daemon): State<Daemon>) -> Response {
    match tokio::task::spawn_blocking(move || daemon.metrics_text()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("metrics: {e}")).into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, Json(self.to_status())).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

fn render(reply: Reply, created: bool) -> Response {
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match reply {
        Reply::ImageCache(c) => (code, Json(c)).into_response(),
        Reply::ImageCacheList(l) => (code, Json(l)).into_response(),
        Reply::Deleted(message) => (code, Json(Status::success(message))).into_response(),
        Reply::Verify(v) => (code, Json(v)).into_response(),
        Reply::Disk(disk) => (code, Json(disk)).into_response(),
        // Nothing was created: the retry of a create whose 201 was lost.
        Reply::ExistingDisk(disk) => (StatusCode::OK, Json(disk)).into_response(),
        Reply::DiskList(l) => (code, Json(l)).into_response(),
        Reply::Info(i) => (code, Json(i)).into_response(),
        // The API sends no snapshotter requests, so none is answered here.
        Reply::Snapshot(r) => {
            ApiError::Internal(format!("snapshotter reply on the HTTP API: {r:?}")).into_response()
        }
    }
}

async fn run(d: &Daemon, action: Action) -> Response {
    let created = matches!(
        action,
        Action::CreateImageCache(_) | Action::CreateDisk(_) | Action::PullSnapshot(_)
    );
    match d.dispatch(action).await {
        Ok(reply) => render(reply, created),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn create_cache(State(d): State<Daemon>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_body::<ImageCacheManifest>(&body, content_type)
        .map(ImageCache::from)
        .and_then(|c| validate_image_cache(c, d.config().default_cache_size_gib));
    match parsed {
        Ok(valid) => run(&d, Action::CreateImageCache(Box::new(valid))).await,
        Err(e) => e.into_response(),
    }
}

/// A list says the group it was asked under; its items keep their own apiVersion.
async fn list_caches(State(d): State<Daemon>, uri: Uri) -> Response {
    match d.dispatch(Action::ListImageCaches).await {
        Ok(Reply::ImageCacheList(mut list)) => {
            if let Some(group) = uri
                .path()
                .strip_prefix("/apis/")
                .and_then(|p| p.strip_suffix("/imagecaches"))
            {
                list.api_version = group.to_owned();
            }
            render(Reply::ImageCacheList(list), false)
        }
        Ok(other) => render(other, false),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn get_cache(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    run(&d, Action::GetImageCache(name)).await
}

async fn delete_cache(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    run(&d, Action::DeleteImageCache(name)).await
}

async fn verify_cache(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    run(&d, Action::VerifyImageCache(name)).await
}

async fn push_cache(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    run(&d, Action::PushImageCache(name)).await
}

async fn pull_snapshot(State(d): State<Daemon>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_body::<SnapshotPull>(&body, content_type).and_then(|pull| {
        match pull.name.as_deref().map(check_name) {
            Some(Err(message)) => Err(ApiError::Invalid {
                kind: KIND_IMAGE_CACHE.into(),
                name: pull.name.clone().unwrap_or_default(),
                causes: vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message,
                    field: "name".into(),
                }],
            }),
            _ => Ok(pull),
        }
    });
    match parsed {
        Ok(pull) => run(&d, Action::PullSnapshot(pull)).await,
        Err(e) => e.into_response(),
    }
}

async fn create_disk(State(d): State<Daemon>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_body::<serde_json::Value>(&body, content_type)
        .and_then(parse_disk_request)
        .and_then(validate_disk);
    match parsed {
        Ok(valid) => run(&d, Action::CreateDisk(Box::new(valid))).await,
        Err(e) => e.into_response(),
    }
}

async fn list_disks(State(d): State<Daemon>) -> Response {
    run(&d, Action::ListDisks).await
}

async fn get_disk(State(d): State<Daemon>, Path(id): Path<String>) -> Response {
    run(&d, Action::GetDisk(id)).await
}

async fn delete_disk(State(d): State<Daemon>, Path(id): Path<String>) -> Response {
    run(&d, Action::DeleteDisk(id)).await
}

async fn info(State(d): State<Daemon>) -> Response {
    run(&d, Action::Info).await
}

async fn version() -> Response {
    Json(serde_json::json!({ "name": "imagecache", "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found("endpoint", uri.path()).into_response()
}
