//! Hostile and unlucky input against the real broker, through ingest and the processor
//! binary: sequence numbers far out of range, a flood of out-of-order events, a policy
//! id of 400 KB, a refund before its completion, a failed attempt retried to success,
//! and a raw record whose dead letter would be too large. Afterwards the processor is
//! the same live process and ordinary payments on every partition are activated. And a
//! backlog of large records is rebuilt within a memory bound.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_schemas::{
    decode, encode, DeadLetter, DeadLetterReason, HttpHeader, PolicyEvent, PolicyEventKind, RawWebhook,
};
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, ChildProcessor, Topics};
use hookstream_tests::{http, ingest, kafka, sign};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

const ORDINARY: usize = 40;

fn activated(records: &[rdkafka::message::OwnedMessage]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|m| match decode::<PolicyEvent>(m.payload()?).ok()?.event {
            PolicyEventKind::Activated(a) => Some(a.policy_id),
            PolicyEventKind::Cancelled(_) | PolicyEventKind::Duplicated(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhooks_neither_halt_a_partition_nor_stop_the_processor() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    config.processing.max_held_events = 5;
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |c| {
        if let Some(s) = c.sources.get_mut("paymenthub") {
            s.max_body_bytes = 900 * 1024;
        }
    })
    .await;
    let mut processor = ChildProcessor::spawn(&config, dir.path());
    let addr = ingest.addr();
    let send = |id: &str, pay: &str, seq: Option<i64>, ty: &str, pol: Option<&str>| {
        let (addr, id, pay, ty) = (addr.clone(), id.to_owned(), pay.to_owned(), ty.to_owned());
        let pol = pol.map(str::to_owned);
        async move { sign::send_event(&addr, &id, &pay, seq, &ty, pol.as_deref()).await }
    };

    // Sequences a provider with a global counter might send: far ahead, and the end of i64.
    send(
        "evt_far",
        "pay_far",
        Some(1_000_000_000_000),
        "payment.completed",
        Some("pol_far"),
    )
    .await;
    send(
        "evt_max",
        "pay_max",
        Some(i64::MAX),
        "payment.completed",
        Some("pol_max"),
    )
    .await;
    // Out-of-order events beyond the held bound (5): the sixth is dead-lettered, the
    // five held are released by the gap timeout and complete the payment.
    for seq in 2..=7 {
        let ty = if seq == 7 {
            "payment.failed"
        } else {
            "payment.processing"
        };
        send(&format!("evt_flood_{seq}"), "pay_flood", Some(seq), ty, None).await;
    }
    send(
        "evt_flood_c",
        "pay_flood2",
        Some(3),
        "payment.completed",
        Some("pol_flood"),
    )
    .await;
    // A policy id of 400 KB: its activation would be larger than the broker takes.
    let huge = "p".repeat(400_000);
    let body = sign::payment_body("evt_huge", "pay_huge", None, "payment.completed", Some(&huge));
    sign::send_body(&addr, "evt_huge", body).await;
    // A refund that arrives before its completion; a failure retried to success.
    send("evt_r1", "pay_refund", None, "payment.refunded", Some("pol_refund")).await;
    send("evt_r2", "pay_refund", None, "payment.completed", Some("pol_refund")).await;
    send("evt_f1", "pay_retry", None, "payment.failed", Some("pol_retry")).await;
    send("evt_f2", "pay_retry", None, "payment.completed", Some("pol_retry")).await;
    // A raw record (not through ingest) whose dead letter, with the original bytes,
    // would be larger than the producer's 1,000,000-byte message limit.
    let producer = kafka::producer(broker.bootstrap());
    let big = producer
        .send(
            FutureRecord::to(&topics.raw)
                .key("pay_big")
                .payload(&vec![7u8; 999_700]),
            Duration::from_secs(10),
        )
        .await
        .expect("the raw topic takes the record");

    // Give the gap timer (1.5 s) and any retry loop time to do harm first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Ordinary payments on every partition afterwards.
    let sender = sign::paced_lifecycles(ingest.addr(), "ok", ORDINARY, 10, Duration::from_millis(10));
    sender.await.unwrap();
    let want: BTreeSet<String> = (0..ORDINARY)
        .map(|i| format!("pol_ok{i}"))
        .chain(["pol_retry".to_owned()])
        .collect();
    let records = kafka::read_until(broker.bootstrap(), &topics.activations, Duration::from_secs(90), |r| {
        activated(r).is_superset(&want)
    })
    .await;
    let got = activated(&records);
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(missing.is_empty(), "not activated: {missing:?}");
    assert!(
        processor.wait_exit(Duration::ZERO).is_none(),
        "the processor is the same live process"
    );
    assert_eq!(http::get(&processor.admin, "/healthz").await.status, 200);
    for never in ["pol_far", "pol_max", "pol_refund"] {
        assert!(!got.contains(never), "{never} must not be activated");
    }
    assert!(
        !got.iter().any(|p| p.len() > 256),
        "the 400 KB policy id is not activated"
    );

    // Each hostile record is a dead letter with its own reason.
    let letters = |r: &[rdkafka::message::OwnedMessage]| -> Vec<DeadLetter> {
        r.iter()
            .map(|m| decode::<DeadLetter>(m.payload().unwrap()).unwrap())
            .collect()
    };
    // Every letter, in whatever order the partitions' transactions commit them.
    let dlq = kafka::read_until(broker.bootstrap(), &topics.dlq, Duration::from_secs(60), |r| {
        let l = letters(r);
        let has = |pay: &str, reason: DeadLetterReason| {
            l.iter()
                .any(|d| d.reason == reason && d.payment_id.as_deref() == Some(pay))
        };
        l.iter()
            .any(|d| d.origin_offset == big.offset && d.origin_partition == big.partition)
            && has("pay_flood", DeadLetterReason::SequenceGapTimeout)
            && has("pay_flood", DeadLetterReason::HeldLimitExceeded)
            && has("pay_far", DeadLetterReason::SequenceOutOfRange)
            && has("pay_max", DeadLetterReason::SequenceOutOfRange)
            && has("pay_huge", DeadLetterReason::InvalidField)
    })
    .await;
    let dlq = letters(&dlq);
    let reasons = |pay: &str| -> Vec<DeadLetterReason> {
        dlq.iter()
            .filter(|d| d.payment_id.as_deref() == Some(pay))
            .map(|d| d.reason)
            .collect()
    };
    assert_eq!(reasons("pay_far"), vec![DeadLetterReason::SequenceOutOfRange]);
    assert_eq!(reasons("pay_max"), vec![DeadLetterReason::SequenceOutOfRange]);
    assert!(
        reasons("pay_flood").contains(&DeadLetterReason::HeldLimitExceeded),
        "{dlq:?}"
    );
    assert_eq!(reasons("pay_huge"), vec![DeadLetterReason::InvalidField]);
    let gap = dlq
        .iter()
        .find(|d| d.reason == DeadLetterReason::SequenceGapTimeout && d.payment_id.as_deref() == Some("pay_flood"))
        .expect("the flood's gap timed out");
    assert_eq!(
        gap.missing_ranges.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(),
        vec![(1, 1)]
    );
    let shrunk = dlq
        .iter()
        .find(|d| d.origin_partition == big.partition && d.origin_offset == big.offset)
        .expect("a letter for the oversized record");
    assert_eq!(shrunk.reason, DeadLetterReason::Undecodable);
    assert!(shrunk.original_value.is_none(), "the letter leaves the payload out");
    assert!(shrunk.detail.contains("left out"), "{}", shrunk.detail);
    ingest.stop().await;
}

/// One captured signed webhook of 880 KiB replayed 600 times (~530 MB of backlog, all in
/// one partition), and the group moved past it (`processor replay` forward): a new
/// instance rebuilds the payment's state from those records. It reads them in batches
/// bounded by bytes as well as by count, so it holds far less than the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_records_is_rebuilt_within_a_memory_bound() {
    const COPIES: usize = 600;
    const LIMIT: u64 = 256 << 20;
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let value = encode(&large_completion()).unwrap();
    let producer = kafka::producer(broker.bootstrap());
    let sends = (0..COPIES).map(|_| {
        producer.send(
            FutureRecord::to(&topics.raw).key("pay_backlog").payload(&value),
            Duration::from_secs(60),
        )
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("the raw topic takes the copy");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    let (group, raw, bootstrap) = (
        config.kafka.group_id.clone(),
        topics.raw.clone(),
        broker.bootstrap().to_owned(),
    );
    let ends = tokio::task::spawn_blocking(move || kafka::committed_and_ends(&bootstrap, &group, &raw, 2))
        .await
        .unwrap();
    let to_end = ReplayFrom::Offsets(ends.iter().enumerate().map(|(p, (_, e))| (p as i32, *e)).collect());
    replay::run(&config.kafka, &to_end, true)
        .await
        .expect("replay to the end");
    let processor = ChildProcessor::spawn(&config, dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !processor.log_tail().contains("rebuilt partition state from the log") {
        assert!(
            std::time::Instant::now() < deadline,
            "not rebuilt:\n{}",
            processor.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peak = processor.peak_rss_bytes();
    let state = http::get(&processor.admin, "/payments/pay_backlog").await;
    let text = String::from_utf8_lossy(&state.body);
    assert_eq!(state.status, 200, "{text}");
    assert!(text.contains("completed"), "{text}");
    eprintln!(
        "peak RSS rebuilding from {COPIES} records of 880 KiB: {} MiB",
        peak >> 20
    );
    assert!(peak <= LIMIT, "peak RSS {} MiB over {} MiB", peak >> 20, LIMIT >> 20);
}

/// A completed payment's webhook whose body is 880 KiB, as ingest would have recorded it.
fn large_completion() -> RawWebhook {
    let mut body: serde_json::Value = serde_json::from_slice(&sign::payment_body(
        "evt_big",
        "pay_backlog",
        None,
        "payment.completed",
        Some("pol_backlog"),
    ))
    .unwrap();
    body["padding"] = "x".repeat(880 << 10).into();
    RawWebhook {
        event_id: "evt_big".into(),
        source: "paymenthub".into(),
        scheme: "hmac-sha256".into(),
        secret_index: 0,
        payment_id: "pay_backlog".into(),
        event_type: Some("payment.completed".into()),
        sequence: None,
        received_at: 1_764_000_000_000,
        headers: vec![HttpHeader {
            name: "x-event-id".into(),
            value: b"evt_big".to_vec(),
        }],
        body: serde_json::to_vec(&body).unwrap(),
    }
}
