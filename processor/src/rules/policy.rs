//! The policy stage's rules: which payment holds each policy, decided by the order of
//! the policy's requests in its partition of the repartition topic (a pure fold).
//!
//! Per policy, in partition order:
//! - ACTIVATE from a payment the policy has not seen: with no holder, the payment
//!   becomes the holder and `PolicyActivated` is emitted (the request's activation id);
//!   with a holder, the payment is a duplicate and `PolicyPaymentDuplicated` names both,
//!   so finance can refund it.
//! - CANCEL from the holder: `PolicyCancelled`, and the policy is free again; a later
//!   payment activates it anew, with its own id. CANCEL from a duplicate changes nothing
//!   for the policy. CANCEL from a payment never seen (its ACTIVATE has not arrived)
//!   marks it refunded, so its late ACTIVATE cannot take the policy.
//! - A request from a payment already decided (a re-send after a crash, or a replay of
//!   the payment stage) changes nothing, and publishes again the event that request got
//!   the first time, with the same id: so a replay of the raw topic re-publishes the
//!   policy events it leads to, as it re-publishes dead letters.
//! - ACTIVATE from a payment already decided under *another* activation id (the same
//!   payment completed again under a new event id: a provider's re-send or a re-drive
//!   after the payment stage forgot it, its dedup window being shorter than a policy's
//!   memory) is neither: it is dead-lettered and publishes nothing, so no second
//!   activation or duplicate announcement ever goes out under a new id. CANCEL of a
//!   released payment under another event id publishes no second cancellation.
//!
//! Everything depends only on the requests and their order, so every rebuild and replay
//! of the partition picks the same holder.

use hookstream_schemas::{
    error_chain, CodecError, DeadLetterReason, PolicyActivated, PolicyCancelled, PolicyEvent, PolicyEventKind,
    PolicyPaymentDuplicated, PolicyRequest, PolicyRequestKind,
};
use serde::{Deserialize, Serialize};

use crate::rules::decide::Outcome;
use crate::rules::ids::{cancellation_id, dead_letter, duplicate_id};
use crate::rules::limits::Limits;
use crate::rules::model::{Output, RawRecord, HISTORY_LIMIT};

/// Where a payment stands with a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Holds the policy: its activation is the active one.
    Holder,
    /// Completed while another payment held the policy.
    Duplicate,
    /// Held the policy and was refunded: the policy was cancelled and released.
    Released,
    /// Refunded without holding the policy (a duplicate, or a refund that came first).
    Refunded,
}

/// A payment that asked for the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPayment {
    pub source: String,
    pub payment_id: String,
    pub activation_id: String,
    pub standing: Standing,
    /// Offset of the request that decided its standing last.
    pub offset: i64,
    /// For a duplicate: the holder it was announced against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<HolderRef>,
    /// For a released holder: the id of the cancellation that released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_id: Option<String>,
}

/// The holder a duplicate was announced against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRef {
    pub source: String,
    pub payment_id: String,
    pub activation_id: String,
}

/// One decided request, for `GET /policies/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHistoryEntry {
    pub offset: i64,
    pub request_id: String,
    pub kind: PolicyRequestKind,
    pub source: String,
    pub payment_id: String,
    pub outcome: String,
}

/// The policy stage's view of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub policy_id: String,
    /// Every payment that asked, in the order they were first decided.
    pub payments: Vec<PolicyPayment>,
    pub history: Vec<PolicyHistoryEntry>,
    /// The partition's clock at the policy's last request (ms of record time).
    #[serde(default)]
    pub last_request_ms: i64,
    /// When the state is forgotten (`None`: while a payment holds the policy), see
    /// [`crate::rules::retention`].
    #[serde(default)]
    pub evict_at_ms: Option<i64>,
}

impl PolicyState {
    pub fn new(policy_id: &str) -> Self {
        Self {
            policy_id: policy_id.to_owned(),
            payments: Vec::new(),
            history: Vec::new(),
            last_request_ms: 0,
            evict_at_ms: None,
        }
    }

    /// The payment that holds the policy, if any.
    pub fn holder(&self) -> Option<&PolicyPayment> {
        self.payments.iter().find(|p| p.standing == Standing::Holder)
    }

    fn find(&mut self, source: &str, payment_id: &str) -> Option<&mut PolicyPayment> {
        self.payments
            .iter_mut()
            .find(|p| p.source == source && p.payment_id == payment_id)
    }

