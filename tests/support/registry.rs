//! A real OCI distribution registry (Debian's `docker-registry`, distribution 2.8) on
//! 127.0.0.1, one per test, with its storage in a temp dir so tests can tamper with blobs.
//!
//! The registry runs under a tiny `sh` supervisor whose stdin is a pipe from this process:
//! when the `TestRegistry` is dropped, or the test binary dies without unwinding (a killed
//! test run), the pipe closes and the supervisor kills the registry. `PR_SET_PDEATHSIG` would
//! not do: it fires when the spawning *thread* exits, and test threads end before a registry
//! shared through a `OnceLock` is done with.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh registry may take to answer `/v2/`; it is usually ready in ~50 ms, but
/// parallel compiles on 2 cores can starve it.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with a new port when another process grabs ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

const SUPERVISOR: &str = r#"
docker-registry serve "$1" >>"$2" 2>&1 &
pid=$!
# EOF on stdin means the owner dropped us or died: either way the registry must go.
while read -r _; do :; done
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0
"#;

pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    credentials: Option<(String, String)>,
    supervisor: Child,
    // Kept open only so the supervisor's `read` blocks; closing it stops the registry.
    stdin: Option<ChildStdin>,
}

impl TestRegistry {
    /// An anonymous registry: anyone can push and pull.
    pub fn start() -> TestRegistry {
        Self::launch(Vec::new(), None)
    }

    /// A pull-through cache of `upstream` (distribution's `proxy.remoteurl`): it serves what
    /// it was asked for from `upstream` once, then from its own storage. A stand-in for the
    /// mirrors clusters put in front of registries (Spegel, Dragonfly).
    pub fn start_mirror_of(upstream: &TestRegistry) -> TestRegistry {
        Self::launch(Vec::new(), Some(upstream.url()))
    }

    /// A registry that refuses anonymous access and accepts `user`/`pass` (HTTP basic auth,
    /// bcrypt htpasswd file, the only hash distribution 2.x accepts).
    pub fn start_with_htpasswd(user: &str, pass: &str) -> TestRegistry {
        Self::start_with_users(&[(user, pass)])
    }

    /// Like [`TestRegistry::start_with_htpasswd`], accepting each of `users`;
    /// [`TestRegistry::credentials`] gives the first.
    pub fn start_with_users(users: &[(&str, &str)]) -> TestRegistry {
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        Self::launch(users, None)
    }

