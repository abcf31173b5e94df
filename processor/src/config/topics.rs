//! `[topics]`: the settings `processor topics` creates and checks every topic with.

use std::time::Duration;

use hookstream_schemas::config::secs;
use serde::{Deserialize, Serialize};

/// Partition counts, replication and retention of the pipeline's topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Replicas of every topic. Default 3 (production: survives one broker lost with
    /// `min_insync_replicas` 2); the local broker is one broker, so its config sets 1.
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic: with `acks=all`, a write is acknowledged
    /// only once this many replicas have it. Default 2; locally 1.
    pub min_insync_replicas: i32,
    /// Partitions of the raw topic, and so of the processor's internal topics (they are
    /// co-partitioned with it). The processor's parallelism ceiling. Default 12.
    pub raw_partitions: i32,
    /// Partitions of `policy.activations` (keyed by policy_id). Default 12.
    pub activations_partitions: i32,
    /// Partitions of the DLQ. Default 3.
    pub dlq_partitions: i32,
    /// Retention of the raw topic: at least the dedup window plus how far back a
    /// `processor replay` must reach. Default 30 days.
    #[serde(rename = "raw_retention_secs", with = "secs")]
    pub raw_retention: Duration,
    /// Retention of `policy.activations`: how long a downstream consumer may be down.
    /// Default 30 days.
    #[serde(rename = "activations_retention_secs", with = "secs")]
    pub activations_retention: Duration,
    /// Retention of the DLQ: how long a dead letter can still be re-driven. Default 90
    /// days.
    #[serde(rename = "dlq_retention_secs", with = "secs")]
    pub dlq_retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            replication_factor: 3,
            min_insync_replicas: 2,
            raw_partitions: 12,
            activations_partitions: 12,
            dlq_partitions: 3,
            raw_retention: Duration::from_secs(30 * DAY),
            activations_retention: Duration::from_secs(30 * DAY),
            dlq_retention: Duration::from_secs(90 * DAY),
        }
    }
}
