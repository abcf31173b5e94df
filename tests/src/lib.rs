//! Support for hookstream's integration tests: a real local Apache Kafka (one node or
//! three) started on free loopback ports (or the one `KAFKA_BROKERS` names), uniquely named topics, small
//! Kafka and HTTP helpers, an independent request signer, in-process services, and an
//! OTLP receiver.
//! Nothing here mocks Kafka.
//!
//! When the broker binary is missing, starting a broker panics with the command that
//! installs it: an integration test never skips silently.

pub mod broker;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod load;
pub mod otlp;
pub mod pipeline;
pub mod processor;
pub mod providers;
pub mod sign;
