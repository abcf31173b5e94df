//! Processor configuration: a TOML file (`processor run --config FILE`) with a default
//! for every field, then the environment: every field `a.b` is overridden by
//! `PROCESSOR_A_B` (`PROCESSOR_KAFKA_FETCH_WAIT_MAX_MS`, `PROCESSOR_STATE_DIR`, ...),
//! librdkafka properties by `PROCESSOR_LIBRDKAFKA_<PROPERTY>` (or `..._FILE` for a
//! secret kept in a file), and `KAFKA_BROKERS` sets the brokers of every binary at once
//! (see [`hookstream_schemas::config`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hookstream_schemas::config::{self, millis, secs, LoadError};
use serde::{Deserialize, Serialize};

mod topics;

pub use hookstream_schemas::telemetry::TracingConfig;
pub use topics::TopicsConfig;

use crate::rules::input::BodyFields;
use crate::rules::limits::Limits;

/// The environment prefix.
pub const ENV_PREFIX: &str = "PROCESSOR";

/// The store names in the changelog topics' names (`<group_id>.<store>-changelog`):
/// the payment stage's and the policy stage's.
pub const PAYMENTS_STORE: &str = "payments";
pub const POLICIES_STORE: &str = "policies";
/// Free-form tables (any key) in the environment convention.
const MAPS: &[&str] = &["kafka.librdkafka"];

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] config::FileError),
    #[error("config {field}: {detail}")]
    Invalid { field: String, detail: String },
}

/// The whole processor configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Admin HTTP address (`/payments/{id}`, `/healthz`, `/readyz`, `/metrics`).
    /// Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// A file holding the bearer token the admin API's mutating endpoints
    /// (`POST /holes/{topic}/{partition}/acknowledge`: accepting data loss) require.
    /// Default empty: the token is `PROCESSOR_ADMIN_TOKEN`'s value, and without either
    /// they answer 403.
    pub admin_token_file: PathBuf,
    /// Most admin connections served at once; more wait in the kernel's accept queue.
    /// Default 64.
    pub admin_max_connections: usize,
    /// The sled directory. Default `.hookstream/processor-state`.
    pub state_dir: PathBuf,
    /// After SIGTERM or ctrl-c, how long the processor may take to hand its partitions
    /// over before it exits anyway (whatever the broker does: what it could not commit
    /// is read again next time); a second signal exits at once. Default 15 s.
    #[serde(rename = "shutdown_grace_ms", with = "millis")]
    pub shutdown_grace: Duration,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Processing rules.
    pub processing: ProcessingConfig,
    /// Where the processor finds policy and amount in webhook bodies.
    pub fields: BodyFields,
    /// What `processor topics` creates and checks.
    pub topics: TopicsConfig,
    /// Trace export (OTLP) and sampling; also the `OTEL_*` variables. Default: no export.
    pub tracing: TracingConfig,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token_file: PathBuf::new(),
            admin_max_connections: 64,
            state_dir: PathBuf::from(".hookstream/processor-state"),
            shutdown_grace: Duration::from_secs(15),
            kafka: KafkaConfig::default(),
            processing: ProcessingConfig::default(),
            fields: BodyFields::default(),
            topics: TopicsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

