//! The worker of one raw partition.
//!
//! Records of the partition arrive in offset order and are folded in batches:
//!
//! 1. decide every record of the batch against the state (sled, overlaid with the
//!    batch's own earlier changes);
//! 2. send every output and wait for the broker's acknowledgements;
//! 3. apply the batch's state changes, applied offset included, in one atomic sled
//!    batch, and flush it to disk;
//! 4. commit the offset after the batch to the consumer group ([`super::commit`]).
//!
//! Records are decided in increasing offset order, each once: a delivered batch is
//! sorted, what was already decided is dropped, and a hole is read from the log first
//! ([`super::order`]). An output the broker refuses for good is replaced by a smaller
//! dead letter ([`crate::rules::fallback`]); stored state that does not read back is
//! rebuilt from the log. Neither halts the partition.
//!
//! A crash between any two steps loses nothing: the records are consumed again from
//! the committed offset, decided again against the state, and any output is sent
//! again with the same deterministic id. Transient failures (broker, disk) pause the
//! partition and retry with exponential backoff and jitter; nothing transient is ever
//! dead-lettered.
//!
//! Before its first record the worker reconciles sled with the group's offset
//! (`reconcile.rs`); while it runs, a timer writes `GapTimeout` control records for
//! gaps open too long (`gap_timer.rs`). Its phases — created, restoring, running,
//! rebuilding, fenced, closed — are [`super::lifecycle`]'s; doing work over (a rewind,
//! a rebuild) is `rewind.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::SpanContext;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::commit::Commits;
use super::gaps::Gaps;
use super::io::{Backend, Incoming};
use super::lifecycle::Phase;
use super::order::{self, Step};
use super::rewind::Rewinding;
use super::txn::TxnGate;
use super::{Context, Stage, Stopped};
use crate::store::{PartitionStore, StoreError};

/// Whether a fold publishes its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Records the group handed over (or a hole in them): outputs are sent.
    Live,
    /// Records below the group's offset, whose outputs were already acknowledged:
    /// only the state is rebuilt.
    Rebuild,
}

/// How folding a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Folded {
    /// Decided and durable; the highest offset the state now covers (`None`: sled
    /// already covered the whole batch and nothing was applied).
    Done(Option<i64>),
    /// The stored state did not read back: rebuild the partition, then decide again.
    Corrupt,
    /// Under exactly-once, the transaction the partition wrote in was aborted; at least
    /// once, another writer wrote the changelog after this worker's claim
    /// ([`super::epoch`]): restore the state, then decide again.
    Rewind,
    /// At least once, another owner claimed the partition's changelog
    /// ([`super::epoch`]): write nothing more.
    Fenced,
}

/// The worker of one partition.
#[allow(missing_debug_implementations)] // holds the shared context; nothing to print
pub struct Worker<B> {
    pub(super) cx: Arc<Context<B>>,
    pub(super) stage: Stage,
    /// The stage's input topic.
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) store: PartitionStore,
    /// Open gaps, and how many held events this worker has added to the gauge.
    pub(super) gaps: Gaps,
    pub(super) held_reported: i64,
    pub(super) commits: Commits,
    /// The next offset to decide: everything below it is decided, so a record below it
    /// is dropped and a later one means a hole that is read from the log first.
    pub(super) next_offset: Option<i64>,
    /// Sampled record spans whose offset no commit covers yet, oldest first (at most
    /// [`MAX_AWAITING_COMMIT`]: beyond it the oldest get no commit span).
    pub(super) awaiting_commit: VecDeque<(i64, SpanContext)>,
    /// Under exactly-once, the stage's transaction ([`super::txn`]).
    pub(super) gate: Option<Arc<TxnGate>>,
    /// The offset after the last record delivered to this worker: after an aborted
    /// transaction, the records up to it are read from the log again.
    pub(super) consumed_next: Option<i64>,
    /// Outputs the broker refused for good, by id, with its error. Under exactly-once a
    /// refused send fails the whole transaction; when the batch is decided again, these
    /// are replaced by their dead letters before they are sent.
    pub(super) refused: HashMap<String, String>,
    /// Under exactly-once, the committed offset last reported.
    pub(super) reported: Option<i64>,
    /// At least once, this worker's claim on the changelog ([`super::epoch`]).
    pub(super) writer: Option<super::epoch::Writer>,
    /// Since when another owner's claim fences this worker.
    pub(super) fenced_at: Option<Instant>,
    /// Under exactly-once, the partition's changelog append was refused for good: listed
    /// as stalled until a batch gets through.
    pub(super) write_stall: Option<super::holes::StallMark>,
    /// A rewind is under way: an abort met while it decides again is left to it.
    pub(super) rewinding: Rewinding,
    /// A replay in place runs up to this offset: records below it are decided although
    /// the state covers them ([`crate::store::changelog::ReplayMark`]).
    pub(super) replay_until: Option<i64>,
    /// Where the worker is in its lifecycle ([`super::lifecycle`]).
    pub(super) phase: Phase,
}

