//! `processor topics` on the real broker: apply creates every planned topic and is
//! idempotent; check finds drift (a topic with another partition count or settings)
//! and apply reports it without changing the topic.

use hookstream_processor::cli::topics::{self, Drift, Status};
use hookstream_processor::ProcessorConfig;
use hookstream_tests::broker::Broker;
use hookstream_tests::kafka;

/// A config whose every topic name is new, with the local broker's replication.
fn config(bootstrap: &str) -> ProcessorConfig {
    let mut c = ProcessorConfig::default();
    c.kafka.brokers = bootstrap.to_owned();
    c.kafka.group_id = kafka::unique_topic("topics-group");
    c.kafka.raw_topic = kafka::unique_topic("topics-raw");
    c.kafka.activations_topic = kafka::unique_topic("topics-activations");
    c.kafka.dlq_topic = kafka::unique_topic("topics-dlq");
    c.topics.replication_factor = 1;
    c.topics.min_insync_replicas = 1;
    c.topics.raw_partitions = 4;
    c.topics.activations_partitions = 3;
    c.topics.dlq_partitions = 1;
    c
}

fn statuses(report: &[topics::TopicReport]) -> Vec<Status> {
    report.iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_every_topic_once_and_check_agrees() {
    let broker = Broker::shared();
    let c = config(broker.bootstrap());
    let plan = topics::plan(&c).unwrap();
    let before = topics::check(&c, &plan).await.unwrap();
    assert_eq!(statuses(&before), vec![Status::Missing; 6], "{before:#?}");
    let applied = topics::apply(&c, &plan).await.unwrap();
    assert_eq!(statuses(&applied), vec![Status::Created; 6], "{applied:#?}");
    let again = topics::apply(&c, &plan).await.unwrap();
    assert_eq!(statuses(&again), vec![Status::Ok; 6], "apply is idempotent: {again:#?}");
    let checked = topics::check(&c, &plan).await.unwrap();
    assert_eq!(statuses(&checked), vec![Status::Ok; 6], "{checked:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_and_left_alone() {
    let broker = Broker::shared();
    let c = config(broker.bootstrap());
    // The raw topic exists already, with 2 partitions instead of 4 and the broker's
    // default settings.
    kafka::create_topic(broker.bootstrap(), &c.kafka.raw_topic, 2).await;
    let plan = topics::plan(&c).unwrap();
    let checked = topics::check(&c, &plan).await.unwrap();
    let raw = &checked[0];
    assert_eq!(raw.status, Status::Drift, "{checked:#?}");
    assert!(
        raw.drift.contains(&Drift::Partitions { expected: 4, found: 2 }),
        "{:#?}",
        raw.drift
    );
    assert!(
        raw.drift
            .iter()
            .any(|d| matches!(d, Drift::Config { key, .. } if key == "retention.ms")),
        "the broker's default retention is not the planned one: {:#?}",
        raw.drift
    );
    let applied = topics::apply(&c, &plan).await.unwrap();
    assert_eq!(
        applied[0].status,
        Status::Drift,
        "apply does not change a drifted topic"
    );
    assert!(applied[1..].iter().all(|r| r.status == Status::Created), "{applied:#?}");
    let after = topics::check(&c, &plan).await.unwrap();
    assert!(
        after[0].drift.contains(&Drift::Partitions { expected: 4, found: 2 }),
        "still 2 partitions: {after:#?}"
    );
}

/// A producer whose clock is 8 days ahead (a skewed ingest host, or anyone producing to
/// the raw topic) does not choose the time its records carry: the planned raw topic is
/// stamped by the broker at append, so a partition's clock follows one clock, the
/// broker's, and eight such records cannot age every dedup key of the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_topic_carries_the_brokers_time_not_the_producers() {
    use rdkafka::message::{Message, Timestamp};
    use rdkafka::producer::FutureRecord;
    let broker = Broker::shared();
    let c = config(broker.bootstrap());
    let plan = topics::plan(&c).unwrap();
    topics::apply(&c, &plan).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ahead = now + 8 * 86_400_000;
    let producer = kafka::producer(broker.bootstrap());
    let record = FutureRecord::to(&c.kafka.raw_topic)
        .key("pay_skew")
        .payload("x")
        .timestamp(ahead);
    producer
        .send(record, std::time::Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("accepted whatever time the producer claims");
    let read = kafka::read_records(
        broker.bootstrap(),
        &c.kafka.raw_topic,
        1,
        std::time::Duration::from_secs(20),
    )
    .await;
    let ts = read[0].timestamp();
    let Timestamp::LogAppendTime(ms) = ts else {
        panic!("the producer's time was kept: {ts:?}")
    };
    assert!(
        (ms - now).abs() < 60_000,
        "the broker's time, not 8 days ahead: {ms} vs {now}"
    );
}
