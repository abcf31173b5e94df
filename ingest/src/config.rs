//! Ingest configuration: a TOML file (`ingest --config FILE`) with a default for every
//! field, then the environment: every field `a.b` is overridden by `INGEST_A_B`
//! (`INGEST_LISTEN`, `INGEST_KAFKA_LINGER_MS`, `INGEST_HTTP_MAX_IN_FLIGHT_REQUESTS`, ...),
//! librdkafka properties by `INGEST_LIBRDKAFKA_<PROPERTY>` (or `..._FILE`), and
//! `KAFKA_BROKERS` sets the brokers of every binary at once (see
//! [`hookstream_schemas::config`]). Sources are named tables and are set in the file.
//!
//! Secrets never live in the file: a source names the environment variable (or file)
//! that holds them, and they are read once at start-up into [`crate::verify::Secrets`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hookstream_schemas::config::{self, millis, secs, LoadError};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
pub use crate::extract::FieldMap;
use crate::verify::Scheme;
pub use hookstream_schemas::telemetry::TracingConfig;

/// The whole ingest configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the HTTP server listens on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Kafka producer settings.
    pub kafka: KafkaConfig,
    /// HTTP server limits and timeouts.
    pub http: HttpConfig,
    /// Webhook sources by name: the `{source}` in `POST /webhooks/{source}`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Trace export (OTLP) and sampling; also the `OTEL_*` variables. Default: no export.
    pub tracing: TracingConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            kafka: KafkaConfig::default(),
            http: HttpConfig::default(),
            sources: BTreeMap::new(),
            tracing: TracingConfig::default(),
        }
    }
}

/// Where records go and how long a request may wait for the broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Also `KAFKA_BROKERS`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic raw webhooks are written to. Default `payments.webhooks.raw`.
    pub topic: String,
    /// Kafka `client.id`, shown in broker logs and quotas. Default `hookstream-ingest`.
    pub client_id: String,
    /// How long a request waits for the broker's acknowledgement before it is answered
    /// 503 with `Retry-After` (also the producer's `message.timeout.ms`). Default 5 s.
    #[serde(rename = "ack_deadline_ms", with = "millis")]
    pub ack_deadline: Duration,
    /// Upper bound on records waiting in the producer (`queue.buffering.max.messages`);
    /// when full, requests are answered 503 at once instead of queueing without bound.
    /// Default 100000.
    pub queue_max_messages: u32,
    /// How long the producer may wait to batch records (`linger.ms`). Default 5 ms: at
    /// a spike this fills batches, and it costs at most 5 ms of latency when quiet;
    /// `infra/config/ingest.toml` sets 8 (see its comment).
    #[serde(rename = "linger_ms", with = "millis")]
    pub linger: Duration,
    /// The producer's `message.max.bytes`: the largest record it sends, which must not
    /// exceed the raw topic's `max.message.bytes` (Kafka's default 1048588). Every
    /// source's `max_body_bytes` must leave [`RECORD_RESERVE_BYTES`] under it for the
    /// record envelope and the dead letter that may carry the record later. Default
    /// 1000000 (librdkafka's).
    pub max_message_bytes: u32,
    /// Any librdkafka property for the producer, e.g. `security.protocol = "SASL_SSL"`
    /// (infra/README.md, Production). Secrets belong in `INGEST_LIBRDKAFKA_SASL_PASSWORD` or
    /// `INGEST_LIBRDKAFKA_SASL_PASSWORD_FILE`, not here. The settings of the write
    /// contract (acks, idempotence, partitioner) cannot be overridden. Default empty.
    pub librdkafka: BTreeMap<String, String>,
}

/// Room kept under `max_message_bytes` beside a body: the `RawWebhook` envelope (ids,
/// signed headers) and a dead letter's own fields around the raw record.
pub const RECORD_RESERVE_BYTES: usize = 64 * 1024;

