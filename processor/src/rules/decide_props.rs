//! The payment stage's properties over arbitrary orders, duplicates and gaps, run
//! through the [`Sim`] harness of the example tests.

use hookstream_schemas::PolicyEventKind;
use proptest::prelude::*;

use super::*;
use crate::rules::model::EventType::*;
use crate::rules::sim::{ev, Sim};

/// Policies whose last event is an activation: (policy, activation id).
fn active(sim: &Sim) -> Vec<(String, String)> {
    let mut active: Vec<(String, String)> = Vec::new();
    for o in &sim.outputs {
        if let Output::Policy(p) = o {
            match &p.event {
                PolicyEventKind::Activated(a) => active.push((a.policy_id.clone(), a.activation_id.clone())),
                PolicyEventKind::Cancelled(c) => active.retain(|(_, id)| *id != c.activation_id),
                PolicyEventKind::Duplicated(_) => {}
            }
        }
    }
    active
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

    /// A completed and refunded payment ends not active whatever the arrival order and
    /// duplication: no activation, or an activation and then its cancellation.
    #[test]
    fn completed_and_refunded_end_not_active_in_any_order(
        sequenced in any::<bool>(),
        failed_first in any::<bool>(),
        copies in proptest::collection::vec(1usize..=2, 5),
        order in Just(()).prop_perturb(|_, mut rng| { let mut v: Vec<usize> = (0..10).collect(); v.sort_by_key(|_| rng.next_u32()); v }),
    ) {
        let mut types = vec![Created, Processing];
        if failed_first { types.push(Failed); }
        types.extend([Completed, Refunded]);
        let events: Vec<WebhookEvent> = types.iter().enumerate().map(|(i, t)| {
            ev("p", &format!("e{}", i + 1), sequenced.then_some(i as i64 + 1), *t, Some("pol"))
        }).collect();
        let mut deliveries = Vec::new();
        for (e, n) in events.iter().zip(&copies) {
            for _ in 0..*n { deliveries.push(e.clone()); }
        }
        let mut sim = Sim::default();
        for i in order.iter().filter(|&&i| i < deliveries.len()) {
            sim.event(deliveries[*i].clone());
        }
        sim.gap_timeout("p");
        prop_assert!(active(&sim).is_empty(), "still active: {:?}", sim.outputs);
        prop_assert!(sim.activations().len() <= 1);
    }

    /// Sequences anywhere in i64, far ahead included: no panic, never more held than the
    /// bound, at most one activation, and the dead letters name ranges, not numbers.
    #[test]
    fn any_sequences_are_bounded(
        seqs in proptest::collection::vec(prop_oneof![1i64..20, 1i64..2000, 1i64..=i64::MAX], 1..40),
        fire in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let mut sim = Sim::with_limits(Limits { max_held_events: 8, ..Limits::default() });
        for (i, (s, f)) in seqs.iter().zip(&fire).enumerate() {
            let t = if i % 3 == 2 { Completed } else { Processing };
            sim.event(ev("p", &format!("e{i}"), Some(*s), t, Some("pol")));
            prop_assert!(sim.payments[&crate::rules::model::payment_key("src", "p")].held.len() <= 8);
            if *f { sim.gap_timeout("p"); }
        }
        prop_assert!(sim.activations().len() <= 1);
        for o in &sim.outputs {
            if let Output::Dead(d) = o {
                prop_assert!(d.missing_ranges.len() <= 9 && d.missing_sequences.len() <= 100);
            }
        }
    }
}
