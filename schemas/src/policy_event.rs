//! `PolicyEvent`: what the processor tells downstream about a policy (`avro/PolicyEvent.avsc`).

use std::sync::LazyLock;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, SchemaInfo};
use crate::value::{opt_long, opt_string, record, Fields, ShapeError};

static INFO: LazyLock<SchemaInfo> = LazyLock::new(|| {
    SchemaInfo::parse("io.hookstream.v1.PolicyEvent", include_str!("../avro/PolicyEvent.avsc"))
        .reading(&[include_str!("../avro/previous/PolicyEvent.v1.avsc")])
});

/// A policy was paid for and is now active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyActivated {
    pub activation_id: String,
    pub policy_id: String,
    pub payment_id: String,
    pub source: String,
    pub payment_event_id: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub occurred_at: Option<String>,
    /// Milliseconds since the Unix epoch (the causing webhook's received_at).
    pub activated_at: i64,
}

/// The payment of an active policy was refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCancelled {
    pub cancellation_id: String,
    pub activation_id: String,
    pub policy_id: String,
    pub payment_id: String,
    pub source: String,
    pub payment_event_id: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub occurred_at: Option<String>,
    /// Milliseconds since the Unix epoch (the refund webhook's received_at).
    pub cancelled_at: i64,
}

/// A payment completed for a policy another payment holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPaymentDuplicated {
    pub duplicate_id: String,
    pub policy_id: String,
    pub active_activation_id: String,
    pub active_payment_id: String,
    pub active_source: String,
    pub payment_id: String,
    pub source: String,
    pub payment_event_id: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub occurred_at: Option<String>,
    /// Milliseconds since the Unix epoch (the duplicate's completed webhook's received_at).
    pub detected_at: i64,
}

/// The union in `PolicyEvent.event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PolicyEventKind {
    Activated(PolicyActivated),
    Cancelled(PolicyCancelled),
    Duplicated(PolicyPaymentDuplicated),
}

/// The record on `policy.activations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEvent {
    pub policy_id: String,
    pub event: PolicyEventKind,
}

impl PolicyEvent {
    /// The event's deterministic id (activation_id, cancellation_id or duplicate_id).
    pub fn id(&self) -> &str {
        match &self.event {
            PolicyEventKind::Activated(a) => &a.activation_id,
            PolicyEventKind::Cancelled(c) => &c.cancellation_id,
            PolicyEventKind::Duplicated(d) => &d.duplicate_id,
        }
    }
}

