//! `processor dlq`: list, show and re-drive dead letters.
//!
//! Re-driving publishes a dead letter's original record (same key, value and headers,
//! so the same event id) back to the topic it came from, with the same idempotent,
//! murmur2-partitioned producer settings as ingest, and a `hookstream-redrive-of` header
//! naming the first letter of its chain: it lands in the payment's partition and goes
//! through dedup again. An event that was applied before it was dead-lettered (e.g.
//! `no_policy`) is then a duplicate, except that a completion or refund whose request
//! the broker refused for good (`processing_error`) sends that request again, same ids;
//! one that was never accepted (e.g. `stale`, `event_id_conflict`) is decided again
//! against the state of today. Re-driving a record twice therefore never activates a
//! policy twice. A re-driven record refused again gets one letter per chain and reason,
//! and the letters it supersedes are neither listed nor re-driven: re-driving the same
//! letters again publishes each failure once, not twice as many.
//! `sequence_gap_timeout` letters carry a control record, not a webhook, and are never
//! re-driven.

use std::sync::Arc;
use std::time::Duration;

use hookstream_schemas::{decode, DeadLetter, DeadLetterReason, RawWebhook};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::config::KafkaConfig;
use crate::kafka::{client, offsets};
use hookstream_schemas::topics::headers::REDRIVE_OF;

/// A dead letter and where it is in the DLQ.
///
/// A letter can carry ~1 MB of original record and a DLQ holds 90 days of them, so a
/// read that selects more than one letter leaves each original value out
/// (`letter.original_value` is `None`, `value_bytes` says how large it was) and
/// [`redrive`] reads each back from its place when it publishes it: memory stays the
/// size of the letters' metadata, not of the DLQ.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
    /// The size of the letter's original value (`None`: it has none).
    pub value_bytes: Option<usize>,
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<DeadLetterReason>,
    /// Only letters whose origin record is at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    pub id: Option<String>,
}

impl Filter {
    fn matches(&self, d: &DeadLetter) -> bool {
        self.reason.is_none_or(|r| d.reason == r)
            && self.since_ms.is_none_or(|t| d.origin_timestamp >= t)
            && self.id.as_deref().is_none_or(|id| d.dead_letter_id == id)
    }
}

/// The first letter of the chain `d` belongs to: the letter a re-drive started from.
fn root_of(d: &DeadLetter) -> String {
    d.original_headers
        .iter()
        .rfind(|h| h.name == REDRIVE_OF)
        .and_then(|h| h.value.as_deref())
        .map_or_else(|| d.dead_letter_id.clone(), |v| String::from_utf8_lossy(v).into_owned())
}

/// Read the whole DLQ (up to its end when called) and return the letters that match,
/// each dead letter id once and none a later re-drive superseded (the letter of a
/// chain's first record once a re-drive of it was refused again).
pub async fn read(cfg: &KafkaConfig, filter: &Filter) -> Result<Vec<Entry>, KafkaError> {
    let mut reader = client::tool_consumer(cfg, &format!("{}-dlq-reader", cfg.group_id), "-dlq");
    // The end of a partition is where it reports EOF: under exactly-once the last
    // offsets are transaction markers, which no record reaches.
    reader.set("enable.partition.eof", "true");
    let consumer: StreamConsumer = reader.create()?;
    let topic = cfg.dlq_topic.clone();
    let c = consumer;
    let probe_cfg = client::tool_consumer(cfg, "hookstream-dlq-probe", "-dlq-probe");
    let (c, ends) = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
        // The ends from the broker (crate::kafka::offsets), with a consumer of its own.
        let probe: BaseConsumer = probe_cfg.create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len()) as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..n {
            let (low, high) = offsets::bounds(&probe, &topic, p)?;
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
                ends.push((p, high));
            }
        }
        c.assign(&tpl)?;
        Ok((c, ends))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    let next: std::collections::HashMap<i32, i64> = ends.iter().copied().collect();
    let mut out = Vec::new();
    let mut superseded: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut done: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    while done.len() < ends.len() {
        let m = match tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
                continue;
            }
            Ok(m) => m?,
            Err(_) => break,
        };
        let (p, o) = (m.partition(), m.offset());
        if next.get(&p).is_some_and(|high| o + 1 >= *high) {
            done.insert(p);
        }
        if let Some(Ok(letter)) = m.payload().map(decode::<DeadLetter>) {
            let root = root_of(&letter);
            if root != letter.dead_letter_id {
                superseded.insert(root);
            }
            // A replay re-publishes letters with the same id: list each once.
            if filter.matches(&letter) && seen.insert(letter.dead_letter_id.clone()) {
                let mut letter = letter;
                let value_bytes = letter.original_value.as_ref().map(Vec::len);
                if filter.id.is_none() {
                    letter.original_value = None;
                }
                out.push(Entry {
                    partition: p,
                    offset: o,
                    letter,
                    value_bytes,
                });
            }
        }
    }
    out.retain(|e| !superseded.contains(&e.letter.dead_letter_id));
    Ok(out)
}

