use hookstream_schemas::{DeadLetterReason, GapTimeout, PolicyEventKind};

use super::*;
use crate::rules::limits::Limits;
use crate::rules::model::EventType::{self, *};
use crate::rules::sim::{ev, record, Sim};

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
    let st = &s.payments[&crate::rules::model::payment_key("src", "p")];
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
        Output::Dead(d) if d.reason == DeadLetterReason::SequenceGapTimeout => {
            Some((d.missing_sequences.clone(), d.source.clone(), d.payment_id.clone()))
        }
        _ => None,
    });
    assert_eq!(
        gap,
        Some((vec![2, 3], Some("src".into()), Some("p".into()))),
        "the letter names its payment and source"
    );
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
        source: "src".into(),
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
    // A failure after the completion is a late copy of an earlier, failed attempt.
    assert_eq!(s.event(ev("p", "e5", None, Failed, None)), Outcome::Superseded);
    assert!(s.dead_reasons().is_empty());
}

#[test]
fn completed_without_policy_is_dead_lettered_and_a_second_payment_for_a_policy_announced() {
    let mut s = Sim::default();
    s.event(ev("p1", "a", None, Completed, None));
    s.event(ev("p2", "b", None, Completed, Some("pol")));
    s.event(ev("p3", "c", None, Completed, Some("pol")));
    assert_eq!(s.activations().len(), 1);
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::NoPolicy]);
    let duplicates: Vec<_> = s
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Policy(p) => match &p.event {
                PolicyEventKind::Duplicated(d) => Some((d.payment_id.as_str(), d.active_payment_id.as_str())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(duplicates, vec![("p3", "p2")], "a business fact, not a dead letter");
}

#[test]
fn a_refund_before_its_completion_ends_the_payment_and_is_remembered() {
    let mut s = Sim::default();
    s.event(ev("p", "e1", None, Created, None));
    assert_eq!(s.event(ev("p", "e9", None, Refunded, None)), Outcome::Applied);
    assert_eq!(
        s.event(ev("p", "e3", None, Completed, Some("pol"))),
        Outcome::Superseded
    );
    assert!(s.activations().is_empty(), "a refunded payment activates nothing");
    assert_eq!(s.event(ev("p", "e9", None, Refunded, None)), Outcome::Duplicate);
    assert!(s.dead_reasons().is_empty());
}

#[test]
fn an_applied_event_whose_effect_failed_is_remembered_a_refused_one_is_not() {
    let mut s = Sim::default();
    // Completed without a policy: applied (the payment is completed), so a re-drive is a duplicate.
    assert_eq!(s.event(ev("p", "c", None, Completed, None)), Outcome::DeadLettered);
    assert_eq!(s.event(ev("p", "c", None, Completed, None)), Outcome::Duplicate);
    // A failure after a completion in sequence order: refused, so its retry is decided again.
    s.event(ev("q", "q1", Some(1), Completed, Some("pol")));
    assert_eq!(s.event(ev("q", "q2", Some(2), Failed, None)), Outcome::DeadLettered);
    assert!(!s.dedup.contains_key(&dedup_key("src", "q2")));
    assert_eq!(
        s.dead_reasons(),
        vec![DeadLetterReason::NoPolicy, DeadLetterReason::InvalidTransition]
    );
}

#[test]
fn a_failed_attempt_retried_to_success_activates_in_both_modes() {
    for sequenced in [false, true] {
        let seq = |n| sequenced.then_some(n);
        let mut s = Sim::default();
        s.event(ev("p", "e1", seq(1), Created, None));
        s.event(ev("p", "e2", seq(2), Failed, None));
        s.event(ev("p", "e3", seq(3), Processing, None));
        assert_eq!(s.event(ev("p", "e4", seq(4), Completed, Some("pol"))), Outcome::Applied);
        assert_eq!(s.activations().len(), 1, "sequenced: {sequenced}");
        assert!(
            s.dead_reasons().is_empty(),
            "sequenced: {sequenced}: {:?}",
            s.dead_reasons()
        );
    }
}

#[test]
fn a_sequence_far_ahead_is_dead_lettered_not_held_and_can_come_again() {
    let mut s = Sim::default();
    for far in [1_000_000_000_000, i64::MAX, 1 + 1001] {
        assert_eq!(
            s.event(ev("p", &format!("far{far}"), Some(far), Completed, Some("pol"))),
            Outcome::DeadLettered
        );
    }
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::SequenceOutOfRange; 3]);
    assert!(s.payments[&crate::rules::model::payment_key("src", "p")]
        .held
        .is_empty());
    assert!(s.dedup.is_empty(), "a rejected event is not remembered as seen");
    // 1 + 1000 is the farthest that is held; once the payment moves on, the rejected
    // event's retry is held like any other.
    assert_eq!(s.event(ev("p", "e1001", Some(1001), Processing, None)), Outcome::Held);
    s.event(ev("p", "e1", Some(1), Created, None));
    assert_eq!(
        s.event(ev("p", "far1002", Some(1002), Completed, Some("pol"))),
        Outcome::Held
    );
}

