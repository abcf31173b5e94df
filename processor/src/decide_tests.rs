use std::collections::HashMap;

use hookstream_schemas::{DeadLetterReason, GapTimeout, PolicyEventKind};
use proptest::prelude::*;

use super::*;
use crate::model::Origin;

/// An in-memory fold of records through `decide`: the edges, without Kafka or sled.
#[derive(Default)]
struct Sim {
    payments: HashMap<String, PaymentState>,
    dedup: HashMap<String, DedupEntry>,
    policies: HashMap<String, (String, String)>,
    outputs: Vec<Output>,
    offset: i64,
}

impl PolicyRegistry for HashMap<String, (String, String)> {
    fn claim(&mut self, policy_id: &str, activation_id: &str, payment_id: &str) -> Result<Claim, RegistryError> {
        Ok(match self.get(policy_id) {
            Some((aid, pid)) if aid != activation_id => Claim::HeldBy {
                payment_id: pid.clone(),
                activation_id: aid.clone(),
            },
            _ => {
                self.insert(policy_id.into(), (activation_id.into(), payment_id.into()));
                Claim::Granted
            }
        })
    }
}

fn record(offset: i64) -> RawRecord {
    RawRecord {
        origin: Origin {
            topic: "raw".into(),
            partition: 0,
            offset,
            timestamp_ms: 1_000 + offset,
        },
        key: Some(b"k".to_vec()),
        value: Some(vec![offset as u8]),
        headers: vec![],
    }
}

fn ev(pay: &str, id: &str, seq: Option<i64>, t: EventType, policy: Option<&str>) -> WebhookEvent {
    WebhookEvent {
        source: "src".into(),
        event_id: id.into(),
        payment_id: pay.into(),
        sequence: seq,
        event_type: t,
        policy_id: policy.map(Into::into),
        amount: Some(5000),
        currency: Some("KES".into()),
        occurred_at: None,
        received_at: 42,
        body_hash: format!("hash-{id}"),
    }
}

impl Sim {
    fn feed(&mut self, input: Input) -> Outcome {
        let rec = record(self.offset);
        self.offset += 1;
        let pid = match &input {
            Input::Webhook(e) => Some(e.payment_id.clone()),
            Input::GapTimeout(g) => Some(g.payment_id.clone()),
            Input::Invalid { payment_id, .. } => payment_id.clone(),
        };
        let seen = match &input {
            Input::Webhook(e) => self.dedup.get(&dedup_key(&e.source, &e.event_id)).cloned(),
            _ => None,
        };
        let payment = pid.as_ref().and_then(|p| self.payments.get(p).cloned());
        let d = decide(&rec, input, payment, seen.as_ref(), &mut self.policies).unwrap();
        if let Some(p) = d.payment {
            self.payments.insert(p.payment_id.clone(), p);
        }
        if let Some((k, v)) = d.dedup {
            self.dedup.insert(k, v);
        }
        self.outputs.extend(d.outputs);
        d.outcome
    }

    fn event(&mut self, e: WebhookEvent) -> Outcome {
        self.feed(Input::Webhook(e))
    }

    /// What the worker's timer would write for this payment now, if it has a gap.
    fn gap_timeout(&mut self, pay: &str) -> Option<Outcome> {
        let st = self.payments.get(pay)?;
        if st.held.is_empty() {
            return None;
        }
        let g = GapTimeout {
            payment_id: pay.into(),
            next_expected_sequence: st.next_sequence,
            missing_sequences: vec![],
            gap_opened_at: 0,
            decided_at: 1,
        };
        Some(self.feed(Input::GapTimeout(g)))
    }

    fn activations(&self) -> Vec<(String, String)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Policy(p) => match &p.event {
                    PolicyEventKind::Activated(a) => Some((a.policy_id.clone(), a.activation_id.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn dead_reasons(&self) -> Vec<DeadLetterReason> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Dead(d) => Some(d.reason),
                _ => None,
            })
            .collect()
    }
}

use EventType::*;

