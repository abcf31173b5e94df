//! Turning a raw record into an input for the rules (a pure function): a webhook, a
//! control record, or a reason why it cannot be processed.

use hookstream_schemas::{
    decode, error_chain, topics::headers, DeadLetterReason, GapTimeout, RawWebhook, GAP_TIMEOUT_CONTROL,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::rules::model::{payment_key, EventType, RawRecord, WebhookEvent};

/// JSON pointers to the body fields the processor reads (ingest extracted the rest).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyFields {
    /// The policy a payment pays for. Default `/metadata/policy_id`.
    pub policy_id: String,
    /// Amount in minor units. Default `/amount`.
    pub amount: String,
    /// ISO 4217 currency. Default `/currency`.
    pub currency: String,
    /// When the provider says it happened. Default `/occurred_at`.
    pub occurred_at: String,
}

impl Default for BodyFields {
    fn default() -> Self {
        Self {
            policy_id: "/metadata/policy_id".into(),
            amount: "/amount".into(),
            currency: "/currency".into(),
            occurred_at: "/occurred_at".into(),
        }
    }
}

/// What a raw record means to the processor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Webhook(WebhookEvent),
    GapTimeout(GapTimeout),
    /// Cannot be processed: goes to the DLQ with this reason.
    Invalid {
        reason: DeadLetterReason,
        detail: String,
        source: Option<String>,
        event_id: Option<String>,
        payment_id: Option<String>,
    },
}

fn invalid(reason: DeadLetterReason, detail: impl Into<String>) -> Input {
    Input::Invalid {
        reason,
        detail: detail.into(),
        source: None,
        event_id: None,
        payment_id: None,
    }
}

/// The control kind named by the record's `hookstream-control` header, if any.
pub fn control_kind(rec: &RawRecord) -> Option<String> {
    rec.headers
        .iter()
        .find(|h| h.name == headers::CONTROL)
        .map(|h| String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned())
}

/// Hex SHA-256.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

impl Input {
    /// The key of the payment this input names (see [`payment_key`]), if it names one.
    pub fn payment_key(&self) -> Option<String> {
        match self {
            Input::Webhook(e) => Some(payment_key(&e.source, &e.payment_id)),
            Input::GapTimeout(g) => Some(payment_key(&g.source, &g.payment_id)),
            Input::Invalid {
                source: Some(s),
                payment_id: Some(p),
                ..
            } => Some(payment_key(s, p)),
            Input::Invalid { .. } => None,
        }
    }
}

/// Classify a raw record.
pub fn classify(rec: &RawRecord, fields: &BodyFields) -> Input {
    let Some(value) = rec.value.as_deref() else {
        return invalid(DeadLetterReason::Undecodable, "record has no value (tombstone)");
    };
    if let Some(kind) = control_kind(rec) {
        return match kind.as_str() {
            GAP_TIMEOUT_CONTROL => match decode::<GapTimeout>(value) {
                Ok(g) => Input::GapTimeout(g),
                Err(e) => invalid(
                    DeadLetterReason::Undecodable,
                    format!("gap-timeout control record: {}", error_chain(&e)),
                ),
            },
            other => invalid(
                DeadLetterReason::ProcessingError,
                format!("unknown control record kind {other:?}"),
            ),
        };
    }
    let raw: RawWebhook = match decode(value) {
        Ok(r) => r,
        Err(e) => {
            return invalid(
                DeadLetterReason::Undecodable,
                format!("not a RawWebhook: {}", error_chain(&e)),
            )
        }
    };
    // Ids too long to key state by (not written by ingest) are left out of the letter's
    // fields; the original record still carries them.
    let bounded = |v: &str| (v.len() <= MAX_ID_BYTES).then(|| v.to_owned());
    let known = |reason, detail: String| Input::Invalid {
        reason,
        detail,
        source: bounded(&raw.source),
        event_id: bounded(&raw.event_id),
        payment_id: bounded(&raw.payment_id),
    };
    let event_type = match raw.event_type.as_deref() {
        None => return known(DeadLetterReason::MissingField, "webhook has no event type".into()),
        Some(t) => match EventType::parse(t) {
            Some(t) => t,
            None => return known(DeadLetterReason::InvalidTransition, format!("unknown event type {t:?}")),
        },
    };
    let body: Value = match serde_json::from_slice(&raw.body) {
        Ok(v) => v,
        Err(e) => return known(DeadLetterReason::Undecodable, format!("body is not JSON: {e}")),
    };
    let text = |ptr: &str| body.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
    let ev = WebhookEvent {
        body_hash: sha256_hex(&[&raw.body]),
        policy_id: text(&fields.policy_id).filter(|p| !p.is_empty()),
        amount: body.pointer(&fields.amount).and_then(Value::as_i64),
        currency: text(&fields.currency),
        occurred_at: text(&fields.occurred_at),
        source: raw.source,
        event_id: raw.event_id,
        payment_id: raw.payment_id,
        sequence: raw.sequence,
        event_type,
        received_at: raw.received_at,
    };
    match check_fields(&ev) {
        Ok(()) => Input::Webhook(ev),
        Err(e) => Input::Invalid {
            reason: DeadLetterReason::InvalidField,
            detail: e.to_string(),
            source: Some(truncate(&ev.source)),
            event_id: Some(truncate(&ev.event_id)),
            payment_id: (ev.payment_id.len() <= MAX_ID_BYTES).then(|| ev.payment_id.clone()),
        },
    }
}

