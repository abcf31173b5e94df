//! One step of each stage's fold, whole: from what the state holds of the keys a record
//! names, the record and the partition's clock before it, to the clock after it, the
//! state changes and the outputs. The partition loop (`partition/batch.rs`), the rules'
//! `Sim` harness and the fuzz target all step through here, so what they check is the
//! production fold, not a copy of it.
//!
//! A step is the decision ([`decide`], [`decide_policy`]) with what surrounds it: the
//! clock advanced by the record ([`clock::advance`]), the states and dedup entry past
//! their time forgotten ([`retention::is_expired`], [`clock::is_expired`]) whether or not
//! the store has swept them yet, and the changed states stamped with their eviction time
//! ([`retention::stamp_payment`]). The state is read through [`View`], the only seam:
//! sled overlaid with the batch's changes in the loop, maps in the tests.

use std::time::Duration;

use hookstream_schemas::PolicyRequest;

use super::clock;
use super::decide::{decide, dedup_key, Outcome};
use super::input::{classify, BodyFields, Input};
use super::limits::Limits;
use super::model::{DedupEntry, Output, PaymentState, RawRecord};
use super::policy::{decide_policy, PolicyState, RequestError};
use super::retention::{self, Retention};

/// What a stage's state holds under a key, as of the record being decided.
pub trait View {
    type Error;
    fn payment(&self, key: &str) -> Result<Option<PaymentState>, Self::Error>;
    fn dedup(&self, key: &str) -> Result<Option<DedupEntry>, Self::Error>;
    fn policy(&self, policy_id: &str) -> Result<Option<PolicyState>, Self::Error>;
}

/// The settings a fold depends on (all of them: two folds with the same settings over
/// the same log decide the same).
#[derive(Debug, Clone)]
pub struct FoldSettings {
    pub fields: BodyFields,
    pub limits: Limits,
    /// How long a dedup entry is remembered, in record time.
    pub dedup_window_ms: i64,
    /// How far one record may move the clock ([`clock::advance`]).
    pub max_ahead_ms: i64,
    pub keep: Retention,
}

impl FoldSettings {
    pub fn new(
        fields: BodyFields,
        limits: Limits,
        dedup_window: Duration,
        refund_window: Duration,
        max_ahead: Duration,
    ) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            fields,
            limits,
            dedup_window_ms: ms(dedup_window),
            max_ahead_ms: ms(max_ahead),
            keep: Retention::new(dedup_window, refund_window),
        }
    }
}

/// What one record changes and emits, in either stage.
#[derive(Debug)]
pub struct Step {
    /// The partition's clock after the record.
    pub clock: i64,
    pub payment: Option<PaymentState>,
    pub dedup: Option<(String, DedupEntry)>,
    pub policy: Option<PolicyState>,
    pub outputs: Vec<Output>,
    pub outcome: Outcome,
}

/// The payment stage's step for the raw record `rec`.
pub fn payment_step<V: View>(
    view: &V,
    rec: &RawRecord,
    clock: Option<i64>,
    s: &FoldSettings,
) -> Result<Step, V::Error> {
    payment_step_of(view, rec, classify(rec, &s.fields), clock, s)
}

/// [`payment_step`] for a record already classified as `input` (the rules' tests build
/// inputs, not encoded records).
pub fn payment_step_of<V: View>(
    view: &V,
    rec: &RawRecord,
    input: Input,
    clock: Option<i64>,
    s: &FoldSettings,
) -> Result<Step, V::Error> {
    let now = clock::advance(clock, rec.origin.timestamp_ms, s.max_ahead_ms);
    let payment = match input.payment_key() {
        Some(k) => view.payment(&k)?,
        None => None,
    };
    let payment = payment.filter(|st| !retention::is_expired(st.evict_at_ms, now));
    let seen = match &input {
        Input::Webhook(e) => view.dedup(&dedup_key(&e.source, &e.event_id))?,
        _ => None,
    };
    let seen = seen.filter(|e| !clock::is_expired(e.first_seen_ms, now, s.dedup_window_ms));
    let d = decide(rec, input, payment, seen.as_ref(), &s.limits, now);
    let payment = d.payment.map(|mut p| {
        retention::stamp_payment(&mut p, now, &s.keep);
        p
    });
    Ok(Step {
        clock: now,
        payment,
        dedup: d.dedup,
        policy: None,
        outputs: d.outputs,
        outcome: d.outcome,
    })
}

/// The policy stage's step for the request record `rec`.
pub fn policy_step<V: View>(view: &V, rec: &RawRecord, clock: Option<i64>, s: &FoldSettings) -> Result<Step, V::Error> {
    let now = clock::advance(clock, rec.origin.timestamp_ms, s.max_ahead_ms);
    let request = rec
        .value
        .as_deref()
        .ok_or(RequestError::Tombstone)
        .and_then(|v| hookstream_schemas::decode::<PolicyRequest>(v).map_err(RequestError::Codec));
    let state = match request.as_ref() {
        Ok(r) => view.policy(&r.policy_id)?,
        Err(_) => None,
    };
    let state = state.filter(|st| !retention::is_expired(st.evict_at_ms, now));
    let d = decide_policy(rec, request, state, &s.limits);
    let policy = d.policy.map(|mut p| {
        retention::stamp_policy(&mut p, now, &s.keep);
        p
    });
    Ok(Step {
        clock: now,
        payment: None,
        dedup: None,
        policy,
        outputs: d.outputs,
        outcome: d.outcome,
    })
}