/// Room a raw record must leave under `max_message_bytes` for the dead letter that may
/// carry it (reason, detail, origin, ids, the record's Kafka headers).
pub const DEAD_LETTER_RESERVE_BYTES: usize = 16 * 1024;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: hookstream_schemas::topics::RAW_TOPIC.into(),
            client_id: "hookstream-ingest".into(),
            ack_deadline: Duration::from_secs(5),
            queue_max_messages: 100_000,
            linger: Duration::from_millis(5),
            max_message_bytes: 1_000_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

/// Limits that keep the server standing under a spike or against slow clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Open connections at most; further clients wait in the kernel's accept queue.
    /// Default 4096: with `max_header_bytes` this bounds what headers can hold (64 MiB).
    pub max_connections: usize,
    /// Of `max_connections`, how many one peer address may hold; a further connection
    /// from it is answered 429 `too_many_connections` (+ `Retry-After`) and closed at
    /// once, so one sender's idle connections cannot fill the accept queue for everyone.
    /// `0`: no per-peer bound — set it behind a proxy, where every connection comes from
    /// the proxy's address. Default 512 (a provider's spike at 5,000/s needs ~50).
    pub max_connections_per_peer: usize,
    /// A connection's read buffer, so the most a request's line and headers may take;
    /// beyond it 431. At least 8192 (hyper's minimum). Default 16384: a webhook's headers
    /// are a few hundred bytes, and 4096 connections × 16 KiB stay within the RSS target.
    pub max_header_bytes: usize,
    /// Requests being processed at once at most; beyond it a request is answered 429
    /// with `Retry-After`. Default 8192.
    pub max_in_flight_requests: usize,
    /// A client must send its request headers within this time. Default 10 s.
    #[serde(rename = "header_read_timeout_ms", with = "millis")]
    pub header_read_timeout: Duration,
    /// A client must send the whole body within this time, else 408. Default 15 s.
    #[serde(rename = "body_read_timeout_ms", with = "millis")]
    pub body_read_timeout: Duration,
    /// After this grace period a client must keep sending its body at
    /// `min_body_bytes_per_sec` on average, else 408: a trickle cannot hold a request
    /// slot for the whole body timeout. Default 2 s.
    #[serde(rename = "body_grace_ms", with = "millis")]
    pub body_grace: Duration,
    /// The minimum average body rate after `body_grace_ms`. Default 65536 (64 KiB/s:
    /// a 900 KiB body within 16 s, so the body timeout is the bound for the largest).
    pub min_body_bytes_per_sec: u64,
    /// Memory for request bodies being read and published at once, shared by every
    /// request (each body counts three times: it, its copy in the record, the encoded
    /// record); a body that does not fit is answered 429 `body_budget_exhausted` with
    /// `Retry-After`, before it is read. Default 50331648 (48 MiB: ingest's RSS target
    /// is 100 MB).
    pub max_buffered_body_bytes: usize,
    /// Of `max_buffered_body_bytes`, what the requests from one peer address may hold at
    /// once; beyond it that peer's next body is answered 429 `body_budget_exhausted`
    /// too. The budget is charged before a signature can be checked, so this is what
    /// keeps one sender's declared bodies from starving every signed webhook. `0`: no
    /// per-peer bound — set it behind a proxy, where every request comes from the
    /// proxy's address (its own per-client limits then apply). Default 8388608 (8 MiB:
    /// two of the largest bodies, or ~2,700 webhooks of 1 KiB, at once).
    pub max_buffered_body_bytes_per_peer: usize,
    /// `Retry-After` on 429 and 503, in whole seconds. Default 1 s.
    #[serde(rename = "retry_after_secs", with = "secs")]
    pub retry_after: Duration,
    /// On shutdown, in-flight requests get this long to finish. Default 10 s.
    #[serde(rename = "shutdown_grace_ms", with = "millis")]
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_peer: 512,
            max_header_bytes: 16 * 1024,
            max_in_flight_requests: 8192,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(15),
            body_grace: Duration::from_secs(2),
            min_body_bytes_per_sec: 64 * 1024,
            max_buffered_body_bytes: 48 << 20,
            max_buffered_body_bytes_per_peer: 8 << 20,
            retry_after: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// One webhook source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Signature scheme: `hmac-sha256` (default), `standard-webhooks`, `stripe` or `github`.
    #[serde(default)]
    pub scheme: Scheme,
    /// Environment variable holding the secret(s), several separated by spaces (rotation:
    /// any one may match). Exactly one of `secrets_env` and `secrets_file` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_env: Option<String>,
    /// File holding the secret(s), separated by whitespace (e.g. a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_file: Option<PathBuf>,
    /// Accepted clock skew of the signed timestamp, both directions, in whole seconds.
    /// Default 300 s.
    #[serde(rename = "tolerance_secs", default = "default_tolerance", with = "secs")]
    pub tolerance: Duration,
    /// Largest accepted body in bytes; larger requests get 413 and are cut off unread.
    /// At most `kafka.max_message_bytes` minus [`RECORD_RESERVE_BYTES`]. Default 921600
    /// (900 KiB: a body of 1 MiB would not fit Kafka's default message size).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Where the fields are in the JSON body.
    #[serde(default)]
    pub fields: FieldMap,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_max_body_bytes() -> usize {
    900 * 1024
}