/// Topics, group and client settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Also `KAFKA_BROKERS`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Consumer group. Default `hookstream-processor`.
    pub group_id: String,
    /// Kafka `client.id` (each client adds its role). Default `hookstream-processor`.
    pub client_id: String,
    /// Input topic. Default `payments.webhooks.raw`.
    pub raw_topic: String,
    /// Output topic for policy events. Default `policy.activations`.
    pub activations_topic: String,
    /// Dead-letter topic. Default `payments.webhooks.dlq`.
    pub dlq_topic: String,
    /// The consumer group protocol: `classic` (JoinGroup/SyncGroup, the cooperative-sticky
    /// assignor) or `consumer` (KIP-848: the broker assigns, `group.protocol=consumer`).
    /// Default `classic`: it runs on every Kafka hookstream supports, and librdkafka 2.12
    /// (bundled by rdkafka 0.39) has a known KIP-848 bug with `max.poll.interval.ms`,
    /// fixed in 2.15.
    pub group_protocol: GroupProtocol,
    /// Consumer `session.timeout.ms` (classic protocol; under KIP-848 the broker's
    /// `group.consumer.session.timeout.ms` decides); revoked workers get half of it to
    /// hand over. Default 10 s.
    #[serde(rename = "session_timeout_ms", with = "millis")]
    pub session_timeout: Duration,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch to gather
    /// `fetch_min_bytes`. librdkafka's 500 would add up to half a second to every
    /// activation when traffic is light. Default 25 ms.
    #[serde(rename = "fetch_wait_max_ms", with = "millis")]
    pub fetch_wait_max: Duration,
    /// Consumer `fetch.min.bytes`: under load, fewer and larger fetches for the broker
    /// to answer. Default 65536.
    pub fetch_min_bytes: u32,
    /// `fetch.wait.max.ms` of the member that reads the policy stage's repartition topic
    /// (its `fetch.min.bytes` is 1): its records are few, so a fetch that waits for bytes
    /// only adds to the activation's latency. Default 25 ms.
    #[serde(rename = "policy_fetch_wait_max_ms", with = "millis")]
    pub policy_fetch_wait_max: Duration,
    /// Static membership `group.instance.id`, so a restart within the session timeout
    /// keeps its partitions. Default empty (dynamic membership).
    pub group_instance_id: String,
    /// librdkafka `debug` contexts for the group consumer, e.g. `cgrp` to log every
    /// JoinGroup, SyncGroup, heartbeat error and assignment. The lines are logged at
    /// target `librdkafka`, so run with `RUST_LOG=info,librdkafka=debug`. Default empty.
    pub debug: String,
    /// Any librdkafka property for every client, e.g. `security.protocol = "SASL_SSL"`
    /// (infra/README.md, Production). Secrets belong in `PROCESSOR_LIBRDKAFKA_SASL_PASSWORD` or
    /// `PROCESSOR_LIBRDKAFKA_SASL_PASSWORD_FILE`, not here. Settings the processor needs
    /// for correctness (commits, acks, idempotence) cannot be overridden. Default empty.
    pub librdkafka: BTreeMap<String, String>,
    /// `exactly_once_v2` (Kafka transactions, KIP-447: a commit interval's outputs,
    /// changelog entries and input offsets are committed together or not at all, and a
    /// zombie instance is fenced) or `at_least_once` (for brokers without transactions:
    /// outputs may repeat, with the same ids). Default `exactly_once_v2`.
    pub processing_guarantee: Guarantee,
    /// Producer `transaction.timeout.ms` under exactly-once: how long a transaction may
    /// stay open before the broker aborts it. An instance that stops (a crash, a pause)
    /// holds back every `read_committed` reader of the partitions it wrote to, a new
    /// owner's restore included, until then; Kafka Streams' 10 s. The commit interval and
    /// a batch's sends must fit well within it. Default 10 s.
    #[serde(rename = "transaction_timeout_ms", with = "millis")]
    pub transaction_timeout: Duration,
    /// Replication factor of the internal topic the processor creates (the policy
    /// stage's repartition topic); -1 asks for the broker's default. Default 1 for the
    /// local single broker; 3 in production (infra/README.md, Production).
    pub internal_replication_factor: i32,
}

/// The processing guarantee ([`KafkaConfig::processing_guarantee`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Kafka transactions, as Kafka Streams' `exactly_once_v2`.
    #[default]
    ExactlyOnceV2,
    /// Outputs acknowledged before offsets are committed; a crash repeats outputs.
    AtLeastOnce,
}

/// A consumer group protocol ([`KafkaConfig::group_protocol`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic protocol, with the client-side cooperative-sticky assignor.
    #[default]
    Classic,
    /// KIP-848's consumer protocol: the group coordinator assigns, incrementally.
    Consumer,
}

impl KafkaConfig {
    /// The policy stage's input, the repartition topic keyed by policy_id:
    /// `<group_id>.policy-requests` (DESIGN.md, "Topics"): each processor group has its
    /// own.
    pub fn requests_topic(&self) -> String {
        format!(
            "{}{}",
            self.group_id,
            hookstream_schemas::topics::POLICY_REQUESTS_SUFFIX
        )
    }

    /// The compacted changelog of a stage's `store` ([`PAYMENTS_STORE`],
    /// [`POLICIES_STORE`]): `<group_id>.<store>-changelog` (DESIGN.md, "Topics").
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}.{store}-changelog", self.group_id)
    }
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
            group_protocol: GroupProtocol::Classic,
            session_timeout: Duration::from_secs(10),
            fetch_wait_max: Duration::from_millis(25),
            fetch_min_bytes: 65_536,
            policy_fetch_wait_max: Duration::from_millis(25),
            group_instance_id: String::new(),
            debug: String::new(),
            librdkafka: BTreeMap::new(),
            processing_guarantee: Guarantee::ExactlyOnceV2,
            transaction_timeout: Duration::from_secs(10),
            internal_replication_factor: 1,
        }
    }
}

