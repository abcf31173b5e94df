//! `processor replay` against the real broker: the offsets it finds by time and by
//! partition, the refusal while the group has members, and a replay from the beginning
//! that reproduces the same activations and dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayError, ReplayFrom};
use hookstream_processor::config::KafkaConfig;
use hookstream_schemas::{decode, DeadLetter, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::http::get;
use hookstream_tests::kafka;
use hookstream_tests::processor::{test_config, RunningProcessor, Topics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

mod reproduces;

fn kafka_config(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        group_id: kafka::unique_topic("replay-group"),
        raw_topic: topic.to_owned(),
        ..KafkaConfig::default()
    }
}

/// The group's committed offset per partition (`None`: nothing committed).
fn committed(cfg: &KafkaConfig, partitions: i32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&cfg.raw_topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(&cfg.raw_topic, p).unwrap().offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

fn reset_to(resets: &[replay::PartitionReset]) -> Vec<(i32, i64)> {
    // The raw topic's partitions (the policy stage's follow for a time or the beginning).
    resets
        .iter()
        .filter(|r| !r.topic.ends_with(hookstream_schemas::topics::POLICY_REQUESTS_SUFFIX))
        .map(|r| (r.partition, r.reset_to))
        .collect()
}

/// Partitions 0 and 1 of `topic`: 100 records one second apart, starting an hour ago;
/// 2 stays empty. The first record's time.
async fn produce_an_hour_of_records(bootstrap: &str, topic: &str) -> i64 {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let producer = kafka::producer(bootstrap);
    let sends = (0..2).flat_map(|p| (0..100).map(move |i| (p, i))).map(|(p, i)| {
        let producer = &producer;
        async move {
            let record = FutureRecord::to(topic)
                .partition(p)
                .key("k")
                .payload("x")
                .timestamp(base + i * 1000);
            producer.send(record, Duration::from_secs(10)).await.expect("produce");
        }
    });
    futures_util::future::join_all(sends).await;
    base
}

/// Forward past the committed offset (here: a group that never committed, so past the
/// log start) is refused, naming the partitions, and commits nothing, unless forced. By
/// time: the first record at or after it, in every partition.
async fn assert_a_replay_by_time(cfg: &KafkaConfig, base: i64) {
    let e = replay::run(cfg, &ReplayFrom::Time(base + 42_500), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplayError::Forward(p) if *p == vec![(0, None, 43), (1, None, 43)]),
        "{e}"
    );
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(committed(cfg, 3), vec![None, None, None]);
    // ...unless forced. By time: the first record at or after it, in every partition.
    let r = replay::run(cfg, &ReplayFrom::Time(base + 42_500), true).await.unwrap();
    assert_eq!(reset_to(&r), vec![(0, 43), (1, 43), (2, 0)]);
    assert_eq!((r[0].log_start, r[0].log_end, r[0].committed_before), (0, 100, None));
    assert_eq!(committed(cfg, 3), vec![Some(43), Some(43), Some(0)]);
    let r = replay::run(cfg, &ReplayFrom::Time(base + 42_000), false).await.unwrap();
    assert_eq!(
        reset_to(&r),
        vec![(0, 42), (1, 42), (2, 0)],
        "a record exactly at the time is included"
    );
    assert_eq!(r[0].committed_before, Some(43));
    let r = replay::run(cfg, &ReplayFrom::Time(base - 1), false).await.unwrap();
    assert_eq!(reset_to(&r), vec![(0, 0), (1, 0), (2, 0)]);
    let e = replay::run(cfg, &ReplayFrom::Time(base + 10_000_000), false)
        .await
        .unwrap_err();
    assert!(matches!(&e, ReplayError::Forward(p) if p.len() == 2), "{e}");
    let r = replay::run(cfg, &ReplayFrom::Time(base + 10_000_000), true)
        .await
        .unwrap();
    assert_eq!(
        reset_to(&r),
        vec![(0, 100), (1, 100), (2, 0)],
        "after the last record: nothing to replay"
    );
}

/// By partition: only the named ones move; offsets outside the log are refused.
async fn assert_a_replay_by_partition(cfg: &KafkaConfig) {
    let r = replay::run(cfg, &ReplayFrom::parse_offsets("1:7").unwrap(), false)
        .await
        .unwrap();
    assert_eq!(reset_to(&r), vec![(1, 7)]);
    assert_eq!(committed(cfg, 3), vec![Some(100), Some(7), Some(0)]);
    let e = replay::run(cfg, &ReplayFrom::parse_offsets("1:500").unwrap(), true)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReplayError::OffsetOutOfRange {
                partition: 1,
                offset: 500,
                low: 0,
                high: 100
            }
        ),
        "{e}"
    );
    let e = replay::run(cfg, &ReplayFrom::parse_offsets("9:0").unwrap(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReplayError::UnknownPartition {
                partition: 9,
                partitions: 3,
                ..
            }
        ),
        "{e}"
    );
    let r = replay::run(cfg, &ReplayFrom::Beginning, false).await.unwrap();
    assert_eq!(reset_to(&r), vec![(0, 0), (1, 0), (2, 0)]);
}