/// Most sampled records a worker remembers until a commit covers them.
pub(super) const MAX_AWAITING_COMMIT: usize = 10_000;

impl<B: Backend> Worker<B> {
    pub fn new(cx: Arc<Context<B>>, stage: Stage, partition: i32) -> Result<Self, StoreError> {
        let topic = cx.settings.topic(stage).to_owned();
        let store = cx.store.partition(&topic, partition)?;
        let commits = Commits::new(cx.settings.processing.commit_interval);
        cx.metrics
            .partition_workers
            .with_label_values(&[stage.as_str(), Phase::Created.as_str()])
            .inc();
        Ok(Self {
            cx: cx.clone(),
            stage,
            topic,
            partition,
            store,
            gaps: Gaps::default(),
            held_reported: 0,
            commits,
            next_offset: None,
            awaiting_commit: VecDeque::new(),
            gate: cx.gates.of(stage).cloned(),
            consumed_next: None,
            refused: HashMap::new(),
            reported: None,
            writer: None,
            fenced_at: None,
            write_stall: None,
            rewinding: Rewinding::No,
            replay_until: None,
            phase: Phase::Created,
        })
    }

    /// Process records from `rx` until it closes (revocation, shutdown) or `stop` fires,
    /// then hand the partition over at the exact point reached.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Incoming>, stop: CancellationToken) {
        let _ = self.serve(&mut rx, &stop).await;
        self.hand_over().await;
        self.enter(Phase::Closed);
        self.cx.metrics.held_events.sub(self.held_reported);
        tracing::info!(
            stage = self.stage.as_str(),
            partition = self.partition,
            "partition worker stopped"
        );
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Incoming>, stop: &CancellationToken) -> Result<(), Stopped> {
        let p = &self.cx.settings.processing;
        let every = p
            .gap_check_interval
            .min(p.commit_interval)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        let (max, max_bytes) = (p.max_batch_records.max(1), p.max_batch_bytes);
        // Reconcile on assignment, not when traffic happens to come, so a quiet
        // partition's held events still get their gap timer.
        let cx = self.cx.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        self.enter(Phase::Restoring);
        let position = self
            .retry("group_position", stop, || cx.backend.position(&topic, partition))
            .await?;
        self.reconcile(position, stop).await?;
        if self.phase == Phase::Restoring {
            self.enter(Phase::Running);
        }
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Err(Stopped),
                first = rx.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let mut bytes = first.record.size_bytes();
                    let mut batch = vec![first];
                    while batch.len() < max && bytes < max_bytes {
                        match rx.try_recv() {
                            Ok(m) => {
                                bytes += m.record.size_bytes();
                                batch.push(m);
                            }
                            Err(_) => break,
                        }
                    }
                    if let Some(last) = batch.iter().map(|m| m.record.origin.offset).max() {
                        self.consumed_next = Some(self.consumed_next.map_or(last + 1, |n| n.max(last + 1)));
                    }
                    self.live(batch, stop).await?;
                }
                _ = tick.tick() => {
                    if self.fenced_at.is_some() {
                        if self.fenced_too_long() {
                            self.fenced_at = None;
                            self.rewind(stop).await?;
                        }
                        continue;
                    }
                    // An aborted transaction is redone now, not when the partition's
                    // next record happens to come (it may never).
                    if self.gate.as_ref().is_some_and(|g| g.must_rewind(self.partition)) {
                        self.rewind(stop).await?;
                    }
                    self.commit();
                    self.check_gaps(stop).await?;
                }
            }
        }
    }

    /// Fold a delivered batch in offset order, reading any hole before it from the log.
    async fn live(&mut self, batch: Vec<Incoming>, stop: &CancellationToken) -> Result<(), Stopped> {
        if self.fenced_at.is_some() {
            // Another owner decides these records.
            return Ok(());
        }
        let batch = order::arrange(batch, self.next_offset, |m| m.record.origin.offset);
        let offsets: Vec<i64> = batch.iter().map(|m| m.record.origin.offset).collect();
        // Under exactly-once offsets jump (transaction markers, aborted records) and a
        // partition's records come through its own queue only, split off before it is
        // fetched: a jump is not a hole.
        let steps = match self.gate {
            Some(_) => vec![Step::Decide(0..batch.len())],
            None => order::plan(self.next_offset, &offsets),
        };
        for step in steps {
            if self.fenced_at.is_some() {
                return Ok(());
            }
            match step {
                Step::Refetch { from, until } => {
                    tracing::warn!(
                        partition = self.partition,
                        from,
                        until,
                        "records before this delivery have not arrived yet; reading them from the log first"
                    );
                    self.cx.metrics.skipped_refetched.inc();
                    self.read_range(from, until, Mode::Live, stop).await?;
                }
                Step::Decide(range) => self.fold(&batch[range], Mode::Live, stop).await?,
            }
        }
        if let Some(last) = batch.last() {
            let next = last.record.origin.offset + 1;
            self.next_offset = Some(self.next_offset.map_or(next, |n| n.max(next)));
        }
        Ok(())
    }

    /// Fold `batch` until it is durable, rebuilding the partition first whenever its
    /// stored state does not read back.
    pub(super) async fn fold(
        &mut self,
        batch: &[Incoming],
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut corrupt = 0;
        loop {
            match self.process(batch, mode, stop).await? {
                Folded::Done(applied) => {
                    if self.write_stall.take().is_some() {
                        tracing::info!(
                            partition = self.partition,
                            "the changelog took the batch; the partition goes on"
                        );
                    }
                    match mode {
                        Mode::Live => {
                            self.commits.applied(applied);
                            self.commit();
                        }
                        Mode::Rebuild => self.cx.metrics.rebuilt_records.inc_by(batch.len() as u64),
                    }
                    return Ok(());
                }
                Folded::Corrupt => {
                    let first = batch.first().map_or(0, |m| m.record.origin.offset);
                    // Once restored from the changelog and still unreadable, the value is
                    // the changelog's: restoring it again cannot help.
                    corrupt += 1;
                    let after = match self.phase {
                        Phase::Restoring => Phase::Restoring,
                        _ => Phase::Running,
                    };
                    self.enter(Phase::Rebuilding);
                    Box::pin(self.rebuild_corrupt(first, corrupt > 1, stop)).await?;
                    if self.phase == Phase::Rebuilding {
                        self.enter(after);
                    }
                }
                // Within a rewind, the rewind starts over (no nesting: a failure that
                // lasts would otherwise nest one rewind in another until the stack
                // overflows); what was being decided is decided again by it.
                Folded::Rewind if self.rewinding != Rewinding::No => {
                    self.rewinding = Rewinding::Again;
                    return Ok(());
                }
                Folded::Rewind => Box::pin(self.rewind(stop)).await?,
                Folded::Fenced => return self.fence(stop).await,
            }
        }
    }

    pub(super) fn update_held_gauge(&mut self) {
        let total = self.gaps.held_total();
        self.cx.metrics.held_events.add(total - self.held_reported);
        self.held_reported = total;
    }
}
