//! Kafka helpers for tests: unique topics, a producer configured like ingest's, and a
//! reader that collects what a topic holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};

/// A topic name no other test (nor an earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An admin client for `bootstrap`.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

/// Options of a topic request: wait up to 10 s for the controller's answer.
pub fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Create a topic (one replica) and wait until its metadata shows every partition.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_replicated_topic(bootstrap, name, partitions, 1).await;
}

/// Create a topic with `replication` replicas (and `min.insync.replicas` 2 when there
/// are two or more, as in production; 1 with one replica, whatever the broker's default)
/// and wait until its metadata shows every partition.
pub async fn create_replicated_topic(bootstrap: &str, name: &str, partitions: i32, replication: i32) {
    let admin = admin(bootstrap);
    let min_isr = replication.clamp(1, 2).to_string();
    let topic =
        NewTopic::new(name, partitions, TopicReplication::Fixed(replication)).set("min.insync.replicas", &min_isr);
    let results = admin
        .create_topics([&topic], &admin_options())
        .await
        .expect("create_topics request");
    for r in results {
        if let Err((t, code)) = r {
            panic!("creating topic {t} failed: {code:?}");
        }
    }
    let consumer = reader(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if partition_count(&consumer, name) == Some(partitions as usize) {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} did not appear in metadata");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delete a topic and wait until the metadata no longer shows it (Kafka deletes
/// asynchronously: a topic created again too soon is refused as marked for deletion).
pub async fn delete_topic(bootstrap: &str, name: &str) {
    let admin = admin(bootstrap);
    let results = admin
        .delete_topics(&[name], &admin_options())
        .await
        .expect("delete_topics request");
    for r in results {
        if let Err((t, code)) = r {
            panic!("deleting topic {t} failed: {code:?}");
        }
    }
    let consumer = reader(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    while partition_count(&consumer, name).is_some() {
        assert!(
            Instant::now() < deadline,
            "topic {name} still in the metadata 30 s after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn partition_count(consumer: &StreamConsumer, topic: &str) -> Option<usize> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len())
}

/// A producer configured the way hookstream's producers are: idempotent, acks=all,
/// Java-compatible murmur2 partitioning.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

fn reader(bootstrap: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_topic("test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// Read `topic` from the beginning of every partition until `want` records have arrived
/// or `timeout` passes (then return what arrived: the caller asserts on the count).
pub async fn read_records(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    read_until(bootstrap, topic, timeout, |r| r.len() >= want).await
}

/// Read `topic` from the beginning until `done(records so far)` holds or `timeout`
/// passes; returns what arrived (the caller asserts on it).
pub async fn read_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer = reader(bootstrap);
    assign_from_beginning(&consumer, topic);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Assign every partition of `topic` from its beginning; how many there are.
fn assign_from_beginning(consumer: &StreamConsumer, topic: &str) -> usize {
    let partitions = partition_count(consumer, topic).unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    partitions
}

/// The record's key as UTF-8 (empty when it has none).
pub fn key_str(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()
}

/// Wait until `topic` (policy events) holds an activation of `policy_id`; panics after
/// `timeout`. Payments on different partitions are processed in no fixed order, so a
/// test that needs a policy to be active first waits for it rather than for time.
pub async fn wait_for_activation(bootstrap: &str, topic: &str, policy_id: &str, timeout: Duration) {
    use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
    let mut found = false;
    read_until(bootstrap, topic, timeout, |r| {
        found |= r.last().and_then(|m| m.payload()).is_some_and(|p| {
            matches!(decode::<PolicyEvent>(p).map(|e| e.event),
                Ok(PolicyEventKind::Activated(a)) if a.policy_id == policy_id)
        });
        found
    })
    .await;
    assert!(found, "{policy_id} was not activated within {timeout:?}");
}

/// Activations by policy once `policies` distinct policies have one (or the timeout
/// passed); also the number of activation records (re-sends included).
pub async fn activations_by_policy(
    bootstrap: &str,
    topic: &str,
    policies: usize,
) -> (usize, BTreeMap<String, BTreeSet<String>>) {
    use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
    let group = |records: &[OwnedMessage]| {
        let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut n = 0;
        for m in records {
            if let PolicyEventKind::Activated(a) = decode::<PolicyEvent>(m.payload().unwrap_or_default())
                .expect("a policy event")
                .event
            {
                by.entry(a.policy_id).or_default().insert(a.activation_id);
                n += 1;
            }
        }
        (n, by)
    };
    // Re-sent activations (same id) are legitimate after a crash: wait for distinct policies.
    let records = read_until(bootstrap, topic, Duration::from_secs(90), |r| {
        r.len() >= policies && group(r).1.len() >= policies
    })
    .await;
    group(&records)
}

/// `group`'s committed offset of each of `topic`'s first `partitions` partitions (`None`
/// where it never committed) and each partition's end. Blocking.
pub fn committed_and_ends(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<(Option<i64>, i64)> {
    let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            let committed = match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (committed, high)
        })
        .collect()
}

/// Every record of `topic` as a `read_committed` reader sees it now: from the beginning
/// of each partition to its end (records of open or aborted transactions are not
/// delivered; the end is librdkafka's EOF, past any commit marker).
pub async fn read_committed_to_end(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_topic("test-committed-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let partitions = assign_from_beginning(&consumer, topic);
    let mut at_end = BTreeSet::new();
    let mut out = Vec::new();
    while at_end.len() < partitions {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("{topic}: no end of partition within 60 s (an open transaction?)"),
        }
    }
    out
}

/// How many times each activation id is in `topic` for a `read_committed` reader.
pub async fn activation_counts(bootstrap: &str, topic: &str) -> BTreeMap<String, usize> {
    use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
    let mut counts = BTreeMap::new();
    for m in read_committed_to_end(bootstrap, topic).await {
        if let Ok(PolicyEventKind::Activated(a)) =
            decode::<PolicyEvent>(m.payload().unwrap_or_default()).map(|e| e.event)
        {
            *counts.entry(a.activation_id).or_insert(0) += 1;
        }
    }
    counts
}
