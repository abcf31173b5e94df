use hookstream_schemas::{PolicyEventKind, PolicyRequest, PolicyRequestKind};
use proptest::prelude::*;

use super::*;
use crate::rules::ids::{activation_id, request_id};
use crate::rules::limits::Limits;
use crate::rules::model::Origin;

fn record(offset: i64) -> RawRecord {
    RawRecord {
        origin: Origin {
            topic: "requests".into(),
            partition: 0,
            offset,
            timestamp_ms: offset,
        },
        key: Some(b"pol".to_vec()),
        value: None,
        headers: vec![],
    }
}

/// Payment `n` (source `s<n % 2>`, so two sources share payment ids) asks `kind`.
fn req(n: usize, kind: PolicyRequestKind) -> PolicyRequest {
    let (source, payment) = (format!("s{}", n % 2), format!("pay{}", n / 2));
    let completed = format!("evt-{n}-completed");
    let event = match kind {
        PolicyRequestKind::Activate => completed.clone(),
        PolicyRequestKind::Cancel => format!("evt-{n}-refunded"),
    };
    PolicyRequest {
        request_id: request_id(kind, "pol", &source, &payment, &event),
        kind,
        policy_id: "pol".into(),
        activation_id: activation_id("pol", &source, &completed),
        source,
        payment_id: payment,
        payment_event_id: event,
        amount: Some(100),
        currency: None,
        occurred_at: None,
        received_at: 7,
    }
}

/// Fold `log` from nothing, the state going through JSON between records as it does
/// through sled. Returns every output and the final state.
fn fold(log: &[PolicyRequest]) -> (Vec<Output>, Option<PolicyState>) {
    let mut state: Option<PolicyState> = None;
    let mut outputs = Vec::new();
    for (i, r) in log.iter().enumerate() {
        let d = decide_policy(&record(i as i64), Ok(r.clone()), state.take(), &Limits::default());
        outputs.extend(d.outputs);
        let json = serde_json::to_vec(&d.policy).unwrap();
        state = serde_json::from_slice(&json).unwrap();
    }
    (outputs, state)
}

fn kinds(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Policy(p) => match &p.event {
                PolicyEventKind::Activated(a) => format!("activated {}/{}", a.source, a.payment_id),
                PolicyEventKind::Cancelled(c) => format!("cancelled {}/{}", c.source, c.payment_id),
                PolicyEventKind::Duplicated(d) => {
                    format!(
                        "duplicate {}/{} of {}/{}",
                        d.source, d.payment_id, d.active_source, d.active_payment_id
                    )
                }
            },
            other => format!("{other:?}"),
        })
        .collect()
}

use PolicyRequestKind::{Activate, Cancel};

#[test]
fn the_first_payment_holds_the_policy_and_a_second_is_announced_as_its_duplicate() {
    let (out, st) = fold(&[req(0, Activate), req(3, Activate)]);
    assert_eq!(kinds(&out), ["activated s0/pay0", "duplicate s1/pay1 of s0/pay0"]);
    let st = st.unwrap();
    assert_eq!(st.holder().map(|h| h.payment_id.as_str()), Some("pay0"));
    assert_eq!(st.payments[1].standing, Standing::Duplicate);
}

