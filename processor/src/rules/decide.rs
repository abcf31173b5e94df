//! The payment stage's rules: `decide(state, record) -> (state change, outputs)`, a
//! pure function.
//!
//! Kafka and sled stay at the edges (the partition loop), so replaying a partition folds
//! the same records through the same function and reproduces the same state and the
//! same outputs, with the same deterministic ids. Wall-clock decisions never happen
//! here: a sequence gap that stays open too long is resolved only when a `GapTimeout`
//! control record, written into the partition by the worker's timer, is read back.
//!
//! Per payment, identified by (source, payment_id), in partition order:
//! 1. **Dedup** on (source, event_id): the same body again is a duplicate (skipped); a
//!    different body is `event_id_conflict`.
//! 2. **Order.** With a `sequence`: the next expected one is applied and releases the
//!    held ones after it; later ones are held; earlier ones are `stale`. Without: the
//!    lifecycle rank orders events and a lower-ranked one is superseded (skipped).
//! 3. **Ask the policy stage.** An applied `payment.completed` naming a policy sends
//!    one `PolicyRequest` ACTIVATE to the policy stage ([`crate::rules::policy`]), which
//!    decides whether this payment gets the policy; without a policy it is `no_policy`.
//!    An applied `payment.refunded` after that sends CANCEL. An impossible transition is
//!    `invalid_transition`.

use hookstream_schemas::{DeadLetterReason, GapTimeout};

use crate::rules::effects::{entry, Ctx};
use crate::rules::ids::redrive_of;
pub use crate::rules::ids::{activation_id, dead_letter, dedup_key};
use crate::rules::input::Input;
use crate::rules::limits::{self, held_size, missing_ranges, Limits};
use crate::rules::model::{DedupEntry, HeldEvent, Output, PaymentState, RawRecord, WebhookEvent};
pub use crate::rules::outcome::Outcome;

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

/// Decide what `record` (classified as `input`) does to its payment.
///
/// `payment` is the stored state of the payment the input names (if any, see
/// [`Input::payment_key`]), `seen` the dedup entry of its (source, event_id) if one
/// exists and has not expired, `now_ms` the partition's clock at this record
/// ([`crate::rules::clock`]), from which a new dedup entry counts its window.
pub fn decide(
    record: &RawRecord,
    input: Input,
    payment: Option<PaymentState>,
    seen: Option<&DedupEntry>,
    limits: &Limits,
    now_ms: i64,
) -> Decision {
    let mut cx = Ctx {
        outputs: Vec::new(),
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
            let named = source.as_deref().zip(payment_id.as_deref());
            let payment = named.map(|(src, pid)| {
                let mut st = payment.unwrap_or_else(|| PaymentState::new(src, pid));
                let mut e = entry(record, None, format!("dead_lettered:{reason}"));
                e.event_id = event_id;
                st.log(e);
                st
            });
            (payment, None, Outcome::DeadLettered)
        }
        Input::GapTimeout(g) => {
            let mut st = payment.unwrap_or_else(|| PaymentState::new(&g.source, &g.payment_id));
            let outcome = gap_timeout(&mut cx, &mut st, record, &g);
            (Some(st), None, outcome)
        }
        Input::Webhook(ev) => {
            let mut st = payment.unwrap_or_else(|| PaymentState::new(&ev.source, &ev.payment_id));
            let outcome = webhook(&mut cx, &mut st, record, ev.clone(), seen);
            // Only an event that entered the payment's flow is remembered: a refused
            // one (stale, out of range, invalid) can be retried or re-driven.
            let accepted = !matches!(outcome, Outcome::Duplicate | Outcome::Replayed) && !cx.rejected;
            let dedup = accepted.then(|| {
                let entry = DedupEntry {
                    first_seen_ms: now_ms,
                    body_hash: ev.body_hash.clone(),
                    offset: record.origin.offset,
                };
                (dedup_key(&ev.source, &ev.event_id), entry)
            });
            (Some(st), dedup, outcome)
        }
    };
    Decision {
        payment,
        dedup,
        outputs: cx.outputs,
        outcome,
    }
}

