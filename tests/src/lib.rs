//! Support for hookstream's integration tests: a real tansu broker started on a free
//! loopback port (or the one `KAFKA_BROKERS` names), uniquely named topics, and small
//! Kafka helpers built on rdkafka. Nothing here mocks Kafka.
//!
//! When the tansu binary is missing, starting a broker panics with the command that
//! installs it: an integration test never skips silently.

pub mod broker;
pub mod kafka;
