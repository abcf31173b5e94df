//! The rules: `decide(state, record) -> (state change, outputs)`, a pure function.
//!
//! Kafka and sled stay at the edges (`worker.rs`), so replaying a partition folds the
//! same records through the same function and reproduces the same state and the same
//! outputs, with the same deterministic ids. Wall-clock decisions never happen here:
//! a sequence gap that stays open too long is resolved only when a `GapTimeout`
//! control record, written into the partition by the worker's timer, is read back.
//!
//! Per payment, in partition order:
//! 1. **Dedup** on (source, event_id): the same body again is a duplicate (skipped); a
//!    different body is `event_id_conflict`.
//! 2. **Order.** With a `sequence`: the next expected one is applied and releases the
//!    held ones after it; later ones are held; earlier ones are `stale`. Without: the
//!    lifecycle rank orders events and a lower-ranked one is superseded (skipped).
//! 3. **Activate.** An applied `payment.completed` naming a policy emits one
//!    `PolicyActivated`, unless another payment holds the policy
//!    (`policy_already_active`); without a policy it is `no_policy`. An applied
//!    `payment.refunded` after activation emits `PolicyCancelled`. An impossible
//!    transition is `invalid_transition`.

use hookstream_schemas::{
    DeadLetterReason, GapTimeout, PolicyActivated, PolicyCancelled, PolicyEvent, PolicyEventKind,
};

use crate::rules::ids::cancellation_id;
pub use crate::rules::ids::{activation_id, dead_letter, dedup_key};
use crate::rules::input::Input;
use crate::rules::limits::{self, held_size, missing_ranges, Limits};
use crate::rules::model::{
    Activation, DedupEntry, EventType, HeldEvent, HistoryEntry, Output, PaymentState, RawRecord, WebhookEvent,
};

/// The answer of the policy registry to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The policy is now (or already was) activated by this activation id.
    Granted,
    /// Another activation holds the policy.
    HeldBy { payment_id: String, activation_id: String },
}

/// Which activation holds each policy, across payments. Claiming is idempotent for the
/// same activation id, so re-deciding a record after a crash is granted again.
pub trait PolicyRegistry {
    fn claim(&mut self, policy_id: &str, activation_id: &str, payment_id: &str) -> Result<Claim, RegistryError>;
}

/// The registry could not answer (e.g. disk trouble): transient, the whole record is
/// decided again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy registry: {0}")]
pub struct RegistryError(pub String);

/// What happened to the record, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Held,
    Duplicate,
    Superseded,
    DeadLettered,
    GapReleased,
    Ignored,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Held => "held",
            Outcome::Duplicate => "duplicate",
            Outcome::Superseded => "superseded",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::GapReleased => "gap_released",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The state change and outputs one record causes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The payment's new state (`None`: the record names no payment).
    pub payment: Option<PaymentState>,
    /// A dedup entry to insert: (key, entry).
    pub dedup: Option<(String, DedupEntry)>,
    pub outputs: Vec<Output>,
    pub outcome: Outcome,
}

struct Ctx<'a> {
    outputs: Vec<Output>,
    policies: &'a mut dyn PolicyRegistry,
    limits: &'a Limits,
    /// Set when an event was refused without entering the payment's flow (as opposed
    /// to an applied event whose effect failed: `no_policy`, `policy_already_active`).
    rejected: bool,
}

fn entry(record: &RawRecord, ev: Option<&WebhookEvent>, outcome: impl Into<String>) -> HistoryEntry {
    HistoryEntry {
        offset: record.origin.offset,
        event_id: ev.map(|e| e.event_id.clone()),
        sequence: ev.and_then(|e| e.sequence),
        event_type: ev.map(|e| e.event_type),
        outcome: outcome.into(),
    }
}

