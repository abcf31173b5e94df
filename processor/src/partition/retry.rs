//! Transient failures (broker, disk) pause a partition and retry with exponential
//! backoff and jitter: the partition waits, it never skips. Waiting ends early only
//! when the worker is told to stop, which [`Stopped`] carries up the loop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Milliseconds since the Unix epoch on the wall clock (for timers and metrics only,
/// never for a decision).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The worker was told to stop (revocation past its deadline, shutdown) while it
/// waited: it returns without committing what it was doing, which loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Exponential backoff with jitter.
#[allow(missing_debug_implementations)] // a borrowed metrics handle and two durations
pub struct Backoff<'a> {
    metrics: &'a Metrics,
    max: Duration,
    what: &'static str,
    next: Duration,
}

impl<'a> Backoff<'a> {
    /// Start at 50 ms, double up to `max`.
    pub fn new(metrics: &'a Metrics, max: Duration, what: &'static str) -> Self {
        Self {
            metrics,
            max: max.max(Duration::from_millis(1)),
            what,
            next: Duration::from_millis(50),
        }
    }

    /// Log and count `err`, then sleep, unless `stop` fires meanwhile.
    pub async fn pause(
        &mut self,
        err: &(dyn std::fmt::Display + Sync),
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        self.metrics.retries.with_label_values(&[self.what]).inc();
        // Jitter of up to half the delay, from the clock's sub-second noise.
        let noise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = self.next.mul_f64(f64::from(noise % 1000) / 2000.0);
        tracing::warn!(what = self.what, error = %err, backoff_ms = self.next.as_millis() as u64,
            "transient failure; partition paused");
        let delay = self.next + jitter;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = stop.cancelled() => Err(Stopped),
        }
    }
}

/// Retry `f` until it succeeds or `stop` fires.
pub async fn retry<T, E, F, Fut>(
    what: &'static str,
    metrics: &Metrics,
    max: Duration,
    stop: &CancellationToken,
    mut f: F,
) -> Result<T, Stopped>
where
    E: std::fmt::Display + Sync,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(metrics, max, what);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => backoff.pause(&e, stop).await?,
        }
    }
}
