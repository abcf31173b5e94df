//! The first end-to-end fact everything else rests on: a `RawWebhook` published to the
//! real broker, keyed by payment_id, comes back byte-identical and decodes.

use std::time::Duration;

use hookstream_schemas::{decode, encode, samples, topics::headers, RawWebhook};
use hookstream_tests::broker::Broker;
use hookstream_tests::kafka;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// Durability on one node: every record the broker
/// acknowledged (acks=all) is still there after the broker is killed with SIGKILL.
#[tokio::test]
async fn acknowledged_records_survive_a_sigkill_of_the_broker() {
    let broker = Broker::dedicated();
    let topic = kafka::unique_topic("durable");
    kafka::create_topic(broker.bootstrap(), &topic, 3).await;
    let producer = kafka::producer(broker.bootstrap());
    let sends = (0..1000).map(|i| {
        let (producer, topic) = (&producer, &topic);
        async move {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(&format!("pay_{i}"))
                        .payload(&format!("record {i}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    let acked = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(acked, 1000, "the broker acknowledged every record");
    drop(producer);
    broker.stop(false);
    broker.start();
    let records = kafka::read_records(broker.bootstrap(), &topic, 1000, Duration::from_secs(60)).await;
    let mut payloads: Vec<String> = records
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 1000, "every acknowledged record survived the SIGKILL");
}

#[tokio::test]
async fn raw_webhook_round_trips_through_the_broker() {
    let broker = Broker::shared();
    let topic = kafka::unique_topic("roundtrip");
    kafka::create_topic(broker.bootstrap(), &topic, 3).await;

    let webhook = samples::raw_webhook();
    let value = encode(&webhook).unwrap();
    let producer = kafka::producer(broker.bootstrap());
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .key(&webhook.payment_id)
                .payload(&value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::EVENT_ID,
                    value: Some(&webhook.event_id),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledged the record");

    let records = kafka::read_records(broker.bootstrap(), &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "exactly the one record published");
    let m = &records[0];
    assert_eq!((m.partition(), m.offset()), (delivered.partition, delivered.offset));
    assert_eq!(kafka::key_str(m), "pay_7Hq2");
    assert_eq!(m.payload().unwrap(), value.as_slice(), "value bytes unchanged");
    let h = m.headers().unwrap().get(0);
    assert_eq!((h.key, h.value), (headers::EVENT_ID, Some(&b"evt_1001"[..])));
    assert_eq!(decode::<RawWebhook>(m.payload().unwrap()).unwrap(), webhook);
}

#[tokio::test]
async fn same_key_lands_in_the_java_murmur2_partition() {
    // Java's DefaultPartitioner: toPositive(murmur2(key)) % partitions. For 12 partitions
    // these keys map as computed by the reference algorithm in `murmur2_java` below.
    let broker = Broker::shared();
    let topic = kafka::unique_topic("partitioner");
    kafka::create_topic(broker.bootstrap(), &topic, 12).await;
    let producer = kafka::producer(broker.bootstrap());
    for key in ["pay_1", "pay_7Hq2", "pay_abcdef", "a"] {
        let d = producer
            .send(FutureRecord::to(&topic).key(key).payload("x"), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(
            d.partition,
            (murmur2_java(key.as_bytes()) & 0x7fff_ffff) as i32 % 12,
            "key {key}"
        );
    }
}

/// Kafka's Java `Utils.murmur2`, written out from the algorithm's definition.
fn murmur2_java(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}
