//! Baselines measured in the same run as hookstream itself: a bare rdkafka producer
//! writing the same records ingest writes (same size, same acks=all idempotent
//! settings), and a bare consumer reading the raw topic without processing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookstream_schemas::{encode, topics::headers, HttpHeader, RawWebhook};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::workload::Planned;

/// The RawWebhook ingest would write for `p` (headers of the hmac-sha256 scheme).
pub fn raw_record(p: &Planned, source: &str) -> RawWebhook {
    let body: serde_json::Value = serde_json::from_slice(&p.body).unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    RawWebhook {
        event_id: p.event_id.clone(),
        source: source.to_owned(),
        scheme: "hmac-sha256".into(),
        secret_index: 0,
        payment_id: p.payment_id.clone(),
        event_type: body["type"].as_str().map(str::to_owned),
        sequence: body["sequence"].as_i64(),
        received_at: now,
        headers: vec![
            HttpHeader {
                name: "x-event-id".into(),
                value: p.event_id.clone().into_bytes(),
            },
            HttpHeader {
                name: "x-timestamp".into(),
                value: (now / 1000).to_string().into_bytes(),
            },
            HttpHeader {
                name: "x-signature".into(),
                value: format!("sha256={}", "0".repeat(64)).into_bytes(),
            },
        ],
        body: p.body.clone(),
    }
}

/// Produce `events` as RawWebhook records to `topic`, `in_flight` at a time, acks=all.
/// Returns (records, seconds, mean value bytes).
pub async fn produce(brokers: &str, topic: &str, events: Arc<Vec<Planned>>, in_flight: usize) -> (u64, f64, f64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // The same durability settings as ingest: this is its ceiling.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut bytes = 0usize;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt as _;
    for p in events.iter() {
        let value = encode(&raw_record(p, "paymenthub")).expect("encode");
        bytes += value.len();
        let h = OwnedHeaders::new()
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(&p.event_id),
            })
            .insert(Header {
                key: headers::SOURCE,
                value: Some("paymenthub"),
            });
        let key = p.payment_id.clone();
        let producer = producer.clone();
        let topic = topic.to_owned();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value).headers(h),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if pending.len() >= in_flight {
            if let Some(Err(e)) = pending.next().await {
                eprintln!("produce failed: {e}");
            }
        }
    }
    while let Some(r) = pending.next().await {
        if let Err(e) = r {
            eprintln!("produce failed: {e}");
        }
    }
    let n = events.len() as u64;
    (n, start.elapsed().as_secs_f64(), bytes as f64 / n.max(1) as f64)
}

/// Read `topic` from the beginning to the end of every partition, doing nothing with
/// the records. Returns (records, seconds).
pub async fn consume_all(brokers: &str, topic: &str) -> (u64, f64) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("loadgen-baseline-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = Vec::new();
    for p in 0..n {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        remaining += high - low;
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    let total = remaining;
    let start = Instant::now();
    consumer.assign(&tpl).expect("assign");
    while remaining > 0 {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => remaining -= 1,
            Ok(Err(e)) => eprintln!("consume error: {e}"),
            Err(_) => break,
        }
    }
    ((total - remaining) as u64, start.elapsed().as_secs_f64())
}
