//! End to end through the real broker: signed webhooks → ingest → raw topic →
//! processor → policy.activations / DLQ, with shuffled, duplicated and gapped events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::cli::dlq;
use hookstream_processor::rules::decide::activation_id;
use hookstream_schemas::{DeadLetter, DeadLetterReason, PolicyEventKind};
use hookstream_tests::kafka;
use hookstream_tests::pipeline::{Event, Pipeline};
use rdkafka::Message;

/// (policy, activation id, payment) of each activation among `events`.
fn activations(events: &[PolicyEventKind]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            PolicyEventKind::Activated(a) => Some((a.policy_id.clone(), a.activation_id.clone(), a.payment_id.clone())),
            PolicyEventKind::Cancelled(_) | PolicyEventKind::Duplicated(_) => None,
        })
        .collect()
}

/// A tiny deterministic shuffle (xorshift), so a failure can be reproduced.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// 12 payments that complete (`pay_ok_0..11`, each with its policy `pol_<i>`) and 4 that
/// fail; every event delivered 1-3 times, all events of all payments shuffled together.
async fn send_shuffled_lifecycles(p: &Pipeline) {
    let mut deliveries = Vec::new();
    for i in 0..16 {
        let pay = format!("pay_ok_{i}");
        let last = if i < 12 {
            Event::completed(&pay)
        } else {
            Event::failed(&pay)
        };
        for (seq, e) in [(1, Event::created(&pay)), (2, Event::processing(&pay)), (3, last)] {
            let e = e.id(&format!("evt_{pay}_{seq}")).seq(seq).policy(&format!("pol_{i}"));
            deliveries.extend(std::iter::repeat_n(e, 1 + (i + seq as usize) % 3));
        }
    }
    shuffle(&mut deliveries, 0x9e37_79b9_7f4a_7c15);
    for e in deliveries {
        p.send(e).await;
    }
}

/// Exactly one activation per completed payment with a policy, with the deterministic
/// id, and the notice that `pay_twice` duplicates `pol_0`'s holder.
fn assert_one_activation_per_completed_payment(events: &[PolicyEventKind]) {
    let acts = activations(events);
    let mut by_policy: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (pol, id, _) in &acts {
        by_policy.entry(pol.clone()).or_default().insert(id.clone());
    }
    let mut want: BTreeMap<String, BTreeSet<String>> = (0..12)
        .map(|i| {
            let pol = format!("pol_{i}");
            let id = activation_id(&pol, "paymenthub", &format!("evt_pay_ok_{i}_3"));
            (pol, BTreeSet::from([id]))
        })
        .collect();
    want.insert(
        "pol_gap".into(),
        BTreeSet::from([activation_id("pol_gap", "paymenthub", "evt_gap_3")]),
    );
    assert_eq!(by_policy, want, "one activation per completed payment with a policy");
    assert_eq!(acts.len(), 13, "no activation sent twice in a clean run");
    let duplicates: Vec<(&str, &str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            PolicyEventKind::Duplicated(d) => Some((&*d.policy_id, &*d.payment_id, &*d.active_payment_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        duplicates,
        vec![("pol_0", "pay_twice", "pay_ok_0")],
        "a second payment for an active policy is announced, naming both payments"
    );
}

/// No policy, the conflicting body, the gap's timeout (naming sequence 2) and the late
/// sequence 2 (stale): four letters, each keeping the original record for re-drive.
fn assert_the_four_dead_letters(dead: &[DeadLetter], raw_topic: &str) {
    let reasons: BTreeSet<DeadLetterReason> = dead.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            DeadLetterReason::NoPolicy,
            DeadLetterReason::EventIdConflict,
            DeadLetterReason::SequenceGapTimeout,
            DeadLetterReason::Stale,
        ]),
        "{dead:#?}"
    );
    assert_eq!(dead.len(), 4, "a duplicate payment is no failure: {dead:#?}");
    let gap = dead.iter().find(|d| d.reason == DeadLetterReason::SequenceGapTimeout);
    assert_eq!(
        gap.map(|g| (g.payment_id.as_deref(), g.missing_sequences.clone())),
        Some((Some("pay_gap"), vec![2]))
    );
    for d in dead {
        assert_eq!(d.origin_topic, raw_topic);
        assert!(d.original_value.is_some(), "{:?} keeps the original bytes", d.reason);
    }
}

