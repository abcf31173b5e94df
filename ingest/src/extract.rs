//! Validation and field extraction from the JSON body (a pure function).
//!
//! Only reads the body: the bytes sent to Kafka are the original ones, untouched.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::verify::HeaderId;

/// Why a body is refused; the error module's `Reject` turns it into the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Not a JSON object.
    #[error("body is not a JSON object")]
    InvalidJson,
    /// A required field is missing or empty.
    #[error("missing field {field} at {pointer}")]
    MissingField { field: &'static str, pointer: String },
    /// A field has an unusable value.
    #[error("field {field}: {detail}")]
    InvalidField { field: &'static str, detail: &'static str },
}

/// JSON pointers (RFC 6901) to the fields ingest extracts from the body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    /// Payment id, required (the record key). Default `/payment_id`.
    pub payment_id: String,
    /// Event id, used when the scheme has no id header (stripe). Default `/id`.
    pub event_id: String,
    /// Per-payment sequence number, optional. Default `/sequence`.
    pub sequence: String,
    /// Event type, optional. Default `/type`.
    pub event_type: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            payment_id: "/payment_id".into(),
            event_id: "/id".into(),
            sequence: "/sequence".into(),
            event_type: "/type".into(),
        }
    }
}

/// Longest accepted id (payment id, event id): they become Kafka keys and sled keys.
pub const MAX_ID_BYTES: usize = 256;

/// The fields ingest needs from a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub payment_id: String,
    pub event_id: String,
    /// The scheme's id header and the body's id both exist and differ (counted, never
    /// refused: see [`extract`]).
    pub ids_disagree: bool,
    pub sequence: Option<i64>,
    pub event_type: Option<String>,
}

fn id(doc: &Value, field: &'static str, pointer: &str) -> Result<String, ExtractError> {
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Err(ExtractError::MissingField {
            field,
            pointer: pointer.to_owned(),
        }),
        Some(Value::String(s)) if s.is_empty() => Err(ExtractError::MissingField {
            field,
            pointer: pointer.to_owned(),
        }),
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => Err(ExtractError::InvalidField {
            field,
            detail: "longer than 256 bytes",
        }),
        // Ids become Kafka keys, store keys and log fields: no NUL or other control
        // characters (the processor refuses them too, later and more expensively).
        Some(Value::String(s)) if s.chars().any(char::is_control) => Err(ExtractError::InvalidField {
            field,
            detail: "contains control characters",
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ExtractError::InvalidField {
            field,
            detail: "must be a string",
        }),
    }
}

/// The event id of a request (ingest/README.md, "Which id identifies an event"), and
/// whether the id header and the body's id disagree:
/// - a signed id header is the id (standard-webhooks' `webhook-id` is the message's
///   idempotency key, whatever the body's own `id` says);
/// - an unsigned id header never decides identity (anyone who captured a request can
///   send it again with another one; GitHub's `X-GitHub-Delivery` is per delivery and
///   never a body field): the body's id is the id, or without one `sha256:` + the hex
///   SHA-256 of the (signed) body, so a captured request sent again with a new header id
///   is still the same event to dedup;
/// - with no id header, the body's id is required.
///
/// A disagreement is never refused: providers do not retry a 4xx, so refusing would
/// lose real senders' events.
fn event_id(doc: &Value, body: &[u8], fields: &FieldMap, header: HeaderId) -> Result<(String, bool), ExtractError> {
    let body_id = match id(doc, "event_id", &fields.event_id) {
        Ok(b) => Some(b),
        Err(ExtractError::MissingField { .. }) if header != HeaderId::None => None,
        Err(e) => return Err(e),
    };
    let header = match header {
        HeaderId::Signed(h) | HeaderId::Unsigned(h) if h.len() > MAX_ID_BYTES => {
            return Err(ExtractError::InvalidField {
                field: "event_id",
                detail: "longer than 256 bytes",
            })
        }
        HeaderId::Signed(h) | HeaderId::Unsigned(h) if h.chars().any(char::is_control) => {
            return Err(ExtractError::InvalidField {
                field: "event_id",
                detail: "contains control characters",
            })
        }
        h => h,
    };
    let disagree = match (&header, &body_id) {
        (HeaderId::Signed(h) | HeaderId::Unsigned(h), Some(b)) => h != b,
        _ => false,
    };
    let id = match (header, body_id) {
        (HeaderId::Signed(h), _) if !h.is_empty() => h,
        (_, Some(b)) => b,
        (HeaderId::Unsigned(_) | HeaderId::Signed(_), None) => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        (HeaderId::None, None) => {
            return Err(ExtractError::MissingField {
                field: "event_id",
                pointer: fields.event_id.clone(),
            })
        }
    };
    Ok((id, disagree))
}

