//! One builder per Kafka client role, so every client gets the same connection and
//! security settings and each role's non-default settings are set, and explained, once.
//!
//! Every builder starts from the `[kafka.librdkafka]` passthrough table (SASL, TLS or
//! any other librdkafka property, see [`crate::config::KafkaConfig::librdkafka`]);
//! the settings a role needs for correctness are set after it and win.

use rdkafka::config::ClientConfig;

use crate::config::{GroupProtocol, KafkaConfig};

/// Brokers, client id and the passthrough properties.
fn base(cfg: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.librdkafka {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}{client_suffix}", cfg.client_id));
    c
}

/// The group consumer that reads the raw topic.
pub fn group_consumer(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "");
    c.set("group.id", &cfg.group_id)
        // Offsets are committed by the workers, only after outputs are acknowledged and
        // state is durable (DESIGN.md, "Commit").
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning of the retained log: the raw topic is the
        // source of truth and nothing in it may be skipped.
        .set("auto.offset.reset", "earliest")
        // Fetch tuning (see the config's doc comments): end-to-end latency vs. the
        // number of fetch requests the broker must answer under load.
        .set("fetch.wait.max.ms", cfg.fetch_wait_max.as_millis().to_string())
        .set("fetch.min.bytes", cfg.fetch_min_bytes.to_string())
        // Bound each partition's pre-fetch queue below librdkafka's 64 MiB. The queues
        // are split per partition (by the group module), so this is per partition; the
        // tests/README.md (benchmarks) has the measurements behind 2 MiB.
        .set("queued.max.messages.kbytes", "2048")
        // Per-partition lag for /metrics.
        .set("statistics.interval.ms", "5000")
        // librdkafka's default, stated because exactly-once depends on it: records of
        // open or aborted transactions are never delivered, and the committed offsets
        // are fetched only once no transaction has them pending (KIP-447).
        .set("isolation.level", "read_committed");
    match cfg.group_protocol {
        GroupProtocol::Classic => {
            // Incremental rebalances: partitions that stay put keep processing.
            c.set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string());
        }
        GroupProtocol::Consumer => {
            // KIP-848: the broker assigns (incrementally, like cooperative-sticky) and
            // owns the session timeout and heartbeat interval; librdkafka refuses the
            // classic assignor and session settings with it.
            c.set("group.protocol", "consumer");
        }
    }
    if !cfg.group_instance_id.is_empty() {
        // Static membership: a restart within the session timeout keeps its partitions.
        c.set("group.instance.id", &cfg.group_instance_id);
    }
    if !cfg.debug.is_empty() {
        // Opt-in protocol tracing (see the field's doc comment), off by default.
        c.set("debug", &cfg.debug);
    }
    c
}

/// The group member that consumes the policy stage's repartition topic. The same group
/// as [`group_consumer`]'s member, so the policy partitions are spread and handed over
/// like the raw ones; a member of its own so that its fetches need not wait for
/// `fetch_min_bytes` of raw traffic: its records are few, and every millisecond its
/// fetch waits is added to every activation.
pub fn policy_consumer(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = group_consumer(cfg);
    c.set("client.id", format!("{}-policies", cfg.client_id))
        .set("fetch.wait.max.ms", cfg.policy_fetch_wait_max.as_millis().to_string())
        .set("fetch.min.bytes", "1")
        // Requests are a few hundred bytes, a fraction of the raw records: 512 KiB of
        // pre-fetch per partition is thousands of them (the raw member keeps 2 MiB).
        .set("queued.max.messages.kbytes", "512");
    if !cfg.group_instance_id.is_empty() {
        // Each member of a static group needs its own instance id.
        c.set("group.instance.id", format!("{}-policies", cfg.group_instance_id));
    }
    c
}

/// A reader of one partition outside the group (rebuilds, holes in a delivery): it is
/// assigned its partition and never joins or commits.
pub fn log_reader(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "-reader");
    // A group id is required to assign; it is never joined.
    c.set("group.id", format!("{}-rebuild", cfg.group_id))
        .set("enable.auto.commit", "false")
        // A start below the log's is a hole the worker refused before it got here
        // (`partition::holes`); librdkafka's own default would jump to the end.
        .set("auto.offset.reset", "earliest")
        // One reader per rebuilding partition: keep each one's pre-fetch small.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "2000")
        // A restore reads a changelog to its end: under transactions the last offsets
        // are commit markers, never delivered, so the end is known from the EOF event.
        .set("enable.partition.eof", "true")
        // Only what was committed: an aborted batch never existed (see group_consumer).
        .set("isolation.level", "read_committed");
    c
}

/// A consumer for the command-line tools (DLQ reading, offset probes, replay): assigned,
/// never subscribed, never committing unless the tool commits explicitly.
pub fn tool_consumer(cfg: &KafkaConfig, group_id: &str, client_suffix: &str) -> ClientConfig {
    let mut c = base(cfg, client_suffix);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Probes read one record each: an empty fetch need not wait long.
        .set("fetch.wait.max.ms", "50");
    c
}

/// An admin client (creating the internal topic).
pub fn admin(cfg: &KafkaConfig) -> ClientConfig {
    base(cfg, "-admin")
}

/// An idempotent producer with the contract's settings
/// ([`hookstream_schemas::topics::PRODUCER_SETTINGS`]).
pub fn producer(cfg: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    let mut c = base(cfg, client_suffix);
    for (k, v) in hookstream_schemas::topics::PRODUCER_SETTINGS {
        c.set(*k, *v);
    }
    // Batch the outputs of a record batch together; costs at most 2 ms.
    c.set("linger.ms", "2");
    c
}

/// An idempotent producer of the at-least-once path. A send that is not acknowledged
/// within the hand-over deadline (half the session timeout) fails and is retried with
/// the same record: librdkafka's 300 s default would let a batch finish minutes after
/// its partition was handed over.
pub fn at_least_once_producer(cfg: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    let mut c = producer(cfg, client_suffix);
    let deadline = (cfg.session_timeout / 2).as_millis().max(1000);
    c.set("message.timeout.ms", deadline.to_string());
    c
}

/// A stage's transactional producer (exactly-once): `transactional_id` is stable per
/// instance and stage, so a restart fences the previous incarnation.
pub fn transactional_producer(cfg: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    let mut c = producer(
        cfg,
        &format!("-{}", transactional_id.rsplit('-').next().unwrap_or("txn")),
    );
    let timeout = cfg.transaction_timeout.as_millis().max(1000).to_string();
    c.set("transactional.id", transactional_id)
        // See KafkaConfig::transaction_timeout.
        .set("transaction.timeout.ms", &timeout)
        // librdkafka requires a message timeout within the transaction's; a send not
        // acknowledged by then fails the transaction, which is aborted and retried.
        .set("message.timeout.ms", &timeout)
        // The stage's changelog entries go through this producer too (MAX_ENTRY_BYTES).
        .set("message.max.bytes", super::changelog::MAX_ENTRY_BYTES.to_string());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_properties_reach_every_role_and_correctness_settings_win() {
        let mut cfg = KafkaConfig::default();
        cfg.librdkafka.insert("security.protocol".into(), "SASL_SSL".into());
        cfg.librdkafka.insert("enable.auto.commit".into(), "true".into());
        cfg.librdkafka.insert("acks".into(), "1".into());
        for c in [group_consumer(&cfg), log_reader(&cfg), tool_consumer(&cfg, "g", "-t")] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(c.get("enable.auto.commit"), Some("false"));
        }
        let p = producer(&cfg, "-emitter");
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("client.id"), Some("hookstream-processor-emitter"));
    }
}
