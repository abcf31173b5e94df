//! Deciding one batch of a partition: decide every record against sled overlaid with
//! the batch's own changes, send the outputs and entries (`write.rs`), then hand its
//! changes to `persist.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookstream_schemas::PolicyEventKind;
use tokio_util::sync::CancellationToken;

use super::io::{Backend, Incoming};
use super::retry::{now_ms, Backoff};
use super::txn::{Inside, TxnGate};
use super::worker::{Folded, Mode, Worker};
use super::Stage;
use super::Stopped;
use crate::rules::fold::{self, FoldSettings, Step, View};
use crate::rules::model::{DedupEntry, Output, PaymentState, RawRecord};
use crate::rules::policy::PolicyState;
use crate::store::{Changes, Entry, PartitionStore, StoreError};
use crate::trace::RecordSpan;

/// An output on its way out, with the trace context and the record that caused it.
pub(super) struct Emitted {
    pub(super) output: Output,
    pub(super) traceparent: Option<String>,
    pub(super) cause: Arc<RawRecord>,
}

/// A decided batch: its state changes, its outputs, its records' times, and their
/// spans (live records with a trace context), open until the batch is persisted.
#[derive(Default)]
pub(super) struct Decided {
    pub(super) changes: Changes,
    pub(super) outputs: Vec<Emitted>,
    timestamps: Vec<i64>,
    spans: Vec<RecordSpan>,
}

/// The partition's state as the batch's next record sees it: sled overlaid with the
/// changes of the batch's earlier records.
struct Overlay<'a> {
    store: &'a PartitionStore,
    changes: &'a Changes,
}

impl View for Overlay<'_> {
    type Error = StoreError;

    fn payment(&self, key: &str) -> Result<Option<PaymentState>, StoreError> {
        match self.changes.payments.get(key) {
            Some(st) => Ok(Some(st.clone())),
            None => self.store.payment(key),
        }
    }

    fn dedup(&self, key: &str) -> Result<Option<DedupEntry>, StoreError> {
        match self.changes.dedup.get(key) {
            Some(e) => Ok(Some(e.clone())),
            None => self.store.dedup(key),
        }
    }

    fn policy(&self, policy_id: &str) -> Result<Option<PolicyState>, StoreError> {
        match self.changes.policies.get(policy_id) {
            Some(st) => Ok(Some(st.clone())),
            None => self.store.policy(policy_id),
        }
    }
}

/// Why a record could not be decided now.
#[derive(Debug, thiserror::Error)]
enum DecideError {
    /// Disk or registry trouble: transient, decide again after a pause.
    #[error("state store")]
    Transient(#[source] StoreError),
    /// A stored value does not read back: permanent until the state is rebuilt.
    #[error("state store")]
    Corrupt(#[source] StoreError),
}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => DecideError::Corrupt(e),
            other => DecideError::Transient(other),
        }
    }
}

impl<B: Backend> Worker<B> {
    pub(super) fn max_backoff(&self) -> Duration {
        self.cx.settings.processing.max_backoff
    }

