//! The processor's error types.

pub use crate::config::ConfigError;

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
    #[error("cannot read the admin token file {path}")]
    AdminToken {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracing settings")]
    Tracing(#[from] hookstream_schemas::telemetry::TelemetryError),
    /// The last flush of sled on shutdown did not finish (its blocking task panicked).
    #[error("the final flush of the state store")]
    FinalFlush(#[source] tokio::task::JoinError),
}
