//! Changelog-backed state on the real broker: a payment's and a policy's state outlive
//! the records they were folded from and the state directory, and the changelog
//! topics are compacted topics.

use std::time::Duration;

use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, RunningProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use hookstream_tests::kafka::{admin, admin_options};

/// Delete every record of `topic`'s `partitions` (as retention would).
async fn delete_all(bootstrap: &str, topic: &str, partitions: i32) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = probe.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        tpl.add_partition_offset(topic, p, Offset::Offset(high)).unwrap();
    }
    admin(bootstrap)
        .delete_records(&tpl, &admin_options())
        .await
        .expect("the broker deletes records (DeleteRecords)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_cancels_after_its_completion_left_the_log_and_the_state_directory_was_wiped() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let state = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, state.path());
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let addr = ingest.addr();

    let processor = RunningProcessor::start(config.clone()).await;
    sign::send_event(&addr, "c1", "pay_c1", None, "payment.completed", Some("pol_c1")).await;
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_c1",
        Duration::from_secs(60),
    )
    .await;
    processor.stop().await;

    // Retention took every record both stages folded; the state directory is lost.
    delete_all(broker.bootstrap(), &topics.raw, 2).await;
    delete_all(broker.bootstrap(), &config.kafka.requests_topic(), 2).await;
    std::fs::remove_dir_all(state.path()).unwrap();

    let processor = RunningProcessor::start(config.clone()).await;
    sign::send_event(&addr, "c2", "pay_c1", None, "payment.refunded", Some("pol_c1")).await;
    let mut cancelled = false;
    let records = kafka::read_until(broker.bootstrap(), &topics.activations, Duration::from_secs(60), |r| {
        cancelled |= r.last().and_then(|m| m.payload()).is_some_and(|p| {
            matches!(decode::<PolicyEvent>(p).map(|e| e.event), Ok(PolicyEventKind::Cancelled(c)) if c.payment_id == "pay_c1")
        });
        cancelled
    })
    .await;
    assert!(cancelled, "the refund cancelled the policy: {} events", records.len());
    let dead = kafka::read_records(broker.bootstrap(), &topics.dlq, 1, Duration::from_secs(2)).await;
    assert!(
        dead.is_empty(),
        "no dead letter (invalid_transition was the old answer)"
    );
    processor.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_topics_are_compacted_with_one_partition_per_input_partition() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 3).await;
    let state = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, state.path());
    let processor = RunningProcessor::start(config.clone()).await;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let names = [
        config
            .kafka
            .changelog_topic(hookstream_processor::config::PAYMENTS_STORE),
        config
            .kafka
            .changelog_topic(hookstream_processor::config::POLICIES_STORE),
    ];
    for name in &names {
        let mut partitions = 0;
        for _ in 0..100 {
            let md = probe.fetch_metadata(Some(name), Duration::from_secs(5)).unwrap();
            partitions = md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if partitions > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(partitions, 3, "{name}");
    }
    let resources: Vec<_> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let configs = admin(broker.bootstrap())
        .describe_configs(resources.iter(), &AdminOptions::new())
        .await
        .unwrap();
    for (name, c) in names.iter().zip(configs) {
        let c = c.unwrap();
        let policy = c.get("cleanup.policy").and_then(|e| e.value.clone());
        assert_eq!(policy.as_deref(), Some("compact"), "{name}");
    }
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_stays_flat_over_a_run_longer_than_the_dedup_window() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, state.path());
    config.processing.dedup_window = Duration::from_secs(2);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let addr = ingest.addr();
    let processor = RunningProcessor::start(config.clone()).await;
    // 40 payments, one every 200 ms: 8 s of record time, four dedup windows.
    for i in 0..40 {
        sign::send_event(
            &addr,
            &format!("f{i}"),
            &format!("pay_f{i}"),
            None,
            "payment.created",
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Until the last ones are decided.
    tokio::time::sleep(Duration::from_secs(2)).await;
    processor.stop().await;
    ingest.stop().await;

    let store = hookstream_processor::store::Store::open(state.path(), 1 << 20).unwrap();
    let kept: Vec<usize> = (0..40)
        .filter(|i| {
            !store
                .find_payments(&topics.raw, &format!("pay_f{i}"))
                .unwrap()
                .is_empty()
        })
        .collect();
    assert!(kept.len() <= 16, "payments still stored: {kept:?}");
    assert!(
        kept.iter().all(|i| *i >= 20),
        "the first half is older than the window: {kept:?}"
    );
    let changelog = config
        .kafka
        .changelog_topic(hookstream_processor::config::PAYMENTS_STORE);
    let records = kafka::read_records(broker.bootstrap(), &changelog, usize::MAX, Duration::from_secs(3)).await;
    let tombstones = records
        .iter()
        .filter(|m| m.payload().is_none() && m.key().is_some_and(|k| k.starts_with(b"p")))
        .count();
    assert!(
        tombstones >= 20,
        "evicted payments are tombstones in the changelog: {tombstones}"
    );
}

/// Create `name` (one partition) as a changelog the broker compacts within seconds: a
/// segment rolls every 300 ms of record time, any dirty ratio is worth cleaning and no
/// compaction lag (the processor's own topics keep an hour: see `changelog_settings`).
async fn eager_changelog(bootstrap: &str, name: &str) {
    let topic = rdkafka::admin::NewTopic::new(name, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", "1")
        .set("segment.ms", "300")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0");
    for r in admin(bootstrap)
        .create_topics([&topic], &admin_options())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Records in `topic` (partition 0) and its end offset.
async fn count_and_end(bootstrap: &str, topic: &str) -> (usize, i64) {
    let records = kafka::read_records(bootstrap, topic, usize::MAX, Duration::from_secs(3)).await;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let (_, high) = probe.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    (records.len(), high)
}

/// 12 payments (`pay_k<i>` for `pol_k<i>`), each created → processing → completed, one
/// event every 100 ms: every event rewrites its payment's entry, so most of the
/// changelog is superseded values.
async fn send_twelve_lifecycles_slowly(addr: &str, payments: &[String]) {
    for (seq, ty) in [
        (1, "payment.created"),
        (2, "payment.processing"),
        (3, "payment.completed"),
    ] {
        for (i, pay) in payments.iter().enumerate() {
            let pol = format!("pol_k{i}");
            sign::send_event(addr, &format!("k{i}_{seq}"), pay, Some(seq), ty, Some(&pol)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Send records until the cleaner compacted `payments_log` to less than half of what
/// was written (it only compacts closed segments: a few more records roll the last
/// one); (kept, written).
async fn wait_until_compacted(bootstrap: &str, addr: &str, payments_log: &str) -> (usize, i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        n += 1;
        sign::send_event(
            addr,
            &format!("k_roll{n}"),
            &format!("pay_roll{n}"),
            None,
            "payment.created",
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (kept, end) = count_and_end(bootstrap, payments_log).await;
        if (kept as i64) < end / 2 {
            break (kept, end);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not compacted within 60 s: {kept} of {end} records kept"
        );
    }
}

/// The admin views of every payment and policy, each once it is in its store (shortly
/// after its outputs are readable, and after a restore once its member is assigned).
async fn views(admin: &str, payments: &[String]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let paths = payments.iter().map(|p| format!("/payments/{p}"));
    for path in paths.chain((0..12).map(|i| format!("/policies/pol_k{i}"))) {
        out.push(
            hookstream_tests::http::poll(admin, &path, |r| r.status == 200)
                .await
                .json(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_compacts_the_changelogs_and_a_wiped_instance_restores_the_same_state_from_them() {
    use hookstream_processor::config::{PAYMENTS_STORE, POLICIES_STORE};
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let state = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, state.path());
    let (payments_log, policies_log) = (
        config.kafka.changelog_topic(PAYMENTS_STORE),
        config.kafka.changelog_topic(POLICIES_STORE),
    );
    eager_changelog(broker.bootstrap(), &payments_log).await;
    eager_changelog(broker.bootstrap(), &policies_log).await;
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let addr = ingest.addr();
    let processor = RunningProcessor::start(config.clone()).await;
    // 12 payments, each created → processing → completed, one event every 100 ms: every
    // event rewrites its payment's entry, so most of the changelog is superseded values.
    let payments: Vec<String> = (0..12).map(|i| format!("pay_k{i}")).collect();
    send_twelve_lifecycles_slowly(&addr, &payments).await;
    for i in 0..12 {
        let pol = format!("pol_k{i}");
        kafka::wait_for_activation(broker.bootstrap(), &topics.activations, &pol, Duration::from_secs(60)).await;
    }
    let (kept, end) = wait_until_compacted(broker.bootstrap(), &addr, &payments_log).await;
    eprintln!("compacted: {kept} records kept of {end} written to {payments_log}");
    let before = views(&processor.admin, &payments).await;
    processor.stop().await;

    // The raw log and the requests are gone too: only the compacted changelogs are left.
    delete_all(broker.bootstrap(), &topics.raw, 1).await;
    delete_all(broker.bootstrap(), &config.kafka.requests_topic(), 1).await;
    std::fs::remove_dir_all(state.path()).unwrap();
    let processor = RunningProcessor::start(config.clone()).await;
    let after = views(&processor.admin, &payments).await;
    assert_eq!(before, after, "the same state, restored from the compacted changelogs");
    // And it acts on it: a refund of the holder cancels its policy.
    sign::send_event(
        &addr,
        "k0_refund",
        "pay_k0",
        Some(4),
        "payment.refunded",
        Some("pol_k0"),
    )
    .await;
    let mut cancelled = false;
    kafka::read_until(broker.bootstrap(), &topics.activations, Duration::from_secs(60), |r| {
        cancelled |= r.last().and_then(|m| m.payload()).is_some_and(|p| {
            matches!(decode::<PolicyEvent>(p).map(|e| e.event), Ok(PolicyEventKind::Cancelled(c)) if c.payment_id == "pay_k0")
        });
        cancelled
    })
    .await;
    assert!(cancelled, "the refund cancelled pol_k0");
    processor.stop().await;
    ingest.stop().await;
}
