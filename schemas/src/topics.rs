//! Topic and Kafka header names every part of hookstream agrees on (DESIGN.md, "Topics").
//! Topic names are defaults: each binary's config may override them.

/// Raw webhooks, key = payment_id, value = `RawWebhook`.
pub const RAW_TOPIC: &str = "payments.webhooks.raw";
/// Policy events, key = policy_id, value = `PolicyEvent`.
pub const ACTIVATIONS_TOPIC: &str = "policy.activations";
/// Dead letters, key = payment_id, value = `DeadLetter`.
pub const DLQ_TOPIC: &str = "payments.webhooks.dlq";

/// Kafka header names.
pub mod headers {
    /// The event id (same as `RawWebhook.event_id`), so a consumer can dedup without decoding.
    pub const EVENT_ID: &str = "event-id";
    /// The webhook source name.
    pub const SOURCE: &str = "source";
    /// W3C trace context of the request that produced the record.
    pub const TRACEPARENT: &str = "traceparent";
    /// Present (with the control record's kind as value) on processor control records in
    /// the raw topic; every reader of the raw topic uses it to tell them from webhooks.
    pub const CONTROL: &str = "hookstream-control";
}
