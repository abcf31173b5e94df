//! `RawWebhook`: a verified webhook as ingest received it (`avro/RawWebhook.avsc`).

use std::sync::LazyLock;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, SchemaInfo};
use crate::value::{opt_long, opt_string, record, Fields, ShapeError};

static INFO: LazyLock<SchemaInfo> =
    LazyLock::new(|| SchemaInfo::parse("io.hookstream.v1.RawWebhook", include_str!("../avro/RawWebhook.avsc")));

/// One HTTP request header kept for re-verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    /// Lower-case header name.
    pub name: String,
    /// Value bytes as received.
    pub value: Vec<u8>,
}

/// A verified webhook; see the `.avsc` file for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawWebhook {
    pub event_id: String,
    pub source: String,
    pub scheme: String,
    pub secret_index: i32,
    pub payment_id: String,
    pub event_type: Option<String>,
    pub sequence: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub received_at: i64,
    pub headers: Vec<HttpHeader>,
    pub body: Vec<u8>,
}

impl AvroRecord for RawWebhook {
    fn info() -> &'static LazyLock<SchemaInfo> {
        &INFO
    }

    fn to_value(&self) -> Value {
        let headers = self
            .headers
            .iter()
            .map(|h| {
                record(vec![
                    ("name", Value::String(h.name.clone())),
                    ("value", Value::Bytes(h.value.clone())),
                ])
            })
            .collect();
        record(vec![
            ("event_id", Value::String(self.event_id.clone())),
            ("source", Value::String(self.source.clone())),
            ("scheme", Value::String(self.scheme.clone())),
            ("secret_index", Value::Int(self.secret_index)),
            ("payment_id", Value::String(self.payment_id.clone())),
            ("event_type", opt_string(&self.event_type)),
            ("sequence", opt_long(self.sequence)),
            ("received_at", Value::TimestampMillis(self.received_at)),
            ("headers", Value::Array(headers)),
            ("body", Value::Bytes(self.body.clone())),
        ])
    }

    fn from_value(value: Value) -> Result<Self, ShapeError> {
        let mut f = Fields::new("RawWebhook", value)?;
        let headers = f
            .array("headers")?
            .into_iter()
            .map(|h| {
                let mut h = Fields::new("HttpHeader", h)?;
                Ok(HttpHeader {
                    name: h.string("name")?,
                    value: h.bytes("value")?,
                })
            })
            .collect::<Result<_, ShapeError>>()?;
        Ok(Self {
            event_id: f.string("event_id")?,
            source: f.string("source")?,
            scheme: f.string("scheme")?,
            secret_index: f.int("secret_index")?,
            payment_id: f.string("payment_id")?,
            event_type: f.opt_string("event_type")?,
            sequence: f.opt_long("sequence")?,
            received_at: f.timestamp_millis("received_at")?,
            headers,
            body: f.bytes("body")?,
        })
    }
}
