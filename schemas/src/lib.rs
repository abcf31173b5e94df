//! hookstream's wire contract.
//!
//! The `.avsc` files in `schemas/avro/` are the source of truth. This crate parses them
//! at start-up, maps them to plain Rust types by hand (field order and unions are
//! explicit, so the bytes written are exactly the files' schemas), and frames every
//! value in the Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint of the
//! schema's canonical form + datum), so any Avro library can decode a record with the
//! `.avsc` file alone.
//!
//! It also names the topics and Kafka headers every part agrees on.

#[cfg(feature = "testing")]
pub mod avro_json;
mod chain;
mod codec;
pub mod config;
pub mod config_check;
mod dead_letter;
pub mod fingerprint;
mod gap_timeout;
#[cfg(feature = "kafka")]
pub mod librdkafka;
mod policy_event;
mod policy_request;
mod raw_webhook;
#[cfg(feature = "testing")]
pub mod samples;
pub mod telemetry;
pub mod topics;
mod value;

pub use chain::error_chain;
pub use codec::{decode, encode, AvroRecord, CodecError, SchemaInfo, HEADER_LEN, SINGLE_OBJECT_MARKER};
pub use dead_letter::{list_sequences, DeadLetter, DeadLetterReason, KafkaHeader, SequenceRange, MAX_LISTED_SEQUENCES};
pub use gap_timeout::{GapTimeout, GAP_TIMEOUT_CONTROL};
pub use policy_event::{PolicyActivated, PolicyCancelled, PolicyEvent, PolicyEventKind, PolicyPaymentDuplicated};
pub use policy_request::{PolicyRequest, PolicyRequestKind};
pub use raw_webhook::{HttpHeader, RawWebhook};
pub use value::ShapeError;