/// A control record: resolve the gap it names, if that gap is still open.
fn gap_timeout(cx: &mut Ctx<'_>, st: &mut PaymentState, record: &RawRecord, g: &GapTimeout) -> Outcome {
    if st.held.is_empty() || st.next_sequence != g.next_expected_sequence {
        st.log(entry(record, None, "gap_timeout_ignored"));
        return Outcome::Ignored;
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
    let mut letter = dead_letter(
        record,
        DeadLetterReason::SequenceGapTimeout,
        detail,
        None,
        Some(&st.payment_id),
        missing,
    );
    // A control record names no event, but its payment's source, which a letter is
    // filtered and re-driven by.
    if let Output::Dead(d) = &mut letter {
        d.source = Some(st.source.clone());
    }
    cx.outputs.push(letter);
    st.log(entry(record, None, "gap_timeout"));
    while let Some((seq, h)) = st.held.pop_first() {
        st.next_sequence = seq;
        cx.apply(st, &h.event, &h.record);
        st.next_sequence = seq.saturating_add(1);
    }
    Outcome::GapReleased
}

/// A webhook: dedup, then order, then apply.
fn webhook(
    cx: &mut Ctx<'_>,
    st: &mut PaymentState,
    record: &RawRecord,
    ev: WebhookEvent,
    seen: Option<&DedupEntry>,
) -> Outcome {
    if let Some(o) = deduplicate(cx, st, record, &ev, seen) {
        return o;
    }
    match ev.sequence {
        None => rank_order(cx, st, record, ev),
        Some(s) => in_sequence(cx, st, record, ev, s),
    }
}

/// What an event id seen before (`seen`, its dedup entry) comes to: a conflict when
/// the body differs, else a duplicate (a replayed record or a re-drive sends its request
/// again); `None` for an id not seen.
fn deduplicate(
    cx: &mut Ctx<'_>,
    st: &mut PaymentState,
    record: &RawRecord,
    ev: &WebhookEvent,
    seen: Option<&DedupEntry>,
) -> Option<Outcome> {
    if let Some(seen) = seen.filter(|s| s.body_hash != ev.body_hash) {
        let detail = format!(
            "event id {} was first seen at offset {} with a different body",
            ev.event_id, seen.offset
        );
        cx.reject(st, ev, record, DeadLetterReason::EventIdConflict, detail);
        return Some(Outcome::DeadLettered);
    }
    if seen.is_some_and(|s| s.offset == record.origin.offset) {
        // This very record was applied before, and the state reflects it: decided again
        // in a replay in place, it sends again the request it made (same ids), nothing
        // else, and changes nothing.
        cx.request_again(st, ev);
        st.log(entry(record, Some(ev), "replayed"));
        return Some(Outcome::Replayed);
    }
    if redrive_of(record).is_some() && cx.request_again(st, ev) {
        st.log(entry(record, Some(ev), "duplicate:requested_again"));
        return Some(Outcome::Duplicate);
    }
    if seen.is_some() {
        st.log(entry(record, Some(ev), "duplicate"));
        return Some(Outcome::Duplicate);
    }
    None
}

/// An event with sequence `s`: stale below the next expected one, refused too far
/// ahead or when `s` is held already, applied (releasing the held ones after it) when
/// it is the next, else held.
fn in_sequence(cx: &mut Ctx<'_>, st: &mut PaymentState, record: &RawRecord, ev: WebhookEvent, s: i64) -> Outcome {
    let next = st.next_sequence;
    let ahead = s.saturating_sub(next);
    if s < next {
        let detail = format!("sequence {s} arrived after it was applied or skipped (next expected {next})");
        cx.reject(st, &ev, record, DeadLetterReason::Stale, detail);
        return Outcome::DeadLettered;
    }
    if ahead > cx.limits.max_sequence_ahead {
        let detail = format!(
            "sequence {s} is {ahead} ahead of the next expected {next}; at most {} ahead is held",
            cx.limits.max_sequence_ahead
        );
        cx.reject(st, &ev, record, DeadLetterReason::SequenceOutOfRange, detail);
        return Outcome::DeadLettered;
    }
    if let Some(other) = st.held.get(&s).map(|h| h.event.event_id.clone()) {
        let detail = format!("sequence {s} is already held for event {other}");
        cx.reject(st, &ev, record, DeadLetterReason::InvalidTransition, detail);
        return Outcome::DeadLettered;
    }
    if s == next {
        let o = cx.apply(st, &ev, record);
        let rejected = cx.rejected;
        st.next_sequence = next.saturating_add(1);
        cx.release_held(st);
        // Whether *this* event was refused, not one of the held ones released after it.
        cx.rejected = rejected;
        return o;
    }
    hold(cx, st, record, ev, s)
}

/// Hold `ev` (sequence `s`) until the gap before it fills, unless the payment already
/// holds as many events or bytes as the limits allow.
fn hold(cx: &mut Ctx<'_>, st: &mut PaymentState, record: &RawRecord, ev: WebhookEvent, s: i64) -> Outcome {
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
        return Outcome::DeadLettered;
    }
    st.log(entry(record, Some(&held.event), "held"));
    st.held.insert(s, held);
    Outcome::Held
}

/// Without a sequence the lifecycle rank orders events: one ranked at or below the
/// payment's current state is superseded (a late copy of an earlier step).
fn rank_order(cx: &mut Ctx<'_>, st: &mut PaymentState, record: &RawRecord, ev: WebhookEvent) -> Outcome {
    match st.status {
        Some(cur) if ev.event_type.rank() <= cur.rank() => {
            st.log(entry(record, Some(&ev), "superseded"));
            Outcome::Superseded
        }
        _ => cx.apply(st, &ev, record),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "decide_props.rs"]
mod props;
