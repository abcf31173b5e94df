//! The partition loop's ports: what a worker needs from outside, as traits.
//!
//! The Kafka module implements them on the broker; the unit tests implement them in
//! memory (`memory.rs`). The loop itself never sees rdkafka: it sends outputs, logs its
//! state changes, commits offsets and reads ranges of its partition (or of its
//! changelog) through these four traits only.

use std::future::Future;
use std::sync::Arc;

use hookstream_schemas::GapTimeout;

use super::Stage;
use crate::rules::model::{Output, RawRecord};
use crate::store::Entry;

/// Any error from outside, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A record handed to a worker.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Shared, not copied, with the outputs it causes (a record can be up to ~1 MB).
    pub record: Arc<RawRecord>,
    pub traceparent: Option<String>,
    /// Its share of its partition's queue budget, while it is buffered or decided
    /// ([`super::queue`]); none for records read from the log directly.
    pub held: super::queue::Held,
}

/// A port's failure that trying again cannot fix until an operator acts (a missing
/// grant): retried all the same — nothing may be skipped — but the partition is listed
/// as stalled meanwhile. Any other port error is transient.
#[derive(Debug, thiserror::Error)]
#[error("needs an operator")]
pub struct NeedsOperator(#[source] pub BoxError);

/// An output was not acknowledged.
///
/// A transient failure (broker away, timeout) is retried with the same records (same
/// deterministic ids); a permanent one is replaced by a smaller dead letter (see
/// [`crate::rules::fallback`]), so one record can never halt its partition.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("output does not encode")]
    Encode(#[source] hookstream_schemas::CodecError),
    #[error("the broker refused the output for good")]
    Refused(#[source] BoxError),
    #[error("the broker did not acknowledge the output")]
    Unavailable(#[source] BoxError),
}

impl SendError {
    /// Whether sending the same record again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Unavailable(_))
    }
}

/// Where the outputs go: policy events and dead letters, and the partition's own
/// control records.
pub trait Outputs: Send + Sync + 'static {
    /// Send every output of `stage` (through its writer: under exactly-once its
    /// transaction) and wait until each is acknowledged or failed; one result per
    /// output, in order. Each output carries the trace context of its cause.
    fn send_each(
        &self,
        stage: Stage,
        outputs: &[(&Output, Option<&str>)],
    ) -> impl Future<Output = Vec<Result<(), SendError>>> + Send;

    /// Write a `GapTimeout` control record into `partition` of the raw topic.
    fn send_gap_timeout(&self, partition: i32, g: &GapTimeout) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// The offsets an append's entries were written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: i64,
    pub last: i64,
}

impl Appended {
    /// Whether `n` entries written from `next` on, none of another writer among them.
    pub fn follows(&self, next: i64, n: usize) -> bool {
        self.first == next && self.last - self.first + 1 == n as i64
    }
}

/// Where the state's changes go: the stage's compacted changelog topic, partition for
/// partition with its input ([`crate::store::changelog`]).
pub trait Changelog: Send + Sync + 'static {
    /// Append `entries` to `partition` of `topic`, in order, each stamped with the
    /// writer's epoch (at least once, [`super::epoch`]; `None` under exactly-once), and
    /// wait until every one is acknowledged. Entries of a failed call may have been
    /// written in part: the caller sends them all again.
    fn append(
        &self,
        topic: &str,
        partition: i32,
        epoch: Option<u64>,
        entries: &[Entry],
    ) -> impl Future<Output = Result<Appended, SendError>> + Send;
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The group's committed offset.
    Committed(i64),
    /// No committed offset: the start of the retained log.
    LogStart(i64),
}

impl Position {
    pub fn offset(self) -> i64 {
        match self {
            Position::Committed(o) | Position::LogStart(o) => o,
        }
    }
}

/// How an offset commit waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Fire and forget: the next commit supersedes a lost one.
    Async,
    /// Wait for the broker: the hand-over commit on revocation and shutdown.
    Sync,
}

/// The consumer group's view of this partition's offsets.
pub trait GroupOffsets: Send + Sync + 'static {
    /// Where the group hands records from: its committed offset, or the start of the
    /// retained log when it never committed one.
    fn position(&self, topic: &str, partition: i32) -> impl Future<Output = Result<Position, BoxError>> + Send;

    /// Commit `next` (the first offset not yet applied) for `topic`'s `partition`.
    fn commit(&self, topic: &str, partition: i32, next: i64, mode: CommitMode) -> Result<(), BoxError>;
}

/// Reads a partition of an input topic on its own, outside the group: rebuilds and
/// holes in a delivery.
pub trait Log: Send + Sync + 'static {
    type Reader: LogReader;

    /// A reader of `topic`'s `partition` from `from` (`None`: the start of the retained log).
    fn open(&self, topic: &str, partition: i32, from: Option<i64>) -> Result<Self::Reader, BoxError>;

    /// The first offset `topic`'s `partition` still has.
    fn log_start(&self, topic: &str, partition: i32) -> impl Future<Output = Result<i64, BoxError>> + Send;

    /// The offset after the last record of `topic`'s `partition` (its high watermark).
    fn log_end(&self, topic: &str, partition: i32) -> impl Future<Output = Result<i64, BoxError>> + Send;
}

/// The records of one partition, in offset order (`read_committed`: records of open or
/// aborted transactions are skipped, so offsets may jump).
pub trait LogReader: Send + 'static {
    /// The next record; `None` when the reader has reached the partition's current end
    /// (then it waits for more).
    fn next(&mut self) -> impl Future<Output = Result<Option<Incoming>, BoxError>> + Send;
}

/// Everything a worker talks to; one type implements it on the broker, one in memory.
pub trait Backend: Outputs + Changelog + GroupOffsets + Log {}

impl<T: Outputs + Changelog + GroupOffsets + Log> Backend for T {}
