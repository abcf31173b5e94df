//! One raw partition's worker: the edge around `decide()`.
//!
//! Records of the partition arrive in offset order and are folded in batches:
//!
//! 1. decide every record of the batch against the state (sled, overlaid with the
//!    batch's own earlier changes);
//! 2. send every output and wait for the broker's acknowledgements;
//! 3. apply the batch's state changes, applied offset included, in one atomic sled
//!    batch, and flush it to disk;
//! 4. commit the offset after the batch to the consumer group.
//!
//! Records are decided in increasing offset order, each once: a delivered batch is
//! sorted, what was already decided is dropped, and a hole is read from the log first
//! ([`crate::order`]). An output the broker refuses for good is replaced by a smaller
//! dead letter ([`crate::fallback`]); stored state that does not read back is rebuilt
//! from the log. Neither halts the partition.
//!
//! A crash between any two steps loses nothing: the records are consumed again from
//! the committed offset, decided again against the state, and any output is sent
//! again with the same deterministic id. Transient failures (broker, disk) pause the
//! partition and retry with exponential backoff and jitter; nothing transient is ever
//! dead-lettered.
//!
//! **Reconciling with the group.** Before its first live record, the worker compares
//! sled's applied offset with the first offset the group hands it. When sled is behind
//! (a new instance, a wiped or lost state directory), it rebuilds the missing range by
//! replaying the raw partition with outputs suppressed: those records are below the
//! committed offset, so their outputs were already acknowledged. When sled is ahead
//! (a crash after step 3), records it already applied are skipped and the group's offset
//! is moved up to what sled covers, so a quiet partition does not stay behind. When the group's
//! offset is *below* the highest one this instance committed itself, `processor replay`
//! moved it back: the partition's state is dropped and rebuilt up to the new offset, and
//! records from there on are decided again with their outputs published again.
//!
//! **Gap timeouts.** A payment with held events is watched on the wall clock. When its
//! gap has been open for `gap_timeout_ms`, the worker writes a `GapTimeout` control
//! record into this partition of the raw topic. It takes effect only when it is
//! consumed like any other record, so a replay of the partition reproduces exactly the
//! same decisions, in the same place in the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::consumer::GroupConsumer;
use crate::emit::Emitter;
use crate::gaps::Gaps;
use crate::metrics::Metrics;
use crate::model::RawRecord;
use crate::order::{self, Step};
use crate::store::{PartitionStore, SledPolicies, Store};
use crate::trace::RecordTracer;
use crate::ProcessorConfig;

#[path = "worker_batch.rs"]
mod batch;
#[path = "worker_log.rs"]
mod from_log;
#[path = "worker_gaps.rs"]
mod gap_timer;

/// What every worker shares.
pub struct Shared {
    pub config: ProcessorConfig,
    pub store: Store,
    /// Group commit of sled to disk.
    pub flusher: crate::store::Flusher,
    pub emitter: Emitter,
    pub metrics: Metrics,
    pub tracer: RecordTracer,
    pub consumer: Arc<GroupConsumer>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Retry `f` with backoff until it succeeds or `stop` fires (see [`crate::retry`]).
    async fn retry<T, E, F, Fut>(&self, what: &'static str, stop: &CancellationToken, f: F) -> Option<T>
    where
        E: std::fmt::Display + Sync,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let max = Duration::from_millis(self.config.processing.max_backoff_ms);
        crate::retry::retry(what, &self.metrics, max, stop, f).await
    }
}

/// A record handed to a worker.
#[derive(Debug)]
pub struct Incoming {
    /// Shared, not copied, with the outputs it causes (a record can be up to ~1 MB).
    pub record: Arc<RawRecord>,
    pub traceparent: Option<String>,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// Decided and durable; the highest offset the partition's state now covers
    /// (`None`: the batch was empty).
    Done(Option<i64>),
    /// `stop` fired: nothing of the batch was committed.
    Stopped,
    /// The stored state did not read back: rebuild the partition, then decide again.
    Corrupt,
}

