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
//! (a crash after step 3), records it already applied are skipped. When the group's
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

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::consumer::{raw_record, GroupConsumer};
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
    pub record: RawRecord,
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

/// Run `f` with a probing consumer of the raw topic on a blocking thread.
async fn with_probe<T: Send + 'static>(
    shared: Arc<Shared>,
    f: impl FnOnce(&rdkafka::consumer::BaseConsumer, &str) -> Result<T, rdkafka::error::KafkaError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let cfg = &shared.config.kafka;
        let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", format!("{}-rebuild", cfg.group_id))
            .set("enable.auto.commit", "false")
            // Probes read a record or two: an empty fetch need not wait long.
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| e.to_string())?;
        f(&probe, &cfg.raw_topic).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// An offset to read `partition` from so that the record at `offset` is delivered.
async fn aligned_start(shared: Arc<Shared>, partition: i32, offset: i64) -> Result<i64, String> {
    with_probe(shared, move |c, topic| {
        crate::offsets::read_from(c, topic, partition, offset).map(|(s, _)| s)
    })
    .await
}

/// See [`crate::offsets::skipped_from`].
async fn skipped_from(shared: Arc<Shared>, partition: i32, offset: i64) -> Result<Option<i64>, String> {
    with_probe(shared, move |c, topic| {
        crate::offsets::skipped_from(c, topic, partition, offset)
    })
    .await
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// The group's committed offset.
    Committed(i64),
    /// No committed offset: the start of the retained log.
    LogStart(i64),
}

impl Position {
    fn offset(self) -> i64 {
        match self {
            Position::Committed(o) | Position::LogStart(o) => o,
        }
    }
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
                        "records were skipped by the broker's fetch; reading them before going on"
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