#[test]
fn held_events_are_capped_by_count_and_by_bytes() {
    let mut s = Sim::with_limits(Limits {
        max_sequence_ahead: 1000,
        max_held_events: 3,
        max_held_bytes: 1 << 20,
        ..Limits::default()
    });
    for n in 2..=4 {
        assert_eq!(
            s.event(ev("p", &format!("e{n}"), Some(n), Processing, None)),
            Outcome::Held
        );
    }
    assert_eq!(s.event(ev("p", "e5", Some(5), Processing, None)), Outcome::DeadLettered);
    assert_eq!(s.dead_reasons(), vec![DeadLetterReason::HeldLimitExceeded]);
    assert_eq!(s.payments[&crate::rules::model::payment_key("src", "p")].held.len(), 3);
    // Every record in this simulation is two bytes (key and value): four bytes hold two.
    let mut s = Sim::with_limits(Limits {
        max_held_bytes: 4,
        ..Limits::default()
    });
    assert_eq!(s.event(ev("q", "e2", Some(2), Processing, None)), Outcome::Held);
    assert_eq!(s.event(ev("q", "e3", Some(3), Processing, None)), Outcome::Held);
    assert_eq!(s.event(ev("q", "e4", Some(4), Processing, None)), Outcome::DeadLettered);
}

#[test]
fn a_gap_timeout_names_the_missing_as_ranges() {
    let mut s = Sim::default();
    s.event(ev("p", "e2", Some(2), Processing, None));
    s.event(ev("p", "e900", Some(900), Completed, Some("pol")));
    s.gap_timeout("p");
    let d = s
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Dead(d) if d.reason == DeadLetterReason::SequenceGapTimeout => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    let ranges: Vec<(i64, i64)> = d.missing_ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(ranges, vec![(1, 1), (3, 899)]);
    assert_eq!(d.missing_sequences.len(), 100);
    assert!(d.detail.len() < 400, "{}", d.detail);
    assert_eq!(s.activations().len(), 1, "held events are applied in order");
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

#[test]
fn a_record_decided_again_over_its_own_entry_sends_its_request_again_and_changes_nothing() {
    let limits = Limits::default();
    let completed = ev("pay", "e1", None, EventType::Completed, Some("pol"));
    let first = decide(
        &record(5),
        Input::Webhook(completed.clone()),
        None,
        None,
        &limits,
        1_005,
    );
    let (_, entry) = first.dedup.clone().expect("remembered");
    let st = first.payment.clone().expect("a payment");
    // The same record again, the state reflecting it: a replay in place.
    let again = decide(
        &record(5),
        Input::Webhook(completed.clone()),
        Some(st.clone()),
        Some(&entry),
        &limits,
        2_000,
    );
    assert_eq!(again.outcome, Outcome::Replayed);
    assert_eq!(again.outputs, first.outputs, "the same request, with the same id");
    assert!(again.dedup.is_none(), "its dedup window does not start again");
    let dup = decide(
        &record(9),
        Input::Webhook(completed),
        Some(st),
        Some(&entry),
        &limits,
        2_000,
    );
    assert_eq!(dup.outcome, Outcome::Duplicate, "the same event at another offset");
    assert!(dup.outputs.is_empty());
}