/// The admin API's payments and policies, and the metrics, say what the outputs say.
async fn assert_the_admin_view_agrees(p: &Pipeline) {
    let v = p.admin_get("/payments/pay_ok_3").await.json();
    assert_eq!(
        (v["status"].clone(), v["applied_sequence"].clone(), v["held"].clone()),
        ("completed".into(), 3.into(), serde_json::json!([]))
    );
    assert_eq!(
        v["activation"]["activation_id"],
        activation_id("pol_3", "paymenthub", "evt_pay_ok_3_3")
    );
    let v = p.admin_get("/payments/pay_ok_13").await.json();
    assert_eq!(
        (v["status"].clone(), v["activation"].clone()),
        ("failed".into(), serde_json::Value::Null)
    );
    let v = p.admin_get("/payments/pay_gap").await.json();
    assert_eq!(v["status"], "completed");
    let outcomes: Vec<&str> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains(&"gap_timeout") && outcomes.contains(&"dead_lettered:stale"),
        "{outcomes:?}"
    );
    assert_eq!(v["dead_lettered"].as_array().map(Vec::len), Some(1));
    assert_eq!(p.admin_get("/payments/pay_nosuch").await.status, 404);
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("hookstream_processor_activations_total 13"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hookstream_processor_records_total{")
                && l.contains(r#"outcome="duplicate""#)
                && l.contains(r#"stage="payments""#)),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookstream_processor_duplicate_payments_total 1"),
        "{metrics}"
    );
    let v = p.admin_get("/policies/pol_0").await.json();
    assert_eq!(v["holder"]["payment_id"], "pay_ok_0", "{v:#}");
    assert_eq!(v["duplicates"][0]["payment_id"], "pay_twice", "{v:#}");
    assert_eq!(p.admin_get("/policies/pol_nosuch").await.status, 404);
}

/// The DLQ lists by reason without the original values; a dry run publishes nothing;
/// re-driving the no_policy letter twice puts the original record back in its
/// partition (same key, same event id) twice, both recognised as duplicates, and
/// activates nothing.
async fn assert_a_redrive_puts_the_record_back_and_activates_nothing(p: &Pipeline) {
    let kcfg = &p.config.kafka;
    let filter = dlq::Filter {
        reason: Some(DeadLetterReason::NoPolicy),
        ..Default::default()
    };
    let no_policy = dlq::read(kcfg, &filter).await.unwrap();
    assert_eq!(no_policy.len(), 1);
    assert_eq!(dlq::summary(&no_policy[0])["event_id"], "evt_nopol");
    assert!(no_policy[0].letter.original_value.is_none());
    assert!(no_policy[0].value_bytes.is_some_and(|n| n > 0));
    let dry = dlq::redrive(kcfg, &no_policy, true).await.unwrap();
    assert_eq!(
        (dry["dry_run"].clone(), dry["redriven"].clone()),
        (true.into(), 1.into())
    );
    for _ in 0..2 {
        let report = dlq::redrive(kcfg, &no_policy, false).await.unwrap();
        assert_eq!(report["redriven"], 1, "{report:#}");
    }
    let mine = |r: &[rdkafka::message::OwnedMessage]| -> Vec<i32> {
        r.iter()
            .filter(|m| kafka::key_str(m) == "pay_nopol")
            .map(|m| m.partition())
            .collect()
    };
    let raw = kafka::read_until(p.bootstrap(), &p.topics.raw, Duration::from_secs(15), |r| {
        mine(r).len() >= 3
    })
    .await;
    let partitions = mine(&raw);
    assert_eq!(partitions.len(), 3, "the original plus two re-drives");
    assert!(
        partitions.iter().all(|&x| x == partitions[0]),
        "in the payment's own partition"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = kafka::read_records(p.bootstrap(), &p.topics.activations, 15, Duration::from_secs(3)).await;
    let after: Vec<PolicyEventKind> = after
        .iter()
        .map(|m| hookstream_tests::pipeline::decode_payload::<hookstream_schemas::PolicyEvent>(m).event)
        .collect();
    assert_eq!(activations(&after).len(), 13, "re-driving never activates twice");
    let v = p.admin_get("/payments/pay_nopol").await.json();
    let dups = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["outcome"] == "duplicate")
        .count();
    assert_eq!(dups, 2, "both re-drives were recognised as duplicates: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_and_gapped_payments_activate_exactly_once() {
    let p = Pipeline::start(4).await;
    send_shuffled_lifecycles(&p).await;
    p.send_the_troublemakers("pol_0").await;
    // 12 + the gapped one, and the duplicate's notice.
    assert_one_activation_per_completed_payment(&p.policy_events(14).await);
    // The late sequence 2 of the gapped payment is now stale.
    p.send_the_late_gap().await;
    assert_the_four_dead_letters(&p.dead_letters(4).await, &p.topics.raw);
    assert_the_admin_view_agrees(&p).await;
    assert_a_redrive_puts_the_record_back_and_activates_nothing(&p).await;
    p.stop().await;
}