    /// Where the group will hand us records from: its committed offset, or the start of
    /// the retained log for a partition it never committed (`auto.offset.reset=earliest`).
    async fn group_position(&self, stop: &CancellationToken) -> Option<Position> {
        let shared = self.shared.clone();
        let (topic, partition) = (shared.config.kafka.raw_topic.clone(), self.partition);
        shared
            .retry("group_position", stop, || {
                let (consumer, topic) = (shared.consumer.clone(), topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topic, partition);
                        let committed = consumer
                            .committed_offsets(tpl, Duration::from_secs(5))
                            .map_err(|e| e.to_string())?;
                        match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => Ok(Position::Committed(o)),
                            _ => consumer
                                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                                .map(|(low, _)| Position::LogStart(low))
                                .map_err(|e| e.to_string()),
                        }
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
            })
            .await
    }

    /// When the group was moved back behind what this instance itself committed
    /// (`processor replay`), drop the partition's state. False when stopped.
    async fn drop_if_replayed(&mut self, committed: i64, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let Some(mark) = shared.retry("store", stop, || async { store.committed_mark() }).await else {
            return false;
        };
        if let Some(mark) = mark.filter(|m| committed < *m) {
            tracing::warn!(
                partition = self.partition,
                committed,
                previously_committed = mark,
                "the group's offset was moved back (processor replay): rebuilding the partition's state \
                 from the log; records from the new offset on are decided and their outputs published again"
            );
            if shared.retry("store", stop, || async { store.clear() }).await.is_none() {
                return false;
            }
            shared.metrics.replays_detected.inc();
        }
        true
    }

    /// Bring sled up to the first offset the group hands us by replaying the partition
    /// with outputs suppressed (dropping it first after a replay). When sled is already
    /// ahead of the group (a crash between persisting and committing), the group's
    /// offset is moved up to it, so a quiet partition does not stay behind. Returns false
    /// when stopped.
    async fn reconcile(&mut self, position: Position, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let first_live = position.offset();
        if let Position::Committed(committed) = position {
            if !self.drop_if_replayed(committed, stop).await {
                return false;
            }
        }
        let Some(applied) = shared.retry("store", stop, || async { store.applied_offset() }).await else {
            return false;
        };
        let from = match applied {
            Some(a) if a + 1 >= first_live => None,
            Some(a) => Some(a + 1),
            None => Some(-1),
        };
        if let Some(from) = from {
            let started = Instant::now();
            let Some(n) = self.read_range(from, first_live, false, stop).await else {
                return false;
            };
            if n > 0 {
                tracing::info!(partition = self.partition, records = n, from = ?from, until = first_live,
                    elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt partition state from the log");
            }
        }
        if !self.watch_stored_gaps(stop).await {
            return false;
        }
        let Some(applied) = shared.retry("store", stop, || async { store.applied_offset() }).await else {
            return false;
        };
        if let Some(a) = applied.filter(|a| *a >= first_live) {
            // sled is ahead of the group: commit what it already covers.
            self.uncommitted = Some(a);
            self.commit_if_due(false);
        }
        let next = applied.map_or(first_live, |a| (a + 1).max(first_live));
        self.next_offset = Some(next);
        self.read_skipped(next, stop).await
    }

    /// Watch the gaps of every stored payment that holds events. False when stopped.
    async fn watch_stored_gaps(&mut self, stop: &CancellationToken) -> bool {
        let store = self.store.clone();
        let Some(gapped) = self
            .shared
            .retry("store", stop, || async { store.payments_with_gaps() })
            .await
        else {
            return false;
        };
        for st in gapped {
            self.gaps.watch(&st.payment_id, st.next_sequence, st.held.len() as i64);
        }
        self.update_held_gauge();
        true
    }

    /// Would the group's fetch from `next` skip records (crate::offsets)? Then read them
    /// here, before the group hands over what follows them. False when stopped.
    async fn read_skipped(&mut self, next: i64, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let partition = self.partition;
        let Some(skipped) = shared
            .retry("skipped_from", stop, || skipped_from(shared.clone(), partition, next))
            .await
        else {
            return false;
        };
        if let Some(until) = skipped {
            tracing::warn!(
                partition,
                from = next,
                until,
                "the broker's fetch from the group's offset would skip records; reading them first"
            );
            shared.metrics.skipped_refetched.inc();
            if self.read_range(next, until, true, stop).await.is_none() {
                return false;
            }
            self.next_offset = Some(until);
        }
        true
    }

    /// Fold records `[from, until)` (`from` -1: the start of the log), with outputs
    /// suppressed (a rebuild) or published (`live`, refetching skipped records).
    /// Returns how many, or `None` when stopped.
    async fn read_range(&mut self, from: i64, until: i64, live: bool, stop: &CancellationToken) -> Option<u64> {
        let cfg = &self.shared.config.kafka;
        let from = if from < 0 {
            Offset::Beginning
        } else {
            // Start where the broker delivers `from` itself (crate::offsets); records
            // before it are already applied and skipped by `process`.
            let shared = self.shared.clone();
            let partition = self.partition;
            Offset::Offset(
                shared
                    .retry("aligned_start", stop, || aligned_start(shared.clone(), partition, from))
                    .await?,
            )
        };
        let reader: StreamConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", format!("{}-rebuild", cfg.group_id))
            .set("enable.auto.commit", "false")
            // One reader per rebuilding partition: keep each one's pre-fetch small.
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "2000")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the rebuild reader");
                return None;
            }
        };
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&cfg.raw_topic, self.partition, from);
        if let Err(e) = reader.assign(&tpl) {
            tracing::error!(error = %e, "cannot assign the rebuild reader");
            return None;
        }
        let max = self.shared.config.processing.max_batch_records.max(1);
        let mut n = 0u64;
        let mut batch = Vec::new();
        let mut last = -1;
        while last + 1 < until {
            let m = tokio::select! {
                m = reader.recv() => m,
                () = stop.cancelled() => return None,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "rebuild read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            last = m.offset();
            if last >= until {
                break;
            }
            let (record, traceparent) = raw_record(&m);
            batch.push(Incoming { record, traceparent });
            if batch.len() >= max || last + 1 >= until {
                n += self.fold(std::mem::take(&mut batch), live, stop).await?;
            }
        }
        if !batch.is_empty() {
            n += self.fold(batch, live, stop).await?;
        }
        Some(n)
    }

    /// `process` for [`Self::read_range`]; counts rebuilt records.
    async fn fold(&mut self, batch: Vec<Incoming>, live: bool, stop: &CancellationToken) -> Option<u64> {
        let k = batch.len() as u64;
        loop {
            match self.process(&batch, live, stop).await {
                Processed::Done(applied) => {
                    if live {
                        self.uncommitted = applied.or(self.uncommitted);
                    } else {
                        self.shared.metrics.rebuilt_records.inc_by(k);
                    }
                    return Some(k);
                }
                Processed::Stopped => return None,
                Processed::Corrupt => {
                    let first = batch.first().map_or(0, |m| m.record.origin.offset);
                    if !Box::pin(self.rebuild_corrupt(first, stop)).await {
                        return None;
                    }
                }
            }
        }
    }

    fn update_held_gauge(&mut self) {
        let total = self.gaps.held_total();
        self.shared.metrics.held_events.add(total - self.held_total);
        self.held_total = total;
    }
}