/// Rule parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// How long (record time) an event id is remembered for dedup. Default 7 days.
    #[serde(rename = "dedup_window_secs", with = "secs")]
    pub dedup_window: Duration,
    /// How long (record time) a payment that activated a policy is kept after its last
    /// event so that a refund still cancels the activation, and a policy without a
    /// holder after its last request (`crate::rules::retention`). A refund later than
    /// this finds no payment and cancels nothing. Default 400 days.
    #[serde(rename = "refund_window_secs", with = "secs")]
    pub refund_window: Duration,
    /// A sequence gap open longer than this (wall clock) is resolved by a GapTimeout
    /// control record. Default 5 minutes.
    #[serde(rename = "gap_timeout_ms", with = "millis")]
    pub gap_timeout: Duration,
    /// How often the gap timer looks for expired gaps. Default 1 s.
    #[serde(rename = "gap_check_interval_ms", with = "millis")]
    pub gap_check_interval: Duration,
    /// Records decided per sled batch and offset commit at most. Default 500.
    pub max_batch_records: usize,
    /// Record bytes (key, value, headers) per batch at most, beside the count: live, and
    /// when a partition is rebuilt from its log, where a batch of 500 records of 900 KiB
    /// would hold 450 MB. A record larger than this is a batch of its own. Default
    /// 4194304 (4 MiB: 2,000 webhooks of 2 KiB, so the count binds for ordinary ones).
    pub max_batch_bytes: usize,
    /// Records buffered per partition between the consumer and its worker (on top of
    /// librdkafka's 2 MiB pre-fetch per partition). Default 1000: two batches, enough to
    /// keep a draining worker busy; 2000 only added memory.
    pub partition_queue_records: usize,
    /// Record bytes buffered per partition between the consumer and its worker, beside
    /// the count, and held until the worker is done with them (its batch included): a
    /// worker paused on a transient failure while its consumer fetches on holds this
    /// much at most. Default 8388608 (8 MiB; 1,000 records of 900 KiB would be 900 MB).
    pub partition_queue_bytes: usize,
    /// Longest pause between retries of a transient failure (broker, disk). Default 10 s.
    #[serde(rename = "max_backoff_ms", with = "millis")]
    pub max_backoff: Duration,
    /// Commit at most this often (and on revocation and shutdown): under exactly-once
    /// the transaction of every owned partition, outputs, changelog entries and offsets
    /// together (Kafka Streams' 100 ms); at least once, each partition's offset. What is
    /// decided becomes visible to `read_committed` readers only with the commit, so this
    /// adds to the end-to-end latency. Default 100 ms.
    #[serde(rename = "commit_interval_ms", with = "millis")]
    pub commit_interval: Duration,
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
    /// Payments one policy remembers (holder, duplicates, refunded); a request from one
    /// more is dead-lettered `processing_error`. Default 100.
    pub max_payments_per_policy: usize,
    /// How far ahead of a partition's clock (the highest record time seen) one record
    /// may move it; a record further ahead moves it by this much only, so a skewed
    /// producer clock cannot age every dedup key at once (`crate::rules::clock`).
    /// Default 1 day.
    #[serde(rename = "max_record_time_ahead_ms", with = "millis")]
    pub max_record_time_ahead: Duration,
    /// Partitions that rebuild their state from the log at once; the others wait. Each
    /// rebuild reads with its own consumer (4 MiB of pre-fetch): with two stages on 12
    /// partitions, 24 at once took the processor from 365 to 463 MB; 4 at once halved
    /// the rebuild rate (tests/README.md, benchmarks). Default 12.
    pub max_concurrent_rebuilds: usize,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            refund_window: Duration::from_secs(400 * 24 * 3600),
            gap_timeout: Duration::from_secs(300),
            gap_check_interval: Duration::from_secs(1),
            max_batch_records: 500,
            max_batch_bytes: 4 << 20,
            partition_queue_bytes: 8 << 20,
            partition_queue_records: 1000,
            max_backoff: Duration::from_secs(10),
            commit_interval: Duration::from_millis(100),
            sled_cache_bytes: 64 << 20,
            max_sequence_ahead: Limits::default().max_sequence_ahead,
            max_held_events: Limits::default().max_held_events,
            max_held_bytes: Limits::default().max_held_bytes,
            max_payments_per_policy: Limits::default().max_payments_per_policy,
            max_record_time_ahead: Duration::from_secs(24 * 3600),
            max_concurrent_rebuilds: 12,
        }
    }
}

impl ProcessingConfig {
    /// The per-payment bounds `decide` enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_sequence_ahead: self.max_sequence_ahead.max(1),
            max_held_events: self.max_held_events,
            max_held_bytes: self.max_held_bytes,
            max_payments_per_policy: self.max_payments_per_policy.max(1),
        }
    }
}

impl ProcessorConfig {
    /// Parse a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Read the file, then apply the process's environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(config::load_file(path, ENV_PREFIX, MAPS)?)
    }

    /// Parse `text`, then apply the environment `vars` (see the module doc).
    pub fn from_toml_with_env(text: &str, vars: &[(String, String)]) -> Result<Self, LoadError> {
        config::from_toml_with_env(text, ENV_PREFIX, MAPS, vars)
    }
}

#[cfg(test)]
mod tests;
