//! A registry on 127.0.0.1 that misbehaves on purpose: it serves images from memory like a
//! plain distribution registry, and any path can instead stall after accepting, answer with an
//! error status (a number of times, with Retry-After), redirect elsewhere, announce or stream
//! an endless body, or trickle its body slowly. Every request is recorded with its headers, so
//! tests can count attempts and check what was sent where.
//!
//! One thread per connection, one request per connection (`Connection: close`): enough for
//! tests, and a stalled connection costs nothing but a sleeping thread.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::oci::Image;

/// What a path answers instead of its content.
#[derive(Clone, Debug)]
pub enum Misbehaviour {
    /// Read the request, then never answer (until the registry is dropped).
    Stall,
    /// Answer `status` (with an OCI error body and Retry-After if given) to the first `times`
    /// requests, then serve the content.
    Status {
        status: u16,
        times: u32,
        retry_after: Option<&'static str>,
    },
    /// 307 to `base` + the same path (another server, as object storage behind a registry).
    Redirect { base: String },
    /// 200 with `bytes` of junk; `announce` sends a Content-Length, otherwise the body runs
    /// until the connection closes.
    Endless { bytes: u64, announce: bool },
    /// Serve the content, `chunk` bytes at a time with `pause` between them.
    Trickle { chunk: usize, pause: Duration },
}

/// One request as the registry saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// Path -> (content type, body).
    content: HashMap<String, (String, Vec<u8>)>,
    rules: HashMap<String, Misbehaviour>,
    /// Requests each `Status` rule has answered so far.
    answered: HashMap<String, u32>,
    seen: Vec<Seen>,
    /// Basic credentials every /v2/ path needs, if set.
    basic: Option<String>,
}