/// Parse `body` and extract the fields; `header` is the scheme's id header.
pub fn extract(body: &[u8], fields: &FieldMap, header: HeaderId) -> Result<Extracted, ExtractError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| ExtractError::InvalidJson)?;
    if !doc.is_object() {
        return Err(ExtractError::InvalidJson);
    }
    let payment_id = id(&doc, "payment_id", &fields.payment_id)?;
    let (event_id, ids_disagree) = event_id(&doc, body, fields, header)?;
    let sequence = match doc.pointer(&fields.sequence) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return Err(ExtractError::InvalidField {
                    field: "sequence",
                    detail: "must be an integer >= 1",
                })
            }
        },
    };
    let event_type = match doc.pointer(&fields.event_type) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ExtractError::InvalidField {
                field: "type",
                detail: "must be a string",
            })
        }
    };
    Ok(Extracted {
        payment_id,
        event_id,
        ids_disagree,
        sequence,
        event_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(body: &str, header: HeaderId) -> Result<Extracted, ExtractError> {
        extract(body.as_bytes(), &FieldMap::default(), header)
    }

    fn unsigned(id: &str) -> HeaderId {
        HeaderId::Unsigned(id.to_owned())
    }

    #[test]
    fn canonical_event() {
        let e = ex(
            r#"{"id":"evt_1","payment_id":"pay_1","sequence":3,"type":"payment.completed"}"#,
            HeaderId::None,
        )
        .unwrap();
        assert_eq!(
            e,
            Extracted {
                payment_id: "pay_1".into(),
                event_id: "evt_1".into(),
                ids_disagree: false,
                sequence: Some(3),
                event_type: Some("payment.completed".into())
            }
        );
    }

    #[test]
    fn a_signed_id_header_is_the_id_an_unsigned_one_never_and_neither_is_refused_for_disagreeing() {
        let body = r#"{"id":"evt_body","payment_id":"pay_1"}"#;
        let signed = ex(body, HeaderId::Signed("msg_header".into())).unwrap();
        assert_eq!((signed.event_id.as_str(), signed.ids_disagree), ("msg_header", true));
        let unsigned_other = ex(body, unsigned("delivery-7")).unwrap();
        assert_eq!(
            (unsigned_other.event_id.as_str(), unsigned_other.ids_disagree),
            ("evt_body", true)
        );
        let e = ex(body, unsigned("evt_body")).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.ids_disagree, e.sequence, e.event_type),
            ("evt_body", false, None, None)
        );
    }

    #[test]
    fn an_unsigned_id_header_alone_does_not_name_the_event_the_signed_body_does() {
        // A GitHub delivery replayed with a fresh X-GitHub-Delivery: the same event.
        let body = r#"{"action":"completed","payment_id":"pay_1"}"#;
        let first = ex(body, unsigned("delivery-1")).unwrap();
        let replayed = ex(body, unsigned("delivery-2")).unwrap();
        assert_eq!(first.event_id, replayed.event_id);
        assert!(
            first.event_id.starts_with("sha256:") && first.event_id.len() == 71,
            "{}",
            first.event_id
        );
        let other = ex(r#"{"action":"refunded","payment_id":"pay_1"}"#, unsigned("delivery-1")).unwrap();
        assert_ne!(first.event_id, other.event_id);
        // A signed id header alone is the id.
        let signed = ex(body, HeaderId::Signed("msg_1".into())).unwrap();
        assert_eq!(signed.event_id, "msg_1");
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(ex("not json", HeaderId::None), Err(ExtractError::InvalidJson));
        assert_eq!(ex("[1,2]", HeaderId::None), Err(ExtractError::InvalidJson));
        assert_eq!(
            ex(r#"{"id":"e"}"#, HeaderId::None),
            Err(ExtractError::MissingField {
                field: "payment_id",
                pointer: "/payment_id".into()
            })
        );
        assert_eq!(
            ex(r#"{"payment_id":"p"}"#, HeaderId::None),
            Err(ExtractError::MissingField {
                field: "event_id",
                pointer: "/id".into()
            })
        );
        for bad in [
            r#"{"id":"e","payment_id":7}"#,
            r#"{"id":"e","payment_id":"p","sequence":0}"#,
            r#"{"id":"e","payment_id":"p","sequence":"2"}"#,
        ] {
            assert!(
                matches!(ex(bad, HeaderId::None), Err(ExtractError::InvalidField { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn custom_pointers() {
        let fields = FieldMap {
            payment_id: "/data/object/payment_intent".into(),
            event_id: "/id".into(),
            sequence: "/seq".into(),
            event_type: "/type".into(),
        };
        let body = br#"{"id":"evt_s","type":"payment.completed","data":{"object":{"payment_intent":"pi_9"}}}"#;
        let e = extract(body, &fields, HeaderId::None).unwrap();
        assert_eq!((e.payment_id.as_str(), e.event_id.as_str()), ("pi_9", "evt_s"));
    }
}
