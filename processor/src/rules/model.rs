//! The processor's state and the inputs it folds, as plain data.
//!
//! Everything here is serialised into sled (JSON: small, debuggable, and the admin API
//! shows it as is). None of it holds wall-clock time except as data read from the log.

use std::collections::BTreeMap;

use hookstream_schemas::{DeadLetter, KafkaHeader, PolicyEvent, PolicyRequest};
use serde::{Deserialize, Serialize};

/// Payment lifecycle states, as webhook `type`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Created,
    Processing,
    Completed,
    Failed,
    Refunded,
}

impl EventType {
    /// Parse a webhook `type` (`payment.completed`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "payment.created" => Self::Created,
            "payment.processing" => Self::Processing,
            "payment.completed" => Self::Completed,
            "payment.failed" => Self::Failed,
            "payment.refunded" => Self::Refunded,
            _ => return None,
        })
    }

    /// Lifecycle rank: created < processing < failed < completed < refunded.
    ///
    /// A failed attempt can be retried and then succeed (Stripe's
    /// `payment_intent.payment_failed` then `payment_intent.succeeded`), so a completion
    /// outranks a failure, and a failure that arrives after the completion is a late
    /// copy of an earlier attempt. A refund outranks everything: once a payment is
    /// refunded, a completion that arrives late must not activate its policy.
    pub fn rank(self) -> u8 {
        match self {
            Self::Created => 0,
            Self::Processing => 1,
            Self::Failed => 2,
            Self::Completed => 3,
            Self::Refunded => 4,
        }
    }

    /// Whether a payment in state `from` may move to `self` (in sequence order).
    pub fn may_follow(self, from: Option<EventType>) -> bool {
        use EventType::*;
        match self {
            Created => from.is_none(),
            // A failed attempt may be retried: processing and completion follow it.
            Processing => matches!(from, None | Some(Created) | Some(Processing) | Some(Failed)),
            Completed => matches!(from, None | Some(Created) | Some(Processing) | Some(Failed)),
            Failed => matches!(from, None | Some(Created) | Some(Processing)),
            // A refund whose completion is missing (late, or never sent) still ends the
            // payment: nothing is activated for it afterwards.
            Refunded => from != Some(Refunded),
        }
    }
}

/// Where a record is in the raw topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A raw record as consumed: everything a dead letter must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<KafkaHeader>,
}

impl RawRecord {
    /// Bytes of its key, value and headers: what holding it costs, near enough to bound
    /// the records buffered by bytes.
    pub fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }
}

/// A verified webhook with the fields the rules need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub source: String,
    pub event_id: String,
    pub payment_id: String,
    pub sequence: Option<i64>,
    pub event_type: EventType,
    pub policy_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub occurred_at: Option<String>,
    /// Ingest's received-at, milliseconds since the Unix epoch.
    pub received_at: i64,
    /// Hex SHA-256 of the raw body: same event id with another body is a conflict.
    pub body_hash: String,
}

/// A webhook held until its sequence gap fills, with its record for a later dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEvent {
    pub event: WebhookEvent,
    pub record: RawRecord,
}

/// The activation a payment asked the policy stage for (whether it got the policy is
/// the policy stage's decision: `GET /policies/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub activation_id: String,
    pub policy_id: String,
    pub event_id: String,
}

/// One line of a payment's history, for `GET /payments/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub offset: i64,
    pub event_id: Option<String>,
    pub sequence: Option<i64>,
    pub event_type: Option<EventType>,
    /// applied, held, duplicate, superseded, gap_timeout, gap_timeout_ignored, or dead_lettered:<reason>.
    pub outcome: String,
}

/// Most history entries kept per payment (the oldest are dropped first).
pub const HISTORY_LIMIT: usize = 100;

/// The key of a payment's state: a payment is identified by (source, payment_id), so a
/// webhook of one source never touches another source's payment of the same id. The
/// payment id comes first so that every source's payment of one id can be found by
/// prefix.
pub fn payment_key(source: &str, payment_id: &str) -> String {
    format!("{payment_id}\u{0}{source}")
}

/// The processor's view of one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment_id: String,
    /// The webhook source the payment belongs to.
    #[serde(default)]
    pub source: String,
    /// Last applied lifecycle state.
    pub status: Option<EventType>,
    /// The sequence the payment waits for next (sequence mode); 1 before any.
    pub next_sequence: i64,
    /// Out-of-order events waiting for the gap before them, by sequence.
    pub held: BTreeMap<i64, HeldEvent>,
    pub activation: Option<Activation>,
    /// Set once a refund asked the policy stage to cancel the activation: the id the
    /// cancellation gets if this payment holds the policy.
    pub cancellation_id: Option<String>,
    pub history: Vec<HistoryEntry>,
    /// The partition's clock when the payment last changed (ms of record time).
    #[serde(default)]
    pub last_event_ms: i64,
    /// When the state is forgotten (record time; `None`: not while events are held),
    /// see [`crate::rules::retention`].
    #[serde(default)]
    pub evict_at_ms: Option<i64>,
}

impl PaymentState {
    /// A payment never seen before.
    pub fn new(source: &str, payment_id: &str) -> Self {
        Self {
            payment_id: payment_id.to_owned(),
            source: source.to_owned(),
            status: None,
            next_sequence: 1,
            held: BTreeMap::new(),
            activation: None,
            cancellation_id: None,
            history: Vec::new(),
            last_event_ms: 0,
            evict_at_ms: None,
        }
    }

    /// Its key in the store.
    pub fn key(&self) -> String {
        payment_key(&self.source, &self.payment_id)
    }

    pub(crate) fn log(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// What the dedup store remembers of an accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// Record time of the first sighting (ms): the retention window counts from here.
    pub first_seen_ms: i64,
    pub body_hash: String,
    pub offset: i64,
}

/// A record the processor writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// To the policy stage's repartition topic, key policy_id (payment stage).
    Request(PolicyRequest),
    /// To `policy.activations`, key policy_id (policy stage).
    Policy(PolicyEvent),
    /// To the DLQ, key payment_id (or the original key).
    Dead(DeadLetter),
}
