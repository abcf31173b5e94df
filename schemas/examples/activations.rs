//! A downstream consumer of `policy.activations`: the template for teams that act on
//! policy activations.
//!
//! ```sh
//! cargo run -p hookstream-schemas --example activations -- \
//!     --brokers 127.0.0.1:9092 --group my-team [--from beginning|end|stored|P:OFFSET[,P:OFFSET...]]
//! ```
//!
//! It decodes each record with the Avro contract and prints one JSON line per *new*
//! event. hookstream delivers at least once: after a processor crash or a replay the
//! same event can arrive again, always with the same `activation_id` /
//! `cancellation_id`. A consumer therefore de-duplicates by that id. This one keeps the
//! ids in memory; a real one keeps them where it keeps its own effects (e.g. a unique
//! key in its database, written in the same transaction as the effect).
//!
//! `--from` re-reads from the start of the log, its end, the group's committed offsets
//! (the default), or explicit offsets per partition.

use std::collections::HashSet;

use hookstream_schemas::{decode, topics, PolicyEvent, PolicyEventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = arg("--brokers")
        .or_else(|| std::env::var("KAFKA_BROKERS").ok())
        .unwrap_or("127.0.0.1:9092".into());
    let topic = arg("--topic").unwrap_or(topics::ACTIVATIONS_TOPIC.into());
    let group = arg("--group").unwrap_or("activations-example".into());
    let from = arg("--from").unwrap_or("stored".into());

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        // Commit only after an event is handled, so nothing is skipped after a crash.
        .set("enable.auto.commit", "false")
        // A new group starts at the beginning: no activation is missed.
        .set("auto.offset.reset", "earliest")
        .create()?;

    let md = consumer.fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(
            &topic,
            p,
            match from.as_str() {
                "beginning" => Offset::Beginning,
                "end" => Offset::End,
                _ => Offset::Stored,
            },
        )?;
    }
    if from.contains(':') {
        for item in from.split(',') {
            let (p, o) = item.split_once(':').ok_or("--from P:OFFSET")?;
            tpl.set_partition_offset(&topic, p.parse()?, Offset::Offset(o.parse()?))?;
        }
    }
    consumer.assign(&tpl)?;
    eprintln!("reading {topic} on {brokers} (group {group}, from {from}); ctrl-c to stop");

    let mut seen = HashSet::new();
    loop {
        let m = tokio::select! {
            m = consumer.recv() => m?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(bytes) = m.payload() else { continue };
        match decode::<PolicyEvent>(bytes) {
            Ok(event) => {
                if seen.insert(event.id().to_owned()) {
                    let line = match &event.event {
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
                    };
                    println!("{line}");
                } else {
                    eprintln!("duplicate delivery of {} ignored", event.id());
                }
            }
            Err(e) => eprintln!("offset {}: not a PolicyEvent: {e}", m.offset()),
        }
        consumer.commit_message(&m, CommitMode::Async)?;
    }
    Ok(())
}