    /// "127.0.0.1:PORT", the form image references and `insecure_registries` use.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The filesystem driver's root directory.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding a blob's bytes ("sha256:<hex>" or bare hex). Overwrite, flip or
    /// truncate it to make the registry serve corrupt content: the blob descriptor cache is
    /// off, so size and bytes are read from this file on every request.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a sha256 digest: {digest}"
        );
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips every bit of the byte at `offset` of a stored blob.
    pub fn corrupt_blob(&self, digest: &str, offset: u64) {
        let path = self.blob_data_path(digest);
        let mut data = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let i = usize::try_from(offset).unwrap();
        assert!(
            i < data.len(),
            "offset {offset} past blob of {}",
            data.len()
        );
        data[i] ^= 0xff;
        fs::write(&path, data).unwrap();
    }

    /// Cuts a stored blob down to `len` bytes.
    pub fn truncate_blob(&self, digest: &str, len: u64) {
        let path = self.blob_data_path(digest);
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Prints the registry's log to stderr (captured by the test harness, shown on failure).
    pub fn print_log(&self) {
        eprintln!(
            "---- registry log ({}) ----\n{}\n---- end registry log ----",
            self.log_path().display(),
            self.log()
        );
    }

    /// A point in the access log: `blobs_fetched_since` counts only requests after it.
    pub fn log_mark(&self) -> LogMark {
        LogMark(fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0))
    }

    /// Digests of the blobs GET-ed (any repository, answered 2xx/3xx) since `mark`, in
    /// request order, repeats kept: what a client really downloaded.
    pub fn blobs_fetched_since(&self, mark: LogMark) -> Vec<String> {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(mark.0).unwrap().min(log.len());
        String::from_utf8_lossy(&log[start..])
            .lines()
            .filter_map(blob_get)
            .collect()
    }

    /// What the registry sent in answer to successful GETs since `mark`, from the access
    /// log's response sizes: what a client really downloaded, counted by the server.
    pub fn bytes_sent_since(&self, mark: LogMark) -> Sent {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(mark.0).unwrap().min(log.len());
        let mut sent = Sent::default();
        for line in String::from_utf8_lossy(&log[start..]).lines() {
            let Some((path, bytes)) = get_sent(line) else {
                continue;
            };
            sent.bytes += bytes;
            if path.contains("/blobs/sha256:") {
                sent.blob_bytes += bytes;
                sent.blobs += 1;
            }
        }
        sent
    }

    /// Like [`Self::blobs_fetched_since`], each digest with the client's User-Agent: who
    /// downloaded it (`containerd/…`, `imagecache/…`).
    pub fn blobs_fetched_by_since(&self, mark: LogMark) -> Vec<(String, String)> {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(mark.0).unwrap().min(log.len());
        String::from_utf8_lossy(&log[start..])
            .lines()
            .filter_map(|line| {
                let digest = blob_get(line)?;
                let agent = line.trim_end().strip_suffix('"')?.rsplit_once('"')?.1;
                Some((digest, agent.to_owned()))
            })
            .collect()
    }

    /// Every request since `mark` as (method, path with its query, status), in order.
    pub fn requests_since(&self, mark: LogMark) -> Vec<(String, String, u16)> {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(mark.0).unwrap().min(log.len());
        String::from_utf8_lossy(&log[start..])
            .lines()
            .filter_map(request)
            .collect()
    }

    /// The access log's lines for manifests (any repository, any answer) since `mark`.
    pub fn manifest_requests_since(&self, mark: LogMark) -> Vec<String> {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(mark.0).unwrap().min(log.len());
        String::from_utf8_lossy(&log[start..])
            .lines()
            .filter(|l| l.contains(" /v2/") && l.contains("/manifests/"))
            .map(str::to_owned)
            .collect()
    }

    fn launch(users: Vec<(String, String)>, proxy_of: Option<String>) -> TestRegistry {
        let credentials = users.first().cloned();
        let dir = tempfile::Builder::new()
            .prefix("imagecache-registry-")
            .tempdir()
            .expect("temp dir for registry");
        fs::create_dir_all(dir.path().join("storage")).unwrap();
        let htpasswd = (!users.is_empty()).then(|| {
            let path = dir.path().join("htpasswd");
            write_htpasswd(&path, &users);
            path
        });

        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                config_yaml(dir.path(), port, htpasswd.as_deref(), proxy_of.as_deref()),
            )
            .unwrap();
            let log = dir.path().join("registry.log");
            // A fresh log per attempt, so an old "address already in use" does not linger.
            fs::write(&log, b"").unwrap();
            let mut supervisor = Command::new("sh")
                .arg("-c")
                .arg(SUPERVISOR)
                .arg("imagecache-test-registry")
                .arg(&config)
                .arg(&log)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn sh for docker-registry (is docker-registry installed?)");
            let stdin = supervisor.stdin.take();
            match wait_ready(port, &log) {
                Ready::Yes => {
                    return TestRegistry {
                        dir,
                        port,
                        credentials,
                        supervisor,
                        stdin,
                    };
                }
                Ready::PortTaken => {
                    last_log = fs::read_to_string(&log).unwrap_or_default();
                    drop(stdin);
                    let _ = supervisor.wait();
                }
                Ready::Failed(why) => {
                    let log = fs::read_to_string(&log).unwrap_or_default();
                    drop(stdin);
                    let _ = supervisor.kill();
                    let _ = supervisor.wait();
                    panic!("docker-registry did not start: {why}\n---- log ----\n{log}");
                }
            }
        }
        panic!("docker-registry could not get a free port in {PORT_ATTEMPTS} attempts\n{last_log}");
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // Closing the pipe makes the supervisor kill and reap the registry, then exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.supervisor.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    // The registry ignored SIGTERM: the supervisor is stuck in `wait`.
                    let _ = self.supervisor.kill();
                    let _ = self.supervisor.wait();
                    return;
                }
            }
        }
    }
}

