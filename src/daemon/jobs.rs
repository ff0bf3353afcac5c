//! The builds and pulls running now, by the object whose loop device and mount they hold, so
//! a delete can cancel one and wait for it to let go.
//!
//! Each running job is held by a [`JobGuard`] that lives inside the job's task: however the
//! task ends (done, failed, cancelled, or panicked and dropped by the runtime) the guard's
//! drop takes the entry out and wakes whoever waits on it. A map a job had to leave by hand
//! kept the entry of a job that panicked, and every later delete of that object waited out
//! its deadline and answered 409 until the daemon restarted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::owner::Owner;

#[derive(Default)]
pub(super) struct RunningJobs {
    map: Arc<Mutex<HashMap<Owner, Running>>>,
}

/// What a waiter needs of a running job: its cancel token, and a receiver whose sender the
/// job's guard holds (closed when the guard drops).
#[derive(Clone)]
struct Running {
    cancel: CancellationToken,
    ended: watch::Receiver<()>,
    /// Tells this job's entry from a later job's of the same owner.
    serial: u64,
}

/// Holds a job's place in [`RunningJobs`]; dropping it ends the job there.
pub(super) struct JobGuard {
    map: Arc<Mutex<HashMap<Owner, Running>>>,
    owner: Owner,
    serial: u64,
    /// Dropped with the guard, which is what waiters wait for.
    _ended: watch::Sender<()>,
}

impl RunningJobs {
    /// Registers the job of `owner`, cancelled by `cancel`. Keep the guard in the job's task.
    pub(super) fn start(&self, owner: Owner, cancel: CancellationToken) -> JobGuard {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, ended) = watch::channel(());
        let running = Running {
            cancel,
            ended,
            serial,
        };
        lock(&self.map).insert(owner.clone(), running);
        JobGuard {
            map: self.map.clone(),
            owner,
            serial,
            _ended: sender,
        }
    }

    /// Cancels the job of `owner`, if one runs, and waits up to `wait` for it to end.
    /// Returns whether nothing of it is running any more.
    pub(super) async fn cancel_and_wait(&self, owner: &Owner, wait: Duration) -> bool {
        let Some(mut running) = lock(&self.map).get(owner).cloned() else {
            return true;
        };
        running.cancel.cancel();
        // `changed` fails exactly when the guard's sender is gone: the job has ended.
        let ended = async { while running.ended.changed().await.is_ok() {} };
        tokio::time::timeout(wait, ended).await.is_ok()
    }

    /// Whether a job of `owner` is running.
    #[cfg(test)]
    fn is_running(&self, owner: &Owner) -> bool {
        lock(&self.map).contains_key(owner)
    }
}

impl std::fmt::Debug for RunningJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owners: Vec<Owner> = lock(&self.map).keys().cloned().collect();
        f.debug_struct("RunningJobs")
            .field("owners", &owners)
            .finish()
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        // A later job of the same owner (started after a cancel timed out) keeps its entry.
        if map
            .get(&self.owner)
            .is_some_and(|r| r.serial == self.serial)
        {
            map.remove(&self.owner);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn disk(id: &str) -> Owner {
        Owner::Disk(id.to_owned())
    }

    #[tokio::test]
    async fn work_that_never_stops_is_given_up_on_at_the_deadline() {
        let jobs = RunningJobs::default();
        let _guard = jobs.start(disk("d-1"), CancellationToken::new());
        let t = Instant::now();
        assert!(
            !jobs
                .cancel_and_wait(&disk("d-1"), Duration::from_millis(200))
                .await
        );
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert!(jobs.is_running(&disk("d-1")));
    }

    #[tokio::test]
    async fn work_that_stops_when_cancelled_ends_the_wait_at_once() {
        let jobs = RunningJobs::default();
        let cancel = CancellationToken::new();
        let guard = jobs.start(disk("d-2"), cancel.clone());
        let job = tokio::spawn(async move {
            let _guard = guard;
            cancel.cancelled().await;
        });
        let t = Instant::now();
        assert!(
            jobs.cancel_and_wait(&disk("d-2"), Duration::from_secs(60))
                .await
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(!jobs.is_running(&disk("d-2")));
        job.await.unwrap();
    }

    /// A job whose task panics leaves no entry behind: a later delete does not wait.
    #[tokio::test]
    async fn a_job_that_panics_leaves_nothing_to_wait_for() {
        let jobs = RunningJobs::default();
        let guard = jobs.start(Owner::Cache("c".into()), CancellationToken::new());
        let job = tokio::spawn(async move {
            let _guard = guard;
            panic!("a bug in the job");
        });
        assert!(job.await.unwrap_err().is_panic());
        assert!(!jobs.is_running(&Owner::Cache("c".into())));
        let t = Instant::now();
        assert!(
            jobs.cancel_and_wait(&Owner::Cache("c".into()), Duration::from_secs(60))
                .await
        );
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_ended_jobs_guard_leaves_a_later_job_of_the_owner_alone() {
        let jobs = RunningJobs::default();
        let first = jobs.start(disk("d-4"), CancellationToken::new());
        let _second = jobs.start(disk("d-4"), CancellationToken::new());
        drop(first);
        assert!(jobs.is_running(&disk("d-4")));
    }

    #[tokio::test]
    async fn nothing_running_needs_no_wait() {
        let jobs = RunningJobs::default();
        let _other = jobs.start(disk("other"), CancellationToken::new());
        assert!(jobs.cancel_and_wait(&disk("d-3"), Duration::ZERO).await);
    }
}
