//! The build queue: at most `max_concurrent_builds` builds run at once, each holding a lease on
//! a loop device (`max_loop_devices`, loop_budget.rs); the rest wait here in the order their
//! caches were created, their phase `Queued`. At most `max_queued_builds` wait: a create
//! beyond that is refused before anything is recorded.
//!
//! A build that cannot get a loop device waits rather than fails: a build is background work
//! nobody is blocked on (a disk create never waits for one, it goes without the cache), and a
//! failure would leave the operator to delete and create the cache again once devices are
//! free, which is exactly what waiting does by itself.
//!
//! Each running build holds a `Slot`; dropping it (the build's task ending, however it ends)
//! frees the slot and its lease and starts the next waiting build.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use super::BuildSpec;
use crate::daemon::events::{self, NORMAL};
use crate::daemon::loop_budget::{AtCeiling, LoopLease};
use crate::daemon::owner::Owner;
use crate::daemon::{clock, record, Daemon, DaemonError};
use crate::objects::Phase;

/// How soon a build waiting for a loop device looks again (a disk delete or a build's end
/// looks at once; this catches devices freed some other way, such as a cache's mount for
/// containerd going).
const LOOP_RETRY: Duration = Duration::from_secs(2);

/// The `Retry-After` of a create refused for a full queue: builds take seconds to minutes,
/// so half a minute usually finds room without a client hammering the socket.
pub(crate) const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 30;

#[derive(Debug, Default)]
pub(crate) struct BuildQueue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    waiting: VecDeque<BuildSpec>,
    /// A look in `LOOP_RETRY` is scheduled for builds waiting on a loop device.
    retry_armed: bool,
}

/// What a create learns from the queue before it records its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The build starts at once.
    Start,
    /// The build waits: `position` (1 = next) and why, for the `Queued` event.
    Queue { position: usize, why: String },
}

impl Admission {
    /// The phase the cache is recorded with.
    pub fn phase(&self) -> Phase {
        match self {
            Admission::Start => Phase::Pending,
            Admission::Queue { .. } => Phase::Queued,
        }
    }

    /// The event (reason, message) that says why it waits, when it does.
    pub fn event(&self) -> Option<(&'static str, String)> {
        match self {
            Admission::Start => None,
            Admission::Queue { position, why } => Some((
                "Queued",
                format!("Waiting to be built, number {position} in the build queue: {why}"),
            )),
        }
    }
}

/// A running build's place; given back when dropped.
pub(crate) struct Slot {
    d: Daemon,
    lease: Option<LoopLease>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut st = self.d.inner.queue.lock();
            st.running = st.running.saturating_sub(1);
        }
        self.lease.take();
        pump(&self.d);
    }
}

impl BuildQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `name` out of the queue (its cache is being deleted); whether it was waiting.
    pub fn remove(&self, name: &str) -> bool {
        let mut st = self.lock();
        let before = st.waiting.len();
        st.waiting.retain(|s| s.name != name);
        st.waiting.len() != before
    }

    /// Builds running, and waiting.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.running, st.waiting.len())
    }

    /// Every waiting build, emptied out (the daemon is stopping).
    fn drain(&self) -> Vec<BuildSpec> {
        self.lock().waiting.drain(..).collect()
    }
}

/// Why a build cannot start now.
enum Blocked {
    Builds {
        max: usize,
    },
    Loops(AtCeiling),
    Unreadable(String),
    /// Others wait first; why the first of them waits, when it still does.
    Behind(usize, Option<Box<Blocked>>),
}

impl Blocked {
    /// Why the first build in line waits.
    fn front(&self) -> String {
        match self {
            Blocked::Behind(_, Some(why)) => format!("the first of them as {why}"),
            other => other.to_string(),
        }
    }

    /// Freed by a device going, not by a build ending: worth looking again on a timer.
    fn waits_for_loops(&self) -> bool {
        match self {
            Blocked::Loops(_) | Blocked::Unreadable(_) => true,
            Blocked::Behind(_, Some(why)) => why.waits_for_loops(),
            Blocked::Builds { .. } | Blocked::Behind(_, None) => false,
        }
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocked::Builds { max } => write!(f, "max_concurrent_builds = {max} builds are running"),
            Blocked::Loops(AtCeiling { held, max }) => write!(
                f,
                "the daemon holds {held} loop devices, max_loop_devices = {max}: the build starts once disks or caches are deleted"
            ),
            Blocked::Unreadable(e) => write!(f, "the loop devices in use cannot be read ({e})"),
            Blocked::Behind(n, None) => write!(f, "{n} build(s) wait before it"),
            Blocked::Behind(n, Some(why)) => write!(f, "{n} build(s) wait before it, as {why}"),
        }
    }
}

/// A lease on a loop device when a build may start now.
fn can_start(d: &Daemon, st: &State) -> Result<LoopLease, Blocked> {
    let max = d.inner.config.max_concurrent_builds;
    if st.running >= max {
        return Err(Blocked::Builds { max });
    }
    match d.inner.loops.lease(d.inner.sys.as_ref()) {
        Ok(Ok(lease)) => Ok(lease),
        Ok(Err(at)) => Err(Blocked::Loops(at)),
        Err(e) => Err(Blocked::Unreadable(e.to_string())),
    }
}

