//! A payment-stage decision in progress ([`Ctx`]): the outputs one record adds (dead
//! letters, requests to the policy stage) and the effects an applied event has on its
//! payment (activation, cancellation, held events released).

use hookstream_schemas::{DeadLetterReason, PolicyRequest, PolicyRequestKind};

use crate::rules::ids::{activation_id, cancellation_id, dead_letter, request_id};
use crate::rules::limits::Limits;
use crate::rules::model::{Activation, EventType, HistoryEntry, Output, PaymentState, RawRecord, WebhookEvent};
use crate::rules::outcome::Outcome;

pub(crate) struct Ctx<'a> {
    pub(crate) outputs: Vec<Output>,
    pub(crate) limits: &'a Limits,
    /// Set when an event was refused without entering the payment's flow (as opposed
    /// to an applied event whose effect failed: `no_policy`, `policy_already_active`).
    pub(crate) rejected: bool,
}

pub(crate) fn entry(record: &RawRecord, ev: Option<&WebhookEvent>, outcome: impl Into<String>) -> HistoryEntry {
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
    pub(crate) fn reject(
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

    /// Dead-letter an applied event whose effect cannot happen (`no_policy`).
    pub(crate) fn effect_failed(
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
    pub(crate) fn apply(&mut self, st: &mut PaymentState, ev: &WebhookEvent, rec: &RawRecord) -> Outcome {
        if !ev.event_type.may_follow(st.status) {
            let from = st
                .status
                .map_or("nothing".to_owned(), |s| format!("{s:?}").to_lowercase());
            let detail = format!("payment.{:?} cannot follow {from}", ev.event_type).to_lowercase();
            self.reject(st, ev, rec, DeadLetterReason::InvalidTransition, detail);
            return Outcome::DeadLettered;
        }
        st.status = Some(ev.event_type);
        match ev.event_type {
            EventType::Completed => return self.activate(st, ev, rec),
            EventType::Refunded => self.cancel(st, ev),
            _ => {}
        }
        st.log(entry(rec, Some(ev), "applied"));
        Outcome::Applied
    }

    /// A completed payment asks the policy stage to activate its policy.
    fn activate(&mut self, st: &mut PaymentState, ev: &WebhookEvent, rec: &RawRecord) -> Outcome {
        let Some(policy_id) = ev.policy_id.clone() else {
            let detail = "completed payment names no policy".to_owned();
            self.effect_failed(st, ev, rec, DeadLetterReason::NoPolicy, detail);
            return Outcome::DeadLettered;
        };
        let id = activation_id(&policy_id, &ev.source, &ev.event_id);
        self.outputs.push(Output::Request(request(
            PolicyRequestKind::Activate,
            &policy_id,
            &id,
            ev,
        )));
        st.activation = Some(Activation {
            activation_id: id,
            policy_id,
            event_id: ev.event_id.clone(),
        });
        st.log(entry(rec, Some(ev), "applied"));
        Outcome::Applied
    }

    /// A refunded payment that asked for an activation asks to cancel it; the policy
    /// stage cancels only if this payment holds the policy.
    fn cancel(&mut self, st: &mut PaymentState, ev: &WebhookEvent) {
        let Some(a) = st.activation.clone() else {
            return;
        };
        if st.cancellation_id.is_some() {
            return;
        }
        let r = request(PolicyRequestKind::Cancel, &a.policy_id, &a.activation_id, ev);
        st.cancellation_id = Some(cancellation_id(&a.policy_id, &ev.source, &ev.event_id));
        self.outputs.push(Output::Request(r));
    }

    /// A re-driven completion or refund this payment already applied: send again the
    /// request it made (the same ids: the policy stage decides it once), so that
    /// re-driving the letter of a request the broker refused recovers it. Whether it was
    /// such an event.
    pub(crate) fn request_again(&mut self, st: &PaymentState, ev: &WebhookEvent) -> bool {
        let Some(a) = &st.activation else { return false };
        let kind = if a.event_id == ev.event_id {
            PolicyRequestKind::Activate
        } else if st.cancellation_id.as_deref() == Some(&cancellation_id(&a.policy_id, &ev.source, &ev.event_id)) {
            PolicyRequestKind::Cancel
        } else {
            return false;
        };
        self.outputs
            .push(Output::Request(request(kind, &a.policy_id, &a.activation_id, ev)));
        true
    }

    /// Apply `next_sequence`, then every held event that is now next.
    pub(crate) fn release_held(&mut self, st: &mut PaymentState) {
        while let Some(h) = st.held.remove(&st.next_sequence) {
            self.apply(st, &h.event, &h.record);
            st.next_sequence = st.next_sequence.saturating_add(1);
        }
    }
}

/// The request `ev` (completed or refunded) sends to the policy stage.
fn request(kind: PolicyRequestKind, policy_id: &str, activation_id: &str, ev: &WebhookEvent) -> PolicyRequest {
    PolicyRequest {
        request_id: request_id(kind, policy_id, &ev.source, &ev.payment_id, &ev.event_id),
        kind,
        policy_id: policy_id.to_owned(),
        activation_id: activation_id.to_owned(),
        source: ev.source.clone(),
        payment_id: ev.payment_id.clone(),
        payment_event_id: ev.event_id.clone(),
        amount: ev.amount,
        currency: ev.currency.clone(),
        occurred_at: ev.occurred_at.clone(),
        received_at: ev.received_at,
    }
}