#[test]
fn a_refunded_holder_releases_the_policy_and_the_next_payment_activates_it_anew() {
    let log = [
        req(0, Activate),
        req(2, Activate),
        req(0, Cancel),
        req(4, Activate),
        req(2, Cancel),
    ];
    let (out, st) = fold(&log);
    assert_eq!(
        kinds(&out),
        [
            "activated s0/pay0",
            "duplicate s0/pay1 of s0/pay0",
            "cancelled s0/pay0",
            "activated s0/pay2"
        ],
        "the duplicate's refund changes nothing for the policy"
    );
    let ids: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Policy(p) => match &p.event {
                PolicyEventKind::Activated(a) => Some(a.activation_id.as_str()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_ne!(ids[0], ids[1], "a new activation id");
    assert_eq!(st.unwrap().holder().map(|h| h.payment_id.as_str()), Some("pay2"));
}

#[test]
fn a_request_sent_again_publishes_again_what_it_got_and_changes_nothing() {
    let first = [req(0, Activate), req(3, Activate), req(0, Cancel), req(4, Activate)];
    let (out, st) = fold(&first);
    let mut again = first.to_vec();
    again.extend(first.iter().cloned());
    let (out_again, st_again) = fold(&again);
    let standings = |s: &Option<PolicyState>| s.as_ref().map(|s| s.payments.clone());
    assert_eq!(standings(&st_again), standings(&st), "the same standings");
    assert_eq!(&out_again[..out.len()], &out[..]);
    assert_eq!(
        &out_again[out.len()..],
        &out[..],
        "each event again, with its id, against its holder of then"
    );
}

#[test]
fn a_refund_that_arrives_before_its_activation_request_keeps_that_payment_out() {
    let (out, st) = fold(&[req(0, Cancel), req(0, Activate), req(2, Activate)]);
    assert_eq!(kinds(&out), ["activated s0/pay1"]);
    assert_eq!(st.unwrap().payments[0].standing, Standing::Refunded);
}

#[test]
fn namesake_payments_of_two_sources_are_two_payments() {
    // Payments 0 and 1 are both "pay0", from sources s0 and s1.
    let (out, _) = fold(&[req(0, Activate), req(1, Activate), req(1, Cancel)]);
    assert_eq!(kinds(&out), ["activated s0/pay0", "duplicate s1/pay0 of s0/pay0"]);
}

#[test]
fn a_policy_remembers_a_bounded_number_of_payments_and_dead_letters_the_next() {
    let limits = Limits {
        max_payments_per_policy: 2,
        ..Limits::default()
    };
    let mut state = None;
    let mut outputs = Vec::new();
    for (i, r) in [req(0, Activate), req(2, Activate), req(4, Activate), req(0, Cancel)]
        .into_iter()
        .enumerate()
    {
        let d = decide_policy(&record(i as i64), Ok(r), state.take(), &limits);
        outputs.extend(d.outputs);
        state = d.policy;
    }
    let st = state.unwrap();
    assert_eq!(st.payments.len(), 2, "the third payment is not remembered");
    let reasons: Vec<_> = outputs
        .iter()
        .map(|o| match o {
            Output::Dead(d) => d.reason.as_str().to_owned(),
            Output::Policy(_) | Output::Request(_) => "event".to_owned(),
        })
        .collect();
    assert_eq!(
        reasons,
        ["event", "event", "processing_error", "event"],
        "a known payment is still decided"
    );
}

#[test]
fn a_request_that_does_not_decode_is_dead_lettered_and_changes_no_policy() {
    let garbage = hookstream_schemas::decode::<PolicyRequest>(b"garbage").map_err(RequestError::Codec);
    let d = decide_policy(&record(5), garbage, None, &Limits::default());
    assert_eq!(d.policy, None);
    assert!(
        matches!(&d.outputs[..], [Output::Dead(l)] if l.reason == hookstream_schemas::DeadLetterReason::Undecodable
            && l.detail.starts_with("not a PolicyRequest: io.hookstream.v1.PolicyRequest: not Avro single-object")),
        "{:?}",
        d.outputs
    );
}

fn requests() -> impl Strategy<Value = Vec<PolicyRequest>> {
    prop::collection::vec((0usize..6, prop::bool::ANY), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(n, cancel)| req(n, if cancel { Cancel } else { Activate }))
            .collect()
    })
}

