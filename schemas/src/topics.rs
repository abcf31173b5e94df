//! Topic and Kafka header names every part of hookstream agrees on (DESIGN.md, "Topics").
//! Topic names are defaults: each binary's config may override them.

/// Raw webhooks, key = payment_id, value = `RawWebhook`.
pub const RAW_TOPIC: &str = "payments.webhooks.raw";
/// Policy events, key = policy_id, value = `PolicyEvent`.
pub const ACTIVATIONS_TOPIC: &str = "policy.activations";
/// Dead letters, key = payment_id, value = `DeadLetter`.
pub const DLQ_TOPIC: &str = "payments.webhooks.dlq";

/// The suffix of the processor's internal repartition topic (DESIGN.md, "Topics"):
/// `<group_id>.policy-requests`, key = policy_id, value = `PolicyRequest`. The processor creates it with as many partitions as the raw topic.
pub const POLICY_REQUESTS_SUFFIX: &str = ".policy-requests";

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
    /// On a record `processor dlq redrive` published: the id of the first dead letter of
    /// the chain it re-drives. The payment stage then re-emits the requests a duplicate
    /// completion or refund made, and a letter it causes again keeps one id per chain.
    pub const REDRIVE_OF: &str = "hookstream-redrive-of";
}

/// Producer settings every writer of a hookstream topic uses (ingest, the processor's
/// outputs, DLQ re-drive), as librdkafka property/value pairs. They are part of the
/// contract: a record is durable before it is acknowledged, is never duplicated or
/// reordered by librdkafka's retries, and lands in the same partition whichever client
/// (Java or librdkafka) writes its key.
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    // Durable on every in-sync replica before the write is acknowledged.
    ("acks", "all"),
    // librdkafka's retries never write a record twice or out of order.
    ("enable.idempotence", "true"),
    // Java-compatible partitioning of the payment_id / policy_id keys (DESIGN.md, "Topics").
    ("partitioner", "murmur2_random"),
    // A missing topic is an error until an operator creates it with its real settings,
    // instead of the broker creating it with its defaults.
    ("allow.auto.create.topics", "false"),
];
