//! Processor configuration: a TOML file (`processor run --config FILE`) with a default
//! for every field, then environment overrides (`KAFKA_BROKERS`, `PROCESSOR_STATE_DIR`,
//! `PROCESSOR_ADMIN_LISTEN`, `PROCESSOR_KAFKA_DEBUG`, `PROCESSOR_SHUTDOWN_GRACE_MS`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::input::BodyFields;
use crate::limits::Limits;

/// The whole processor configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Admin HTTP address (`/payments/{id}`, `/healthz`, `/readyz`, `/metrics`).
    /// Env: `PROCESSOR_ADMIN_LISTEN`. Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// The sled directory. Env: `PROCESSOR_STATE_DIR`. Default `.hookstream/processor-state`.
    pub state_dir: PathBuf,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Processing rules.
    pub processing: ProcessingConfig,
    /// Where the processor finds policy and amount in webhook bodies.
    pub fields: BodyFields,
    /// After SIGTERM or ctrl-c, how long the processor may take to hand its partitions
    /// over before it exits anyway (whatever the broker does: what it could not commit
    /// is read again next time); a second signal exits at once. Env:
    /// `PROCESSOR_SHUTDOWN_GRACE_MS`. Default 15000.
    pub shutdown_grace_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            state_dir: PathBuf::from(".hookstream/processor-state"),
            kafka: KafkaConfig::default(),
            processing: ProcessingConfig::default(),
            fields: BodyFields::default(),
            shutdown_grace_ms: 15_000,
        }
    }
}

/// Topics, group and client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Env: `KAFKA_BROKERS`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Consumer group. Default `hookstream-processor`.
    pub group_id: String,
    /// Kafka `client.id`. Default `hookstream-processor`.
    pub client_id: String,
    /// Input topic. Default `payments.webhooks.raw`.
    pub raw_topic: String,
    /// Output topic for policy events. Default `policy.activations`.
    pub activations_topic: String,
    /// Dead-letter topic. Default `payments.webhooks.dlq`.
    pub dlq_topic: String,
    /// Consumer `session.timeout.ms`. Default 10000.
    pub session_timeout_ms: u32,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch to gather
    /// `fetch_min_bytes`. librdkafka's 500 would add up to half a second to every
    /// activation when traffic is light. Default 25 (`infra/config/processor.toml` sets 200
    /// for the local broker, measured).
    pub fetch_wait_max_ms: u32,
    /// Consumer `fetch.min.bytes`: under load, fewer and larger fetches for the broker
    /// to answer. Default 65536.
    pub fetch_min_bytes: u32,
    /// Static membership `group.instance.id`, so a restart within the session timeout
    /// keeps its partitions. Default none.
    pub group_instance_id: Option<String>,
    /// librdkafka `debug` contexts for the group consumer, e.g. `cgrp` to log every
    /// JoinGroup, SyncGroup, heartbeat error and assignment. The lines are logged at
    /// target `librdkafka`, so run with `RUST_LOG=info,librdkafka=debug`. Env:
    /// `PROCESSOR_KAFKA_DEBUG`. Default empty (off).
    pub debug: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        use hookstream_schemas::topics;
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "hookstream-processor".into(),
            client_id: "hookstream-processor".into(),
            raw_topic: topics::RAW_TOPIC.into(),
            activations_topic: topics::ACTIVATIONS_TOPIC.into(),
            dlq_topic: topics::DLQ_TOPIC.into(),
            session_timeout_ms: 10_000,
            fetch_wait_max_ms: 25,
            fetch_min_bytes: 65_536,
            group_instance_id: None,
            debug: String::new(),
        }
    }
}