#[test]
fn in_order_lifecycle_activates_once_and_refund_cancels() {
    let mut s = Sim::default();
    assert_eq!(s.event(ev("p", "e1", Some(1), Created, None)), Outcome::Applied);
    assert_eq!(s.event(ev("p", "e2", Some(2), Processing, None)), Outcome::Applied);
    assert_eq!(
        s.event(ev("p", "e3", Some(3), Completed, Some("pol"))),
        Outcome::Applied
    );
    assert_eq!(s.activations(), vec![("pol".into(), activation_id("pol", "src", "e3"))]);
    assert_eq!(s.event(ev("p", "e4", Some(4), Refunded, Some("pol"))), Outcome::Applied);
    let cancels = s
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::Policy(p) if matches!(p.event, PolicyEventKind::Cancelled(_))))
        .count();
    assert_eq!(cancels, 1);
    assert!(s.dead_reasons().is_empty());
}

#[test]
fn duplicates_are_skipped_and_conflicts_dead_lettered() {
    let mut s = Sim::default();
    s.event(ev("p", "e1", Some(1), Created, None));
    assert_eq!(s.event(ev("p", "e1", Some(1), Created, None)), Outcome::Duplicate);
    let mut changed = ev("p", "e1", Some(1), Created, None);
    changed.body_hash = "other".into();
    assert_eq!(s.event(changed), Outcome::DeadLettered);
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::EventIdConflict]);
}

#[test]
fn out_of_order_events_are_held_then_released_in_order() {
    let mut s = Sim::default();
    assert_eq!(s.event(ev("p", "e3", Some(3), Completed, Some("pol"))), Outcome::Held);
    assert_eq!(s.event(ev("p", "e2", Some(2), Processing, None)), Outcome::Held);
    assert!(s.activations().is_empty());
    assert_eq!(s.event(ev("p", "e1", Some(1), Created, None)), Outcome::Applied);
    assert_eq!(s.activations().len(), 1);
    let st = &s.payments["p"];
    assert_eq!((st.next_sequence, st.held.len(), st.status), (4, 0, Some(Completed)));
}

#[test]
fn gap_timeout_names_the_missing_sequences_and_applies_held_in_order() {
    let mut s = Sim::default();
    s.event(ev("p", "e1", Some(1), Created, None));
    s.event(ev("p", "e4", Some(4), Completed, Some("pol")));
    assert_eq!(s.gap_timeout("p"), Some(Outcome::GapReleased));
    assert_eq!(
        s.activations().len(),
        1,
        "a completed payment still activates, late rather than never"
    );
    let gap = s.outputs.iter().find_map(|o| match o {
        Output::Dead(d) if d.reason == DeadLetterReason::SequenceGapTimeout => Some(d.missing_sequences.clone()),
        _ => None,
    });
    assert_eq!(gap, Some(vec![2, 3]));
    // The skipped sequences arrive late: stale.
    assert_eq!(s.event(ev("p", "e2", Some(2), Processing, None)), Outcome::DeadLettered);
    assert_eq!(s.dead_reasons().last(), Some(&DeadLetterReason::Stale));
}

#[test]
fn gap_timeout_after_the_gap_filled_has_no_effect() {
    let mut s = Sim::default();
    s.event(ev("p", "e2", Some(2), Processing, None));
    let g = GapTimeout {
        payment_id: "p".into(),
        next_expected_sequence: 1,
        missing_sequences: vec![1],
        gap_opened_at: 0,
        decided_at: 1,
    };
    s.event(ev("p", "e1", Some(1), Created, None));
    assert_eq!(s.feed(Input::GapTimeout(g)), Outcome::Ignored);
    assert!(s.dead_reasons().is_empty());
}

#[test]
fn rank_mode_supersedes_lower_ranked_events() {
    let mut s = Sim::default();
    assert_eq!(s.event(ev("p", "e3", None, Completed, Some("pol"))), Outcome::Applied);
    assert_eq!(s.event(ev("p", "e1", None, Created, None)), Outcome::Superseded);
    assert_eq!(s.event(ev("p", "e2", None, Processing, None)), Outcome::Superseded);
    assert_eq!(s.activations().len(), 1);
    assert!(s.dead_reasons().is_empty(), "superseded events are not dead letters");
    assert_eq!(s.event(ev("p", "e5", None, Failed, None)), Outcome::DeadLettered);
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::InvalidTransition]);
}