impl AvroRecord for PolicyEvent {
    fn info() -> &'static LazyLock<SchemaInfo> {
        &INFO
    }

    fn to_value(&self) -> Value {
        let event = match &self.event {
            PolicyEventKind::Activated(a) => Value::Union(
                0,
                Box::new(record(vec![
                    ("activation_id", Value::String(a.activation_id.clone())),
                    ("policy_id", Value::String(a.policy_id.clone())),
                    ("payment_id", Value::String(a.payment_id.clone())),
                    ("source", Value::String(a.source.clone())),
                    ("payment_event_id", Value::String(a.payment_event_id.clone())),
                    ("amount", opt_long(a.amount)),
                    ("currency", opt_string(&a.currency)),
                    ("occurred_at", opt_string(&a.occurred_at)),
                    ("activated_at", Value::TimestampMillis(a.activated_at)),
                ])),
            ),
            PolicyEventKind::Cancelled(c) => Value::Union(
                1,
                Box::new(record(vec![
                    ("cancellation_id", Value::String(c.cancellation_id.clone())),
                    ("activation_id", Value::String(c.activation_id.clone())),
                    ("policy_id", Value::String(c.policy_id.clone())),
                    ("payment_id", Value::String(c.payment_id.clone())),
                    ("source", Value::String(c.source.clone())),
                    ("payment_event_id", Value::String(c.payment_event_id.clone())),
                    ("amount", opt_long(c.amount)),
                    ("currency", opt_string(&c.currency)),
                    ("occurred_at", opt_string(&c.occurred_at)),
                    ("cancelled_at", Value::TimestampMillis(c.cancelled_at)),
                ])),
            ),
            PolicyEventKind::Duplicated(d) => Value::Union(
                2,
                Box::new(record(vec![
                    ("duplicate_id", Value::String(d.duplicate_id.clone())),
                    ("policy_id", Value::String(d.policy_id.clone())),
                    ("active_activation_id", Value::String(d.active_activation_id.clone())),
                    ("active_payment_id", Value::String(d.active_payment_id.clone())),
                    ("active_source", Value::String(d.active_source.clone())),
                    ("payment_id", Value::String(d.payment_id.clone())),
                    ("source", Value::String(d.source.clone())),
                    ("payment_event_id", Value::String(d.payment_event_id.clone())),
                    ("amount", opt_long(d.amount)),
                    ("currency", opt_string(&d.currency)),
                    ("occurred_at", opt_string(&d.occurred_at)),
                    ("detected_at", Value::TimestampMillis(d.detected_at)),
                ])),
            ),
        };
        record(vec![
            ("policy_id", Value::String(self.policy_id.clone())),
            ("event", event),
        ])
    }

    fn from_value(value: Value) -> Result<Self, ShapeError> {
        let mut f = Fields::new("PolicyEvent", value)?;
        let policy_id = f.string("policy_id")?;
        let event = match f.take("event")? {
            Value::Union(0, inner) => {
                let mut a = Fields::new("PolicyActivated", *inner)?;
                PolicyEventKind::Activated(PolicyActivated {
                    activation_id: a.string("activation_id")?,
                    policy_id: a.string("policy_id")?,
                    payment_id: a.string("payment_id")?,
                    source: a.string("source")?,
                    payment_event_id: a.string("payment_event_id")?,
                    amount: a.opt_long("amount")?,
                    currency: a.opt_string("currency")?,
                    occurred_at: a.opt_string("occurred_at")?,
                    activated_at: a.timestamp_millis("activated_at")?,
                })
            }
            Value::Union(1, inner) => {
                let mut c = Fields::new("PolicyCancelled", *inner)?;
                PolicyEventKind::Cancelled(PolicyCancelled {
                    cancellation_id: c.string("cancellation_id")?,
                    activation_id: c.string("activation_id")?,
                    policy_id: c.string("policy_id")?,
                    payment_id: c.string("payment_id")?,
                    source: c.string("source")?,
                    payment_event_id: c.string("payment_event_id")?,
                    amount: c.opt_long("amount")?,
                    currency: c.opt_string("currency")?,
                    occurred_at: c.opt_string("occurred_at")?,
                    cancelled_at: c.timestamp_millis("cancelled_at")?,
                })
            }
            Value::Union(2, inner) => {
                let mut d = Fields::new("PolicyPaymentDuplicated", *inner)?;
                PolicyEventKind::Duplicated(PolicyPaymentDuplicated {
                    duplicate_id: d.string("duplicate_id")?,
                    policy_id: d.string("policy_id")?,
                    active_activation_id: d.string("active_activation_id")?,
                    active_payment_id: d.string("active_payment_id")?,
                    active_source: d.string("active_source")?,
                    payment_id: d.string("payment_id")?,
                    source: d.string("source")?,
                    payment_event_id: d.string("payment_event_id")?,
                    amount: d.opt_long("amount")?,
                    currency: d.opt_string("currency")?,
                    occurred_at: d.opt_string("occurred_at")?,
                    detected_at: d.timestamp_millis("detected_at")?,
                })
            }
            other => {
                return Err(ShapeError::wrong(
                    "PolicyEvent",
                    "event",
                    "union branch 0, 1 or 2",
                    &other,
                ))
            }
        };
        Ok(Self { policy_id, event })
    }
}
