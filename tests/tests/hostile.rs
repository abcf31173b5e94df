//! Hostile and unlucky input against the real broker, through ingest and the processor
//! binary: sequence numbers far out of range, a flood of out-of-order events, a policy
//! id of 400 KB, a refund before its completion, a failed attempt retried to success,
//! and a raw record whose dead letter would be too large. Afterwards the processor is
//! the same live process and ordinary payments on every partition are activated. And a
//! backlog of large records is rebuilt within a memory bound.

use std::collections::BTreeSet;
use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_schemas::{
    decode, encode, DeadLetter, DeadLetterReason, HttpHeader, PolicyEvent, PolicyEventKind, RawWebhook,
};
use hookstream_tests::broker::Broker;
use hookstream_tests::pipeline::{decode_payload, Event};
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

/// Sequences a provider with a global counter might send (far ahead, the end of i64);
/// out-of-order events beyond the held bound (5: the sixth is dead-lettered, the five
/// held are released by the gap timeout and fail the payment); a policy id of 400 KB
/// (its activation would be larger than the broker takes); a refund before its
/// completion; a failure retried to success.
async fn send_hostile_webhooks(addr: &str) {
    let send = |e: Event| e.send_to(addr);
    send(
        Event::completed("pay_far")
            .id("evt_far")
            .seq(1_000_000_000_000)
            .policy("pol_far"),
    )
    .await;
    send(
        Event::completed("pay_max")
            .id("evt_max")
            .seq(i64::MAX)
            .policy("pol_max"),
    )
    .await;
    for seq in 2..=7 {
        let e = if seq == 7 {
            Event::failed("pay_flood")
        } else {
            Event::processing("pay_flood")
        };
        send(e.id(&format!("evt_flood_{seq}")).seq(seq)).await;
    }
    send(
        Event::completed("pay_flood2")
            .id("evt_flood_c")
            .seq(3)
            .policy("pol_flood"),
    )
    .await;
    let huge = "p".repeat(400_000);
    let body = sign::payment_body("evt_huge", "pay_huge", None, "payment.completed", Some(&huge));
    sign::send_body(addr, "evt_huge", body).await;
    send(Event::refunded("pay_refund").id("evt_r1").policy("pol_refund")).await;
    send(Event::completed("pay_refund").id("evt_r2").policy("pol_refund")).await;
    send(Event::failed("pay_retry").id("evt_f1").policy("pol_retry")).await;
    send(Event::completed("pay_retry").id("evt_f2").policy("pol_retry")).await;
}

/// A raw record (not through ingest) whose dead letter, with the original bytes, would
/// be larger than the producer's 1,000,000-byte message limit: its (partition, offset).
async fn produce_an_oversized_raw_record(bootstrap: &str, topic: &str) -> (i32, i64) {
    let producer = kafka::producer(bootstrap);
    let payload = vec![7u8; 999_700];
    let record = FutureRecord::to(topic).key("pay_big").payload(&payload);
    let d = producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("the raw topic takes the record");
    (d.partition, d.offset)
}

/// Every hostile record is a dead letter with its own reason; the oversized record's
/// letter leaves its payload out.
fn assert_each_hostile_record_has_its_letter(dlq: &[DeadLetter], big: (i32, i64)) {
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
    let ranges: Vec<_> = gap.missing_ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(ranges, vec![(1, 1)]);
    let shrunk = dlq
        .iter()
        .find(|d| (d.origin_partition, d.origin_offset) == big)
        .expect("a letter for the oversized record");
    assert_eq!(shrunk.reason, DeadLetterReason::Undecodable);
    assert!(shrunk.original_value.is_none(), "the letter leaves the payload out");
    assert!(shrunk.detail.contains("left out"), "{}", shrunk.detail);
}

/// Read the DLQ until every hostile record's letter is there, in whatever order the
/// partitions' transactions commit them.
async fn read_the_hostile_letters(bootstrap: &str, dlq: &str, big: (i32, i64)) -> Vec<DeadLetter> {
    let letters = |r: &[rdkafka::message::OwnedMessage]| -> Vec<DeadLetter> { r.iter().map(decode_payload).collect() };
    let all = kafka::read_until(bootstrap, dlq, Duration::from_secs(60), |r| {
        let l = letters(r);
        let has = |pay: &str, reason: DeadLetterReason| {
            l.iter()
                .any(|d| d.reason == reason && d.payment_id.as_deref() == Some(pay))
        };
        l.iter().any(|d| (d.origin_partition, d.origin_offset) == big)
            && has("pay_flood", DeadLetterReason::SequenceGapTimeout)
            && has("pay_flood", DeadLetterReason::HeldLimitExceeded)
            && has("pay_far", DeadLetterReason::SequenceOutOfRange)
            && has("pay_max", DeadLetterReason::SequenceOutOfRange)
            && has("pay_huge", DeadLetterReason::InvalidField)
    })
    .await;
    letters(&all)
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
    send_hostile_webhooks(&ingest.addr()).await;
    let big = produce_an_oversized_raw_record(broker.bootstrap(), &topics.raw).await;

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
    let dlq = read_the_hostile_letters(broker.bootstrap(), &topics.dlq, big).await;
    assert_each_hostile_record_has_its_letter(&dlq, big);
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