#[test]
fn completed_without_policy_and_second_payment_for_a_policy_are_dead_lettered() {
    let mut s = Sim::default();
    s.event(ev("p1", "a", None, Completed, None));
    s.event(ev("p2", "b", None, Completed, Some("pol")));
    s.event(ev("p3", "c", None, Completed, Some("pol")));
    assert_eq!(s.activations().len(), 1);
    assert_eq!(
        s.dead_reasons(),
        vec![DeadLetterReason::NoPolicy, DeadLetterReason::PolicyAlreadyActive]
    );
}

#[test]
fn refund_without_completion_is_an_invalid_transition() {
    let mut s = Sim::default();
    s.event(ev("p", "e1", None, Created, None));
    assert_eq!(s.event(ev("p", "e9", None, Refunded, None)), Outcome::DeadLettered);
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::InvalidTransition]);
}

#[test]
fn replaying_the_same_records_gives_the_same_outputs() {
    let script = |s: &mut Sim| {
        s.event(ev("p", "e3", Some(3), Completed, Some("pol")));
        s.event(ev("p", "e1", Some(1), Created, None));
        s.event(ev("p", "e1", Some(1), Created, None));
        s.gap_timeout("p");
        s.event(ev("p", "e2", Some(2), Processing, None));
        s.event(ev("p", "e4", Some(4), Refunded, None));
    };
    let (mut a, mut b) = (Sim::default(), Sim::default());
    script(&mut a);
    script(&mut b);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.payments, b.payments);
}

/// A payment's events: created, processing, then completed (with a policy) or failed.
fn lifecycle(pay: &str, completed: bool, sequenced: bool) -> Vec<WebhookEvent> {
    let types = [Created, Processing, if completed { Completed } else { Failed }];
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let seq = sequenced.then_some(i as i64 + 1);
            ev(pay, &format!("{pay}-e{}", i + 1), seq, *t, Some(&format!("pol-{pay}")))
        })
        .collect()
}

proptest! {
    /// For any interleaving and duplication of a payment's events: exactly one
    /// activation per completed payment, always the same id; none for failed ones.
    #[test]
    fn exactly_one_activation_whatever_the_order(
        completed in any::<bool>(),
        sequenced in any::<bool>(),
        copies in proptest::collection::vec(1usize..=3, 3),
        order in Just(()).prop_perturb(|_, mut rng| { let mut v: Vec<usize> = (0..9).collect(); v.sort_by_key(|_| rng.next_u32()); v }),
    ) {
        let events = lifecycle("p", completed, sequenced);
        let mut deliveries: Vec<WebhookEvent> = Vec::new();
        for (e, n) in events.iter().zip(&copies) {
            for _ in 0..*n { deliveries.push(e.clone()); }
        }
        let mut sim = Sim::default();
        for i in order.iter().filter(|&&i| i < deliveries.len()) {
            sim.event(deliveries[*i].clone());
        }
        let acts = sim.activations();
        if completed {
            prop_assert_eq!(acts, vec![("pol-p".to_string(), activation_id("pol-p", "src", "p-e3"))]);
        } else {
            prop_assert!(acts.is_empty());
        }
        prop_assert!(!sim.dead_reasons().contains(&DeadLetterReason::EventIdConflict));
    }

    /// With gap timeouts firing at arbitrary points, a policy is still never activated
    /// twice nor with another id.
    #[test]
    fn gap_timeouts_never_cause_a_second_activation(
        order in Just(()).prop_perturb(|_, mut rng| { let mut v: Vec<usize> = (0..6).collect(); v.sort_by_key(|_| rng.next_u32()); v }),
        timeouts in proptest::collection::vec(any::<bool>(), 6),
    ) {
        let mut events = lifecycle("p", true, true);
        events.extend(lifecycle("p", true, true));
        let mut sim = Sim::default();
        for (i, fire) in order.iter().zip(&timeouts) {
            sim.event(events[*i].clone());
            if *fire { sim.gap_timeout("p"); }
        }
        let acts = sim.activations();
        prop_assert!(acts.len() <= 1);
        for (_, id) in acts {
            prop_assert_eq!(id, activation_id("pol-p", "src", "p-e3"));
        }
    }
}
