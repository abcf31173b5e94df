//! `DeadLetter`: a record the processor could not process (`avro/DeadLetter.avsc`).

use std::fmt;
use std::sync::LazyLock;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, SchemaInfo};
use crate::value::{opt_bytes, opt_string, record, Fields, ShapeError};

static INFO: LazyLock<SchemaInfo> =
    LazyLock::new(|| SchemaInfo::parse("io.hookstream.v1.DeadLetter", include_str!("../avro/DeadLetter.avsc")));

/// The closed list of reasons, in the schema's symbol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The value is not a `RawWebhook` (or a control record).
    Undecodable,
    /// A field the processor needs is absent.
    MissingField,
    /// The same (source, event_id) was seen with a different body.
    EventIdConflict,
    /// Its sequence was already applied or skipped.
    Stale,
    /// A sequence gap stayed open past the gap timeout.
    SequenceGapTimeout,
    /// A completed payment names no policy.
    NoPolicy,
    /// Another payment already activated the policy. No longer written: a second
    /// payment is a `PolicyPaymentDuplicated` event; kept for letters written before.
    PolicyAlreadyActive,
    /// The event is impossible in the payment's state.
    InvalidTransition,
    /// Any other permanent error, also an output the broker refused for good.
    ProcessingError,
    /// The sequence is further ahead of the next expected one than the processor allows.
    SequenceOutOfRange,
    /// The payment already holds as many out-of-order events (or bytes) as allowed.
    HeldLimitExceeded,
    /// A field copied into outputs breaks its length or character limits.
    InvalidField,
}

impl DeadLetterReason {
    /// Every reason, in schema symbol order.
    pub const ALL: [DeadLetterReason; 12] = [
        Self::Undecodable,
        Self::MissingField,
        Self::EventIdConflict,
        Self::Stale,
        Self::SequenceGapTimeout,
        Self::NoPolicy,
        Self::PolicyAlreadyActive,
        Self::InvalidTransition,
        Self::ProcessingError,
        Self::SequenceOutOfRange,
        Self::HeldLimitExceeded,
        Self::InvalidField,
    ];

    /// The Avro symbol, also used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::MissingField => "missing_field",
            Self::EventIdConflict => "event_id_conflict",
            Self::Stale => "stale",
            Self::SequenceGapTimeout => "sequence_gap_timeout",
            Self::NoPolicy => "no_policy",
            Self::PolicyAlreadyActive => "policy_already_active",
            Self::InvalidTransition => "invalid_transition",
            Self::ProcessingError => "processing_error",
            Self::SequenceOutOfRange => "sequence_out_of_range",
            Self::HeldLimitExceeded => "held_limit_exceeded",
            Self::InvalidField => "invalid_field",
        }
    }

    /// Parse a symbol; `None` for anything not in the list.
    pub fn parse(symbol: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == symbol)
    }

    fn index(self) -> u32 {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0) as u32
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Kafka header of the failed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaHeader {
    pub name: String,
    pub value: Option<Vec<u8>>,
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceRange {
    pub first: i64,
    pub last: i64,
}

/// At most this many sequence numbers are listed one by one in a record
/// (`missing_sequences`); ranges name the rest.
pub const MAX_LISTED_SEQUENCES: usize = 100;

/// The first [`MAX_LISTED_SEQUENCES`] numbers of `ranges`, one by one.
pub fn list_sequences(ranges: &[SequenceRange]) -> Vec<i64> {
    ranges
        .iter()
        .flat_map(|r| (r.first..=r.last).take(MAX_LISTED_SEQUENCES))
        .take(MAX_LISTED_SEQUENCES)
        .collect()
}

/// A dead letter; see the `.avsc` file for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub dead_letter_id: String,
    pub reason: DeadLetterReason,
    pub detail: String,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    /// Milliseconds since the Unix epoch.
    pub origin_timestamp: i64,
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub payment_id: Option<String>,
    pub missing_sequences: Vec<i64>,
    pub missing_ranges: Vec<SequenceRange>,
    pub original_key: Option<Vec<u8>>,
    pub original_value: Option<Vec<u8>>,
    pub original_headers: Vec<KafkaHeader>,
}

