//! `PolicyRequest`: what the processor's payment stage asks of its policy stage
//! (`avro/PolicyRequest.avsc`), on the internal repartition topic keyed by policy_id.

use std::sync::LazyLock;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, SchemaInfo};
use crate::value::{opt_long, opt_string, record, Fields, ShapeError};

static INFO: LazyLock<SchemaInfo> = LazyLock::new(|| {
    SchemaInfo::parse(
        "io.hookstream.v1.PolicyRequest",
        include_str!("../avro/PolicyRequest.avsc"),
    )
});

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyRequestKind {
    /// A payment for the policy completed.
    Activate,
    /// A payment that asked to activate the policy was refunded.
    Cancel,
}

impl PolicyRequestKind {
    fn symbol(self) -> (u32, &'static str) {
        match self {
            PolicyRequestKind::Activate => (0, "ACTIVATE"),
            PolicyRequestKind::Cancel => (1, "CANCEL"),
        }
    }
}

/// A request to the policy stage; see the `.avsc` file for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRequest {
    pub request_id: String,
    pub kind: PolicyRequestKind,
    pub policy_id: String,
    pub activation_id: String,
    pub source: String,
    pub payment_id: String,
    pub payment_event_id: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub occurred_at: Option<String>,
    /// Milliseconds since the Unix epoch (the causing webhook's received_at).
    pub received_at: i64,
}

impl AvroRecord for PolicyRequest {
    fn info() -> &'static LazyLock<SchemaInfo> {
        &INFO
    }

    fn to_value(&self) -> Value {
        let (index, symbol) = self.kind.symbol();
        record(vec![
            ("request_id", Value::String(self.request_id.clone())),
            ("kind", Value::Enum(index, symbol.to_owned())),
            ("policy_id", Value::String(self.policy_id.clone())),
            ("activation_id", Value::String(self.activation_id.clone())),
            ("source", Value::String(self.source.clone())),
            ("payment_id", Value::String(self.payment_id.clone())),
            ("payment_event_id", Value::String(self.payment_event_id.clone())),
            ("amount", opt_long(self.amount)),
            ("currency", opt_string(&self.currency)),
            ("occurred_at", opt_string(&self.occurred_at)),
            ("received_at", Value::TimestampMillis(self.received_at)),
        ])
    }

    fn from_value(value: Value) -> Result<Self, ShapeError> {
        let mut f = Fields::new("PolicyRequest", value)?;
        let kind = match f.take("kind")? {
            Value::Enum(_, s) if s == "ACTIVATE" => PolicyRequestKind::Activate,
            Value::Enum(_, s) if s == "CANCEL" => PolicyRequestKind::Cancel,
            other => return Err(ShapeError::wrong("PolicyRequest", "kind", "ACTIVATE or CANCEL", &other)),
        };
        Ok(Self {
            request_id: f.string("request_id")?,
            kind,
            policy_id: f.string("policy_id")?,
            activation_id: f.string("activation_id")?,
            source: f.string("source")?,
            payment_id: f.string("payment_id")?,
            payment_event_id: f.string("payment_event_id")?,
            amount: f.opt_long("amount")?,
            currency: f.opt_string("currency")?,
            occurred_at: f.opt_string("occurred_at")?,
            received_at: f.timestamp_millis("received_at")?,
        })
    }
}