impl Ctx<'_> {
    /// Dead-letter an event that is refused: it does not enter the payment's flow.
    fn reject(
        &mut self,
        st: &mut PaymentState,
        ev: &WebhookEvent,
        rec: &RawRecord,
        reason: DeadLetterReason,
        detail: String,
    ) {
        self.rejected = true;
        self.effect_failed(st, ev, rec, reason, detail);
    }

    /// Dead-letter an applied event whose effect cannot happen.
    fn effect_failed(
        &mut self,
        st: &mut PaymentState,
        ev: &WebhookEvent,
        rec: &RawRecord,
        reason: DeadLetterReason,
        detail: String,
    ) {
        self.outputs.push(dead_letter(
            rec,
            reason,
            detail,
            Some((&ev.source, &ev.event_id)),
            Some(&ev.payment_id),
            Vec::new(),
        ));
        st.log(entry(rec, Some(ev), format!("dead_lettered:{reason}")));
    }

    /// Apply an event in order: check the transition, then its effects.
    fn apply(&mut self, st: &mut PaymentState, ev: &WebhookEvent, rec: &RawRecord) -> Result<Outcome, RegistryError> {
        if !ev.event_type.may_follow(st.status) {
            let from = st
                .status
                .map_or("nothing".to_owned(), |s| format!("{s:?}").to_lowercase());
            let detail = format!("payment.{:?} cannot follow {from}", ev.event_type).to_lowercase();
            self.reject(st, ev, rec, DeadLetterReason::InvalidTransition, detail);
            return Ok(Outcome::DeadLettered);
        }
        st.status = Some(ev.event_type);
        match ev.event_type {
            EventType::Completed => return self.activate(st, ev, rec),
            EventType::Refunded => self.cancel(st, ev),
            _ => {}
        }
        st.log(entry(rec, Some(ev), "applied"));
        Ok(Outcome::Applied)
    }

    fn activate(
        &mut self,
        st: &mut PaymentState,
        ev: &WebhookEvent,
        rec: &RawRecord,
    ) -> Result<Outcome, RegistryError> {
        let Some(policy_id) = ev.policy_id.clone() else {
            self.effect_failed(
                st,
                ev,
                rec,
                DeadLetterReason::NoPolicy,
                "completed payment names no policy".into(),
            );
            return Ok(Outcome::DeadLettered);
        };
        let id = activation_id(&policy_id, &ev.source, &ev.event_id);
        Ok(match self.policies.claim(&policy_id, &id, &ev.payment_id)? {
            Claim::HeldBy { payment_id, .. } => {
                let detail = format!("policy {policy_id} is already active through payment {payment_id}");
                self.effect_failed(st, ev, rec, DeadLetterReason::PolicyAlreadyActive, detail);
                Outcome::DeadLettered
            }
            Claim::Granted => {
                self.outputs.push(Output::Policy(PolicyEvent {
                    policy_id: policy_id.clone(),
                    event: PolicyEventKind::Activated(PolicyActivated {
                        activation_id: id.clone(),
                        policy_id: policy_id.clone(),
                        payment_id: ev.payment_id.clone(),
                        source: ev.source.clone(),
                        payment_event_id: ev.event_id.clone(),
                        amount: ev.amount,
                        currency: ev.currency.clone(),
                        occurred_at: ev.occurred_at.clone(),
                        activated_at: ev.received_at,
                    }),
                }));
                st.activation = Some(Activation {
                    activation_id: id,
                    policy_id,
                    event_id: ev.event_id.clone(),
                });
                st.log(entry(rec, Some(ev), "applied"));
                Outcome::Applied
            }
        })
    }

    fn cancel(&mut self, st: &mut PaymentState, ev: &WebhookEvent) {
        let Some(a) = st.activation.clone() else {
            return;
        };
        if st.cancellation_id.is_some() {
            return;
        }
        let id = cancellation_id(&a.policy_id, &ev.source, &ev.event_id);
        self.outputs.push(Output::Policy(PolicyEvent {
            policy_id: a.policy_id.clone(),
            event: PolicyEventKind::Cancelled(PolicyCancelled {
                cancellation_id: id.clone(),
                activation_id: a.activation_id,
                policy_id: a.policy_id,
                payment_id: ev.payment_id.clone(),
                source: ev.source.clone(),
                payment_event_id: ev.event_id.clone(),
                amount: ev.amount,
                currency: ev.currency.clone(),
                occurred_at: ev.occurred_at.clone(),
                cancelled_at: ev.received_at,
            }),
        }));
        st.cancellation_id = Some(id);
    }

    /// Apply `next_sequence`, then every held event that is now next.
    fn release_held(&mut self, st: &mut PaymentState) -> Result<(), RegistryError> {
        while let Some(h) = st.held.remove(&st.next_sequence) {
            self.apply(st, &h.event, &h.record)?;
            st.next_sequence = st.next_sequence.saturating_add(1);
        }
        Ok(())
    }
}

