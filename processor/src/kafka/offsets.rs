//! Positions in a partition, from the broker's own offset index: the bounds of the
//! retained log and the first offset at or after a time. These are plain Kafka requests
//! (ListOffsets); `tests/tests/replay.rs` checks both against the records.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How long one request waits for the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The first retained offset and the offset the next record will get.
pub fn bounds(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<(i64, i64), KafkaError> {
    consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
}

/// The first offset in `[low, high]` whose record's timestamp is at or after `t_ms`:
/// `high` when there is none. `None` when the broker gives no answer for the partition.
pub fn first_at_or_after(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    t_ms: i64,
) -> Result<Option<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(t_ms))?;
    let found = consumer.offsets_for_times(tpl, REQUEST_TIMEOUT)?;
    Ok(match found.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o.clamp(low, high)),
        // No record at or after the time.
        Some(Offset::End) => Some(high),
        _ => None,
    })
}