/// Admits the build of `spec`: `record` writes its cache with the admission's phase, under
/// the queue's lock, so the queue's order is the records' order and a full queue records
/// nothing. The build starts now or waits its turn.
pub(crate) fn submit(
    d: &Daemon,
    spec: BuildSpec,
    record: impl FnOnce(&Admission) -> Result<(), DaemonError>,
) -> Result<Admission, DaemonError> {
    let mut st = d.inner.queue.lock();
    let start = match st.waiting.len() {
        0 => can_start(d, &st),
        // Waiting builds go first, whatever is free (a lease taken to learn why is given
        // back at once).
        n => Err(Blocked::Behind(n, can_start(d, &st).err().map(Box::new))),
    };
    let admission = match &start {
        Ok(_) => Admission::Start,
        Err(why) => {
            let max = d.inner.config.max_queued_builds;
            if st.waiting.len() >= max {
                d.metrics().error("build_queue_full");
                return Err(DaemonError::QueueFull {
                    message: format!(
                        "ImageCache {:?} was not created: the build queue is full, max_queued_builds = {max} caches wait already ({}); nothing was recorded: create it again later, or raise max_queued_builds or max_concurrent_builds in the daemon's config",
                        spec.name,
                        why.front()
                    ),
                    retry_after_secs: QUEUE_FULL_RETRY_AFTER_SECS,
                });
            }
            Admission::Queue {
                position: st.waiting.len() + 1,
                why: why.to_string(),
            }
        }
    };
    record(&admission)?;
    match start {
        Ok(lease) => {
            st.running += 1;
            let slot = Slot {
                d: d.clone(),
                lease: Some(lease),
            };
            super::spawn(d, spec, slot);
        }
        Err(why) => {
            info!(cache = %spec.name, %why, "build queued");
            st.waiting.push_back(spec);
            if why.waits_for_loops() {
                arm_retry(d, &mut st);
            }
        }
    }
    Ok(admission)
}

/// Starts waiting builds while slots and loop devices allow, oldest first.
pub(crate) fn pump(d: &Daemon) {
    let mut started = Vec::new();
    {
        let mut st = d.inner.queue.lock();
        while !d.inner.shutdown.is_cancelled() && !st.waiting.is_empty() {
            match can_start(d, &st) {
                Ok(lease) => {
                    let spec = st.waiting.pop_front().expect("not empty");
                    st.running += 1;
                    let slot = Slot {
                        d: d.clone(),
                        lease: Some(lease),
                    };
                    // Into the running builds under the queue's lock: a delete that does not
                    // find its cache in the queue finds its build running.
                    started.push(spec.name.clone());
                    super::spawn(d, spec, slot);
                }
                Err(why) => {
                    if why.waits_for_loops() {
                        arm_retry(d, &mut st);
                    }
                    break;
                }
            }
        }
    }
    for name in started {
        info!(cache = %name, "build leaves the queue");
    }
}

/// Looks at the queue again in `LOOP_RETRY`, once however many builds wait for a device.
fn arm_retry(d: &Daemon, st: &mut State) {
    if st.retry_armed || d.inner.shutdown.is_cancelled() {
        return;
    }
    st.retry_armed = true;
    let d2 = d.clone();
    d.inner.tasks.spawn(async move {
        tokio::select! {
            _ = d2.inner.shutdown.cancelled() => {}
            _ = tokio::time::sleep(LOOP_RETRY) => {
                d2.inner.queue.lock().retry_armed = false;
                pump(&d2);
            }
        }
    });
}

/// The daemon is stopping: builds still waiting will not run in this process; their caches
/// are Failed as interrupted builds are, with the same remedy.
pub(crate) fn fail_waiting(d: &Daemon) {
    for spec in d.inner.queue.drain() {
        warn!(cache = %spec.name, "the daemon is stopping: a queued build will not run");
        super::status::fail(d, &spec, &super::BuildError::InterruptedInQueue);
    }
}