/// Longest id (source, event id, payment id, policy id) the processor keys state by or
/// copies into an output; ingest rejects longer ones with 400.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `occurred_at` copied into an output.
pub const MAX_TIME_BYTES: usize = 64;

/// At most [`MAX_ID_BYTES`] of `s` (on a char boundary), for a dead letter's fields.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(MAX_ID_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A field copied into state keys or outputs that is outside its limits: the dead
/// letter's detail (`invalid_field`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{field} must be 1 to {max} bytes without control characters (has {len} bytes)", max = MAX_ID_BYTES)]
    Id { field: &'static str, len: usize },
    #[error("policy_id must be printable ASCII without spaces")]
    PolicyIdCharset,
    #[error("currency must be a three-letter ISO 4217 code (has {len} bytes)")]
    Currency { len: usize },
    #[error("occurred_at must be printable ASCII of at most {max} bytes (has {len} bytes)", max = MAX_TIME_BYTES)]
    OccurredAt { len: usize },
}

/// Whether the fields copied into state keys and outputs are within their limits: ids
/// non-empty, at most [`MAX_ID_BYTES`], without control characters; a policy id also
/// printable ASCII without spaces; a currency three ASCII letters; `occurred_at`
/// printable ASCII of at most [`MAX_TIME_BYTES`].
pub fn check_fields(ev: &WebhookEvent) -> Result<(), FieldError> {
    let id = |field: &'static str, v: &str| {
        if v.is_empty() || v.len() > MAX_ID_BYTES || v.chars().any(char::is_control) {
            Err(FieldError::Id { field, len: v.len() })
        } else {
            Ok(())
        }
    };
    id("source", &ev.source)?;
    id("event_id", &ev.event_id)?;
    id("payment_id", &ev.payment_id)?;
    let graphic = |v: &str| v.bytes().all(|b| b.is_ascii_graphic());
    if let Some(p) = &ev.policy_id {
        id("policy_id", p)?;
        if !graphic(p) {
            return Err(FieldError::PolicyIdCharset);
        }
    }
    if let Some(c) = &ev.currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(FieldError::Currency { len: c.len() });
        }
    }
    if let Some(t) = &ev.occurred_at {
        if t.len() > MAX_TIME_BYTES || !graphic(t) {
            return Err(FieldError::OccurredAt { len: t.len() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::EventType;

    fn ev() -> WebhookEvent {
        WebhookEvent {
            source: "paymenthub".into(),
            event_id: "evt_1".into(),
            payment_id: "pay_1".into(),
            sequence: None,
            event_type: EventType::Completed,
            policy_id: Some("pol_1".into()),
            amount: Some(5000),
            currency: Some("KES".into()),
            occurred_at: Some("2026-02-12T10:00:00Z".into()),
            received_at: 0,
            body_hash: String::new(),
        }
    }

    #[test]
    fn fields_copied_into_outputs_have_length_and_charset_limits() {
        assert_eq!(check_fields(&ev()), Ok(()));
        type Spoil = fn(&mut WebhookEvent);
        let bad: Vec<(&str, Spoil)> = vec![
            ("policy_id", |e| e.policy_id = Some("p".repeat(MAX_ID_BYTES + 1))),
            ("policy_id", |e| e.policy_id = Some("pol 1".into())),
            ("policy_id", |e| e.policy_id = Some("pol\u{0}".into())),
            ("payment_id", |e| e.payment_id = "x".repeat(MAX_ID_BYTES + 1)),
            ("currency", |e| e.currency = Some("KESX".into())),
            ("currency", |e| e.currency = Some("K€".into())),
            ("occurred_at", |e| e.occurred_at = Some("9".repeat(MAX_TIME_BYTES + 1))),
            ("occurred_at", |e| e.occurred_at = Some("2026-02-12 10:00".into())),
        ];
        for (field, spoil) in bad {
            let mut e = ev();
            spoil(&mut e);
            let err = check_fields(&e).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
            assert!(err.len() < 200, "the reason is short: {err}");
        }
        let mut lower = ev();
        lower.currency = Some("kes".into());
        assert_eq!(check_fields(&lower), Ok(()), "Stripe writes currencies in lower case");
    }

    #[test]
    fn an_unknown_event_type_of_300_kb_makes_a_letter_with_a_short_detail() {
        let raw = RawWebhook {
            event_id: "evt_big".into(),
            source: "paymenthub".into(),
            scheme: "hmac-sha256".into(),
            secret_index: 0,
            payment_id: "pay_big".into(),
            event_type: Some("é".repeat(150_000)),
            sequence: None,
            received_at: 0,
            headers: vec![],
            body: b"{}".to_vec(),
        };
        let rec = RawRecord {
            origin: crate::rules::model::Origin {
                topic: "raw".into(),
                partition: 0,
                offset: 0,
                timestamp_ms: 0,
            },
            key: None,
            value: Some(hookstream_schemas::encode(&raw).unwrap()),
            headers: vec![],
        };
        let Input::Invalid { reason, detail, .. } = classify(&rec, &BodyFields::default()) else {
            panic!("an unknown type is refused");
        };
        let crate::rules::model::Output::Dead(letter) =
            crate::rules::ids::dead_letter(&rec, reason, detail, None, None, vec![])
        else {
            panic!("a dead letter");
        };
        assert!(
            letter.detail.len() <= crate::rules::ids::MAX_DETAIL_BYTES,
            "{}",
            letter.detail.len()
        );
        assert!(
            letter.detail.starts_with("unknown event type"),
            "{}",
            &letter.detail[..40]
        );
        assert!(letter.detail.ends_with("bytes more)"), "says it was cut");
    }
}