/// One line for `list`.
pub fn summary(e: &Entry) -> Value {
    let d = &e.letter;
    json!({
        "dead_letter_id": d.dead_letter_id, "reason": d.reason.as_str(), "detail": d.detail,
        "payment_id": d.payment_id, "event_id": d.event_id, "source": d.source,
        "origin": { "topic": d.origin_topic, "partition": d.origin_partition, "offset": d.origin_offset,
                    "timestamp_ms": d.origin_timestamp },
        "missing_sequences": d.missing_sequences,
        "missing_ranges": d.missing_ranges.iter().map(|r| [r.first, r.last]).collect::<Vec<_>>(),
        "dlq": { "partition": e.partition, "offset": e.offset },
    })
}

/// Everything for `show`, with the original webhook's body as text when it decodes.
pub fn detail(e: &Entry) -> Value {
    let mut v = summary(e);
    let original = e
        .letter
        .original_value
        .as_deref()
        .and_then(|b| decode::<RawWebhook>(b).ok());
    v["original"] = match original {
        Some(r) => json!({ "event_type": r.event_type, "sequence": r.sequence, "received_at_ms": r.received_at,
                           "body": String::from_utf8_lossy(&r.body) }),
        None => Value::Null,
    };
    v["original_headers"] = e.letter.original_headers.iter().map(|h| h.name.clone()).collect();
    v
}

/// The letter at `e`'s place in `topic`, original value included; `None` when it is
/// gone (retention) or no longer decodes. Blocking.
fn reread(c: &BaseConsumer, topic: &str, e: &Entry) -> Result<Option<DeadLetter>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, e.partition, Offset::Offset(e.offset))?;
    c.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == e.partition && m.offset() == e.offset => {
                return Ok(m.payload().and_then(|b| decode::<DeadLetter>(b).ok()));
            }
            Some(Ok(m)) if m.partition() == e.partition && m.offset() > e.offset => return Ok(None),
            Some(Err(err)) if !matches!(err, KafkaError::PartitionEOF(_)) => return Err(err),
            _ => {}
        }
    }
    Ok(None)
}

