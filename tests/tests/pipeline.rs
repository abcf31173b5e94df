//! End to end through the real broker: signed webhooks → ingest → raw topic →
//! processor → policy.activations / DLQ, with shuffled, duplicated and gapped events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::cli::dlq;
use hookstream_processor::rules::decide::activation_id;
use hookstream_schemas::{decode, DeadLetter, DeadLetterReason, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::http::get;
use hookstream_tests::processor::{test_config, RunningProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};
use rdkafka::Message;

async fn send(addr: &str, event_id: &str, payment: &str, seq: Option<i64>, ty: &str, policy: Option<&str>) {
    sign::send_event(addr, event_id, payment, seq, ty, policy).await;
}

fn activations(records: &[rdkafka::message::OwnedMessage]) -> Vec<(String, String, String)> {
    records
        .iter()
        .filter_map(|m| match decode::<PolicyEvent>(m.payload().unwrap()).unwrap().event {
            PolicyEventKind::Activated(a) => Some((a.policy_id, a.activation_id, a.payment_id)),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_and_gapped_payments_activate_exactly_once() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let state = tempfile::tempdir().unwrap();
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let processor = RunningProcessor::start(test_config(broker.bootstrap(), &topics, state.path())).await;
    let addr = ingest.addr();

    // 12 payments that complete (each with its own policy) and 4 that fail; every event
    // delivered 1-3 times, all events of all payments shuffled together.
    let mut deliveries = Vec::new();
    for i in 0..16 {
        let pay = format!("pay_ok_{i}");
        let completes = i < 12;
        let last = if completes {
            "payment.completed"
        } else {
            "payment.failed"
        };
        for (seq, ty) in [(1, "payment.created"), (2, "payment.processing"), (3, last)] {
            let copies = 1 + (i + seq) % 3;
            for _ in 0..copies {
                deliveries.push((
                    format!("evt_{pay}_{seq}"),
                    pay.clone(),
                    Some(seq as i64),
                    ty,
                    Some(format!("pol_{i}")),
                ));
            }
        }
    }
    shuffle(&mut deliveries, 0x9e37_79b9_7f4a_7c15);
    for (id, pay, seq, ty, pol) in &deliveries {
        send(&addr, id, pay, *seq, ty, pol.as_deref()).await;
    }
    // A completed payment without a policy; a second payment for an active policy (once
    // it is active: payments on other partitions are decided in no fixed order).
    send(&addr, "evt_nopol", "pay_nopol", None, "payment.completed", None).await;
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_0",
        Duration::from_secs(60),
    )
    .await;
    send(
        &addr,
        "evt_twice",
        "pay_twice",
        None,
        "payment.completed",
        Some("pol_0"),
    )
    .await;
    // The same event id with another body.
    send(&addr, "evt_conflict", "pay_conflict", None, "payment.created", None).await;
    let mut other = sign::payment_body("evt_conflict", "pay_conflict", None, "payment.created", None);
    other.extend_from_slice(b" ");
    sign::send_body(&addr, "evt_conflict", other).await;
    // A gap: 1 and 3 (completed) arrive, 2 never does (until after the timeout).
    send(
        &addr,
        "evt_gap_1",
        "pay_gap",
        Some(1),
        "payment.created",
        Some("pol_gap"),
    )
    .await;
    send(
        &addr,
        "evt_gap_3",
        "pay_gap",
        Some(3),
        "payment.completed",
        Some("pol_gap"),
    )
    .await;

    // 12 + the gapped one, and the notice that pay_twice duplicates pol_0's holder.
    let records = kafka::read_records(broker.bootstrap(), &topics.activations, 14, Duration::from_secs(60)).await;
    let acts = activations(&records);
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
    assert_eq!(
        by_policy, want,
        "exactly one activation per completed payment with a policy, with the deterministic id"
    );
    assert_eq!(acts.len(), 13, "no activation sent twice in a clean run");
    let duplicates: Vec<(String, String, String)> = records
        .iter()
        .filter_map(|m| match decode::<PolicyEvent>(m.payload().unwrap()).unwrap().event {
            PolicyEventKind::Duplicated(d) => Some((d.policy_id, d.payment_id, d.active_payment_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        duplicates,
        vec![("pol_0".into(), "pay_twice".into(), "pay_ok_0".into())],
        "a second payment for an active policy is announced, naming both payments"
    );

    // The late sequence 2 of the gapped payment is now stale.
    send(
        &addr,
        "evt_gap_2",
        "pay_gap",
        Some(2),
        "payment.processing",
        Some("pol_gap"),
    )
    .await;
    let dlq = kafka::read_records(broker.bootstrap(), &topics.dlq, 4, Duration::from_secs(30)).await;
    let dead: Vec<DeadLetter> = dlq.iter().map(|m| decode(m.payload().unwrap()).unwrap()).collect();
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
    let gap = dead
        .iter()
        .find(|d| d.reason == DeadLetterReason::SequenceGapTimeout)
        .unwrap();
    assert_eq!(
        (gap.payment_id.as_deref(), gap.missing_sequences.clone()),
        (Some("pay_gap"), vec![2])
    );
    for d in &dead {
        assert_eq!(d.origin_topic, topics.raw);
        assert!(
            d.original_value.is_some(),
            "{:?} keeps the original bytes for re-drive",
            d.reason
        );
    }

    // The admin view agrees.
    let v = get(&processor.admin, "/payments/pay_ok_3").await.json();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["applied_sequence"], 3);
    assert_eq!(v["held"], serde_json::json!([]));
    assert_eq!(
        v["activation"]["activation_id"],
        activation_id("pol_3", "paymenthub", "evt_pay_ok_3_3")
    );
    let v = get(&processor.admin, "/payments/pay_ok_13").await.json();
    assert_eq!(
        (v["status"].clone(), v["activation"].clone()),
        ("failed".into(), serde_json::Value::Null)
    );
    let v = get(&processor.admin, "/payments/pay_gap").await.json();
    assert_eq!(v["status"], "completed");
    let outcomes: Vec<String> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        outcomes.contains(&"gap_timeout".to_owned()) && outcomes.contains(&"dead_lettered:stale".to_owned()),
        "{outcomes:?}"
    );
    assert_eq!(v["dead_lettered"].as_array().unwrap().len(), 1);
    assert_eq!(get(&processor.admin, "/payments/pay_nosuch").await.status, 404);
    let metrics = String::from_utf8_lossy(&get(&processor.admin, "/metrics").await.body).into_owned();
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
    let v = get(&processor.admin, "/policies/pol_0").await.json();
    assert_eq!(v["holder"]["payment_id"], "pay_ok_0", "{v:#}");
    assert_eq!(v["duplicates"][0]["payment_id"], "pay_twice", "{v:#}");
    assert_eq!(get(&processor.admin, "/policies/pol_nosuch").await.status, 404);

    // Re-drive: the DLQ lists by reason; a dry run publishes nothing; re-driving the
    // no_policy letter twice puts the original record back in its partition (same key,
    // same event id) and activates nothing.
    let kcfg = test_config(broker.bootstrap(), &topics, state.path()).kafka;
    let filter = |r| dlq::Filter {
        reason: Some(r),
        ..Default::default()
    };
    let no_policy = dlq::read(&kcfg, &filter(DeadLetterReason::NoPolicy)).await.unwrap();
    assert_eq!(no_policy.len(), 1);
    assert_eq!(dlq::summary(&no_policy[0])["event_id"], "evt_nopol");
    // A listing holds no original values (a DLQ can be GBs of them); the re-drive below
    // reads the value back from the letter's place.
    assert!(no_policy[0].letter.original_value.is_none());
    assert!(no_policy[0].value_bytes.is_some_and(|n| n > 0));
    let dry = dlq::redrive(&kcfg, &no_policy, true).await.unwrap();
    assert_eq!(
        (dry["dry_run"].clone(), dry["redriven"].clone()),
        (true.into(), 1.into())
    );
    for _ in 0..2 {
        let report = dlq::redrive(&kcfg, &no_policy, false).await.unwrap();
        assert_eq!(report["redriven"], 1, "{report:#}");
    }
    // The original plus two re-drives, in the payment's own partition.
    let count = |r: &[rdkafka::message::OwnedMessage], key: &str| r.iter().filter(|m| kafka::key_str(m) == key).count();
    let raw = kafka::read_until(broker.bootstrap(), &topics.raw, Duration::from_secs(15), |r| {
        count(r, "pay_nopol") >= 3
    })
    .await;
    assert_eq!(count(&raw, "pay_nopol"), 3);
    let partitions: BTreeSet<i32> = raw
        .iter()
        .filter(|m| kafka::key_str(m) == "pay_nopol")
        .map(|m| m.partition())
        .collect();
    assert_eq!(partitions.len(), 1, "re-driven records land in the payment's partition");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = kafka::read_records(broker.bootstrap(), &topics.activations, 15, Duration::from_secs(3)).await;
    assert_eq!(activations(&after).len(), 13, "re-driving never activates twice");
    let v = get(&processor.admin, "/payments/pay_nopol").await.json();
    let dups = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "duplicate")
        .count();
    assert_eq!(dups, 2, "both re-drives were recognised as duplicates: {v:#}");

    processor.stop().await;
    ingest.stop().await;
}

/// Re-driving letters that are refused again, run after run: each failure is re-driven
/// once per run (the letter a re-drive superseded is neither listed nor re-driven), and
/// its letters keep one id, so raw records and letters grow by one per run, never double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriving_letters_refused_again_redrives_each_failure_once_per_run() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let state = tempfile::tempdir().unwrap();
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let _processor = RunningProcessor::start(test_config(broker.bootstrap(), &topics, state.path())).await;
    let addr = ingest.addr();
    send(&addr, "evt_rd_1", "pay_rd", Some(1), "payment.created", Some("pol_rd")).await;
    send(
        &addr,
        "evt_rd_2",
        "pay_rd",
        Some(2),
        "payment.processing",
        Some("pol_rd"),
    )
    .await;
    // A late copy of sequence 1 under a new id: stale, and stale again whenever re-driven.
    send(&addr, "evt_rd_1b", "pay_rd", Some(1), "payment.created", Some("pol_rd")).await;
    let kcfg = test_config(broker.bootstrap(), &topics, state.path()).kafka;
    let stale = dlq::Filter {
        reason: Some(DeadLetterReason::Stale),
        ..Default::default()
    };
    let letters_in_dlq = |want: usize| {
        let dlq = topics.dlq.clone();
        async move {
            let r = kafka::read_until(broker.bootstrap(), &dlq, Duration::from_secs(30), |r| r.len() >= want).await;
            assert_eq!(r.len(), want, "letters in the DLQ");
        }
    };
    letters_in_dlq(1).await;
    for run in 1..=3 {
        let listed = dlq::read(&kcfg, &stale).await.unwrap();
        assert_eq!(listed.len(), 1, "run {run}: one failure listed: {listed:?}");
        let report = dlq::redrive(&kcfg, &listed, false).await.unwrap();
        assert_eq!(report["redriven"], 1, "run {run}: {report:#}");
        letters_in_dlq(1 + run).await;
    }
    let raw = kafka::read_until(broker.bootstrap(), &topics.raw, Duration::from_secs(15), |r| {
        r.len() >= 6
    })
    .await;
    assert_eq!(raw.len(), 3 + 3, "the three records and one re-drive per run");
    let all = kafka::read_until(broker.bootstrap(), &topics.dlq, Duration::from_secs(5), |r| {
        r.len() >= 4
    })
    .await;
    let ids: BTreeSet<String> = all
        .iter()
        .map(|m| decode::<DeadLetter>(m.payload().unwrap()).unwrap().dead_letter_id)
        .collect();
    assert_eq!(ids.len(), 2, "the first letter and one for its re-drives");
    ingest.stop().await;
}
