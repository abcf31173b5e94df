//! Validation and field extraction from the JSON body (a pure function).
//!
//! Only reads the body: the bytes sent to Kafka are the original ones, untouched.

use serde_json::Value;

use serde::{Deserialize, Serialize};

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
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ExtractError::InvalidField {
            field,
            detail: "must be a string",
        }),
    }
}

/// Parse `body` and extract the fields. `header_event_id` is the scheme's id header,
/// which wins over the body's id when present.
pub fn extract(body: &[u8], fields: &FieldMap, header_event_id: Option<String>) -> Result<Extracted, ExtractError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| ExtractError::InvalidJson)?;
    if !doc.is_object() {
        return Err(ExtractError::InvalidJson);
    }
    let payment_id = id(&doc, "payment_id", &fields.payment_id)?;
    let event_id = match header_event_id {
        Some(h) if h.len() > MAX_ID_BYTES => {
            return Err(ExtractError::InvalidField {
                field: "event_id",
                detail: "longer than 256 bytes",
            })
        }
        Some(h) if !h.is_empty() => h,
        _ => id(&doc, "event_id", &fields.event_id)?,
    };
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
        sequence,
        event_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(body: &str, header: Option<&str>) -> Result<Extracted, ExtractError> {
        extract(body.as_bytes(), &FieldMap::default(), header.map(str::to_owned))
    }

    #[test]
    fn canonical_event() {
        let e = ex(
            r#"{"id":"evt_1","payment_id":"pay_1","sequence":3,"type":"payment.completed"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            e,
            Extracted {
                payment_id: "pay_1".into(),
                event_id: "evt_1".into(),
                sequence: Some(3),
                event_type: Some("payment.completed".into())
            }
        );
    }

    #[test]
    fn header_id_wins_and_optional_fields_may_be_absent() {
        let e = ex(r#"{"id":"evt_body","payment_id":"pay_1"}"#, Some("evt_header")).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.sequence, e.event_type),
            ("evt_header", None, None)
        );
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(ex("not json", None), Err(ExtractError::InvalidJson));
        assert_eq!(ex("[1,2]", None), Err(ExtractError::InvalidJson));
        assert_eq!(
            ex(r#"{"id":"e"}"#, None),
            Err(ExtractError::MissingField {
                field: "payment_id",
                pointer: "/payment_id".into()
            })
        );
        assert_eq!(
            ex(r#"{"payment_id":"p"}"#, None),
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
            assert!(matches!(ex(bad, None), Err(ExtractError::InvalidField { .. })), "{bad}");
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
        let e = extract(body, &fields, None).unwrap();
        assert_eq!((e.payment_id.as_str(), e.event_id.as_str()), ("pi_9", "evt_s"));
    }
}