/// Decide what `record` (classified as `input`) does to its payment.
///
/// `payment` is the stored state of the payment the input names (if any), `seen` the
/// dedup entry of its (source, event_id) if one exists. The only error is a registry
/// that cannot answer; the caller decides the record again later.
pub fn decide(
    record: &RawRecord,
    input: Input,
    payment: Option<PaymentState>,
    seen: Option<&DedupEntry>,
    policies: &mut dyn PolicyRegistry,
    limits: &Limits,
) -> Result<Decision, RegistryError> {
    let mut cx = Ctx {
        outputs: Vec::new(),
        policies,
        limits,
        rejected: false,
    };
    let (payment, dedup, outcome) = match input {
        Input::Invalid {
            reason,
            detail,
            source,
            event_id,
            payment_id,
        } => {
            let event = source.as_deref().zip(event_id.as_deref());
            cx.outputs.push(dead_letter(
                record,
                reason,
                detail,
                event,
                payment_id.as_deref(),
                Vec::new(),
            ));
            let payment = payment_id.map(|pid| {
                let mut st = payment.unwrap_or_else(|| PaymentState::new(&pid));
                let mut e = entry(record, None, format!("dead_lettered:{reason}"));
                e.event_id = event_id;
                st.log(e);
                st
            });
            (payment, None, Outcome::DeadLettered)
        }
        Input::GapTimeout(g) => {
            let mut st = payment.unwrap_or_else(|| PaymentState::new(&g.payment_id));
            let outcome = gap_timeout(&mut cx, &mut st, record, &g)?;
            (Some(st), None, outcome)
        }
        Input::Webhook(ev) => {
            let mut st = payment.unwrap_or_else(|| PaymentState::new(&ev.payment_id));
            let outcome = webhook(&mut cx, &mut st, record, ev.clone(), seen)?;
            // Only an event that entered the payment's flow is remembered: a refused
            // one (stale, out of range, invalid) can be retried or re-driven.
            let accepted = outcome != Outcome::Duplicate && !cx.rejected;
            let dedup = accepted.then(|| {
                let entry = DedupEntry {
                    first_seen_ms: record.origin.timestamp_ms,
                    body_hash: ev.body_hash.clone(),
                    offset: record.origin.offset,
                };
                (dedup_key(&ev.source, &ev.event_id), entry)
            });
            (Some(st), dedup, outcome)
        }
    };
    Ok(Decision {
        payment,
        dedup,
        outputs: cx.outputs,
        outcome,
    })
}

/// A control record: resolve the gap it names, if that gap is still open.
fn gap_timeout(
    cx: &mut Ctx<'_>,
    st: &mut PaymentState,
    record: &RawRecord,
    g: &GapTimeout,
) -> Result<Outcome, RegistryError> {
    if st.held.is_empty() || st.next_sequence != g.next_expected_sequence {
        st.log(entry(record, None, "gap_timeout_ignored"));
        return Ok(Outcome::Ignored);
    }
    let missing = missing_ranges(st.next_sequence, &st.held);
    let held: Vec<i64> = st.held.keys().copied().collect();
    let detail = format!(
        "sequence gap timed out: missing {}; applying {} held {:?} in order \
         (gap opened at {} ms, decided at {} ms)",
        limits::describe(&missing),
        held.len(),
        &held[..held.len().min(10)],
        g.gap_opened_at,
        g.decided_at
    );
    cx.outputs.push(dead_letter(
        record,
        DeadLetterReason::SequenceGapTimeout,
        detail,
        None,
        Some(&st.payment_id),
        missing,
    ));
    st.log(entry(record, None, "gap_timeout"));
    while let Some((seq, h)) = st.held.pop_first() {
        st.next_sequence = seq;
        cx.apply(st, &h.event, &h.record)?;
        st.next_sequence = seq.saturating_add(1);
    }
    Ok(Outcome::GapReleased)
}

