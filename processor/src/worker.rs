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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookstream_schemas::{DeadLetterReason, GapTimeout, PolicyEventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::consumer::{raw_record, GroupConsumer};
use crate::decide::{decide, dedup_key};
use crate::emit::Emitter;
use crate::input::{classify, Input};
use crate::metrics::Metrics;
use crate::model::{Output, RawRecord};
use crate::store::{Changes, PartitionStore, SledPolicies, Store};
use crate::trace::RecordTracer;
use crate::ProcessorConfig;

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

/// A record handed to a worker.
#[derive(Debug)]
pub struct Incoming {
    pub record: RawRecord,
    pub traceparent: Option<String>,
}

struct GapWatch {
    opened: SystemTime,
    next_expected: i64,
    held: i64,
    requested: Option<Instant>,
}

/// The worker of one partition.
#[allow(missing_debug_implementations)] // holds the whole shared state; nothing to print
pub struct Worker {
    shared: Arc<Shared>,
    partition: i32,
    store: PartitionStore,
    policies: SledPolicies,
    gaps: HashMap<String, GapWatch>,
    held_total: i64,
    /// Applied offset not yet committed to the group, the last one committed, and when
    /// the last commit went out.
    uncommitted: Option<i64>,
    committed: Option<i64>,
    last_commit: Instant,
    /// The offset the next live record should have; a later one means the broker
    /// skipped records (see [`crate::offsets`]) and they are read first.
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Exponential backoff with jitter for transient failures: the partition waits, it
/// never skips.
struct Backoff<'a> {
    shared: &'a Shared,
    what: &'static str,
    next: Duration,
}

impl<'a> Backoff<'a> {
    fn new(shared: &'a Shared, what: &'static str) -> Self {
        Self {
            shared,
            what,
            next: Duration::from_millis(50),
        }
    }

    /// Log and count `err`, then sleep. False when `stop` fired meanwhile.
    async fn pause(&mut self, err: &(dyn std::fmt::Display + Sync), stop: &CancellationToken) -> bool {
        self.shared.metrics.retries.with_label_values(&[self.what]).inc();
        // Jitter of up to half the delay, from the clock's sub-second noise.
        let noise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = self.next.mul_f64(f64::from(noise % 1000) / 2000.0);
        tracing::warn!(what = self.what, error = %err, backoff_ms = self.next.as_millis() as u64,
            "transient failure; partition paused");
        let max = Duration::from_millis(self.shared.config.processing.max_backoff_ms.max(1));
        let delay = self.next + jitter;
        self.next = (self.next * 2).min(max);
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop.cancelled() => false,
        }
    }
}

