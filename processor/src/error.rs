//! The processor's error types.

use std::path::PathBuf;

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: hookstream_schemas::config::LoadError,
    },
    #[error("config {field}: {detail}")]
    Invalid { field: String, detail: String },
}

/// The processor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the state directory")]
    StateDir(#[source] std::io::Error),
    #[error("cannot open the state store")]
    Store(#[from] crate::store::StoreError),
    #[error("Kafka client")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the internal topic")]
    Topics(#[from] crate::kafka::topics::TopicError),
    #[error("admin HTTP listener")]
    Listener(#[source] std::io::Error),
}
