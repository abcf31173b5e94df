//! Transient failures (broker, disk) pause a partition and retry with exponential
//! backoff and jitter: the partition waits, it never skips. Waiting ends early only
//! when the worker is told to stop, which [`Stopped`] carries up the loop. Each error a
//! worker retries says whether it is transient ([`Failure`]); one that is not is
//! retried too, loudly: the worker's `retry` (`write.rs`) lists the partition as stalled.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::io::{BoxError, NeedsOperator, SendError};
use crate::metrics::Metrics;
use crate::store::{FlushError, StoreError};

/// A failure that says whether the same call may pass when tried again.
pub trait Failure: std::fmt::Display + Sync {
    /// `false`: retrying alone cannot fix it (a value that does not read back, a
    /// missing grant, a write the broker refuses for good).
    fn is_transient(&self) -> bool;

    /// The failure and its sources, for a log line or the stall's reason.
    fn chain(&self) -> String {
        self.to_string()
    }
}

pub use hookstream_schemas::error_chain;

impl Failure for SendError {
    fn is_transient(&self) -> bool {
        SendError::is_transient(self)
    }
    fn chain(&self) -> String {
        error_chain(self)
    }
}

impl Failure for StoreError {
    /// The disk may come back; a value that does not read back, or sled's own
    /// corruption, stays.
    fn is_transient(&self) -> bool {
        matches!(self, StoreError::Sled(sled::Error::Io(_)))
    }
    fn chain(&self) -> String {
        error_chain(self)
    }
}

impl Failure for BoxError {
    fn is_transient(&self) -> bool {
        !self.is::<NeedsOperator>()
    }
    fn chain(&self) -> String {
        error_chain(self.as_ref())
    }
}

impl Failure for FlushError {
    fn is_transient(&self) -> bool {
        FlushError::is_transient(self)
    }
    fn chain(&self) -> String {
        error_chain(self)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_whether_trying_again_can_help() {
        let corrupt = StoreError::Corrupt {
            key: "p1".into(),
            source: serde_json::from_str::<i64>("x").unwrap_err(),
        };
        assert!(!corrupt.is_transient(), "a value that does not read back stays");
        let disk = StoreError::Sled(sled::Error::Io(std::io::Error::other("disk full")));
        assert!(disk.is_transient());
        let denied: BoxError = Box::new(NeedsOperator("group authorization failed".into()));
        assert!(!Failure::is_transient(&denied));
        assert_eq!(denied.chain(), "needs an operator: group authorization failed");
        let timeout: BoxError = "request timed out".into();
        assert!(Failure::is_transient(&timeout));
    }
}
