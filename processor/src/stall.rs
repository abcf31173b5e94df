//! A liveness guard for the group. It finds raw partitions that no member consumes and
//! makes the group assign them again.
//!
//! On Apache Kafka the coordinator never leaves a partition without an owner. tansu 0.6's
//! coordinator can (README > Local broker). When a dead member's session expires and a
//! heartbeat notices it, the member is removed without a new generation. Its partitions
//! then wait for the next membership change, and that change may never come. The records
//! are safe in the raw topic, but nothing processes them.
//!
//! This guard watches every partition of the raw topic from the outside: the group's
//! committed offset and the log end. A partition is *stalled* when all of these hold for
//! `stall_repair_after_ms`:
//! - records wait past its committed offset;
//! - that offset does not move;
//! - it is not assigned to this instance.
//!
//! The instance then leaves the group and joins again. That membership change makes any
//! coordinator assign every partition again. The cost is one rebalance in which this
//! instance's partitions may move.
//!
//! A live owner that is legitimately slow, for example one rebuilding a large partition,
//! also looks stalled. So the guard is off by default. `infra/config/processor.toml` turns
//! it on for the local broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// One partition as seen from outside the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    /// The group's committed offset, or the log start when it never committed one.
    pub position: i64,
    /// The offset the next record will get, as the broker reports it.
    pub end: i64,
    /// Assigned to this instance (its own workers report their own trouble).
    pub mine: bool,
}

/// What the guard remembers between looks: per lagging partition, its position and
/// since when it has not moved.
///
/// When a repair does not help, the wait before the next one doubles, up to 16 times the
/// configured wait. This is the case when the owner is alive but stuck, for example
/// retrying a broken output topic: rejoining cannot fix that. The wait goes back to the
/// configured one once nothing lags.
#[derive(Debug)]
pub struct StallWatch {
    base: Duration,
    after: Duration,
    since: HashMap<i32, (i64, Instant)>,
}

impl StallWatch {
    pub fn new(after: Duration) -> Self {
        Self {
            base: after,
            after,
            since: HashMap::new(),
        }
    }

    /// The current wait before a lagging, unmoving partition counts as stalled.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Take one look at `views` at `now`; returns the partitions stalled for the current
    /// wait or longer.
    pub fn observe(&mut self, now: Instant, views: &[PartitionView]) -> Vec<i32> {
        let mut stalled = Vec::new();
        for v in views {
            if v.mine || v.end <= v.position {
                self.since.remove(&v.partition);
                continue;
            }
            let entry = self.since.entry(v.partition).or_insert((v.position, now));
            if entry.0 != v.position {
                *entry = (v.position, now);
            }
            if now.duration_since(entry.1) >= self.after {
                stalled.push(v.partition);
            }
        }
        if self.since.is_empty() {
            self.after = self.base;
        }
        stalled.sort_unstable();
        stalled
    }

    /// A repair was made: every partition gets a fresh start, and the next repair waits
    /// twice as long (until nothing lags any more).
    pub fn repaired(&mut self) {
        self.since.clear();
        self.after = (self.after * 2).min(self.base * 16);
    }
}

/// Look at every partition of the raw topic. Blocking (broker requests).
fn look(shared: &Shared) -> Result<Vec<PartitionView>, rdkafka::error::KafkaError> {
    let consumer = &shared.consumer;
    let topic = shared.config.kafka.raw_topic.as_str();
    // Short: a look that fails is simply skipped, and shutdown waits for a running one.
    let timeout = Duration::from_secs(2);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mine = consumer.assignment()?;
    let mut views = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, end) = consumer.fetch_watermarks(topic, p, timeout)?;
        let position = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        views.push(PartitionView {
            partition: p,
            position,
            end,
            mine: mine.find_partition(topic, p).is_some(),
        });
    }
    Ok(views)
}