pub struct HostileRegistry {
    addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// Body bytes written by `Endless` answers (how much a client made us send).
    pub endless_sent: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl HostileRegistry {
    pub fn start() -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let endless_sent = Arc::new(AtomicU64::new(0));
        let (s, st, sent) = (state.clone(), stop.clone(), endless_sent.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, st, sent) = (s.clone(), st.clone(), sent.clone());
                std::thread::spawn(move || serve(conn, &s, &st, &sent));
            }
        });
        HostileRegistry {
            addr,
            state,
            stop,
            endless_sent,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every path under /v2/ (the ping included) wants these Basic credentials.
    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.state.lock().unwrap().basic = Some(format!("Basic {token}"));
    }

    /// Serves `body` at `path`.
    pub fn put(&self, path: &str, content_type: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .content
            .insert(path.to_owned(), (content_type.to_owned(), body));
    }

    /// Serves `image` as `repo:tag` (and its manifest by digest), its config and layers.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) {
        let mt = image.manifest_media_type();
        self.put(&manifest_path(repo, tag), mt, image.manifest.to_vec());
        self.put(
            &manifest_path(repo, &image.manifest_digest),
            mt,
            image.manifest.to_vec(),
        );
        self.put(
            &blob_path(repo, &image.config_digest),
            "application/octet-stream",
            image.config.to_vec(),
        );
        for layer in &image.layers {
            self.put(
                &blob_path(repo, &layer.digest),
                "application/octet-stream",
                layer.blob.to_vec(),
            );
        }
    }

    /// `path` misbehaves as told from now on.
    pub fn rule(&self, path: &str, how: Misbehaviour) {
        self.state
            .lock()
            .unwrap()
            .rules
            .insert(path.to_owned(), how);
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests seen for `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

pub fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

pub fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn read_request(conn: &TcpStream) -> Option<(String, String, HashMap<String, String>)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    // Requests here carry no bodies (pulls only).
    let path = target.split('?').next().unwrap_or("").to_owned();
    Some((method, path, headers))
}

fn head(conn: &mut TcpStream, status: u16, extra: &[(&str, String)]) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn answer(conn: &mut TcpStream, status: u16, extra: &[(&str, String)], body: &[u8]) {
    let mut extra = extra.to_vec();
    extra.push(("Content-Length", body.len().to_string()));
    if head(conn, status, &extra).is_ok() {
        let _ = conn.write_all(body);
    }
}

fn error_body(status: u16) -> Vec<u8> {
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "BLOB_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    format!(r#"{{"errors":[{{"code":"{code}","message":"hostile registry says {status}"}}]}}"#)
        .into_bytes()
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool, sent: &AtomicU64) {
    let Some((method, path, headers)) = read_request(&conn) else {
        return;
    };
    let (rule, content, basic_ok) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            at: Instant::now(),
        });
        let mut rule = s.rules.get(&path).cloned();
        if let Some(Misbehaviour::Status { times, .. }) = &rule {
            let n = s.answered.entry(path.clone()).or_default();
            if *n >= *times {
                rule = None;
            } else {
                *n += 1;
            }
        }
        let basic_ok = match &s.basic {
            Some(expected) => headers.get("authorization") == Some(expected),
            None => true,
        };
        (rule, s.content.get(&path).cloned(), basic_ok)
    };
    if path.starts_with("/v2") && !basic_ok {
        let challenge = ("WWW-Authenticate", r#"Basic realm="hostile""#.to_owned());
        return answer(&mut conn, 401, &[challenge], &error_body(401));
    }
    match rule {
        Some(Misbehaviour::Stall) => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Misbehaviour::Status {
            status,
            retry_after,
            ..
        }) => {
            let mut extra = vec![("Content-Type", "application/json".to_owned())];
            if let Some(after) = retry_after {
                extra.push(("Retry-After", after.to_owned()));
            }
            answer(&mut conn, status, &extra, &error_body(status));
        }
        Some(Misbehaviour::Redirect { base }) => {
            answer(
                &mut conn,
                307,
                &[("Location", format!("{base}{path}"))],
                b"",
            );
        }
        Some(Misbehaviour::Endless { bytes, announce }) => {
            let mut extra = vec![("Content-Type", "application/json".to_owned())];
            if announce {
                extra.push(("Content-Length", bytes.to_string()));
            }
            if head(&mut conn, 200, &extra).is_err() {
                return;
            }
            let junk = vec![b' '; 64 * 1024];
            let mut left = bytes;
            while left > 0 && !stop.load(Ordering::SeqCst) {
                let n = left.min(junk.len() as u64) as usize;
                if conn.write_all(&junk[..n]).is_err() {
                    break;
                }
                sent.fetch_add(n as u64, Ordering::SeqCst);
                left -= n as u64;
            }
        }
        Some(Misbehaviour::Trickle { chunk, pause }) => {
            let Some((ct, body)) = content else {
                return answer(&mut conn, 404, &[], &error_body(404));
            };
            let extra = [
                ("Content-Type", ct),
                ("Content-Length", body.len().to_string()),
            ];
            if head(&mut conn, 200, &extra).is_err() {
                return;
            }
            for piece in body.chunks(chunk.max(1)) {
                if stop.load(Ordering::SeqCst) || conn.write_all(piece).is_err() {
                    break;
                }
                std::thread::sleep(pause);
            }
        }
        None if path == "/v2/" || path == "/v2" => answer(&mut conn, 200, &[], b"{}"),
        None => match content {
            Some((ct, body)) => {
                let digest = super::oci::sha256_digest(&body);
                let extra = [("Content-Type", ct), ("Docker-Content-Digest", digest)];
                if method == "HEAD" {
                    let mut extra = extra.to_vec();
                    extra.push(("Content-Length", body.len().to_string()));
                    let _ = head(&mut conn, 200, &extra);
                } else {
                    answer(&mut conn, 200, &extra, &body);
                }
            }
            None => answer(&mut conn, 404, &[], &error_body(404)),
        },
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
    // Let the client read to the end before the socket goes.
    let mut rest = [0u8; 512];
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = conn.read(&mut rest);
}
