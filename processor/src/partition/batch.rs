//! Deciding one batch of a partition: decide every record against sled overlaid with
//! the batch's own changes, send the outputs and entries (`write.rs`), then hand its
//! changes to `persist.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookstream_schemas::{PolicyEventKind, PolicyRequest};
use tokio_util::sync::CancellationToken;

use super::io::{Backend, Incoming};
use super::retry::{now_ms, Backoff};
use super::worker::{Folded, Mode, Worker};
use super::Stage;
use super::Stopped;
use crate::rules::clock;
use crate::rules::decide::{decide, dedup_key, Decision, Outcome};
use crate::rules::input::{classify, Input};
use crate::rules::limits::Limits;
use crate::rules::model::{Output, PaymentState, RawRecord};
use crate::rules::policy::{decide_policy, PolicyState};
use crate::rules::retention::{self, Retention};
use crate::store::{Changes, StoreError};
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

/// What one record changes and emits, in either stage.
struct Step {
    payment: Option<PaymentState>,
    dedup: Option<(String, crate::rules::model::DedupEntry)>,
    policy: Option<PolicyState>,
    outputs: Vec<Output>,
    outcome: Outcome,
}

impl From<Decision> for Step {
    fn from(d: Decision) -> Self {
        Step {
            payment: d.payment,
            dedup: d.dedup,
            policy: None,
            outputs: d.outputs,
            outcome: d.outcome,
        }
    }
}

