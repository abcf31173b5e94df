//! Holes in an input log: records above a partition's applied offset that the log no
//! longer has (retention deleted them while the partition was elsewhere, or someone
//! deleted records). Deciding on would skip them without a word, so the partition
//! stops until an operator acknowledges the hole (`POST /holes/{topic}/{partition}/acknowledge`
//! on the admin API), and `/readyz` says not ready meanwhile.
//!
//! Stalls: a partition whose own write (a changelog entry, a control record) the broker
//! refuses for good cannot go on without losing state, so it retries, and says so:
//! `/readyz` names it and the reason until the write passes (an operator fixed the
//! topic's size limit or policy).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use serde::Serialize;

/// One partition's hole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hole {
    pub topic: String,
    pub partition: i32,
    /// The last offset the partition's state covers.
    pub applied: i64,
    /// The first offset the log still has: `applied + 1 .. log_start` are gone.
    pub log_start: i64,
    pub acknowledged: bool,
}

/// One partition waiting on a write the broker refuses for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub topic: String,
    pub partition: i32,
    /// What is refused, and the broker's error.
    pub reason: String,
}

/// The holes this instance is waiting on, and its stalled partitions.
#[derive(Debug, Default)]
pub struct Holes(
    Mutex<BTreeMap<(String, i32), Hole>>,
    Mutex<BTreeMap<(String, i32), Stall>>,
);

impl Holes {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Hole>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn report(&self, topic: &str, partition: i32, applied: i64, log_start: i64) {
        let hole = Hole {
            topic: topic.to_owned(),
            partition,
            applied,
            log_start,
            acknowledged: false,
        };
        self.map().insert((topic.to_owned(), partition), hole);
    }

    /// Acknowledge the hole of `topic`'s `partition`; false when there is none.
    pub fn acknowledge(&self, topic: &str, partition: i32) -> bool {
        match self.map().get_mut(&(topic.to_owned(), partition)) {
            Some(h) => {
                h.acknowledged = true;
                true
            }
            None => false,
        }
    }

    pub fn is_acknowledged(&self, topic: &str, partition: i32) -> bool {
        self.map()
            .get(&(topic.to_owned(), partition))
            .is_some_and(|h| h.acknowledged)
    }

    pub fn remove(&self, topic: &str, partition: i32) {
        self.map().remove(&(topic.to_owned(), partition));
    }

    /// Every hole waiting, in topic and partition order.
    pub fn list(&self) -> Vec<Hole> {
        self.map().values().cloned().collect()
    }

    fn stalls(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Stall>> {
        self.1.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `topic`'s `partition` waits on a write refused for good, for `reason`.
    pub fn stall(&self, topic: &str, partition: i32, reason: String) {
        let s = Stall {
            topic: topic.to_owned(),
            partition,
            reason,
        };
        self.stalls().insert((topic.to_owned(), partition), s);
    }

    /// The write passed.
    pub fn unstall(&self, topic: &str, partition: i32) {
        self.stalls().remove(&(topic.to_owned(), partition));
    }

    /// Every stalled partition, in topic and partition order.
    pub fn stalled(&self) -> Vec<Stall> {
        self.stalls().values().cloned().collect()
    }

    /// List `topic`'s `partition` as stalled for `reason`, and count it in `gauge`,
    /// until the returned mark is dropped (the write passed, or the worker ended).
    pub fn mark_stalled(self: &Arc<Self>, gauge: &IntGauge, topic: &str, partition: i32, reason: String) -> StallMark {
        self.stall(topic, partition, reason);
        gauge.inc();
        StallMark {
            holes: self.clone(),
            gauge: gauge.clone(),
            topic: topic.to_owned(),
            partition,
        }
    }
}

/// A partition listed as stalled while this lives.
#[derive(Debug)]
pub struct StallMark {
    holes: Arc<Holes>,
    gauge: IntGauge,
    topic: String,
    partition: i32,
}

impl Drop for StallMark {
    fn drop(&mut self) {
        self.holes.unstall(&self.topic, self.partition);
        self.gauge.dec();
    }
}