/// Writes a bcrypt htpasswd file of `users` with `htpasswd -Bbn` (apache2-utils).
fn write_htpasswd(path: &Path, users: &[(String, String)]) {
    let mut lines = Vec::new();
    for (user, pass) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, pass])
            .output()
            .expect("run htpasswd (apache2-utils)");
        assert!(
            out.status.success(),
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each answer ends in an empty line; the file wants one user per line.
        lines.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn config_yaml(dir: &Path, port: u16, htpasswd: Option<&Path>, proxy_of: Option<&str>) -> String {
    // No `storage.cache` section: without a blob descriptor cache every request stats the
    // data file, so tampered or truncated blobs are served as they are on disk.
    // Health checks off: they would only add log noise and storage driver traffic.
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: imagecache-test-secret
health:
  storagedriver:
    enabled: false
",
        root = dir.join("storage").display()
    );
    if let Some(path) = htpasswd {
        yaml.push_str(&format!(
            "auth:
  htpasswd:
    realm: imagecache-test
    path: {}
",
            path.display()
        ));
    }
    if let Some(url) = proxy_of {
        yaml.push_str(&format!("proxy:\n  remoteurl: {url}\n"));
    }
    yaml
}

/// A port the kernel just considered free. Another process may take it before the registry
/// binds; `launch` notices ("address already in use") and retries.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

enum Ready {
    Yes,
    PortTaken,
    Failed(String),
}

fn wait_ready(port: u16, log: &Path) -> Ready {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains("address already in use") {
            return Ready::PortTaken;
        }
        if text.contains("level=fatal") || text.contains("panic:") {
            return Ready::Failed("registry exited".into());
        }
        // Only trust the answer once *our* registry says it listens: otherwise whoever
        // stole the port could be the one answering.
        if text.contains("listening on") {
            if let Some(status) = probe_v2(port) {
                if status == 200 || status == 401 {
                    return Ready::Yes;
                }
            }
        }
        if Instant::now() > deadline {
            return Ready::Failed(format!("/v2/ not ready after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status code of `GET /v2/`, over a raw socket so this file needs no HTTP client crate.
fn probe_v2(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    // "HTTP/1.1 200 OK"
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A byte offset into the registry's log, from `TestRegistry::log_mark`.
#[derive(Clone, Copy, Debug)]
pub struct LogMark(u64);

/// The blob digest of one access-log line (combined log format:
/// `... "GET /v2/<repo>/blobs/sha256:<hex> HTTP/1.1" 200 ...`) when it is a successful GET.
fn blob_get(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("\"GET /v2/")?;
    let (request, after) = rest.split_once('"')?;
    let path = request.split_whitespace().next()?;
    let (_, digest) = path.rsplit_once("/blobs/")?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    let status: u16 = after.split_whitespace().next()?.parse().ok()?;
    (200..400).contains(&status).then(|| digest.to_string())
}

/// The method, path and status of one access-log line
/// (`... "<METHOD> /v2/<path> HTTP/1.1" <status> ...`).
fn request(line: &str) -> Option<(String, String, u16)> {
    let (_, rest) = line.split_once(" \"")?;
    let (request, after) = rest.split_once('"')?;
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next()?, parts.next()?);
    if !path.starts_with("/v2/") {
        return None;
    }
    let status: u16 = after.split_whitespace().next()?.parse().ok()?;
    Some((method.to_owned(), path.to_owned(), status))
}

/// Bytes a registry sent, from [`TestRegistry::bytes_sent_since`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Every successful GET's body: blobs, manifests, tag lists.
    pub bytes: u64,
    /// Blob GETs' bodies alone.
    pub blob_bytes: u64,
    /// Blob GETs answered.
    pub blobs: usize,
}

/// The path and response size of one access-log line when it is a successful GET
/// (`... "GET /v2/<path> HTTP/1.1" 200 <bytes> "<referer>" "<agent>"`).
fn get_sent(line: &str) -> Option<(&str, u64)> {
    let (_, rest) = line.split_once("\"GET /v2/")?;
    let (request, after) = rest.split_once('"')?;
    let path = request.split_whitespace().next()?;
    let mut fields = after.split_whitespace();
    let status: u16 = fields.next()?.parse().ok()?;
    let bytes: u64 = fields.next()?.parse().ok()?;
    (200..400).contains(&status).then_some((path, bytes))
}
