//! The one retry policy: every operation retried after a failure that may pass states its
//! [`RetryPolicy`] as a named const beside it, and runs through [`RetryPolicy::run`] (async)
//! or [`RetryPolicy::run_blocking`] (the kernel-settling waits of `sys`, milliseconds long).
//!
//! | Rule | Why |
//! |------|-----|
//! | `immediate` retries first, then waits from `first`, doubling, at most `max` | a race lost once is usually won at once; a busy peer needs room, a failing server more |
//! | each wait is drawn from [half, all] of its nominal length | callers that failed together (builds of one image, racing attaches) do not retry in step |
//! | a server's own "come back in" hint replaces the wait, up to a tenth longer, capped at `max` | it knows best; the cap keeps a long Retry-After from stalling a build |
//! | at most `attempts` tries, the first included | a bound that holds however fast each failure comes |
//! | no wait is begun that would end past `deadline` after the first try began | a bound that holds however slow each failure comes; a wait that leaves no time for a try is useless |
//! | a permanent error returns at once | asking again cannot change a 404, a wrong digest or a cancelled build |
//! | each retry logs once, at the policy's level, with the number of the try that failed | one line per retry, however the caller nests |
//!
//! Retries are counted once: an operation is retried at one level only, the level that can
//! redo all of it (a layer is retried whole, so opening its blob is not retried beneath).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Level;

/// How an operation is retried. Each caller names its own as a const.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries taken without waiting, before the first wait.
    pub immediate: u32,
    /// Nominal wait before the first retry past the immediate ones; each next one doubles.
    pub first: Duration,
    /// Longest nominal wait, and the cap on a server's hint.
    pub max: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
    /// No wait begins that would end later than this after the first try began.
    pub deadline: Duration,
    /// Level of the line logged at each retry.
    pub log: Level,
}

/// What a failure says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It cannot get better by asking again.
    Permanent,
    /// It may pass; wait as the policy says.
    Retry,
    /// It may pass, and the other side said when (HTTP Retry-After).
    RetryAfter(Duration),
}

impl Verdict {
    /// [`Verdict::Retry`] when `passes` (the error is one that may pass), else permanent.
    pub fn retry_if(passes: bool) -> Verdict {
        if passes {
            Verdict::Retry
        } else {
            Verdict::Permanent
        }
    }
}

/// Why the retries stopped without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The error was [`Verdict::Permanent`].
    Permanent,
    /// Every one of `attempts` tries failed.
    Attempts,
    /// The next wait would have ended past `deadline`.
    Deadline,
    /// The caller's cancellation came during a wait.
    Cancelled,
}

/// The last error, and how the retries ended.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub stop: Stop,
    /// Tries made, the first included.
    pub tries: u32,
    /// Since the first try began.
    pub elapsed: Duration,
}