    /// Decide a batch, emit (when live), persist. Records at or below sled's applied
    /// offset are skipped. `Done` carries the highest offset the state now covers.
    pub(super) async fn process(
        &mut self,
        batch: &[Incoming],
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<Folded, Stopped> {
        let gate = self.gate.clone();
        // Under exactly-once the batch is decided and written inside the stage's
        // transaction gate (`txn.rs`): the committer never commits half a batch.
        let _inside = match &gate {
            Some(g) => match Self::enter_transaction(g, self.partition, stop).await? {
                Some(inside) => Some(inside),
                None => return Ok(Folded::Rewind),
            },
            None => None,
        };
        let store = self.store.clone();
        let applied = self.retry("store", stop, || async { store.applied_offset() }).await?;
        let clock = self.retry("store", stop, || async { store.max_ts() }).await?;
        let Some(mut decided) = self.decide_batch(batch, applied, clock, mode, stop).await? else {
            return Ok(Folded::Corrupt);
        };
        // Nothing new: sled already covers the batch, and its offset may be committed.
        let Some(last) = decided.changes.applied else {
            return Ok(Folded::Done(applied));
        };
        self.expire(&mut decided.changes, stop).await?;
        let entries = decided.changes.entries();
        let emitting = SystemTime::now();
        let next = match self.write(gate.as_deref(), &mut decided, &entries, mode, stop).await? {
            Ok(next) => next,
            Err(folded) => return Ok(folded),
        };
        if mode == Mode::Live {
            self.count_outputs(&decided.outputs);
        }
        let persisting = SystemTime::now();
        let (spans, timestamps) = (
            std::mem::take(&mut decided.spans),
            std::mem::take(&mut decided.timestamps),
        );
        self.persist_decided(gate.as_deref(), decided.changes, entries, next, mode, stop)
            .await?;
        if let Some(g) = &gate {
            match mode {
                Mode::Live => g.decided(self.partition, last + 1),
                Mode::Rebuild => g.wrote(self.partition),
            }
        }
        self.finish(spans, timestamps, (emitting, persisting), mode);
        Ok(Folded::Done(Some(last)))
    }

    /// Enter the stage's transaction for one batch; `None` when the transaction was
    /// aborted under the partition, which must rewind first.
    async fn enter_transaction<'g>(
        gate: &'g TxnGate,
        partition: i32,
        stop: &CancellationToken,
    ) -> Result<Option<Inside<'g>>, Stopped> {
        let (inside, rewind) = tokio::select! {
            e = gate.enter(partition) => e,
            () = stop.cancelled() => return Err(Stopped),
        };
        Ok((!rewind).then_some(inside))
    }

    /// Send the batch's outputs and changelog entries: into the transaction under
    /// exactly-once, else the outputs first, then the state's changelog entries, then the
    /// meta entry that closes the batch (an entry is logged only once what it records was
    /// published, so a restore never skips an output). The changelog's next offset, or
    /// what the worker does instead of persisting.
    async fn write(
        &mut self,
        gate: Option<&TxnGate>,
        decided: &mut Decided,
        entries: &[Entry],
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<Result<Option<i64>, Folded>, Stopped> {
        let Some(g) = gate else {
            if mode == Mode::Live && !decided.outputs.is_empty() {
                self.emit(&mut decided.outputs, stop).await?;
            }
            return self.log_batch(entries, &decided.changes, stop).await;
        };
        let written = tokio::select! {
            w = self.write_in_transaction(decided, entries, mode) => w,
            () = stop.cancelled() => {
                // Part of the batch may be in the transaction: it must not commit.
                g.fail(self.partition);
                return Err(Stopped);
            }
        };
        match written {
            Ok(next) => Ok(Ok(next)),
            Err(e) => {
                g.fail(self.partition);
                if e.changelog_refused && self.write_stall.is_none() {
                    let reason = format!("changelog refused for good: {}", e.detail);
                    self.write_stall = Some(self.stall(reason));
                } else {
                    tracing::warn!(partition = self.partition, error = %e.detail, "a send failed; the transaction is aborted");
                }
                Ok(Err(Folded::Rewind))
            }
        }
    }

    /// Apply the batch's changes to sled. Under exactly-once the batch is in the
    /// transaction with its offset not yet recorded: when the worker is stopped now, the
    /// transaction must not commit.
    async fn persist_decided(
        &self,
        gate: Option<&TxnGate>,
        changes: Changes,
        entries: Vec<Entry>,
        next: Option<i64>,
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let persisted = async {
            if gate.is_some() {
                let store = self.store.clone();
                self.retry("store", stop, || async { store.mark_uncommitted() }).await?;
            }
            self.persist(changes, entries, next, mode, stop).await
        };
        let r = persisted.await;
        if let (Err(Stopped), Some(g)) = (&r, gate) {
            g.fail(self.partition);
        }
        r
    }

    /// The batch's trace phases, its records awaiting their commit, its latencies.
    fn finish(
        &mut self,
        spans: Vec<RecordSpan>,
        timestamps: Vec<i64>,
        (emitting, persisting): (SystemTime, SystemTime),
        mode: Mode,
    ) {
        let persisted = SystemTime::now();
        for span in spans {
            self.cx.tracer.phase(&span, "processor.emit", emitting, persisting);
            self.cx.tracer.phase(&span, "processor.persist", persisting, persisted);
            let offset = span.offset;
            if let Some(sc) = span.end() {
                self.await_commit(offset, sc);
            }
        }
        if mode == Mode::Live {
            let now = now_ms();
            for ts in timestamps {
                let seconds = (now - ts).max(0) as f64 / 1000.0;
                self.cx.metrics.processing_seconds.observe(seconds);
            }
            self.update_held_gauge();
        }
    }

    /// Decide every record of `batch` above `applied`, each against sled overlaid with
    /// the batch's earlier changes and at the partition's clock advanced by the record
    /// (`clock`: before the batch). `None`: the stored state does not read back.
    async fn decide_batch(
        &mut self,
        batch: &[Incoming],
        applied: Option<i64>,
        mut clock: Option<i64>,
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<Option<Decided>, Stopped> {
        let cx = self.cx.clone();
        let settings = &cx.settings.fold;
        let mut d = Decided::default();
        for inc in batch {
            let offset = inc.record.origin.offset;
            let replayed = self.replay_until.is_some_and(|u| offset < u);
            if (applied.is_some_and(|a| offset <= a) && !replayed) || d.changes.applied.is_some_and(|a| offset <= a) {
                continue;
            }
            let rec = inc.record.clone();
            let deciding = SystemTime::now();
            let mut backoff = Backoff::new(&cx.metrics, self.max_backoff(), "store");
            let decision = loop {
                match self.decide_one(&rec, &d.changes, clock, settings) {
                    Ok(decision) => break decision,
                    Err(DecideError::Corrupt(e)) => {
                        tracing::error!(partition = self.partition, offset, error = ?e, "stored state does not read back");
                        return Ok(None);
                    }
                    Err(e) => backoff.pause(&e, stop).await?,
                }
            };
            clock = Some(decision.clock);
            let outcome = decision.outcome.as_str();
            cx.metrics
                .records
                .with_label_values(&[self.stage.as_str(), outcome])
                .inc();
            let span = match mode {
                Mode::Live => self.trace_decided(inc, outcome, deciding),
                Mode::Rebuild => None,
            };
            let traceparent = span.as_ref().map(|s| s.traceparent.clone());
            d.spans.extend(span);
            self.add_step(&mut d, decision, rec, traceparent, mode);
        }
        Ok(Some(d))
    }

    /// The record's span, continuing the trace its headers carry, with its outcome and
    /// the decide phase.
    fn trace_decided(&self, inc: &Incoming, outcome: &str, deciding: SystemTime) -> Option<RecordSpan> {
        let offset = inc.record.origin.offset;
        let at = (self.stage.as_str(), self.partition, offset);
        let span = self.cx.tracer.start(inc.traceparent.as_deref(), deciding, at)?;
        tracing::debug!(
            trace_id = span.trace_id,
            partition = self.partition,
            offset,
            outcome,
            "record decided"
        );
        span.outcome(outcome);
        self.cx
            .tracer
            .phase(&span, "processor.decide", deciding, SystemTime::now());
        Some(span)
    }

    /// Add one record's step to the batch: its changes over the earlier records', its
    /// outputs (with their cause and trace), its offset and clock.
    fn add_step(
        &mut self,
        d: &mut Decided,
        decision: Step,
        rec: Arc<RawRecord>,
        traceparent: Option<String>,
        mode: Mode,
    ) {
        let offset = rec.origin.offset;
        if let Some(p) = decision.payment {
            if mode == Mode::Live {
                self.gaps.watch(&p.key(), p.next_sequence, p.held.len() as i64);
            }
            d.changes.payments.insert(p.key(), p);
        }
        if let Some(p) = decision.policy {
            d.changes.policies.insert(p.policy_id.clone(), p);
        }
        if let Some((k, e)) = decision.dedup {
            d.changes.dedup.insert(k, e);
        }
        d.outputs.extend(decision.outputs.into_iter().map(|output| Emitted {
            output,
            traceparent: traceparent.clone(),
            cause: rec.clone(),
        }));
        d.changes.applied = Some(offset);
        d.changes.max_ts = Some(decision.clock);
        // Under exactly-once the processor's own records (requests, control records)
        // are written in transactions: a commit marker follows the last of each.
        d.changes.marker_follows = self.gate.is_some()
            && (self.stage == Stage::Policies
                || rec
                    .headers
                    .iter()
                    .any(|h| h.name == hookstream_schemas::topics::headers::CONTROL));
        d.timestamps.push(rec.origin.timestamp_ms);
    }

    /// Decide one record against sled overlaid with the batch's own changes, at the
    /// partition's `clock` before it.
    fn decide_one(
        &self,
        rec: &RawRecord,
        changes: &Changes,
        clock: Option<i64>,
        settings: &FoldSettings,
    ) -> Result<Step, DecideError> {
        let view = Overlay {
            store: &self.store,
            changes,
        };
        Ok(match self.stage {
            Stage::Payments => fold::payment_step(&view, rec, clock, settings)?,
            Stage::Policies => fold::policy_step(&view, rec, clock, settings)?,
        })
    }

    fn count_outputs(&self, outputs: &[Emitted]) {
        let m = &self.cx.metrics;
        for o in outputs {
            match &o.output {
                Output::Policy(p) => match p.event {
                    PolicyEventKind::Activated(_) => m.activations.inc(),
                    PolicyEventKind::Cancelled(_) => m.cancellations.inc(),
                    PolicyEventKind::Duplicated(_) => m.duplicate_payments.inc(),
                },
                Output::Request(_) => m.policy_requests.inc(),
                Output::Dead(d) => m.dead_letters.with_label_values(&[d.reason.as_str()]).inc(),
            }
        }
    }
}