/// A build that waited: its cache leaves `Queued` (Pending, until the build's first step)
/// with an event saying how long it waited.
pub(super) fn left_queue(d: &Daemon, name: &str) {
    // Read first (from memory): a build that never waited writes nothing here.
    let queued = d.inner.store.get_cache(name).ok().flatten();
    if queued.and_then(|c| c.status).map(|s| s.phase) != Some(Phase::Queued) {
        return;
    }
    let now = clock::now_string();
    let written = d.inner.store.update_cache(name, |c| {
        let Some(s) = c.status.as_mut() else { return };
        if s.phase != Phase::Queued {
            return;
        }
        let since = s
            .events
            .iter()
            .rev()
            .find(|e| e.reason == "Queued")
            .map(|e| e.first_timestamp.clone())
            .unwrap_or_default();
        s.phase = Phase::Pending;
        s.last_updated_time = now.clone();
        events::record(
            &mut s.events,
            NORMAL,
            "Dequeued",
            format!("Left the build queue (queued since {since}); building now"),
            &now,
        );
    });
    record::or_log(
        d,
        written,
        &Owner::Cache(name.to_owned()),
        "leaving the build queue",
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::daemon::{Action, Reply};
    use crate::objects::{ImageCache, ImageCacheSpec, ObjectMeta, ValidImageCache};
    use crate::sys::FakeSys;

    fn create(name: &str, registry: &str) -> Action {
        let image = format!("{registry}/held/app:v1");
        Action::CreateImageCache(Box::new(ValidImageCache {
            object: ImageCache {
                api_version: "imagecache.io/v1".into(),
                kind: "ImageCache".into(),
                metadata: ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                },
                spec: ImageCacheSpec {
                    images: vec![image.clone()],
                    ..Default::default()
                },
                status: None,
            },
            images: vec![image.parse().unwrap()],
            size_gib: 20,
        }))
    }

    fn phase(reply: Result<Reply, DaemonError>) -> Phase {
        match reply {
            Ok(Reply::ImageCache(c)) => c.status.unwrap().phase,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn builds_beyond_the_limit_queue_and_a_full_queue_records_nothing() {
        // A registry that accepts and never answers holds the first build in Pulling.
        let registry = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = registry.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root: dir.path().join("state"),
            insecure_registries: vec![addr.clone()],
            max_concurrent_builds: 1,
            max_queued_builds: 1,
            ..Config::default()
        };
        let d = Daemon::start(config, Arc::new(FakeSys::new())).unwrap();
        assert_eq!(
            phase(d.dispatch(create("first", &addr)).await),
            Phase::Pending
        );
        let second = d.dispatch(create("second", &addr)).await;
        let Ok(Reply::ImageCache(second)) = second else {
            panic!("{second:?}")
        };
        let status = second.status.unwrap();
        assert_eq!(status.phase, Phase::Queued);
        let queued = status.events.iter().find(|e| e.reason == "Queued").unwrap();
        assert!(
            queued.message.contains("number 1 in the build queue")
                && queued.message.contains("max_concurrent_builds = 1"),
            "{}",
            queued.message
        );
        match d.dispatch(create("third", &addr)).await {
            Err(DaemonError::QueueFull {
                message,
                retry_after_secs,
            }) => {
                assert!(message.contains("max_queued_builds = 1"), "{message}");
                assert_eq!(retry_after_secs, QUEUE_FULL_RETRY_AFTER_SECS);
            }
            other => panic!("{other:?}"),
        }
        assert!(d.store().get_cache("third").unwrap().is_none());
        assert_eq!(d.inner.queue.counts(), (1, 1));
        // A queued cache's delete takes it out of the queue, which then has room again.
        d.dispatch(Action::DeleteImageCache("second".into()))
            .await
            .unwrap();
        assert_eq!(d.inner.queue.counts(), (1, 0));
        assert_eq!(
            phase(d.dispatch(create("third", &addr)).await),
            Phase::Queued
        );
        d.shutdown().await;
        // Stopping leaves no cache Queued: it could never start in this process.
        let third = d.store().get_cache("third").unwrap().unwrap();
        let status = third.status.unwrap();
        assert_eq!(status.phase, Phase::Failed);
        assert!(
            status
                .message
                .unwrap()
                .contains("waited in the build queue"),
            "{:?}",
            status.events
        );
    }

    #[test]
    fn a_cache_queued_when_the_daemon_died_is_failed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root: dir.path().join("state"),
            ..Config::default()
        };
        {
            let d = Daemon::start(config.clone(), Arc::new(FakeSys::new())).unwrap();
            let Action::CreateImageCache(valid) = create("waiting", "127.0.0.1:9") else {
                unreachable!()
            };
            let mut object = valid.object;
            object.status = Some(crate::objects::ImageCacheStatus {
                phase: Phase::Queued,
                progress: "0%".into(),
                image_cache_id: "imc-0123456789abcdef".into(),
                snapshot_digest: None,
                start_time: None,
                last_updated_time: clock::now_string(),
                expire_date_time: None,
                data_size_bytes: None,
                data_size: None,
                message: None,
                source: None,
                shared_as: None,
                images: Vec::new(),
                events: Vec::new(),
            });
            // As a daemon killed while the cache waited left it: recorded, never started.
            d.store().insert_cache(&object).unwrap();
        }
        let d = Daemon::start(config, Arc::new(FakeSys::new())).unwrap();
        let status = d
            .store()
            .get_cache("waiting")
            .unwrap()
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.phase, Phase::Failed);
        assert!(
            status
                .message
                .as_deref()
                .unwrap()
                .contains("waited in the build queue"),
            "{status:?}"
        );
        assert!(status.events.iter().any(|e| e.reason == "BuildInterrupted"));
        assert_eq!(d.inner.queue.counts(), (0, 0));
    }
}
