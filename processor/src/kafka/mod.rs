//! Kafka at the edge: one client builder per role ([`client`]), the broker side of the
//! partition loop's ports ([`backend`], [`emit`], [`changelog`]), converting consumed messages
//! ([`record`]), the internal topics ([`topics`]) and offset lookups for the tools
//! ([`offsets`]).
//!
//! Nothing here works around a particular broker: the processor speaks to Apache Kafka
//! (local and production alike), and the Apache Kafka path is the only path. (The one reordering the loop handles, a hole in a delivery after a
//! partition queue is split off, is librdkafka's and is handled in
//! [`crate::partition::order`].)

pub mod backend;
pub mod changelog;
pub mod client;
pub mod emit;
pub mod offsets;
pub mod record;
pub mod topics;
pub mod txn;