/// A webhook: dedup, then order, then apply.
fn webhook(
    cx: &mut Ctx<'_>,
    st: &mut PaymentState,
    record: &RawRecord,
    ev: WebhookEvent,
    seen: Option<&DedupEntry>,
) -> Result<Outcome, RegistryError> {
    if let Some(seen) = seen {
        if seen.body_hash == ev.body_hash {
            st.log(entry(record, Some(&ev), "duplicate"));
            return Ok(Outcome::Duplicate);
        }
        let detail = format!(
            "event id {} was first seen at offset {} with a different body",
            ev.event_id, seen.offset
        );
        cx.reject(st, &ev, record, DeadLetterReason::EventIdConflict, detail);
        return Ok(Outcome::DeadLettered);
    }
    let Some(s) = ev.sequence else {
        return rank_order(cx, st, record, ev);
    };
    let next = st.next_sequence;
    let ahead = s.saturating_sub(next);
    if s < next {
        let detail = format!("sequence {s} arrived after it was applied or skipped (next expected {next})");
        cx.reject(st, &ev, record, DeadLetterReason::Stale, detail);
        return Ok(Outcome::DeadLettered);
    }
    if ahead > cx.limits.max_sequence_ahead {
        let detail = format!(
            "sequence {s} is {ahead} ahead of the next expected {next}; at most {} ahead is held",
            cx.limits.max_sequence_ahead
        );
        cx.reject(st, &ev, record, DeadLetterReason::SequenceOutOfRange, detail);
        return Ok(Outcome::DeadLettered);
    }
    if let Some(other) = st.held.get(&s).map(|h| h.event.event_id.clone()) {
        let detail = format!("sequence {s} is already held for event {other}");
        cx.reject(st, &ev, record, DeadLetterReason::InvalidTransition, detail);
        return Ok(Outcome::DeadLettered);
    }
    if s == next {
        let o = cx.apply(st, &ev, record)?;
        let rejected = cx.rejected;
        st.next_sequence = next.saturating_add(1);
        cx.release_held(st)?;
        // Whether *this* event was refused, not one of the held ones released after it.
        cx.rejected = rejected;
        return Ok(o);
    }
    let held = HeldEvent {
        event: ev,
        record: record.clone(),
    };
    let bytes: usize = st.held.values().map(held_size).sum::<usize>() + held_size(&held);
    if st.held.len() >= cx.limits.max_held_events || bytes > cx.limits.max_held_bytes {
        let detail = format!(
            "payment holds {} out-of-order events; with this one {bytes} bytes (at most {} events, {} bytes)",
            st.held.len(),
            cx.limits.max_held_events,
            cx.limits.max_held_bytes
        );
        cx.reject(st, &held.event, record, DeadLetterReason::HeldLimitExceeded, detail);
        return Ok(Outcome::DeadLettered);
    }
    st.log(entry(record, Some(&held.event), "held"));
    st.held.insert(s, held);
    Ok(Outcome::Held)
}

/// Without a sequence the lifecycle rank orders events: one ranked at or below the
/// payment's current state is superseded (a late copy of an earlier step).
fn rank_order(
    cx: &mut Ctx<'_>,
    st: &mut PaymentState,
    record: &RawRecord,
    ev: WebhookEvent,
) -> Result<Outcome, RegistryError> {
    match st.status {
        Some(cur) if ev.event_type.rank() <= cur.rank() => {
            st.log(entry(record, Some(&ev), "superseded"));
            Ok(Outcome::Superseded)
        }
        _ => cx.apply(st, &ev, record),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
