//! The heavy work of a build (unpacking layers, mkfs, checking and hashing the frozen image)
//! runs on threads of its own at a lower CPU priority, so it never keeps the API's runtime
//! waiting for a core. On a 2-core node four builds unpacking at the default priority pushed
//! `GET /healthz` and the reads to a p99 of 72 ms; at nice 10 they stay under 25 ms and the
//! builds take the cores that are left (tests/api_load.rs).
//!
//! Fresh threads, not the runtime's blocking pool: a thread's nice value can be raised back
//! only within RLIMIT_NICE or with CAP_SYS_NICE, so a pooled thread could carry the low
//! priority into the next job (a disk create a pod waits for). Only the API's threads are
//! raised (`raise_api_priority`), once, when they start.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tracing::debug;

/// The nice value of build threads: the API's workers (`API_NICE`) and disk operations run first.
pub const NICE: i32 = 10;

/// The nice value of a disk create's or delete's blocking part (clone, attach, mount, unmount,
/// detach). Above the builds, so a pod's disk is not kept waiting by a build, and below the
/// API's workers: 32 creates and deletes in flight keep both cores of a small node busy in
/// those syscalls. Measured with tests/api_load.rs on 2 cores (docs/TESTING.md, "Load"):
/// at 5 (work runtime 3) the reads' p99 was 7-21 ms but the creates' p50 under 4 builds
/// ~100 ms, since builds (10) were then only 3x lower; at 3 (work 2) reads 7-13 ms and
/// creates 45 ms.
pub const DISK_NICE: i32 = 3;

/// The nice value of the API runtime's threads, the one thing the daemon raises: they only
/// accept requests and answer reads, and 32 disk creates in flight keep ~5 disk threads and
/// the work runtime runnable, whose weights together outnumber a nice-0 thread's several
/// times over. Under 4 builds and those creates the reads' p99 was 10-14 ms at 0 and 6-8 ms
/// at -5 (tests/api_load.rs, docs/TESTING.md "Load").
pub const API_NICE: i32 = -5;

/// A background job's result; `Err` when its thread could not start or panicked.
pub struct Job<T> {
    result: Result<oneshot::Receiver<T>, String>,
}

impl<T> Future for Job<T> {
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().result {
            Err(e) => Poll::Ready(Err(e.clone())),
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map_err(|_| "the background thread panicked".to_owned()),
        }
    }
}

/// Sets the calling thread's nice value to `nice` (Linux keeps one per thread: this lowers
/// only the caller). Raising it back would need CAP_SYS_NICE, so only threads that keep the
/// lower priority for good are given it.
pub fn lower_priority(nice: i32) {
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        debug!(error = %e, nice, "could not lower a thread's priority");
    }
}

/// Sets the calling thread (an API runtime thread) to `API_NICE`. That needs CAP_SYS_NICE or
/// an RLIMIT_NICE that allows it (`LimitNICE=-5` in the unit); without either the thread
/// stays where it is and the first refusal is logged.
pub fn raise_api_priority() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = rustix::process::setpriority_process(None, API_NICE) {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, nice = API_NICE, "cannot raise the API threads' CPU priority (allow it with LimitNICE=-5 in the unit, or CAP_SYS_NICE): reads may wait behind disk work on a busy node");
        });
    }
}

/// Runs `f` on a new thread named `name` at nice `NICE`; await the job for its result.
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Job<T> {
    spawn_at(name, NICE, f)
}

/// Runs `f` on a new thread named `name` at nice `nice`; await the job for its result.
pub fn spawn_at<T: Send + 'static>(
    name: &str,
    nice: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Job<T> {
    let (tx, rx) = oneshot::channel();
    // Work that reaches for the runtime (a channel's blocking end does not, tracing does not,
    // a Handle does) still finds it.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _entered = runtime.as_ref().map(|h| h.enter());
            lower_priority(nice);
            let _ = tx.send(f());
        });
    Job {
        result: spawned
            .map(|_| rx)
            .map_err(|e| format!("cannot start a thread for {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_at_a_lower_priority_and_returns_the_result() {
        let job = spawn("test-job", || {
            rustix::process::getpriority_process(None).expect("read own nice value")
        });
        assert_eq!(job.await, Ok(NICE));
    }

    #[tokio::test]
    async fn a_panic_is_an_error() {
        let job = spawn("test-panic", || -> u32 { panic!("boom") });
        assert_eq!(job.await, Err("the background thread panicked".to_owned()));
    }
}