/// Retry `f` until it succeeds; `None` when `stop` fires first (the caller then exits
/// without committing, which loses nothing).
async fn retry<T, E, F, Fut>(what: &'static str, shared: &Shared, stop: &CancellationToken, mut f: F) -> Option<T>
where
    E: std::fmt::Display + Sync,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(shared, what);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if !backoff.pause(&e, stop).await {
                    return None;
                }
            }
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
            gaps: HashMap::new(),
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
                        if !self.fill_skipped(&batch, &stop).await {
                            break;
                        }
                        match self.process(batch, true, &stop).await {
                            Some(Some(last)) => {
                                self.uncommitted = Some(last);
                                self.commit_if_due(false);
                            }
                            Some(None) => {}
                            None => break,
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
        retry("group_position", &shared, stop, || {
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

    /// Bring sled up to the first offset the group hands us by replaying the partition
    /// with outputs suppressed. When the group was moved back behind what this instance
    /// itself committed (`processor replay`), the partition's state is dropped first and
    /// rebuilt from the start of the log. Returns false when stopped.
    async fn reconcile(&mut self, position: Position, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let first_live = position.offset();
        if let Position::Committed(committed) = position {
            let Some(mark) = retry("store", &shared, stop, || async { store.committed_mark() }).await else {
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
                if retry("store", &shared, stop, || async { store.clear() })
                    .await
                    .is_none()
                {
                    return false;
                }
                shared.metrics.replays_detected.inc();
            }
        }
        let Some(applied) = retry("store", &shared, stop, || async { store.applied_offset() }).await else {
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
        let Some(gapped) = retry("store", &shared, stop, || async { store.payments_with_gaps() }).await else {
            return false;
        };
        for st in gapped {
            self.watch(&st.payment_id, st.next_sequence, st.held.len() as i64);
        }
        self.update_held_gauge();
        let Some(applied) = retry("store", &shared, stop, || async { store.applied_offset() }).await else {
            return false;
        };
        let next = applied.map_or(first_live, |a| (a + 1).max(first_live));
        self.next_offset = Some(next);
        // Would the group's fetch from `next` skip records (crate::offsets)? Then read
        // them here, before the group hands over what follows them.
        let Some(skipped) = retry("skipped_from", &shared, stop, || {
            skipped_from(shared.clone(), self.partition, next)
        })
        .await
        else {
            return false;
        };
        if let Some(until) = skipped {
            tracing::warn!(
                partition = self.partition,
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

    /// Before a live batch: when its first record is past the next expected offset, the
    /// broker skipped records (the local broker does when the group's offset is inside a
    /// batch); read and process them, outputs included, first. Returns false when stopped.
    async fn fill_skipped(&mut self, batch: &[Incoming], stop: &CancellationToken) -> bool {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return true;
        };
        let first = first.record.origin.offset;
        if let Some(expected) = self.next_offset.filter(|e| first > *e) {
            tracing::warn!(
                partition = self.partition,
                from = expected,
                until = first,
                "records were skipped by the broker's fetch; reading them before going on"
            );
            self.shared.metrics.skipped_refetched.inc();
            if self.read_range(expected, first, true, stop).await.is_none() {
                return false;
            }
        }
        // Never backwards: records fetched before the partition's queue was split off
        // can come after newer ones (see crate::consumer); `process` skips them.
        let next = last.record.origin.offset + 1;
        self.next_offset = Some(self.next_offset.map_or(next, |n| n.max(next)));
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
                retry("aligned_start", &shared, stop, || {
                    aligned_start(shared.clone(), partition, from)
                })
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
        let applied = self.process(batch, live, stop).await?;
        if live {
            self.uncommitted = applied.or(self.uncommitted);
        } else {
            self.shared.metrics.rebuilt_records.inc_by(k);
        }
        Some(k)
    }

    /// Decide a batch, emit (when `live`), persist. Returns the last applied offset
    /// (`Some(None)` when every record was already applied), or `None` when stopped.
    async fn process(&mut self, batch: Vec<Incoming>, live: bool, stop: &CancellationToken) -> Option<Option<i64>> {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let applied = retry("store", &shared, stop, || async { store.applied_offset() }).await?;
        let mut changes = Changes::default();
        let mut outputs: Vec<(Output, Option<String>)> = Vec::new();
        let mut timestamps = Vec::new();
        for inc in batch {
            let rec = inc.record;
            if applied.is_some_and(|a| rec.origin.offset <= a) {
                continue;
            }
            let input = classify(&rec, &shared.config.fields);
            let (payment_id, dkey) = match &input {
                Input::Webhook(e) => (Some(e.payment_id.clone()), Some(dedup_key(&e.source, &e.event_id))),
                Input::GapTimeout(g) => (Some(g.payment_id.clone()), None),
                Input::Invalid { payment_id, .. } => (payment_id.clone(), None),
            };
            let mut backoff = Backoff::new(&shared, "store");
            let decision = loop {
                match self.decide_one(&rec, &input, payment_id.as_deref(), dkey.as_deref(), &changes) {
                    Ok(d) => break d,
                    Err(e) => {
                        if !backoff.pause(&e, stop).await {
                            return None;
                        }
                    }
                }
            };
            shared
                .metrics
                .records
                .with_label_values(&[decision.outcome.as_str()])
                .inc();
            let traceparent = if live {
                shared.tracer.child(inc.traceparent.as_deref()).map(|(tp, trace_id)| {
                    tracing::debug!(
                        trace_id,
                        partition = self.partition,
                        offset = rec.origin.offset,
                        outcome = decision.outcome.as_str(),
                        "record decided"
                    );
                    tp
                })
            } else {
                None
            };
            if let Some(p) = decision.payment {
                if live {
                    self.watch(&p.payment_id, p.next_sequence, p.held.len() as i64);
                }
                changes.payments.insert(p.payment_id.clone(), p);
            }
            if let Some((k, e)) = decision.dedup {
                changes.dedup.insert(k, e);
            }
            outputs.extend(decision.outputs.into_iter().map(|o| (o, traceparent.clone())));
            changes.applied = Some(rec.origin.offset);
            changes.max_ts = Some(changes.max_ts.unwrap_or(i64::MIN).max(rec.origin.timestamp_ms));
            timestamps.push(rec.origin.timestamp_ms);
        }
        let Some(last) = changes.applied else { return Some(None) };
        if live && !outputs.is_empty() {
            retry("emit", &shared, stop, || shared.emitter.send_all(&outputs)).await?;
            self.count_outputs(&outputs);
        }
        let window_ms = (shared.config.processing.dedup_window_secs * 1000) as i64;
        let cutoff = changes.max_ts.map(|ts| ts - window_ms);
        let changes = Arc::new(changes);
        let swept = retry("store", &shared, stop, || {
            let (store, changes) = (store.clone(), changes.clone());
            async move {
                tokio::task::spawn_blocking(move || store.persist(&changes, cutoff).map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| e.to_string())?
            }
        })
        .await?;
        if swept > 0 {
            tracing::debug!(partition = self.partition, swept, "expired dedup keys");
        }
        retry("store", &shared, stop, || shared.flusher.flush()).await?;
        if live {
            let now = now_ms();
            for ts in timestamps {
                shared
                    .metrics
                    .processing_seconds
                    .observe((now - ts).max(0) as f64 / 1000.0);
            }
            self.update_held_gauge();
        }
        Some(Some(last))
    }

    /// Decide one record against sled overlaid with the batch's own changes.
    fn decide_one(
        &mut self,
        rec: &RawRecord,
        input: &Input,
        payment_id: Option<&str>,
        dkey: Option<&str>,
        changes: &Changes,
    ) -> Result<crate::decide::Decision, String> {
        let payment = match payment_id {
            Some(p) => match changes.payments.get(p) {
                Some(st) => Some(st.clone()),
                None => self.store.payment(p).map_err(|e| e.to_string())?,
            },
            None => None,
        };
        let seen = match dkey {
            Some(k) => match changes.dedup.get(k) {
                Some(e) => Some(e.clone()),
                None => self.store.dedup(k).map_err(|e| e.to_string())?,
            },
            None => None,
        };
        decide(rec, input.clone(), payment, seen.as_ref(), &mut self.policies).map_err(|e| e.to_string())
    }

    fn count_outputs(&self, outputs: &[(Output, Option<String>)]) {
        let m = &self.shared.metrics;
        for (o, _) in outputs {
            match o {
                Output::Policy(p) => match p.event {
                    PolicyEventKind::Activated(_) => m.activations.inc(),
                    PolicyEventKind::Cancelled(_) => m.cancellations.inc(),
                },
                Output::Dead(d) => m.dead_letters.with_label_values(&[d.reason.as_str()]).inc(),
            }
        }
    }

    /// Track (or stop tracking) a payment's open gap on the wall clock.
    fn watch(&mut self, payment_id: &str, next_expected: i64, held: i64) {
        if held == 0 {
            self.gaps.remove(payment_id);
            return;
        }
        let w = self.gaps.entry(payment_id.to_owned()).or_insert(GapWatch {
            opened: SystemTime::now(),
            next_expected,
            held,
            requested: None,
        });
        if w.next_expected != next_expected {
            // Part of the gap filled: what is still missing is a new gap.
            *w = GapWatch {
                opened: SystemTime::now(),
                next_expected,
                held,
                requested: None,
            };
        }
        w.held = held;
    }

    fn update_held_gauge(&mut self) {
        let total: i64 = self.gaps.values().map(|w| w.held).sum();
        self.shared.metrics.held_events.add(total - self.held_total);
        self.held_total = total;
    }

    /// Write a GapTimeout for every gap open past the timeout. Returns false when stopped.
    async fn check_gaps(&mut self, stop: &CancellationToken) -> bool {
        let timeout = self.shared.config.processing.gap_timeout();
        let now = SystemTime::now();
        let due: Vec<(String, i64, SystemTime)> = self
            .gaps
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened).unwrap_or_default() >= timeout)
            .filter(|(_, w)| w.requested.is_none_or(|r| r.elapsed() >= timeout))
            .map(|(p, w)| (p.clone(), w.next_expected, w.opened))
            .collect();
        let shared = self.shared.clone();
        for (payment_id, next_expected, opened) in due {
            let missing = match self.store.payment(&payment_id) {
                Ok(Some(st)) => match st.held.keys().next_back() {
                    Some(&last) => (st.next_sequence..last).filter(|s| !st.held.contains_key(s)).collect(),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            let g = GapTimeout {
                payment_id: payment_id.clone(),
                next_expected_sequence: next_expected,
                missing_sequences: missing,
                gap_opened_at: opened
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                decided_at: now_ms(),
            };
            let partition = self.partition;
            if retry("emit", &shared, stop, || shared.emitter.send_gap_timeout(partition, &g))
                .await
                .is_none()
            {
                return false;
            }
            shared.metrics.gap_timeouts.inc();
            tracing::info!(payment_id, partition, next_expected, missing = ?g.missing_sequences,
                reason = DeadLetterReason::SequenceGapTimeout.as_str(), "gap timed out; control record written");
            if let Some(w) = self.gaps.get_mut(&payment_id) {
                w.requested = Some(Instant::now());
            }
        }
        true
    }
}