impl IngestConfig {
    /// Read the file, then apply the process's environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(config::load_file(path, ENV_PREFIX, MAPS)?)
    }

    /// Check what serde cannot: every source's body limit fits the message size budget,
    /// and one body of it fits a peer's share of the body budget.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = self.kafka.max_message_bytes as usize;
        for (name, s) in &self.sources {
            if s.max_body_bytes + RECORD_RESERVE_BYTES > max {
                return Err(ConfigError::Invalid {
                    field: format!("sources.{name}.max_body_bytes"),
                    detail: format!(
                        "{} bytes leaves less than {RECORD_RESERVE_BYTES} bytes for the record envelope and a \
                         dead letter under kafka.max_message_bytes ({max}); at most {}",
                        s.max_body_bytes,
                        max.saturating_sub(RECORD_RESERVE_BYTES)
                    ),
                });
            }
            let share = self.http.max_buffered_body_bytes_per_peer;
            let largest = s.max_body_bytes.saturating_mul(crate::body::COPIES);
            if share != 0 && share < largest {
                return Err(ConfigError::Invalid {
                    field: "http.max_buffered_body_bytes_per_peer".into(),
                    detail: format!(
                        "{share} bytes cannot hold one body of sources.{name}.max_body_bytes ({} bytes, \
                         charged {largest}); at least {largest}, or 0 for no per-peer bound",
                        s.max_body_bytes
                    ),
                });
            }
        }
        Ok(())
    }

    /// Parse a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Parse `text`, then apply the environment `vars` (see the module doc).
    pub fn from_toml_with_env(text: &str, vars: &[(String, String)]) -> Result<Self, LoadError> {
        config::from_toml_with_env(text, ENV_PREFIX, MAPS, vars)
    }
}

/// The environment prefix.
pub const ENV_PREFIX: &str = "INGEST";
/// Free-form tables (any key) in the environment convention.
const MAPS: &[&str] = &["kafka.librdkafka"];

#[cfg(test)]
mod tests {
    use super::*;
    use hookstream_schemas::config::embedded_toml;