/// A member in the group: refused, with nothing committed; once it leaves, allowed.
async fn assert_refused_while_the_group_has_a_member(cfg: &KafkaConfig, base: i64) {
    let member: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    member.subscribe(&[&cfg.raw_topic]).unwrap();
    tokio::time::timeout(Duration::from_secs(30), member.recv())
        .await
        .expect("the member joins and reads")
        .unwrap();
    let e = replay::run(cfg, &ReplayFrom::Time(base + 50_000), true)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplayError::GroupActive { .. }), "{e}");
    assert!(e.to_string().contains("stop every processor"), "{e}");
    assert_eq!(
        committed(cfg, 3),
        vec![Some(0), Some(0), Some(0)],
        "a refused replay commits nothing"
    );
    drop(member);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let r = loop {
        match replay::run(cfg, &ReplayFrom::Time(base + 50_000), true).await {
            Ok(r) => break r,
            Err(ReplayError::GroupActive { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("replay after the member left: {e}"),
        }
    };
    assert_eq!(reset_to(&r), vec![(0, 50), (1, 50), (2, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_offsets_by_time_and_partition_and_refuses_while_the_group_is_active() {
    let broker = Broker::shared();
    let topic = kafka::unique_topic("raw");
    kafka::create_topic(broker.bootstrap(), &topic, 3).await;
    let base = produce_an_hour_of_records(broker.bootstrap(), &topic).await;
    let cfg = kafka_config(broker.bootstrap(), &topic);
    assert_a_replay_by_time(&cfg, base).await;
    assert_a_replay_by_partition(&cfg).await;
    assert_refused_while_the_group_has_a_member(&cfg, base).await;
}

/// The end offset of each partition of `topic`.
fn ends(cfg: &KafkaConfig, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", kafka::unique_topic("ends"))
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| hookstream_processor::kafka::offsets::bounds(&c, topic, p).unwrap().1)
        .collect()
}

/// The records at or after `ends` (per partition): what was written after that point.
fn after(records: &[OwnedMessage], ends: &[i64]) -> Vec<OwnedMessage> {
    records
        .iter()
        .filter(|m| m.offset() >= ends[m.partition() as usize])
        .cloned()
        .collect()
}

/// Activations in topic order, per policy: (activation_id, payment_id).
fn activations_by_policy(records: &[OwnedMessage]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for m in records {
        match decode::<PolicyEvent>(m.payload().unwrap()).unwrap().event {
            PolicyEventKind::Activated(a) => out
                .entry(a.policy_id)
                .or_default()
                .push((a.activation_id, a.payment_id)),
            PolicyEventKind::Cancelled(c) => out
                .entry(c.policy_id)
                .or_default()
                .push((c.cancellation_id, c.payment_id)),
            // Announced by whichever request reaches the policy stage second: a set,
            // not an order (see `duplicate_ids`).
            PolicyEventKind::Duplicated(_) => {}
        }
    }
    out
}

/// The ids of the duplicate-payment notices.
fn duplicate_ids(records: &[OwnedMessage]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|m| match decode::<PolicyEvent>(m.payload().unwrap()).unwrap().event {
            PolicyEventKind::Duplicated(d) => Some(d.duplicate_id),
            _ => None,
        })
        .collect()
}

/// Dead letters as (dead_letter_id, reason, event), sorted.
fn letters(records: &[OwnedMessage]) -> Vec<(String, String, Option<String>)> {
    let mut v: Vec<_> = records
        .iter()
        .map(|m| decode::<DeadLetter>(m.payload().unwrap()).unwrap())
        .map(|d| (d.dead_letter_id, d.reason.as_str().to_owned(), d.event_id))
        .collect();
    v.sort();
    v
}

/// 100 payments, 300 events, produced 300 at a time straight to `raw` (the producer
/// packs them into a few large batches).
async fn produce_300_events_in_large_batches(bootstrap: &str, raw: &str) {
    use hookstream_tests::load::{baseline, workload};
    let mix = workload::Mix {
        failed: 0.0,
        refunded: 0.0,
        duplicates: 0.0,
        out_of_order: 0.0,
        interleave: 100,
    };
    let (events, expected) = workload::plan("mid", 300, &mix, 7);
    assert_eq!(expected.activations.len(), 100);
    let (n, _, _) = baseline::produce(bootstrap, raw, std::sync::Arc::new(events), 300).await;
    assert_eq!(n, 300);
}

/// A plain fetch from an offset in the middle of a producer's batch is handed that very
/// record first, not the first record of the next batch (the rest of this one silently
/// skipped).
fn assert_a_fetch_from_inside_a_batch_starts_there(bootstrap: &str, raw: &str, inside: i64) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", kafka::unique_topic("probe"))
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(raw, 0, Offset::Offset(inside)).unwrap();
    probe.assign(&tpl).unwrap();
    let first = match probe.poll(Duration::from_secs(10)) {
        Some(Ok(m)) => m.offset(),
        Some(Err(e)) => panic!("fetch from {inside}: {e}"),
        None => panic!("nothing fetched from {inside}"),
    };
    assert_eq!(first, inside, "a fetch from inside a batch starts at that record");
}

/// The activation ids of the completions at or after `inside` in the raw topic.
async fn completions_from(bootstrap: &str, raw: &str, inside: i64) -> std::collections::BTreeSet<String> {
    let records = kafka::read_records(bootstrap, raw, 300, Duration::from_secs(60)).await;
    records
        .iter()
        .filter(|m| m.offset() >= inside)
        .map(|m| decode::<hookstream_schemas::RawWebhook>(m.payload().unwrap()).unwrap())
        .filter(|w| w.event_type.as_deref() == Some("payment.completed"))
        .map(|w| {
            let pol = w.payment_id.replace("pay_", "pol_");
            hookstream_processor::rules::decide::activation_id(&pol, &w.source, &w.event_id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_an_offset_inside_a_broker_batch_loses_nothing() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let state = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, state.path());
    produce_300_events_in_large_batches(broker.bootstrap(), &topics.raw).await;
    let processor = RunningProcessor::start(config.clone()).await;
    let wait = Duration::from_secs(60);
    assert_eq!(
        kafka::read_records(broker.bootstrap(), &topics.activations, 100, wait)
            .await
            .len(),
        100
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    processor.stop().await;
    let act_ends = ends(&config.kafka, &topics.activations, 3);
    let records = kafka::read_committed_to_end(broker.bootstrap(), &topics.activations).await;
    assert_eq!(records.len(), 100);

    let inside = 157;
    assert_a_fetch_from_inside_a_batch_starts_there(broker.bootstrap(), &topics.raw, inside);
    let r = replay::run(&config.kafka, &ReplayFrom::Offsets(vec![(0, inside)]), false)
        .await
        .unwrap();
    assert_eq!(reset_to(&r), vec![(0, inside)]);

    // Every completion at or after that offset activates again (same id), no other.
    let want = completions_from(broker.bootstrap(), &topics.raw, inside).await;
    assert!(!want.is_empty());
    let processor = RunningProcessor::start(config.clone()).await;
    kafka::read_records(broker.bootstrap(), &topics.activations, 100 + want.len(), wait).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = String::from_utf8_lossy(&get(&processor.admin, "/metrics").await.body).into_owned();
    processor.stop().await;
    let all = kafka::read_records(
        broker.bootstrap(),
        &topics.activations,
        101 + want.len(),
        Duration::from_secs(3),
    )
    .await;
    let again: std::collections::BTreeSet<String> = after(&all, &act_ends)
        .iter()
        .flat_map(|m| activations_by_policy(std::slice::from_ref(m)).into_values())
        .flatten()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all.len(), 100 + want.len(), "{metrics}");
    assert_eq!(
        again, want,
        "every completion from the replay point on is decided again"
    );
    assert!(
        metrics.contains("hookstream_processor_skipped_refetched_total 0"),
        "the group's fetch from inside a batch needs no repair: {metrics}"
    );
}