/// Rule parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// How long (record time) an event id is remembered for dedup. Default 604800 (7 days).
    pub dedup_window_secs: u64,
    /// A sequence gap open longer than this (wall clock) is resolved by a GapTimeout
    /// control record. Default 300000 (5 minutes).
    pub gap_timeout_ms: u64,
    /// How often the gap timer looks for expired gaps. Default 1000.
    pub gap_check_interval_ms: u64,
    /// Records decided per sled batch and offset commit at most. Default 500.
    pub max_batch_records: usize,
    /// Records buffered per partition between the consumer and its worker (on top of
    /// librdkafka's 2 MiB pre-fetch per partition). Default 1000: two batches, enough to
    /// keep a draining worker busy; 2000 only added memory.
    pub partition_queue_records: usize,
    /// Longest pause between retries of a transient failure (broker, disk). Default 10000.
    pub max_backoff_ms: u64,
    /// Commit each partition's offset to the group at most this often (and on revocation
    /// and shutdown). Default 500.
    pub commit_interval_ms: u64,
    /// sled's page cache in bytes (sled's own default is 1 GiB). Default 67108864 (64 MiB).
    pub sled_cache_bytes: u64,
    /// How far ahead of a payment's next expected sequence an event may be; a later one
    /// is dead-lettered `sequence_out_of_range`. Bounds the gaps a provider can open.
    /// Default 1000.
    pub max_sequence_ahead: i64,
    /// Out-of-order events held per payment; one more is dead-lettered
    /// `held_limit_exceeded`. Default 100.
    pub max_held_events: usize,
    /// Raw bytes (record key and value) held per payment; beyond it an event is
    /// dead-lettered `held_limit_exceeded`. Default 2097152 (2 MiB).
    pub max_held_bytes: usize,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            dedup_window_secs: 7 * 24 * 3600,
            gap_timeout_ms: 300_000,
            gap_check_interval_ms: 1000,
            max_batch_records: 500,
            partition_queue_records: 1000,
            max_backoff_ms: 10_000,
            commit_interval_ms: 500,
            sled_cache_bytes: 64 << 20,
            max_sequence_ahead: Limits::default().max_sequence_ahead,
            max_held_events: Limits::default().max_held_events,
            max_held_bytes: Limits::default().max_held_bytes,
        }
    }
}

impl ProcessingConfig {
    pub fn gap_timeout(&self) -> Duration {
        Duration::from_millis(self.gap_timeout_ms)
    }

    /// The per-payment bounds `decide` enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_sequence_ahead: self.max_sequence_ahead.max(1),
            max_held_events: self.max_held_events,
            max_held_bytes: self.max_held_bytes,
        }
    }
}

impl ProcessorConfig {
    /// Parse a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Read the file, then apply environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Self::from_toml_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        c.apply_env(|k| std::env::var(k).ok())?;
        Ok(c)
    }

    /// Apply `KAFKA_BROKERS`, `PROCESSOR_STATE_DIR`, `PROCESSOR_ADMIN_LISTEN`,
    /// `PROCESSOR_KAFKA_DEBUG` from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(b) = get("KAFKA_BROKERS") {
            self.kafka.brokers = b;
        }
        if let Some(d) = get("PROCESSOR_STATE_DIR") {
            self.state_dir = PathBuf::from(d);
        }
        if let Some(d) = get("PROCESSOR_KAFKA_DEBUG") {
            self.kafka.debug = d;
        }
        if let Some(g) = get("PROCESSOR_SHUTDOWN_GRACE_MS") {
            self.shutdown_grace_ms = g.parse().map_err(|_| ConfigError::Invalid {
                field: "PROCESSOR_SHUTDOWN_GRACE_MS".into(),
                detail: format!("{g:?} is not a number of milliseconds"),
            })?;
        }
        if let Some(l) = get("PROCESSOR_ADMIN_LISTEN") {
            self.admin_listen = l.parse().map_err(|_| ConfigError::Invalid {
                field: "PROCESSOR_ADMIN_LISTEN".into(),
                detail: format!("{l:?} is not an address like 127.0.0.1:9090"),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_with_the_documented_defaults() {
        let c = ProcessorConfig::from_toml_str(include_str!("../../infra/config/processor.toml")).unwrap();
        let d = ProcessorConfig::default();
        assert_eq!(c.admin_listen, d.admin_listen);
        assert_eq!(c.kafka.group_id, d.kafka.group_id);
        assert_eq!(c.processing.gap_timeout_ms, d.processing.gap_timeout_ms);
        assert_eq!(c.processing.dedup_window_secs, d.processing.dedup_window_secs);
        assert_eq!(c.fields.policy_id, "/metadata/policy_id");
    }

    #[test]
    fn env_overrides_the_file() {
        let mut c = ProcessorConfig::default();
        c.apply_env(|k| match k {
            "KAFKA_BROKERS" => Some("b:1".into()),
            "PROCESSOR_STATE_DIR" => Some("/tmp/s".into()),
            "PROCESSOR_ADMIN_LISTEN" => Some("127.0.0.1:1".into()),
            "PROCESSOR_KAFKA_DEBUG" => Some("cgrp".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (
                c.kafka.brokers.as_str(),
                c.state_dir.to_str(),
                c.admin_listen.port(),
                c.kafka.debug.as_str()
            ),
            ("b:1", Some("/tmp/s"), 1, "cgrp")
        );
    }
}