/// Publish the original records of `entries` back to their origin topics. Returns a
/// report: what was (or, with `dry_run`, would be) re-driven and what was skipped.
pub async fn redrive(cfg: &KafkaConfig, entries: &[Entry], dry_run: bool) -> Result<Value, KafkaError> {
    // The contract's producer settings, as ingest: the record lands in the payment's
    // partition.
    let producer: FutureProducer = client::producer(cfg, "-redrive").create()?;
    let reader: Arc<BaseConsumer> =
        Arc::new(client::tool_consumer(cfg, &format!("{}-dlq-reader", cfg.group_id), "-dlq").create()?);
    let (mut redriven, mut skipped) = (Vec::new(), Vec::new());
    for e in entries {
        let d = &e.letter;
        let why_not = match (e.value_bytes, d.reason) {
            (_, DeadLetterReason::SequenceGapTimeout) => Some("a gap-timeout letter carries a control record"),
            (None, _) => Some("no original value"),
            _ => None,
        };
        if let Some(why) = why_not {
            skipped.push(json!({ "dead_letter_id": d.dead_letter_id, "why": why }));
            continue;
        }
        if !dry_run {
            let full;
            let d = if d.original_value.is_some() {
                d
            } else {
                let (reader, topic, e) = (reader.clone(), cfg.dlq_topic.clone(), e.clone());
                match tokio::task::spawn_blocking(move || reread(&reader, &topic, &e))
                    .await
                    .map_err(|_| KafkaError::Canceled)??
                {
                    Some(l) => {
                        full = l;
                        &full
                    }
                    None => {
                        skipped.push(
                            json!({ "dead_letter_id": d.dead_letter_id, "why": "no longer readable in the DLQ" }),
                        );
                        continue;
                    }
                }
            };
            let root = root_of(d);
            let mut headers = OwnedHeaders::new();
            for h in d.original_headers.iter().filter(|h| h.name != REDRIVE_OF) {
                headers = headers.insert(Header {
                    key: &h.name,
                    value: h.value.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: REDRIVE_OF,
                value: Some(root.as_bytes()),
            });
            let mut record = FutureRecord::to(&d.origin_topic).headers(headers);
            if let Some(v) = &d.original_value {
                record = record.payload(v);
            }
            if let Some(k) = &d.original_key {
                record = record.key(k);
            }
            let delivered = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)?;
            redriven.push(json!({ "dead_letter_id": d.dead_letter_id, "event_id": d.event_id,
                "to": { "topic": d.origin_topic, "partition": delivered.partition, "offset": delivered.offset } }));
        } else {
            redriven.push(json!({ "dead_letter_id": d.dead_letter_id, "event_id": d.event_id, "to": { "topic": d.origin_topic } }));
        }
    }
    Ok(
        json!({ "dry_run": dry_run, "redriven": redriven.len(), "skipped": skipped.len(),
               "records": redriven, "skipped_records": skipped }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ids::dead_letter;
    use crate::rules::model::{Origin, Output, RawRecord};

    fn letter(reason: DeadLetterReason, timestamp_ms: i64) -> DeadLetter {
        let record = RawRecord {
            origin: Origin {
                topic: "raw".into(),
                partition: 1,
                offset: timestamp_ms,
                timestamp_ms,
            },
            key: Some(b"pay".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![],
        };
        match dead_letter(&record, reason, "d".into(), Some(("src", "evt")), Some("pay"), vec![]) {
            Output::Dead(d) => d,
            Output::Policy(_) | Output::Request(_) => unreachable!("dead_letter makes a dead letter"),
        }
    }

    #[test]
    fn the_filter_selects_by_reason_time_and_id_together() {
        let stale = letter(DeadLetterReason::Stale, 1_000);
        let late = letter(DeadLetterReason::NoPolicy, 5_000);
        let all = Filter::default();
        assert!(all.matches(&stale) && all.matches(&late));
        let by_reason = Filter {
            reason: Some(DeadLetterReason::Stale),
            ..Filter::default()
        };
        assert!(by_reason.matches(&stale) && !by_reason.matches(&late));
        let since = Filter {
            since_ms: Some(5_000),
            ..Filter::default()
        };
        assert!(!since.matches(&stale) && since.matches(&late), "since is inclusive");
        let both = Filter {
            reason: Some(DeadLetterReason::Stale),
            since_ms: Some(5_000),
            ..Filter::default()
        };
        assert!(!both.matches(&stale) && !both.matches(&late));
        let by_id = Filter {
            id: Some(late.dead_letter_id.clone()),
            ..Filter::default()
        };
        assert!(by_id.matches(&late) && !by_id.matches(&stale));
    }
}
