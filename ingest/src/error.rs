//! Ingest's error types: start-up errors ([`ConfigError`], [`IngestError`]) and the
//! per-request answers that are not 200 ([`Reject`]). This is the one place where a
//! refusal becomes HTTP: verification and extraction return domain errors, and
//! [`Reject`] gives each its status, error code and JSON body.

use serde_json::{json, Value};

use crate::extract::ExtractError;
use crate::verify::Rejection;

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] hookstream_schemas::config::FileError),
    #[error("config {field}: {detail}")]
    Invalid { field: String, detail: String },
    #[error("config {field}: its secrets cannot be used")]
    Secrets {
        field: String,
        #[source]
        source: crate::verify::SecretError,
    },
}

/// Ingest could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the Kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("HTTP listener failed")]
    Listener(#[source] std::io::Error),
    #[error("tracing settings")]
    Tracing(#[from] hookstream_schemas::telemetry::TelemetryError),
}

/// A request answered with something other than 200. `status()` and `body()` are
/// exactly what the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No such route.
    NotFound,
    /// `{source}` is not configured.
    UnknownSource(String),
    /// Not a POST on a webhook path.
    MethodNotAllowed,
    /// Body over the source's limit.
    PayloadTooLarge { limit_bytes: usize },
    /// The client did not send the body in time.
    BodyTimeout,
    /// The body stream broke off.
    BodyRead,
    /// Signature verification failed (400 or 403).
    Verify(Rejection),
    /// The body is not a usable webhook (400).
    Extract(ExtractError),
    /// Too many requests in flight.
    Overloaded,
    /// The request bodies being buffered already use the whole body budget.
    BodyBudgetExhausted,
    /// The producer queue is full.
    QueueFull,
    /// The broker did not acknowledge within the ack deadline, or refused the record.
    BrokerUnavailable,
}

impl Reject {
    /// The HTTP status (DESIGN.md's table).
    pub fn status(&self) -> u16 {
        match self {
            Reject::NotFound | Reject::UnknownSource(_) => 404,
            Reject::MethodNotAllowed => 405,
            Reject::PayloadTooLarge { .. } => 413,
            Reject::BodyTimeout => 408,
            Reject::BodyRead | Reject::Extract(_) => 400,
            // 400 for malformed requests, 403 for failed authentication.
            Reject::Verify(Rejection::MissingHeader(_) | Rejection::InvalidHeader { .. }) => 400,
            Reject::Verify(Rejection::TimestampOutOfTolerance | Rejection::SignatureMismatch) => 403,
            Reject::Overloaded | Reject::BodyBudgetExhausted => 429,
            Reject::QueueFull | Reject::BrokerUnavailable => 503,
        }
    }

    /// The error code: the JSON body's `error` and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::NotFound => "not_found",
            Reject::UnknownSource(_) => "unknown_source",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::PayloadTooLarge { .. } => "payload_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::BodyRead => "body_read_error",
            Reject::Verify(Rejection::MissingHeader(_)) => "missing_header",
            Reject::Verify(Rejection::InvalidHeader { .. }) => "invalid_header",
            Reject::Verify(Rejection::TimestampOutOfTolerance) => "timestamp_out_of_tolerance",
            Reject::Verify(Rejection::SignatureMismatch) => "signature_mismatch",
            Reject::Extract(ExtractError::InvalidJson) => "invalid_json",
            Reject::Extract(ExtractError::MissingField { .. }) => "missing_field",
            Reject::Extract(ExtractError::InvalidField { .. }) => "invalid_field",
            Reject::Overloaded => "overloaded",
            Reject::BodyBudgetExhausted => "body_budget_exhausted",
            Reject::QueueFull => "producer_queue_full",
            Reject::BrokerUnavailable => "broker_unavailable",
        }
    }

    /// Whether the answer carries `Retry-After` (the provider should retry).
    pub fn retry_after(&self) -> bool {
        matches!(
            self,
            Reject::Overloaded | Reject::BodyBudgetExhausted | Reject::QueueFull | Reject::BrokerUnavailable
        )
    }

    /// The JSON body: `{"error": code, ...details}`. Never contains a secret or the body.
    pub fn body(&self) -> Value {
        let mut v = json!({ "error": self.code() });
        let extra = match self {
            Reject::UnknownSource(s) => json!({ "source": s }),
            Reject::PayloadTooLarge { limit_bytes } => json!({ "limit_bytes": limit_bytes }),
            Reject::Verify(Rejection::MissingHeader(h)) => json!({ "header": h }),
            Reject::Verify(Rejection::InvalidHeader { header, detail }) => {
                json!({ "header": header, "detail": detail })
            }
            Reject::Extract(ExtractError::MissingField { field, pointer }) => {
                json!({ "field": field, "pointer": pointer })
            }
            Reject::Extract(ExtractError::InvalidField { field, detail }) => {
                json!({ "field": field, "detail": detail })
            }
            _ => json!({}),
        };
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName, HeaderValue};

    use super::*;
    use crate::verify::{verify, Scheme, Secrets};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn missing_and_invalid_headers_are_400() {
        let s = Secrets::from_env_value(Scheme::HmacSha256, "k").unwrap();
        let h = headers(&[("x-event-id", "e"), ("x-signature", "sha256=00")]);
        let r = Reject::Verify(verify(Scheme::HmacSha256, &h, b"{}", &s, 0, 300).unwrap_err());
        assert_eq!(
            (r.clone(), r.status(), r.code()),
            (
                Reject::Verify(Rejection::MissingHeader("x-timestamp")),
                400,
                "missing_header"
            )
        );
        let h = headers(&[
            ("x-event-id", "e"),
            ("x-timestamp", "soon"),
            ("x-signature", "sha256=00"),
        ]);
        assert_eq!(
            Reject::Verify(verify(Scheme::HmacSha256, &h, b"{}", &s, 0, 300).unwrap_err()).status(),
            400
        );
        let st = Secrets::from_env_value(Scheme::Stripe, "whsec_x").unwrap();
        let h = headers(&[("stripe-signature", "v1=00")]);
        assert_eq!(
            Reject::Verify(verify(Scheme::Stripe, &h, b"{}", &st, 0, 300).unwrap_err()).code(),
            "invalid_header"
        );
    }
}
