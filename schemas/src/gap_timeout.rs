//! `GapTimeout`: the processor's control record for a timed-out sequence gap (`avro/GapTimeout.avsc`).

use std::sync::LazyLock;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, SchemaInfo};
use crate::value::{record, Fields, ShapeError};

static INFO: LazyLock<SchemaInfo> = LazyLock::new(|| {
    SchemaInfo::parse("io.hookstream.v1.GapTimeout", include_str!("../avro/GapTimeout.avsc"))
        .reading(&[include_str!("../avro/previous/GapTimeout.v1.avsc")])
});

/// The value of the `hookstream-control` header on a `GapTimeout` record.
pub const GAP_TIMEOUT_CONTROL: &str = "gap-timeout";

/// A gap-timeout decision; see the `.avsc` file for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapTimeout {
    pub payment_id: String,
    /// The payment's webhook source; empty in records of the previous version.
    pub source: String,
    pub next_expected_sequence: i64,
    pub missing_sequences: Vec<i64>,
    /// Milliseconds since the Unix epoch.
    pub gap_opened_at: i64,
    /// Milliseconds since the Unix epoch.
    pub decided_at: i64,
}

impl AvroRecord for GapTimeout {
    fn info() -> &'static LazyLock<SchemaInfo> {
        &INFO
    }

    fn to_value(&self) -> Value {
        record(vec![
            ("payment_id", Value::String(self.payment_id.clone())),
            ("source", Value::String(self.source.clone())),
            ("next_expected_sequence", Value::Long(self.next_expected_sequence)),
            (
                "missing_sequences",
                Value::Array(self.missing_sequences.iter().map(|n| Value::Long(*n)).collect()),
            ),
            ("gap_opened_at", Value::TimestampMillis(self.gap_opened_at)),
            ("decided_at", Value::TimestampMillis(self.decided_at)),
        ])
    }

    fn from_value(value: Value) -> Result<Self, ShapeError> {
        let mut f = Fields::new("GapTimeout", value)?;
        let missing_sequences = f.longs("missing_sequences")?;
        Ok(Self {
            payment_id: f.string("payment_id")?,
            source: f.string("source")?,
            next_expected_sequence: f.long("next_expected_sequence")?,
            missing_sequences,
            gap_opened_at: f.timestamp_millis("gap_opened_at")?,
            decided_at: f.timestamp_millis("decided_at")?,
        })
    }
}
