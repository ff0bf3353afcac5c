//! A minimal HTTP/1.1 client of the daemon's unix socket (hyper), one connection per request.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::api::error::Status;

pub const SOCKET_ENV: &str = "IMAGECACHE_SOCKET";
pub const DEFAULT_SOCKET: &str = "/run/imagecache/imagecache.sock";

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A successful answer: the body exactly as the API sent it.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).context("the daemon answered with JSON this CLI does not understand: are the CLI and daemon the same version?")
    }
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Vec<u8>, content_type: &str) -> Result<Answer> {
        self.call(Method::POST, path, Some((body, content_type)))
            .await
    }

    /// Sends one request; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Answer> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot connect to imagecached at {}: is the daemon running? (set --socket or {SOCKET_ENV})",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with imagecached failed")?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "imagecache");
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header("content-type", content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender
            .send_request(req.body(body)?)
            .await
            .context("request to imagecached failed")?;
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer failed")?
            .to_bytes()
            .to_vec();
        if (200..300).contains(&code) {
            return Ok(Answer { code, body });
        }
        match serde_json::from_slice::<Status>(&body) {
            Ok(status) => Err(anyhow!("{} (HTTP {code})", status.message)),
            Err(_) => Err(anyhow!(
                "imagecached answered HTTP {code}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}