impl RetryPolicy {
    /// Runs `op` until it succeeds or the policy gives up; `verdict` classifies each error.
    /// `cancel`, if given, ends a wait early (as [`Stop::Cancelled`]); `op` itself is never
    /// dropped mid-way, so it can clean up after its own failures.
    pub async fn run<T, E, Fut>(
        &self,
        what: impl Display,
        cancel: Option<&CancellationToken>,
        mut op: impl FnMut() -> Fut,
        verdict: impl Fn(&E) -> Verdict,
    ) -> Result<T, GaveUp<E>>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match op().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let judged = verdict(&error);
            let (error, wait) = self.after_failure(&what, tries, started, error, judged)?;
            if wait.is_zero() {
                continue;
            }
            match cancel {
                Some(cancel) => tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => {
                        return Err(gave_up(error, Stop::Cancelled, tries, started.elapsed()));
                    }
                },
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    /// [`Self::run`] on this thread, sleeping it between tries: for the short waits on the
    /// kernel in `sys` (an EBUSY that passes in milliseconds), which run on blocking threads.
    pub fn run_blocking<T, E>(
        &self,
        what: impl Display,
        mut op: impl FnMut() -> Result<T, E>,
        verdict: impl Fn(&E) -> Verdict,
    ) -> Result<T, GaveUp<E>>
    where
        E: Display,
    {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match op() {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let judged = verdict(&error);
            let (_, wait) = self.after_failure(&what, tries, started, error, judged)?;
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }

    /// The most a run can wait in all when no server gives hints: every retry's nominal wait.
    /// Against `deadline`, it tells which bound ends the retries.
    pub fn longest_total_wait(&self) -> Duration {
        (1..self.attempts).map(|retry| self.nominal(retry)).sum()
    }

    /// After try number `tries` (the first began at `started`) failed with `error`: the
    /// error back and the wait before the next try, logged; or how the retries ended. What
    /// both runners do between tries but sleep.
    fn after_failure<E: Display>(
        &self,
        what: &dyn Display,
        tries: u32,
        started: Instant,
        error: E,
        verdict: Verdict,
    ) -> Result<(E, Duration), GaveUp<E>> {
        let elapsed = started.elapsed();
        match self.next_wait(tries, elapsed, verdict, random()) {
            Ok(wait) => {
                self.log_retry(what, tries, wait, &error);
                Ok((error, wait))
            }
            Err(stop) => Err(gave_up(error, stop, tries, elapsed)),
        }
    }

    /// After `tries` failed tries, `elapsed` since the first began: the wait before the next
    /// try, or why there is none. `random` draws the jitter.
    fn next_wait(
        &self,
        tries: u32,
        elapsed: Duration,
        verdict: Verdict,
        random: u64,
    ) -> Result<Duration, Stop> {
        let wait = match verdict {
            Verdict::Permanent => return Err(Stop::Permanent),
            _ if tries >= self.attempts => return Err(Stop::Attempts),
            Verdict::Retry => jittered(self.nominal(tries), random),
            Verdict::RetryAfter(hint) => stretched(hint, random).min(self.max),
        };
        if elapsed.saturating_add(wait) >= self.deadline {
            return Err(Stop::Deadline);
        }
        Ok(wait)
    }

    /// The wait before retry number `retry` (1-based), before jitter.
    fn nominal(&self, retry: u32) -> Duration {
        let Some(waited) = retry.checked_sub(self.immediate + 1) else {
            return Duration::ZERO;
        };
        self.first
            .checked_mul(1u32.checked_shl(waited).unwrap_or(u32::MAX))
            .map_or(self.max, |d| d.min(self.max))
    }

    fn log_retry(&self, what: &dyn Display, attempt: u32, wait: Duration, error: &dyn Display) {
        let attempts = self.attempts;
        // `tracing` fixes an event's level where it is written, hence one arm per level.
        macro_rules! retrying {
            ($event:ident) => {
                tracing::$event!(%what, attempt, attempts, ?wait, %error, "failed; retrying")
            };
        }
        match self.log {
            Level::ERROR => retrying!(error),
            Level::WARN => retrying!(warn),
            Level::INFO => retrying!(info),
            Level::DEBUG => retrying!(debug),
            _ => retrying!(trace),
        }
    }
}

fn gave_up<E>(error: E, stop: Stop, tries: u32, elapsed: Duration) -> GaveUp<E> {
    GaveUp {
        error,
        stop,
        tries,
        elapsed,
    }
}

/// `nominal` scaled into [half, all] of itself by `random`: never much shorter than the
/// policy says (a settle wait still gives the kernel its time), yet spread.
fn jittered(nominal: Duration, random: u64) -> Duration {
    let half = nominal / 2;
    half + fraction(nominal - half, random)
}

/// A server's hint plus up to a tenth of it: never earlier than it asked.
fn stretched(hint: Duration, random: u64) -> Duration {
    hint.saturating_add(fraction(hint / 10, random))
}

/// `span` times `random / 2^64`.
fn fraction(span: Duration, random: u64) -> Duration {
    let nanos = (span.as_nanos() * u128::from(random)) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn random() -> u64 {
    // Without the kernel's random source a retry still happens, just in step with others.
    getrandom::u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const POLICY: RetryPolicy = RetryPolicy {
        immediate: 2,
        first: Duration::from_millis(100),
        max: Duration::from_secs(1),
        attempts: 10,
        deadline: Duration::from_secs(60),
        log: Level::DEBUG,
    };

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Failure {
        Busy,
        Gone,
    }

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn verdict(e: &Failure) -> Verdict {
        match e {
            Failure::Busy => Verdict::Retry,
            Failure::Gone => Verdict::Permanent,
        }
    }

    #[test]
    fn waits_start_after_the_immediate_retries_double_and_cap() {
        let waits: Vec<u64> = (1..=9)
            .map(|n| POLICY.nominal(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [0, 0, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(POLICY.nominal(u32::MAX), POLICY.max);
        assert_eq!(
            POLICY.longest_total_wait(),
            Duration::from_millis(100 + 200 + 400 + 800 + 3 * 1000)
        );
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_nominal_wait() {
        let nominal = Duration::from_millis(400);
        assert_eq!(jittered(nominal, 0), Duration::from_millis(200));
        let top = jittered(nominal, u64::MAX);
        assert!(
            top <= nominal && top > Duration::from_micros(399_999),
            "{top:?}"
        );
        let drawn: Vec<Duration> = (0..1000).map(|_| jittered(nominal, random())).collect();
        for d in &drawn {
            assert!((Duration::from_millis(200)..=nominal).contains(d), "{d:?}");
        }
        // Spread, not one fixed value: callers that failed together part ways.
        let low = drawn
            .iter()
            .filter(|d| **d < Duration::from_millis(300))
            .count();
        assert!(
            (300..=700).contains(&low),
            "{low} of 1000 in the lower half"
        );
        // Through the policy as well, for every retry that waits.
        for tries in 3..9 {
            let nominal = POLICY.nominal(tries);
            let wait = POLICY
                .next_wait(tries, Duration::ZERO, Verdict::Retry, random())
                .unwrap();
            assert!(wait >= nominal / 2 && wait <= nominal, "{tries}: {wait:?}");
        }
    }

    #[test]
    fn a_servers_hint_is_waited_in_full_and_capped() {
        let wait = |hint, random| {
            POLICY
                .next_wait(3, Duration::ZERO, Verdict::RetryAfter(hint), random)
                .unwrap()
        };
        let hint = Duration::from_millis(500);
        assert_eq!(wait(hint, 0), hint);
        assert!(wait(hint, u64::MAX) <= Duration::from_millis(550));
        assert_eq!(wait(Duration::from_secs(3600), 0), POLICY.max);
    }

    #[test]
    fn the_deadline_stops_retries_with_attempts_left() {
        let policy = RetryPolicy {
            first: Duration::from_millis(10),
            max: Duration::from_millis(10),
            attempts: 1000,
            deadline: Duration::from_millis(100),
            ..POLICY
        };
        let started = Instant::now();
        let tries = Cell::new(0);
        let e = policy
            .run_blocking(
                "x",
                || Err::<(), _>(Failure::Busy),
                |e| {
                    tries.set(tries.get() + 1);
                    verdict(e)
                },
            )
            .unwrap_err();
        assert_eq!(e.stop, Stop::Deadline);
        assert_eq!(e.tries, tries.get());
        // Two immediate retries, then waits of 5 to 10 ms within 100 ms.
        assert!((10..=25).contains(&e.tries), "{} tries", e.tries);
        // The policy begins no wait that would end past the deadline, but a sleep begun
        // in time may end late on a busy machine (the whole lib's tests at once on 2 cores
        // overshot it now and then): the bound is the deadline plus that slack, and the
        // rule itself is checked exactly, without sleeping, below.
        assert!(started.elapsed() < policy.deadline + Duration::from_millis(50));
        assert!(e.elapsed < policy.deadline + Duration::from_millis(50));
        // A wait that would end past the deadline is not begun, even the first.
        assert_eq!(
            policy.next_wait(3, Duration::from_millis(95), Verdict::Retry, 0),
            Err(Stop::Deadline)
        );
        assert_eq!(
            POLICY.next_wait(1, Duration::from_secs(60), Verdict::Retry, 0),
            Err(Stop::Deadline)
        );
    }

    #[test]
    fn attempts_bound_every_try_including_the_first() {
        let policy = RetryPolicy {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
            attempts: 5,
            ..POLICY
        };
        let calls = Cell::new(0);
        let e = policy
            .run_blocking(
                "x",
                || {
                    calls.set(calls.get() + 1);
                    Err::<(), _>(Failure::Busy)
                },
                verdict,
            )
            .unwrap_err();
        assert_eq!((e.stop, e.tries, calls.get()), (Stop::Attempts, 5, 5));
        assert_eq!(e.error, Failure::Busy);

        // One try only: no retry at all.
        let once = RetryPolicy {
            attempts: 1,
            ..policy
        };
        let e = once
            .run_blocking("x", || Err::<(), _>(Failure::Busy), verdict)
            .unwrap_err();
        assert_eq!((e.stop, e.tries), (Stop::Attempts, 1));
    }

    #[test]
    fn a_permanent_error_returns_at_once() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let e = POLICY
            .run_blocking(
                "x",
                || {
                    calls.set(calls.get() + 1);
                    // Past the immediate retries, so a retry would have to wait.
                    if calls.get() < 3 {
                        Err::<(), _>(Failure::Busy)
                    } else {
                        Err(Failure::Gone)
                    }
                },
                verdict,
            )
            .unwrap_err();
        assert_eq!(
            (e.stop, e.tries, e.error),
            (Stop::Permanent, 3, Failure::Gone)
        );
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn success_after_failures_is_returned() {
        let calls = Cell::new(0);
        let value = POLICY.run_blocking(
            "x",
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(Failure::Busy)
                } else {
                    Ok(7)
                }
            },
            verdict,
        );
        assert_eq!(value.unwrap(), 7);
    }

    #[tokio::test]
    async fn async_runs_follow_the_same_policy() {
        let policy = RetryPolicy {
            immediate: 0,
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
            attempts: 4,
            ..POLICY
        };
        for (failure, stop, tries) in [
            (Failure::Busy, Stop::Attempts, 4),
            (Failure::Gone, Stop::Permanent, 1),
        ] {
            let calls = Cell::new(0);
            let e = policy
                .run(
                    "x",
                    None,
                    || {
                        calls.set(calls.get() + 1);
                        async move { Err::<(), _>(failure) }
                    },
                    verdict,
                )
                .await
                .unwrap_err();
            assert_eq!((e.stop, e.tries, calls.get()), (stop, tries, tries));
        }
    }

    #[tokio::test]
    async fn cancelling_ends_a_wait_at_once() {
        let policy = RetryPolicy {
            first: Duration::from_secs(30),
            max: Duration::from_secs(30),
            immediate: 0,
            ..POLICY
        };
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                cancel.cancel();
            })
        };
        let started = Instant::now();
        let e = policy
            .run(
                "x",
                Some(&cancel),
                || async { Err::<(), _>(Failure::Busy) },
                verdict,
            )
            .await
            .unwrap_err();
        canceller.await.unwrap();
        assert_eq!((e.stop, e.tries), (Stop::Cancelled, 1));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