proptest! {
    /// For any interleaving of requests (with re-sends) for one policy: at most one
    /// holder at any point; a new activation id only while nobody holds the policy, and
    /// a new cancellation only of the activation that holds it (re-published events
    /// carry ids already seen); and the same log always gives the same outputs.
    #[test]
    fn at_most_one_holder_and_the_same_holder_for_the_same_log(log in requests()) {
        let mut state: Option<PolicyState> = None;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in log.iter().enumerate() {
            let holder_before = state.as_ref().and_then(|s| s.holder().map(|h| h.activation_id.clone()));
            let d = decide_policy(&record(i as i64), Ok(r.clone()), state.take(), &Limits::default());
            for o in &d.outputs {
                if let Output::Policy(p) = o {
                    match &p.event {
                        PolicyEventKind::Activated(a) => {
                            if seen.insert(a.activation_id.clone()) {
                                prop_assert!(holder_before.is_none(), "new activation while held");
                            }
                        }
                        PolicyEventKind::Cancelled(c) => {
                            if seen.insert(c.cancellation_id.clone()) {
                                prop_assert_eq!(holder_before.as_ref(), Some(&c.activation_id));
                            }
                        }
                        PolicyEventKind::Duplicated(d) => {
                            seen.insert(d.duplicate_id.clone());
                        }
                    }
                }
            }
            let st = d.policy.clone().unwrap();
            let holders = st.payments.iter().filter(|p| p.standing == Standing::Holder).count();
            prop_assert!(holders <= 1);
            state = d.policy;
        }
        let (a, sa) = fold(&log);
        let (b, sb) = fold(&log);
        prop_assert_eq!(a, b);
        prop_assert_eq!(sa, sb);
    }
}

/// [`req`] for the `k`-th completion of payment `n`: the same payment completed again
/// under a new event id, as a provider's re-send or a re-drive after the payment stage
/// forgot it; a refund names the completion it refunds.
fn req_k(n: usize, kind: PolicyRequestKind, k: usize) -> PolicyRequest {
    let mut r = req(n, kind);
    let completed = format!("evt-{n}-completed-{k}");
    r.activation_id = activation_id("pol", &r.source, &completed);
    if kind == Activate {
        r.payment_event_id = completed;
        r.request_id = request_id(kind, "pol", &r.source, &r.payment_id, &r.payment_event_id);
    }
    r
}

fn requests_with_new_events() -> impl Strategy<Value = Vec<PolicyRequest>> {
    prop::collection::vec((0usize..4, prop::bool::ANY, 0usize..3), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(n, cancel, k)| req_k(n, if cancel { Cancel } else { Activate }, k))
            .collect()
    })
}

proptest! {
    /// Whatever the payment stage forgot (the same payment completing and refunding
    /// under new event ids, in any order): for a consumer that applies each event id
    /// once (re-published events repeat ids), at most one activation is outstanding per
    /// policy, every new `PolicyActivated` names the policy's holder of that moment, and
    /// no payment is announced as a duplicate, nor an activation cancelled, under two ids.
    #[test]
    fn one_activation_outstanding_whatever_was_forgotten(log in requests_with_new_events()) {
        let mut state: Option<PolicyState> = None;
        let mut outstanding = std::collections::BTreeSet::new();
        let mut seen = std::collections::HashSet::new();
        let mut duplicates: std::collections::HashMap<(String, String), String> = Default::default();
        let mut cancellations: std::collections::HashMap<String, String> = Default::default();
        for (i, r) in log.iter().enumerate() {
            let d = decide_policy(&record(i as i64), Ok(r.clone()), state.take(), &Limits::default());
            let st = d.policy.clone().unwrap();
            for o in &d.outputs {
                let Output::Policy(p) = o else { continue };
                match &p.event {
                    PolicyEventKind::Activated(a) => {
                        if !seen.insert(a.activation_id.clone()) {
                            continue;
                        }
                        let holder = st.holder().map(|h| h.activation_id.clone());
                        prop_assert_eq!(holder.as_ref(), Some(&a.activation_id), "activated but not the holder");
                        outstanding.insert(a.activation_id.clone());
                    }
                    PolicyEventKind::Cancelled(c) => {
                        outstanding.remove(&c.activation_id);
                        let first = cancellations
                            .entry(c.activation_id.clone())
                            .or_insert_with(|| c.cancellation_id.clone());
                        prop_assert_eq!(&*first, &c.cancellation_id, "an activation cancelled under two ids");
                    }
                    PolicyEventKind::Duplicated(dup) => {
                        let key = (dup.source.clone(), dup.payment_id.clone());
                        let first = duplicates.entry(key).or_insert_with(|| dup.duplicate_id.clone());
                        prop_assert_eq!(&*first, &dup.duplicate_id, "a duplicate announced under two ids");
                    }
                }
            }
            prop_assert!(outstanding.len() <= 1, "activations outstanding: {:?}", outstanding);
            state = d.policy;
        }
    }
}