/// Why a record could not be decided now.
#[derive(Debug, thiserror::Error)]
enum DecideError {
    /// Disk or registry trouble: transient, decide again after a pause.
    #[error("state store: {0}")]
    Transient(String),
    /// A stored value does not read back: permanent until the state is rebuilt.
    #[error("state store")]
    Corrupt(#[source] StoreError),
}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => DecideError::Corrupt(e),
            other => DecideError::Transient(other.to_string()),
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
            Some(g) => {
                let (inside, rewind) = tokio::select! {
                    e = g.enter(self.partition) => e,
                    () = stop.cancelled() => return Err(Stopped),
                };
                if rewind {
                    return Ok(Folded::Rewind);
                }
                Some(inside)
            }
            None => None,
        };
        let store = self.store.clone();
        let applied = self
            .cx
            .retry("store", stop, || async { store.applied_offset() })
            .await?;
        let clock = self.cx.retry("store", stop, || async { store.max_ts() }).await?;
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
        let next = match &gate {
            Some(g) => match tokio::select! {
                w = self.write_in_transaction(&mut decided, &entries, mode) => w,
                () = stop.cancelled() => {
                    // Part of the batch may be in the transaction: it must not commit.
                    g.fail(self.partition);
                    return Err(Stopped);
                }
            } {
                Ok(next) => next,
                Err(e) => {
                    g.fail(self.partition);
                    if e.changelog_refused && self.write_stall.is_none() {
                        let reason = format!("changelog refused for good: {}", e.detail);
                        self.write_stall = Some(self.stall(reason));
                    } else {
                        tracing::warn!(partition = self.partition, error = %e.detail, "a send failed; the transaction is aborted");
                    }
                    return Ok(Folded::Rewind);
                }
            },
            None => {
                // The outputs first, then the state's changelog entries, then the meta
                // entry that closes the batch: an entry is logged only once what it
                // records was published, so a restore never skips an output.
                if mode == Mode::Live && !decided.outputs.is_empty() {
                    self.emit(&mut decided.outputs, stop).await?;
                }
                match self.log_batch(&entries, &decided.changes, stop).await? {
                    Ok(next) => next,
                    Err(folded) => return Ok(folded),
                }
            }
        };
        if mode == Mode::Live {
            self.count_outputs(&decided.outputs);
        }
        let persisting = SystemTime::now();
        let persisted = async {
            if gate.is_some() {
                let store = self.store.clone();
                self.cx
                    .retry("store", stop, || async { store.mark_uncommitted() })
                    .await?;
            }
            self.persist(decided.changes, entries, next, mode, stop).await
        };
        if let Err(stopped) = persisted.await {
            // Under exactly-once the batch is in the transaction, its offset not
            // recorded: the transaction must not commit.
            if let Some(g) = &gate {
                g.fail(self.partition);
            }
            return Err(stopped);
        }
        if let Some(g) = &gate {
            match mode {
                Mode::Live => g.decided(self.partition, last + 1),
                Mode::Rebuild => g.wrote(self.partition),
            }
        }
        let persisted = SystemTime::now();
        for span in decided.spans {
            self.cx.tracer.phase(&span, "processor.emit", emitting, persisting);
            self.cx.tracer.phase(&span, "processor.persist", persisting, persisted);
            let offset = span.offset;
            if let Some(sc) = span.end() {
                self.await_commit(offset, sc);
            }
        }
        if mode == Mode::Live {
            let now = now_ms();
            for ts in decided.timestamps {
                let seconds = (now - ts).max(0) as f64 / 1000.0;
                self.cx.metrics.processing_seconds.observe(seconds);
            }
            self.update_held_gauge();
        }
        Ok(Folded::Done(Some(last)))
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
        let p = &cx.settings.processing;
        let limits = p.limits();
        let max_ahead = i64::try_from(p.max_record_time_ahead.as_millis()).unwrap_or(i64::MAX);
        let keep = Retention::new(p.dedup_window, p.refund_window);
        let mut d = Decided::default();
        for inc in batch {
            let offset = inc.record.origin.offset;
            let replayed = self.replay_until.is_some_and(|u| offset < u);
            if (applied.is_some_and(|a| offset <= a) && !replayed) || d.changes.applied.is_some_and(|a| offset <= a) {
                continue;
            }
            let rec = inc.record.clone();
            let deciding = SystemTime::now();
            let now = clock::advance(clock, rec.origin.timestamp_ms, max_ahead);
            clock = Some(now);
            let mut backoff = Backoff::new(&cx.metrics, self.max_backoff(), "store");
            let decision = loop {
                match self.decide_one(&rec, &d.changes, &limits, now) {
                    Ok(decision) => break decision,
                    Err(DecideError::Corrupt(e)) => {
                        tracing::error!(partition = self.partition, offset, error = ?e, "stored state does not read back");
                        return Ok(None);
                    }
                    Err(e) => backoff.pause(&e, stop).await?,
                }
            };
            let outcome = decision.outcome.as_str();
            cx.metrics
                .records
                .with_label_values(&[self.stage.as_str(), outcome])
                .inc();
            let span = match mode {
                Mode::Live => {
                    let at = (self.stage.as_str(), self.partition, offset);
                    cx.tracer.start(inc.traceparent.as_deref(), deciding, at)
                }
                Mode::Rebuild => None,
            };
            let traceparent = span.as_ref().map(|s| {
                tracing::debug!(
                    trace_id = s.trace_id,
                    partition = self.partition,
                    offset,
                    outcome,
                    "record decided"
                );
                s.outcome(outcome);
                cx.tracer.phase(s, "processor.decide", deciding, SystemTime::now());
                s.traceparent.clone()
            });
            d.spans.extend(span);
            if let Some(mut p) = decision.payment {
                retention::stamp_payment(&mut p, now, &keep);
                if mode == Mode::Live {
                    self.gaps.watch(&p.key(), p.next_sequence, p.held.len() as i64);
                }
                d.changes.payments.insert(p.key(), p);
            }
            if let Some(mut p) = decision.policy {
                retention::stamp_policy(&mut p, now, &keep);
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
            d.changes.max_ts = Some(now);
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
        Ok(Some(d))
    }

    /// Decide one record against sled overlaid with the batch's own changes.
    fn decide_one(&self, rec: &RawRecord, changes: &Changes, limits: &Limits, now: i64) -> Result<Step, DecideError> {
        match self.stage {
            Stage::Payments => {
                let input = classify(rec, &self.cx.settings.fields);
                let payment = match input.payment_key() {
                    Some(k) => match changes.payments.get(&k) {
                        Some(st) => Some(st.clone()),
                        None => self.store.payment(&k)?,
                    },
                    None => None,
                };
                // A payment past its retention is forgotten here, in the fold.
                let payment = payment.filter(|st| !retention::is_expired(st.evict_at_ms, now));
                let seen = match &input {
                    Input::Webhook(e) => {
                        let k = dedup_key(&e.source, &e.event_id);
                        match changes.dedup.get(&k) {
                            Some(e) => Some(e.clone()),
                            None => self.store.dedup(&k)?,
                        }
                    }
                    _ => None,
                };
                // An entry past the window is forgotten here, in the fold, whether or not
                // the sweep has removed it yet.
                let window = i64::try_from(self.cx.settings.processing.dedup_window.as_millis()).unwrap_or(i64::MAX);
                let seen = seen.filter(|e| !clock::is_expired(e.first_seen_ms, now, window));
                Ok(decide(rec, input, payment, seen.as_ref(), limits, now).into())
            }
            Stage::Policies => {
                let request = rec
                    .value
                    .as_deref()
                    .ok_or_else(|| "record has no value (tombstone)".to_owned())
                    .and_then(|v| hookstream_schemas::decode::<PolicyRequest>(v).map_err(|e| e.to_string()));
                let policy_id = request.as_ref().ok().map(|r| r.policy_id.clone());
                let state = match policy_id {
                    Some(id) => match changes.policies.get(&id) {
                        Some(st) => Some(st.clone()),
                        None => self.store.policy(&id)?,
                    },
                    None => None,
                };
                let state = state.filter(|st| !retention::is_expired(st.evict_at_ms, now));
                let d = decide_policy(rec, request, state, limits);
                Ok(Step {
                    payment: None,
                    dedup: None,
                    policy: d.policy,
                    outputs: d.outputs,
                    outcome: d.outcome,
                })
            }
        }
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