    #[test]
    fn the_kubernetes_config_parses_with_secrets_from_files() {
        let text = embedded_toml(include_str!("../../infra/k8s/ingest-config.yaml"), "ingest.toml");
        let c = IngestConfig::from_toml_str(&text).expect("infra/k8s/ingest-config.yaml");
        assert_eq!(c.sources.len(), 4);
        c.tracing.validate().expect("valid tracing settings");
        assert!(c.tracing.traces_url().is_some());
        for s in c.sources.values() {
            assert!(s.secrets_env.is_none() && s.secrets_file.is_some(), "{s:?}");
        }
        assert_eq!(
            c.kafka.librdkafka.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
    }

    #[test]
    fn opentelemetry_variables_set_the_tracing_table_and_ingests_own_win() {
        let vars: Vec<(String, String)> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_SERVICE_NAME", "from-otel"),
            ("INGEST_TRACING_SERVICE_NAME", "ingest-eu"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let c = IngestConfig::from_toml_with_env("[tracing]\nservice_name = \"file\"\n", &vars).unwrap();
        assert_eq!(
            c.tracing.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(c.tracing.sampler, "parentbased_traceidratio");
        assert!((c.tracing.sampler_arg - 0.01).abs() < 1e-12);
        assert_eq!(c.tracing.service_name, "ingest-eu");
        let none = IngestConfig::from_toml_with_env("", &[]).unwrap();
        assert_eq!(none.tracing.traces_url(), None, "no export unless asked for");
    }

    /// The shipped file states every default, key by key; its sources are its own.
    #[test]
    fn the_shipped_file_is_the_defaults_key_by_key() {
        let text = include_str!("../../infra/config/ingest.toml");
        let d = hookstream_schemas::config_check::differences(
            text,
            &IngestConfig::default(),
            &[],
            &["kafka.librdkafka", "sources"],
        );
        assert!(
            d.is_empty(),
            "infra/config/ingest.toml differs from the defaults:\n{}",
            d.join("\n")
        );
        let c = IngestConfig::from_toml_str(text).unwrap();
        let names: Vec<_> = c.sources.keys().map(String::as_str).collect();
        assert_eq!(names, ["github", "paymenthub", "standard", "stripe"]);
        assert_eq!(c.sources["standard"].scheme, Scheme::StandardWebhooks);
        c.validate().unwrap();
    }

    #[test]
    fn a_body_limit_that_leaves_no_room_under_the_message_size_is_refused() {
        let text = "[sources.p]\nsecrets_env = \"S\"\nmax_body_bytes = 1048576\n";
        let c = IngestConfig::from_toml_str(text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("sources.p.max_body_bytes") && e.contains("at most 934464"),
            "{e}"
        );
        let ok = IngestConfig::from_toml_str("[sources.p]\nsecrets_env = \"S\"\n").unwrap();
        ok.validate().unwrap();
        let small = "[http]\nmax_buffered_body_bytes_per_peer = 1048576\n[sources.p]\nsecrets_env = \"S\"\n";
        let e = IngestConfig::from_toml_str(small)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot hold one body") && e.contains("2764800"), "{e}");
    }

    #[test]
    fn env_overrides_the_file() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let file = "listen = \"127.0.0.1:1\"\n[sources.p]\nsecrets_env = \"S\"\n";
        let c = IngestConfig::from_toml_with_env(
            file,
            &vars(&[
                ("KAFKA_BROKERS", "10.0.0.1:9092"),
                ("INGEST_LISTEN", "0.0.0.0:9000"),
                ("INGEST_KAFKA_LINGER_MS", "2"),
                ("INGEST_HTTP_MAX_IN_FLIGHT_REQUESTS", "64"),
                ("INGEST_LIBRDKAFKA_SASL_USERNAME", "ingest"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.kafka.linger, Duration::from_millis(2));
        assert_eq!(c.http.max_in_flight_requests, 64);
        assert_eq!(c.kafka.librdkafka["sasl.username"], "ingest");
        assert_eq!(c.sources["p"].secrets_env.as_deref(), Some("S"));
        assert!(IngestConfig::from_toml_with_env("", &vars(&[("INGEST_LISTEN", "nonsense")])).is_err());
        let defaults = toml::Table::try_from(IngestConfig::default()).unwrap();
        let names = hookstream_schemas::config::env_names(&defaults, ENV_PREFIX, MAPS);
        let unique: std::collections::HashSet<&String> = names.iter().map(|(n, ..)| n).collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(IngestConfig::from_toml_str("[kafka]\nbrokerz = \"x\"\n").is_err());
    }
}