impl AvroRecord for DeadLetter {
    fn info() -> &'static LazyLock<SchemaInfo> {
        &INFO
    }

    fn to_value(&self) -> Value {
        let headers = self
            .original_headers
            .iter()
            .map(|h| {
                record(vec![
                    ("name", Value::String(h.name.clone())),
                    ("value", opt_bytes(&h.value)),
                ])
            })
            .collect();
        record(vec![
            ("dead_letter_id", Value::String(self.dead_letter_id.clone())),
            (
                "reason",
                Value::Enum(self.reason.index(), self.reason.as_str().to_owned()),
            ),
            ("detail", Value::String(self.detail.clone())),
            ("origin_topic", Value::String(self.origin_topic.clone())),
            ("origin_partition", Value::Int(self.origin_partition)),
            ("origin_offset", Value::Long(self.origin_offset)),
            ("origin_timestamp", Value::TimestampMillis(self.origin_timestamp)),
            ("source", opt_string(&self.source)),
            ("event_id", opt_string(&self.event_id)),
            ("payment_id", opt_string(&self.payment_id)),
            (
                "missing_sequences",
                Value::Array(self.missing_sequences.iter().map(|n| Value::Long(*n)).collect()),
            ),
            (
                "missing_ranges",
                Value::Array(
                    self.missing_ranges
                        .iter()
                        .map(|r| record(vec![("first", Value::Long(r.first)), ("last", Value::Long(r.last))]))
                        .collect(),
                ),
            ),
            ("original_key", opt_bytes(&self.original_key)),
            ("original_value", opt_bytes(&self.original_value)),
            ("original_headers", Value::Array(headers)),
        ])
    }

    fn from_value(value: Value) -> Result<Self, ShapeError> {
        const RECORD: &str = "DeadLetter";
        let mut f = Fields::new(RECORD, value)?;
        let reason = match f.take("reason")? {
            Value::Enum(i, symbol) => match DeadLetterReason::parse(&symbol) {
                Some(reason) => reason,
                None => {
                    return Err(ShapeError::wrong(
                        RECORD,
                        "reason",
                        "a known reason",
                        &Value::Enum(i, symbol),
                    ))
                }
            },
            other => return Err(ShapeError::wrong(RECORD, "reason", "enum", &other)),
        };
        let missing_sequences = f.longs("missing_sequences")?;
        let missing_ranges = f
            .array("missing_ranges")?
            .into_iter()
            .map(|r| {
                let mut r = Fields::new("SequenceRange", r)?;
                Ok(SequenceRange {
                    first: r.long("first")?,
                    last: r.long("last")?,
                })
            })
            .collect::<Result<_, ShapeError>>()?;
        let original_headers = f
            .array("original_headers")?
            .into_iter()
            .map(|h| {
                let mut h = Fields::new("KafkaHeader", h)?;
                Ok(KafkaHeader {
                    name: h.string("name")?,
                    value: h.opt_bytes("value")?,
                })
            })
            .collect::<Result<_, ShapeError>>()?;
        Ok(Self {
            dead_letter_id: f.string("dead_letter_id")?,
            reason,
            detail: f.string("detail")?,
            origin_topic: f.string("origin_topic")?,
            origin_partition: f.int("origin_partition")?,
            origin_offset: f.long("origin_offset")?,
            origin_timestamp: f.timestamp_millis("origin_timestamp")?,
            source: f.opt_string("source")?,
            event_id: f.opt_string("event_id")?,
            payment_id: f.opt_string("payment_id")?,
            missing_sequences,
            missing_ranges,
            original_key: f.opt_bytes("original_key")?,
            original_value: f.opt_bytes("original_value")?,
            original_headers,
        })
    }
}
