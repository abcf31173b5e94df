//! Finding offsets in a partition from its records, so it works on any broker.
//!
//! The local broker's offset index is not to be trusted (DESIGN.md). tansu 0.6:
//! - answers ListOffsets(latest) with the *first* offset of the last batch written,
//!   plus one, so when that batch held several records the reported end is short;
//! - answers ListOffsets(timestamp) by when a batch was stored, not by the records'
//!   timestamps;
//! - answers a Fetch from an offset *inside* a batch with the batches that start after
//!   it: the rest of that batch is silently skipped.
//!
//! So every position here is found from the records themselves, and a read that must
//! start exactly at an offset starts at an [aligned](read_from) earlier one and skips
//! forward. On Apache Kafka the first try is already aligned and costs nothing extra.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long one read waits for a record.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No record for this long after the last one: the end of the log is reached.
const IDLE: Duration = Duration::from_millis(400);

/// The first retained offset and the offset the next record will get. The reported end
/// is checked by reading from the record before it: the rest of its batch follows.
/// `consumer`'s assignment is replaced; a low `fetch.wait.max.ms` keeps this quick.
pub fn bounds(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<(i64, i64), KafkaError> {
    let (low, reported) = consumer.fetch_watermarks(topic, partition, READ_TIMEOUT)?;
    if reported <= low {
        return Ok((low, reported.max(low)));
    }
    assign(consumer, topic, partition, reported - 1)?;
    let mut end = reported;
    let mut last_seen = Instant::now();
    let started = Instant::now();
    // Bounded: on a partition still being written, the end is a snapshot anyway.
    while last_seen.elapsed() < IDLE && started.elapsed() < READ_TIMEOUT {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == partition => {
                end = end.max(m.offset() + 1);
                last_seen = Instant::now();
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(e),
        }
    }
    Ok((low, end))
}

/// The first offset in `[low, high)` whose record's timestamp is at or after `t_ms`
/// (`high` when there is none), by binary search on record timestamps: one read per
/// probe, about 20 for a million records. `None` when a probed record cannot be read.
///
/// Timestamps are producer create times: in order within a partition when one ingest
/// writes it, close to it when several do. The result is a boundary before which every
/// probed record is older than `t_ms`.
pub fn first_at_or_after(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    t_ms: i64,
) -> Result<Option<i64>, KafkaError> {
    let (mut lo, mut hi) = (low, high);
    let mut seen: HashMap<i64, (i64, i64)> = HashMap::new();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (offset, ts) = match seen.get(&mid) {
            Some(v) => *v,
            None => match read_from(consumer, topic, partition, mid)?.1 {
                Some(v) => *seen.entry(mid).or_insert(v),
                None => return Ok(None),
            },
        };
        if ts < t_ms {
            lo = offset + 1;
        } else {
            // Offsets in [mid, offset) hold no record (compaction, markers): `mid` stands
            // for `offset`.
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// Where to start reading so that the record at `offset` is delivered, and the first
/// record at or after `offset` (offset, timestamp ms), `None` at the end of the log.
///
/// Tries `offset`, then steps back (1, 2, 4, ... records, not below the log start) until
/// the first record delivered is at or before `offset`: then no batch was skipped. An
/// offset at or past the reported end minus one starts there: on the local broker that
/// is where the last batch starts (see the module docs), on Kafka the last record; a
/// fetch inside the last batch would only wait for nothing. Leaves `consumer` assigned
/// somewhere in the partition.
pub fn read_from(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(i64, Option<(i64, i64)>), KafkaError> {
    let (low, reported_end) = consumer.fetch_watermarks(topic, partition, READ_TIMEOUT)?;
    let mut next = offset.min(reported_end - 1).max(low);
    loop {
        let start = next;
        assign(consumer, topic, partition, start)?;
        let mut aligned = start == low;
        let mut found = None;
        let mut last_seen = Instant::now();
        while last_seen.elapsed() < IDLE {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) if m.partition() == partition && m.offset() >= start => {
                    last_seen = Instant::now();
                    aligned |= m.offset() <= offset;
                    if m.offset() >= offset {
                        found = Some((m.offset(), m.timestamp().to_millis().unwrap_or(i64::MIN)));
                        break;
                    }
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(e),
            }
        }
        if aligned {
            return Ok((start, found));
        }
        next = (offset - 2 * (offset - start).max(1)).max(low);
    }
}

/// Whether a fetch from `offset` would skip records, and up to where: `Some(until)`
/// when records `[offset, until)` exist but a reader starting at `offset` is handed
/// `until` first (or nothing). `None` when it gets `offset` itself or the log ends there.
pub fn skipped_from(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, KafkaError> {
    assign(consumer, topic, partition, offset)?;
    let mut last_seen = Instant::now();
    while last_seen.elapsed() < IDLE {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                return Ok((m.offset() > offset).then_some(m.offset()));
            }
            Some(Ok(_)) => last_seen = Instant::now(),
            None => {}
            Some(Err(e)) => return Err(e),
        }
    }
    let (_, end) = bounds(consumer, topic, partition)?;
    Ok((end > offset).then_some(end))
}

fn assign(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)
}
