//! A downstream consumer of `policy.activations`: the template for teams that act on
//! policy activations.
//!
//! ```sh
//! cargo run -p hookstream-processor --example activations -- --brokers 127.0.0.1:9092 --group my-team \
//!     [--from stored|beginning|end|P:OFFSET[,P:OFFSET...]] [--from-time 2026-11-22T08:00:00Z]
//! ```
//!
//! It decodes each record with the Avro contract and prints one JSON line per *new*
//! event, with the `trace_id` of the trace the event continues (the webhook's, from
//! ingest through the processor) and this consumer's own `traceparent` in it. hookstream delivers at least once: after a processor crash or a `processor
//! replay` the same event arrives again, always with the same `activation_id` /
//! `cancellation_id`. A consumer therefore de-duplicates by that id. This one keeps the
//! ids in memory; a real one keeps them where it keeps its own effects (e.g. a unique
//! key in its database, written in the same transaction as the effect), so a re-read
//! from any point repeats no effect.
//!
//! **Re-reading.** `--from` starts from the group's committed offsets (the default), the
//! start of the log, its end, or explicit offsets per partition; `--from-time` from the
//! first event at or after a time in every partition (the broker's `offsets_for_times`,
//! through `hookstream_processor::kafka::offsets`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_processor::kafka::offsets;
use hookstream_processor::trace::RecordTracer;
use hookstream_schemas::{decode, topics, PolicyEvent, PolicyEventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Read policy events, print each new one as a JSON line, de-duplicate by id.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The policy events topic.
    #[arg(long, default_value = topics::ACTIVATIONS_TOPIC)]
    topic: String,
    /// This consumer's group (its committed offsets).
    #[arg(long, default_value = "activations-example")]
    group: String,
    /// Where to start: `stored` (the group's offsets), `beginning`, `end`, or
    /// `P:OFFSET[,P:OFFSET...]`.
    #[arg(long, default_value = "stored")]
    from: String,
    /// Start every partition at its first event at or after this RFC 3339 time.
    #[arg(long, value_name = "RFC3339")]
    from_time: Option<String>,
}

/// Exact start offsets per partition, from `--from P:O,...` or `--from-time` (a fetch
/// from an offset starts at that record). Blocking.
fn exact_starts(
    brokers: &str,
    topic: &str,
    partitions: i32,
    from: &str,
    time: Option<&str>,
) -> Result<HashMap<i32, i64>, Box<dyn std::error::Error + Send + Sync>> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "activations-example-probe")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut out = HashMap::new();
    if let Some(t) = time {
        let ms = replay::parse_rfc3339_ms(t)?;
        for p in 0..partitions {
            let (low, high) = offsets::bounds(&probe, topic, p)?;
            let o = offsets::first_at_or_after(&probe, topic, p, low, high, ms)?.ok_or("cannot read the topic")?;
            out.insert(p, o);
        }
    } else if from.contains(':') {
        let ReplayFrom::Offsets(list) = ReplayFrom::parse_offsets(from)? else {
            return Err("--from P:OFFSET".into());
        };
        out.extend(list);
    }
    Ok(out)
}

/// The consumer, its commits manual, its reads committed only.
fn consumer(brokers: &str, group: &str) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        // Commit only after an event is handled, so nothing is skipped after a crash.
        .set("enable.auto.commit", "false")
        // A new group starts at the beginning: no activation is missed.
        .set("auto.offset.reset", "earliest")
        // librdkafka's default, stated because the processor's exactly-once depends on
        // it: events of aborted transactions (a crashed or fenced processor's) are never
        // delivered, so each event arrives once (a replay re-publishes on purpose).
        .set("isolation.level", "read_committed")
        .create()
}

/// One event as a JSON line: what a downstream team acts on, and where it was read.
fn line_of(event: &PolicyEvent, m: &BorrowedMessage<'_>) -> serde_json::Value {
    match &event.event {
        PolicyEventKind::Activated(a) => serde_json::json!({
            "event": "PolicyActivated", "policy_id": a.policy_id, "activation_id": a.activation_id,
            "payment_id": a.payment_id, "amount": a.amount, "currency": a.currency,
            "partition": m.partition(), "offset": m.offset()
        }),
        PolicyEventKind::Cancelled(c) => serde_json::json!({
            "event": "PolicyCancelled", "policy_id": c.policy_id, "activation_id": c.activation_id,
            "cancellation_id": c.cancellation_id, "payment_id": c.payment_id,
            "partition": m.partition(), "offset": m.offset()
        }),
        // Another payment for a policy already held: the team that refunds duplicates
        // acts on this one.
        PolicyEventKind::Duplicated(d) => serde_json::json!({
            "event": "PolicyPaymentDuplicated", "policy_id": d.policy_id,
            "duplicate_id": d.duplicate_id, "payment_id": d.payment_id, "source": d.source,
            "active_payment_id": d.active_payment_id, "active_activation_id": d.active_activation_id,
            "partition": m.partition(), "offset": m.offset()
        }),
    }
}

/// Print each event once (by its id), continuing the trace the record carries
/// (ingest → processor → here: a consumer with an exporter configured would time its own
/// work in it); commit after each, until ctrl-c.
async fn print_events(consumer: &StreamConsumer) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut seen = HashSet::new();
    let tracer = RecordTracer::default();
    loop {
        let m = tokio::select! {
            m = consumer.recv() => m?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(bytes) = m.payload() else { continue };
        match decode::<PolicyEvent>(bytes) {
            Ok(event) if seen.insert(event.id().to_owned()) => {
                let mut line = line_of(&event, &m);
                let parent = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == topics::headers::TRACEPARENT))
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok());
                if let Some((traceparent, trace_id)) = tracer.child(parent) {
                    line["trace_id"] = trace_id.into();
                    line["traceparent"] = traceparent.into();
                }
                println!("{line}");
            }
            Ok(event) => eprintln!("duplicate delivery of {} ignored", event.id()),
            Err(e) => eprintln!("offset {}: not a PolicyEvent: {e}", m.offset()),
        }
        consumer.commit_message(&m, CommitMode::Async)?;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Cli {
        brokers,
        topic,
        group,
        from,
        from_time: time,
    } = <Cli as clap::Parser>::parse();
    let consumer = consumer(&brokers, &group)?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as i32;
    let exact = {
        let (b, t, f, tm) = (brokers.clone(), topic.clone(), from.clone(), time.clone());
        tokio::task::spawn_blocking(move || exact_starts(&b, &t, partitions, &f, tm.as_deref())).await??
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = match (exact.get(&p), from.as_str()) {
            (Some(&start), _) => Offset::Offset(start),
            (None, "beginning") => Offset::Beginning,
            (None, "end") => Offset::End,
            (None, _) => Offset::Stored,
        };
        tpl.add_partition_offset(&topic, p, offset)?;
    }
    consumer.assign(&tpl)?;
    eprintln!("reading {topic} on {brokers} (group {group}, from {from}, time {time:?}); ctrl-c to stop");

    print_events(&consumer).await
}