/// Watch until `shutdown`; when partitions stall, leave the group and join it again.
/// Does nothing when `stall_repair_after_ms` is 0.
pub async fn guard(shared: Arc<Shared>, shutdown: CancellationToken) {
    let after_ms = shared.config.processing.stall_repair_after_ms;
    if after_ms == 0 {
        return;
    }
    // Up to half again as long, different on every instance: when several see the same
    // stall, the first repair usually fixes it before the others act too.
    let jitter_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % (after_ms / 2).max(1))
        .unwrap_or(0);
    let mut watch = StallWatch::new(Duration::from_millis(after_ms + jitter_ms));
    let mut tick = tokio::time::interval(Duration::from_millis((after_ms / 4).max(100)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let views = match tokio::task::spawn_blocking(move || look(&s)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stall guard: cannot read the group's offsets");
                continue;
            }
            Err(_) => continue,
        };
        let stalled = watch.observe(Instant::now(), &views);
        // Never subscribe again once the processor is stopping (it unsubscribes last).
        if stalled.is_empty() || shutdown.is_cancelled() {
            continue;
        }
        tracing::warn!(
            partitions = ?stalled,
            after_ms = watch.after().as_millis() as u64,
            "raw partitions have records waiting and nobody consumes them; leaving and rejoining \
             the group so that they are assigned again"
        );
        shared.metrics.stall_repairs.inc();
        let topic = shared.config.kafka.raw_topic.as_str();
        shared.consumer.unsubscribe();
        if let Err(e) = shared.consumer.subscribe(&[topic]) {
            tracing::error!(error = %e, "cannot subscribe again after leaving the group");
        }
        watch.repaired();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, position: i64, end: i64, mine: bool) -> PartitionView {
        PartitionView {
            partition,
            position,
            end,
            mine,
        }
    }

    #[test]
    fn only_a_foreign_partition_that_lags_without_moving_for_the_whole_time_is_stalled() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = StallWatch::new(Duration::from_secs(10));
        let look = |pos1: i64, pos2: i64| {
            vec![
                view(0, 5, 9, false),    // lags, never moves
                view(1, pos1, 9, false), // lags, moves
                view(2, 9, 9, false),    // caught up
                view(3, 0, 9, true),     // lags, but it is ours
                view(4, pos2, 9, false),
            ]
        };
        assert!(w.observe(t0, &look(1, 3)).is_empty());
        assert!(w.observe(t0 + 5 * s, &look(2, 3)).is_empty());
        assert_eq!(w.observe(t0 + 10 * s, &look(3, 3)), vec![0, 4]);
        // Partition 4 catches up: it is forgotten, and lagging again starts a new clock.
        assert_eq!(w.observe(t0 + 11 * s, &look(4, 9)), vec![0]);
        assert_eq!(w.observe(t0 + 12 * s, &look(5, 8)), vec![0]);
        assert_eq!(w.observe(t0 + 21 * s, &look(6, 8)), vec![0]);
        assert_eq!(w.observe(t0 + 22 * s, &look(7, 8)), vec![0, 4]);
    }

    #[test]
    fn each_repair_that_does_not_help_doubles_the_wait_until_nothing_lags() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = StallWatch::new(Duration::from_secs(10));
        let stuck = [view(0, 5, 9, false)];
        assert!(w.observe(t0, &stuck).is_empty());
        assert_eq!(w.observe(t0 + 10 * s, &stuck), vec![0]);
        w.repaired();
        assert!(w.observe(t0 + 11 * s, &stuck).is_empty());
        assert!(
            w.observe(t0 + 21 * s, &stuck).is_empty(),
            "a fresh start, then twice the wait"
        );
        assert_eq!(w.observe(t0 + 31 * s, &stuck), vec![0]);
        for _ in 0..10 {
            w.repaired();
        }
        assert_eq!(
            w.after(),
            Duration::from_secs(160),
            "at most 16 times the configured wait"
        );
        assert!(w.observe(t0 + 40 * s, &[view(0, 9, 9, false)]).is_empty());
        assert_eq!(
            w.after(),
            Duration::from_secs(10),
            "back to the configured wait once caught up"
        );
    }
}
