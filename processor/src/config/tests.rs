//! The configuration's defaults, the shipped file and the environment overrides.

use super::*;
use hookstream_schemas::config::embedded_toml;

#[test]
fn the_kubernetes_config_parses_with_the_production_settings() {
    let text = embedded_toml(
        include_str!("../../../infra/k8s/processor-config.yaml"),
        "processor.toml",
    );
    let c = ProcessorConfig::from_toml_str(&text).expect("infra/k8s/processor-config.yaml");
    c.tracing.validate().expect("valid tracing settings");
    assert!(c.tracing.traces_url().is_some());
    assert_eq!(c.kafka.internal_replication_factor, 3);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/hookstream/state"));
    assert_eq!(
        c.kafka.librdkafka.get("security.protocol").map(String::as_str),
        Some("SASL_SSL")
    );
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The shipped file states every default, key by key; it differs only where the local
/// broker needs it (one node: replication 1).
#[test]
fn the_shipped_file_is_the_defaults_key_by_key() {
    let d = hookstream_schemas::config_check::differences(
        include_str!("../../../infra/config/processor.toml"),
        &ProcessorConfig::default(),
        &["topics.replication_factor", "topics.min_insync_replicas"],
        &["kafka.librdkafka"],
    );
    assert!(
        d.is_empty(),
        "infra/config/processor.toml differs from the defaults:\n{}",
        d.join("\n")
    );
}

#[test]
fn env_overrides_the_file() {
    let file = "state_dir = \"/from/file\"\n[kafka]\nbrokers = \"file:1\"\n";
    let c = ProcessorConfig::from_toml_with_env(
        file,
        &vars(&[
            ("KAFKA_BROKERS", "b:1"),
            ("PROCESSOR_STATE_DIR", "/tmp/s"),
            ("PROCESSOR_ADMIN_LISTEN", "127.0.0.1:1"),
            ("PROCESSOR_KAFKA_DEBUG", "cgrp"),
            ("PROCESSOR_PROCESSING_GAP_TIMEOUT_MS", "1500"),
            ("PROCESSOR_KAFKA_GROUP_INSTANCE_ID", "p-0"),
            ("PROCESSOR_KAFKA_GROUP_PROTOCOL", "consumer"),
            ("PROCESSOR_LIBRDKAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "b:1");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    assert_eq!(c.admin_listen.port(), 1);
    assert_eq!(c.kafka.debug, "cgrp");
    assert_eq!(c.processing.gap_timeout, Duration::from_millis(1500));
    assert_eq!(c.kafka.group_instance_id, "p-0");
    assert_eq!(c.kafka.group_protocol, GroupProtocol::Consumer);
    assert_eq!(c.kafka.librdkafka["security.protocol"], "SASL_SSL");
    let specific = vars(&[("KAFKA_BROKERS", "b:1"), ("PROCESSOR_KAFKA_BROKERS", "p:2")]);
    let c = ProcessorConfig::from_toml_with_env("", &specific).unwrap();
    assert_eq!(c.kafka.brokers, "p:2");
    let bad = ProcessorConfig::from_toml_with_env("", &vars(&[("PROCESSOR_SHUTDOWN_GRACE_MS", "soon")]));
    assert!(bad.is_err());
}

#[test]
fn every_field_has_a_distinct_environment_name() {
    let defaults = toml::Table::try_from(ProcessorConfig::default()).unwrap();
    let names = hookstream_schemas::config::env_names(&defaults, ENV_PREFIX, MAPS);
    let unique: std::collections::HashSet<&String> = names.iter().map(|(n, ..)| n).collect();
    assert_eq!(unique.len(), names.len());
    // Every field of the shipped file is reachable (the file sets most of them).
    assert!(names.len() >= 27, "{}", names.len());
}