    fn log(&mut self, offset: i64, r: &PolicyRequest, outcome: &str) {
        self.history.push(PolicyHistoryEntry {
            offset,
            request_id: r.request_id.clone(),
            kind: r.kind,
            source: r.source.clone(),
            payment_id: r.payment_id.clone(),
            outcome: outcome.to_owned(),
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// The state change and outputs of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    /// The policy's new state (`None`: the record is not a request).
    pub policy: Option<PolicyState>,
    pub outputs: Vec<Output>,
    pub outcome: Outcome,
}

/// Why a record of the repartition topic is not a request: the dead letter's detail.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("record has no value (tombstone)")]
    Tombstone,
    #[error("not a PolicyRequest")]
    Codec(#[source] CodecError),
}

/// Decide a record of the repartition topic against its policy's state.
///
/// A request from a payment the policy does not know yet, when the policy already
/// remembers `limits.max_payments_per_policy` payments, is dead-lettered
/// (`processing_error`, the detail says why) and changes nothing but the history.
pub fn decide_policy(
    record: &RawRecord,
    request: Result<PolicyRequest, RequestError>,
    state: Option<PolicyState>,
    limits: &Limits,
) -> PolicyDecision {
    let r = match request {
        Ok(r) => r,
        Err(e) => {
            let detail = error_chain(&e);
            let letter = dead_letter(record, DeadLetterReason::Undecodable, detail, None, None, Vec::new());
            return PolicyDecision {
                policy: None,
                outputs: vec![letter],
                outcome: Outcome::DeadLettered,
            };
        }
    };
    let mut st = state.unwrap_or_else(|| PolicyState::new(&r.policy_id));
    let offset = record.origin.offset;
    let known = st.find(&r.source, &r.payment_id).is_some();
    if !known && st.payments.len() >= limits.max_payments_per_policy {
        let detail = format!(
            "policy {} already remembers {} payments (at most {}); this payment's request is not decided",
            r.policy_id,
            st.payments.len(),
            limits.max_payments_per_policy
        );
        st.log(offset, &r, "dead_lettered:processing_error");
        return PolicyDecision {
            policy: Some(st),
            outputs: vec![refused(record, &r, detail)],
            outcome: Outcome::DeadLettered,
        };
    }
    let (outputs, outcome, note) = match r.kind {
        PolicyRequestKind::Activate => activate(&mut st, &r, record),
        PolicyRequestKind::Cancel => cancel(&mut st, &r, offset),
    };
    st.log(offset, &r, note);
    PolicyDecision {
        policy: Some(st),
        outputs,
        outcome,
    }
}

type Decided = (Vec<Output>, Outcome, &'static str);

/// The `processing_error` letter of a request this stage does not decide, naming its
/// payment.
fn refused(record: &RawRecord, r: &PolicyRequest, detail: String) -> Output {
    let event = Some((r.source.as_str(), r.payment_event_id.as_str()));
    dead_letter(
        record,
        DeadLetterReason::ProcessingError,
        detail,
        event,
        Some(&r.payment_id),
        Vec::new(),
    )
}

fn activate(st: &mut PolicyState, r: &PolicyRequest, record: &RawRecord) -> Decided {
    let offset = record.origin.offset;
    if let Some(p) = st.find(&r.source, &r.payment_id) {
        if p.activation_id != r.activation_id {
            let detail = format!(
                "payment {} of {} was decided for policy {} under activation {}; its completion {} (activation {}) \
                 is not a second payment and is not published",
                r.payment_id, r.source, r.policy_id, p.activation_id, r.payment_event_id, r.activation_id
            );
            return (
                vec![refused(record, r, detail)],
                Outcome::DeadLettered,
                "dead_lettered:new_event_of_decided_payment",
            );
        }
        // Decided before: publish again what this request got then.
        let again = match (p.standing, &p.duplicate_of) {
            (Standing::Holder | Standing::Released, _) => Some(activated(r)),
            (Standing::Duplicate | Standing::Refunded, Some(h)) => Some(duplicated(r, h)),
            (Standing::Duplicate | Standing::Refunded, None) => None,
        };
        let note = if again.is_some() {
            "published_again"
        } else {
            "already_decided"
        };
        return (again.into_iter().collect(), Outcome::Duplicate, note);
    }
    let holder = st.holder().map(|h| HolderRef {
        source: h.source.clone(),
        payment_id: h.payment_id.clone(),
        activation_id: h.activation_id.clone(),
    });
    let (standing, output, outcome, note) = match &holder {
        None => (Standing::Holder, activated(r), Outcome::Applied, "activated"),
        Some(h) => (
            Standing::Duplicate,
            duplicated(r, h),
            Outcome::PaymentDuplicated,
            "duplicate",
        ),
    };
    st.payments.push(PolicyPayment {
        source: r.source.clone(),
        payment_id: r.payment_id.clone(),
        activation_id: r.activation_id.clone(),
        standing,
        offset,
        duplicate_of: holder,
        cancellation_id: None,
    });
    (vec![output], outcome, note)
}

fn cancel(st: &mut PolicyState, r: &PolicyRequest, offset: i64) -> Decided {
    let Some(p) = st.find(&r.source, &r.payment_id) else {
        // The refund arrived before the activation request: the payment is refunded, and
        // its activation request, when it comes, finds it decided.
        st.payments.push(PolicyPayment {
            source: r.source.clone(),
            payment_id: r.payment_id.clone(),
            activation_id: r.activation_id.clone(),
            standing: Standing::Refunded,
            offset,
            duplicate_of: None,
            cancellation_id: None,
        });
        return (Vec::new(), Outcome::Applied, "refunded_before_activation");
    };
    let id = cancellation_id(&r.policy_id, &r.source, &r.payment_event_id);
    match p.standing {
        Standing::Holder => {
            p.standing = Standing::Released;
            p.offset = offset;
            p.cancellation_id = Some(id);
            let event = cancelled(r, &p.activation_id);
            (vec![event], Outcome::Applied, "cancelled")
        }
        Standing::Duplicate => {
            p.standing = Standing::Refunded;
            p.offset = offset;
            (Vec::new(), Outcome::Applied, "duplicate_refunded")
        }
        // Decided before: publish the cancellation again (a state written before
        // cancellation ids were kept has none: the request is taken as the same one).
        Standing::Released if p.cancellation_id.as_ref().is_none_or(|c| *c == id) => (
            vec![cancelled(r, &p.activation_id)],
            Outcome::Duplicate,
            "published_again",
        ),
        // Another refund of a released payment: it was cancelled already.
        Standing::Released => (Vec::new(), Outcome::Duplicate, "already_cancelled"),
        Standing::Refunded => (Vec::new(), Outcome::Duplicate, "already_decided"),
    }
}

fn activated(r: &PolicyRequest) -> Output {
    policy_event(
        r,
        PolicyEventKind::Activated(PolicyActivated {
            activation_id: r.activation_id.clone(),
            policy_id: r.policy_id.clone(),
            payment_id: r.payment_id.clone(),
            source: r.source.clone(),
            payment_event_id: r.payment_event_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            occurred_at: r.occurred_at.clone(),
            activated_at: r.received_at,
        }),
    )
}

fn duplicated(r: &PolicyRequest, h: &HolderRef) -> Output {
    policy_event(
        r,
        PolicyEventKind::Duplicated(PolicyPaymentDuplicated {
            duplicate_id: duplicate_id(
                &r.policy_id,
                &h.activation_id,
                &r.source,
                &r.payment_id,
                &r.payment_event_id,
            ),
            policy_id: r.policy_id.clone(),
            active_activation_id: h.activation_id.clone(),
            active_payment_id: h.payment_id.clone(),
            active_source: h.source.clone(),
            payment_id: r.payment_id.clone(),
            source: r.source.clone(),
            payment_event_id: r.payment_event_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            occurred_at: r.occurred_at.clone(),
            detected_at: r.received_at,
        }),
    )
}

fn cancelled(r: &PolicyRequest, activation_id: &str) -> Output {
    policy_event(
        r,
        PolicyEventKind::Cancelled(PolicyCancelled {
            cancellation_id: cancellation_id(&r.policy_id, &r.source, &r.payment_event_id),
            activation_id: activation_id.to_owned(),
            policy_id: r.policy_id.clone(),
            payment_id: r.payment_id.clone(),
            source: r.source.clone(),
            payment_event_id: r.payment_event_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            occurred_at: r.occurred_at.clone(),
            cancelled_at: r.received_at,
        }),
    )
}

fn policy_event(r: &PolicyRequest, event: PolicyEventKind) -> Output {
    Output::Policy(PolicyEvent {
        policy_id: r.policy_id.clone(),
        event,
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