/// The worker of one partition.
#[allow(missing_debug_implementations)] // holds the whole shared state; nothing to print
pub struct Worker {
    shared: Arc<Shared>,
    partition: i32,
    store: PartitionStore,
    policies: SledPolicies,
    gaps: Gaps,
    held_total: i64,
    /// Applied offset not yet committed to the group, the last one committed, and when
    /// the last commit went out.
    uncommitted: Option<i64>,
    committed: Option<i64>,
    last_commit: Instant,
    /// The next offset to decide: everything below it is decided, so a record below it
    /// is dropped and a later one means a hole that is read from the log first.
    next_offset: Option<i64>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, partition: i32) -> Result<Self, crate::store::StoreError> {
        let store = shared.store.partition(&shared.config.kafka.raw_topic, partition)?;
        let policies = shared.store.policies();
        Ok(Self {
            shared,
            partition,
            store,
            policies,
            gaps: Gaps::default(),
            held_total: 0,
            uncommitted: None,
            committed: None,
            last_commit: Instant::now(),
            next_offset: None,
        })
    }

    /// Process records from `rx` until it closes (revocation, shutdown) or `stop` fires.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Incoming>, stop: CancellationToken) {
        let p = &self.shared.config.processing;
        let tick_ms = p.gap_check_interval_ms.min(p.commit_interval_ms).max(10);
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        let max = self.shared.config.processing.max_batch_records.max(1);
        // Reconcile before the first record: on assignment, not when traffic happens to
        // come, so a quiet partition's held events still get their gap timer.
        let ready = match self.group_position(&stop).await {
            Some(position) => self.reconcile(position, &stop).await,
            None => false,
        };
        if ready {
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    first = rx.recv() => {
                        let Some(first) = first else { break };
                        let mut batch = vec![first];
                        while batch.len() < max {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        if !self.live(batch, &stop).await {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        self.commit_if_due(false);
                        if !self.check_gaps(&stop).await {
                            break;
                        }
                    }
                }
            }
        }
        // Revocation or shutdown: hand the partition over at the exact point reached.
        self.commit_if_due(true);
        self.shared.metrics.held_events.sub(self.held_total);
        tracing::info!(partition = self.partition, "partition worker stopped");
    }

    /// Fold a live batch in offset order (see [`crate::order`]). False when stopped.
    async fn live(&mut self, batch: Vec<Incoming>, stop: &CancellationToken) -> bool {
        let batch = order::arrange(batch, self.next_offset, |m| m.record.origin.offset);
        let offsets: Vec<i64> = batch.iter().map(|m| m.record.origin.offset).collect();
        for step in order::plan(self.next_offset, &offsets) {
            match step {
                Step::Refetch { from, until } => {
                    tracing::warn!(
                        partition = self.partition,
                        from,
                        until,
                        "records before this delivery have not arrived yet; reading them from the log first"
                    );
                    self.shared.metrics.skipped_refetched.inc();
                    if self.read_range(from, until, true, stop).await.is_none() {
                        return false;
                    }
                }
                Step::Decide(range) => {
                    let run = &batch[range];
                    loop {
                        match self.process(run, true, stop).await {
                            Processed::Done(applied) => {
                                self.uncommitted = applied.or(self.uncommitted);
                                self.commit_if_due(false);
                                break;
                            }
                            Processed::Stopped => return false,
                            Processed::Corrupt => {
                                let first = run.first().map_or(0, |m| m.record.origin.offset);
                                if !self.rebuild_corrupt(first, stop).await {
                                    return false;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(last) = batch.last() {
            let next = last.record.origin.offset + 1;
            self.next_offset = Some(self.next_offset.map_or(next, |n| n.max(next)));
        }
        true
    }

    /// The partition's stored state does not read back: drop it and rebuild it from the
    /// start of the log up to `until` (outputs suppressed: they were sent). False when
    /// stopped.
    async fn rebuild_corrupt(&mut self, until: i64, stop: &CancellationToken) -> bool {
        tracing::error!(
            partition = self.partition,
            until,
            "stored state of the partition does not read back; rebuilding it from the log"
        );
        self.shared.metrics.corrupt_rebuilds.inc();
        let store = self.store.clone();
        if self
            .shared
            .retry("store", stop, || async { store.clear() })
            .await
            .is_none()
        {
            return false;
        }
        if self.read_range(-1, until, false, stop).await.is_none() {
            return false;
        }
        self.watch_stored_gaps(stop).await
    }

    /// Commit the applied offset to the group at most every `commit_interval_ms` (or now,
    /// synchronously, when `last`). Committing less often than every batch is safe: the
    /// offset only says where a *new* owner starts, and this instance's sled knows the
    /// exact point; records between the two are decided again identically. Each commit is
    /// a broker request per partition, so at 5,000 webhooks/s a commit per batch cost
    /// the broker more than the records themselves.
    fn commit_if_due(&mut self, last: bool) {
        // The last commit is made even when nothing new was applied: it is the one that
        // is remembered (see below).
        let Some(applied) = self.uncommitted.or(self.committed.filter(|_| last)) else {
            return;
        };
        let interval = Duration::from_millis(self.shared.config.processing.commit_interval_ms);
        if !last && self.last_commit.elapsed() < interval {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let topic = &self.shared.config.kafka.raw_topic;
        if tpl
            .add_partition_offset(topic, self.partition, Offset::Offset(applied + 1))
            .is_ok()
        {
            // Async while running: the next commit supersedes a lost one. The hand-over
            // commit (revocation, shutdown) is synchronous, and once acknowledged it is
            // remembered in sled, so that a later `processor replay` to before it is
            // recognised (the group consumer delivers no commit callbacks to do this for
            // the asynchronous ones).
            let mode = if last { CommitMode::Sync } else { CommitMode::Async };
            match self.shared.consumer.commit(&tpl, mode) {
                Err(e) => tracing::warn!(partition = self.partition, error = %e, "offset commit failed"),
                Ok(()) if last => {
                    if let Err(e) = self.store.record_commit(applied + 1) {
                        tracing::warn!(partition = self.partition, error = %e, "cannot record the committed offset");
                    }
                }
                Ok(()) => {}
            }
        }
        self.committed = Some(applied);
        self.uncommitted = None;
        self.last_commit = Instant::now();
    }

    fn update_held_gauge(&mut self) {
        let total = self.gaps.held_total();
        self.shared.metrics.held_events.add(total - self.held_total);
        self.held_total = total;
    }
}
